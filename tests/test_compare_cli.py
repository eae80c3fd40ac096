"""`npga compare` end to end on tiny scenes (our Taichi kernels vs both references), and the
library behind it (``npga_taichi.compare``) rejecting bad configurations by name."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from npga_taichi.cli.compare import command
from npga_taichi.cli.main import cli
from npga_taichi.compare import CompareConfig, run_comparison
from npga_taichi.ply import write_ply
from scenes import make_scene

TINY = ["--n", "150", "--width", "40", "--height", "32", "--json"]


def invoke(args):
    result = CliRunner().invoke(command, args, catch_exceptions=False)
    # stdout must be pure JSON (Taichi's banner goes to stderr) so scripts can parse it.
    return result, (json.loads(result.stdout) if "--json" in args and result.exit_code == 0 else None)


def check_report(report, gaussians):
    assert report["passed"], report["failures"]
    assert report["scene"]["gaussians"] == gaussians
    assert report["visible"]["reference"] > 0
    assert report["image"]["max_abs"] < 5e-3 and report["image"]["psnr_db"] > 60
    for name in ("means", "quats", "scales", "opacities", "colors"):
        assert report["gradients"][name]["rel_l2"] < 2e-2
        assert report["gradients"][name]["cosine"] > 0.999
    for who in ("ours", "ours_cold", "reference"):
        assert report["timings_s"][who]["forward"] > 0 and report["timings_s"][who]["backward"] > 0


def test_compare_torch_reference_json():
    result, report = invoke(TINY + ["--seed", "3"])
    assert result.exit_code == 0, result.output
    check_report(report, 150)
    assert report["reference"] == "torch oracle"
    assert report["visible"]["visibility_mismatches"] <= 1


def test_compare_gsplat_reference_with_sh():
    pytest.importorskip("gsplat")
    result, report = invoke(TINY + ["--reference", "gsplat", "--sh-degree", "2"])
    assert result.exit_code == 0, result.output
    check_report(report, 150)
    assert report["scene"]["sh_degree"] == 2 and "gsplat" in report["reference"]


def test_compare_ply_subset_and_table(tmp_path):
    scene = make_scene(300, 64, 64, seed=0, sh_degree=1, dtype=torch.float32)
    path = tmp_path / "cloud.ply"
    write_ply(path, means=scene["means"], quats=scene["quats"], log_scales=scene["scales"].log(),
              opacity_logits=torch.logit(scene["opacities"]), sh=scene["colors"])
    result, report = invoke(["--ply", str(path), "--n", "120", "--width", "36", "--height", "28", "--json"])
    assert result.exit_code == 0, result.output
    check_report(report, 120)
    assert report["scene"]["sh_degree"] == 1
    # The default table, through the `npga` group (lazy import of cli/compare.py).
    table = CliRunner().invoke(cli, ["compare", "--ply", str(path), "--n", "60", "--width", "24",
                                     "--height", "20"], catch_exceptions=False)
    assert table.exit_code == 0 and "PASS" in table.output and "gradient" in table.output


def test_strict_fails_beyond_tolerance_and_bad_ply(tmp_path):
    result = CliRunner().invoke(command, ["--n", "50", "--width", "20", "--height", "16", "--strict",
                                          "--image-tol", "-1"])
    assert result.exit_code == 1 and "FAIL" in result.output
    bad = tmp_path / "bad.ply"
    bad.write_text("not a ply\n")
    result = CliRunner().invoke(command, ["--ply", str(bad)])
    assert result.exit_code != 0 and "bad.ply" in result.output


@pytest.mark.parametrize("change,field", [
    (dict(n=0), "n"), (dict(dtype="float16"), "dtype"), (dict(reference="cuda"), "reference"),
    (dict(width=0), "width"), (dict(height=True), "height"), (dict(sh_degree=4), "sh_degree"),
    (dict(camera_distance=-1.0), "camera_distance"),
])
def test_library_rejects_bad_configs_by_name(change, field):
    with pytest.raises(ValueError, match=field):
        run_comparison(CompareConfig(**{**dict(n=10, width=8, height=8), **change}))


def test_library_names_the_ply(tmp_path):
    scene = make_scene(20, 32, 32, seed=1, sh_degree=0, dtype=torch.float32)
    path = tmp_path / "dc_only.ply"
    write_ply(path, means=scene["means"], quats=scene["quats"], log_scales=scene["scales"].log(),
              opacity_logits=torch.logit(scene["opacities"]), sh=scene["colors"])
    with pytest.raises(ValueError, match="sh_degree.*dc_only.ply"):
        run_comparison(CompareConfig(ply=str(path), sh_degree=2, width=8, height=8))
    with pytest.raises((ValueError, FileNotFoundError), match="missing.ply"):
        run_comparison(CompareConfig(ply=str(tmp_path / "missing.ply"), width=8, height=8))
    result = CliRunner().invoke(command, ["--n", "0"])
    assert result.exit_code != 0 and "random scene needs at least one Gaussian" in result.output
