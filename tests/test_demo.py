"""`npga demo --preset tiny`: the whole pipeline once per test session (shared by the render,
eval and export tests through the ``tiny_demo`` fixture), resuming, and its argument errors."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from npga_taichi.cli.main import cli

def test_demo_builds_avatar_metrics_and_video(tiny_demo):
    out: Path = tiny_demo["out"]
    summary = tiny_demo["summary"]
    assert (out / "run" / "checkpoints" / "latest.pt").is_file()
    assert (out / "eval" / "metrics.csv").is_file() and (out / "eval" / "worst.png").is_file()
    assert Path(summary["video"]).is_file() and Path(summary["video"]).stat().st_size > 1000
    # a trained avatar explains the held-out data far better than chance (PSNR of noise ~ 8 dB)
    assert isinstance(summary["psnr"], float) and 12.0 < summary["psnr"] < 60.0
    assert 0.0 < summary["ssim"] <= 1.0
    assert summary["lpips"] is None or 0.0 <= summary["lpips"] <= 1.0
    assert summary["sequences"] == ["FREE"]
    record = json.loads((out / "pipeline.json").read_text())
    assert set(record["stages"]) == {"capture", "prior", "track", "distill", "fit", "eval", "render"}


def test_demo_resumes_by_skipping_finished_stages(tiny_demo):
    result = CliRunner().invoke(cli, ["demo", str(tiny_demo["out"]), "--preset", "tiny"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.count("skipping") == 7
    assert "PSNR" in result.output and "video:" in result.output


def test_demo_refuses_a_folder_built_with_other_settings(tiny_demo):
    result = CliRunner().invoke(cli, ["demo", str(tiny_demo["out"]), "--preset", "tiny", "--identity", "5"])
    assert result.exit_code != 0 and "--force" in result.output


def test_demo_rejects_bad_arguments(tmp_path):
    runner = CliRunner()
    bad_preset = runner.invoke(cli, ["demo", str(tmp_path / "d"), "--preset", "huge"])
    assert bad_preset.exit_code == 2 and "huge" in bad_preset.output
    bad_identity = runner.invoke(cli, ["demo", str(tmp_path / "d"), "--identity", "-1"])
    assert bad_identity.exit_code == 2 and "identity" in bad_identity.output.lower()
    assert not (tmp_path / "d").exists()


def test_render_kernels_compiling_stops_its_process_when_the_stage_fails():
    """The process compiling render kernels beside the capture stage does not outlive a failed
    stage (nor hide its error)."""
    import multiprocessing

    from npga_taichi.avatar.config import AvatarConfig
    from npga_taichi.pipeline import render_kernels_compiling

    before = set(multiprocessing.active_children())
    with pytest.raises(RuntimeError, match="capture failed"):
        with render_kernels_compiling(64, 48, AvatarConfig(), "cpu"):
            assert len(set(multiprocessing.active_children()) - before) == 1
            raise RuntimeError("capture failed")
    assert set(multiprocessing.active_children()) == before


def test_metrics_json_is_standard_json(tiny_demo):
    text = (tiny_demo["out"] / "eval" / "summary.json").read_text()
    data = json.loads(text)  # parses with the standard library: no bare Infinity/NaN
    assert "Infinity" not in text and "NaN" not in text
    assert math.isfinite(data["psnr"]) and data["lpips_available"] in (True, False)


# Today's tiny demo, written out independently of the preset registry it now comes from: the
# stage settings and the command lines recorded for them.
TINY_PRIOR = dict(preset="tiny", n_identities=2, n_expressions=4, n_heldout_expressions=1, points_surface=400,
                  points_near=400, points_space=150, batch_shapes=2, batch_points=400, steps=100,
                  eval_points=400, eval_fit_steps=10, checkpoint_every=50, lr=3e-3, seed=0)
TINY_DISTILL = dict(steps=60, hidden_dim=32, n_layers=2, batch_points=1024, surface_points=3000, eval_points=300,
                    eval_codes=4, root_points=50, root_codes=2, root_iters=15, checkpoint_every=30, seed=0)


def test_demo_stages_run_with_the_tiny_settings(tiny_demo):
    out: Path = tiny_demo["out"]
    capture = json.loads((out / "capture" / "000" / "synthetic_capture.json").read_text())
    assert (capture["frames_per_sequence"], capture["samples_per_side"], capture["downscale"]) == (3, 1, 16)
    assert capture["sequences"] == ["EXP-1", "EMO-1", "FREE"] and capture["identity_seed"] == 0
    prior = json.loads((out / "prior" / "train_config.json").read_text())["training"]
    assert {k: prior[k] for k in TINY_PRIOR} == TINY_PRIOR
    distill = json.loads((out / "distill" / "distill_config.json").read_text())["distill"]
    assert {k: distill[k] for k in TINY_DISTILL} == TINY_DISTILL
    run = json.loads((out / "run" / "config.json").read_text())
    assert run["train"]["steps"] == 100 and run["avatar"]["max_gaussians"] == 3000 and run["avatar"]["sh_degree"] == 1
    assert run["extra"]["preset"] == "tiny" and Path(run["extra"]["prior"]).name == "prior"
    tracked = json.loads((out / "capture" / "000" / "annotations" / "tracking" / "FREE.json").read_text())
    assert tracked["frames"] == 3 and tracked["source"] == "npga track"

    argv = {name: stage["argv"] for name, stage in json.loads((out / "pipeline.json").read_text())["stages"].items()}
    out = Path(argv["capture"][1]).parent  # where the stages ran (NPGA_TINY_DEMO: the copied demo)
    assert argv["capture"] == ["synth", str(out / "capture"), "--identity", "0", "--preset", "tiny",
                               "--samples", "1", "--frames", "3"]
    assert argv["track"] == ["track", str(out / "capture" / "000"), "--prior", str(out / "prior"),
                             "--steps-first", "40", "--steps", "5", "--points", "400"]
    assert argv["distill"][-6:] == ["--steps", "60", "--hidden", "32", "--layers", "2"]
    assert argv["fit"] == ["fit", str(out / "capture"), "--out", str(out / "run"), "--prior", str(out / "prior"),
                           "--field", str(out / "distill"), "--preset", "tiny", "--steps", "100", "--device", "cpu"]
    assert argv["render"] == ["render", str(out / "run"), "--side-by-side", "--out", str(out / "render"), "--force",
                              "--device", "cpu", "--max-frames", "4"]
    # every recorded command line is one `npga` accepts (parsed, not run)
    from npga_taichi.cli.main import cli as group

    for name, args in argv.items():
        ctx = group.make_context("npga", list(args), resilient_parsing=True)
        with ctx:
            sub_name, sub, rest = group.resolve_command(ctx, list(args))
            sub.make_context(sub_name, rest, parent=ctx)


def test_demo_library_refuses_other_settings_and_bad_config(tiny_demo, tmp_path):
    from npga_taichi.pipeline import DemoConfig, run_pipeline

    with pytest.raises(ValueError, match="preset=tiny identity=0.*--force"):
        run_pipeline(DemoConfig(out=str(tiny_demo["out"]), preset="tiny", identity=3), echo=lambda m: None)
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        run_pipeline(DemoConfig(out=str(tmp_path / "d"), preset="huge"), echo=lambda m: None)
    assert not (tmp_path / "d").exists()


def test_library_never_imports_click_or_the_cli():
    """The demo's stages and `npga render`'s work import neither click nor npga_taichi.cli."""
    import subprocess
    import sys

    code = ("import sys\n"
            "import npga_taichi.pipeline, npga_taichi.render_run, npga_taichi.reenactment, npga_taichi.presets\n"
            "import npga_taichi.data.capture, npga_taichi.prior.training, npga_taichi.prior.tracking\n"
            "import npga_taichi.prior.distill, npga_taichi.avatar.fitting, npga_taichi.evaluation\n"
            "bad = sorted(m for m in sys.modules if m == 'click' or m.startswith(('click.', 'npga_taichi.cli')))\n"
            "print(bad)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("given, expected", [({}, "30000"), ({"OMP_WAIT_POLICY": "PASSIVE"}, None),
                                             ({"GOMP_SPINCOUNT": "5"}, "5")])
def test_the_package_caps_openmp_spinning_unless_the_user_chose(given, expected):
    """Importing npga_taichi (before torch, as `npga` does) sets libgomp's short spin; a user's
    OMP_WAIT_POLICY or GOMP_SPINCOUNT is left as given (README, *Both cores for the tracker*)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(given)
    code = "import os, npga_taichi; print(os.environ.get('GOMP_SPINCOUNT'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(expected)
