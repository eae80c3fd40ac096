"""The prior shipped with the package (npga_taichi.prior.pretrained): still what `npga prior fit
--preset small` is configured to train, loadable with safe loading, accurate on its held-out
identity; `npga prior pretrained` and the demo's prior stage use it, `--train-prior` does not."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

from npga_taichi.cli.main import cli
from npga_taichi.pipeline import DemoConfig, DemoPaths, stage_settings, stages
from npga_taichi.prior.config import PriorTrainConfig
from npga_taichi.prior.model import load_prior
from npga_taichi.prior.pretrained import SHIPPED_PRIOR, install_shipped_prior, shipped_prior_for


def test_shipped_prior_has_the_default_training_settings():
    # Fails when PriorTrainConfig's defaults or the presets' prior settings change: retrain it with
    # `npga prior fit --out npga_taichi/assets/prior_small --preset small --force`.
    cfg = PriorTrainConfig(**stage_settings("default", "prior"))
    assert shipped_prior_for(cfg) == SHIPPED_PRIOR
    assert shipped_prior_for(PriorTrainConfig(**{**cfg.to_dict(), "checkpoint_every": 7})) == SHIPPED_PRIOR
    assert shipped_prior_for(PriorTrainConfig(**{**cfg.to_dict(), "steps": 2999})) is None
    assert shipped_prior_for(PriorTrainConfig(**stage_settings("tiny", "prior"))) is None


def test_shipped_prior_loads_safely_and_is_accurate():
    payload = torch.load(SHIPPED_PRIOR / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert "optimizer" not in payload.get("extra", {})  # nothing but weights, config and metadata
    model = load_prior(SHIPPED_PRIOR)
    meta = model.meta
    assert meta["preset"] == "small" and 999 not in meta["identity_seeds"]
    metrics = json.loads((SHIPPED_PRIOR / "metrics.json").read_text())["heldout"]
    # held-out identity (seed 999): the figures the README quotes for the small prior
    assert metrics["surface_sdf_mae_mm"] < 0.5 and metrics["deform_mae_mm"] < 0.3
    assert metrics["deform_mae_mm"] < 0.2 * metrics["deform_identity_mae_mm"]
    # the network evaluates: a point far outside the head is outside (positive SDF)
    with torch.no_grad():
        sdf = model.sdf(torch.tensor([[0.0, 0.0, 2.0]]), model.codes_geo.weight[:1])
    assert sdf.shape == (1,) and float(sdf) > 0


def test_prior_pretrained_command_copies_refuses_and_reports(tmp_path):
    runner = CliRunner()
    out = tmp_path / "prior"
    first = runner.invoke(cli, ["prior", "pretrained", "--out", str(out), "--json"])
    assert first.exit_code == 0, first.output
    report = json.loads(first.output)
    assert report["training"]["steps"] == 3000 and report["metrics"]["heldout"]["deform_mae_mm"] > 0
    for name in ("checkpoint.pt", "config.json", "train_config.json", "metrics.json"):
        assert (out / name).read_bytes() == (SHIPPED_PRIOR / name).read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.json", "metrics.json",
                                                     "train_config.json"]  # no staging leftovers
    again = runner.invoke(cli, ["prior", "pretrained", "--out", str(out)])
    assert again.exit_code == 1 and "--force" in again.output and str(out) in again.output
    assert runner.invoke(cli, ["prior", "pretrained", "--out", str(out), "--force"]).exit_code == 0
    a_file = tmp_path / "file"
    a_file.write_text("x")
    bad = runner.invoke(cli, ["prior", "pretrained", "--out", str(a_file / "p")])
    assert bad.exit_code != 0 and str(a_file) in bad.output and "Traceback" not in bad.output


@pytest.mark.parametrize("preset", ["default", "long", "quick"])
def test_demo_prior_stage_uses_the_shipped_prior(tmp_path, preset):
    cfg = DemoConfig(out=str(tmp_path / "demo"), preset=preset)
    paths = DemoPaths(cfg)
    prior_stage = next(s for s in stages(cfg, paths, log=lambda m: None) if s.name == "prior")
    assert prior_stage.argv == ["prior", "pretrained", "--out", str(paths.prior)]
    assert not prior_stage.is_done(paths)
    prior_stage.run(paths)
    assert prior_stage.is_done(paths)
    assert (paths.prior / "checkpoint.pt").read_bytes() == (SHIPPED_PRIOR / "checkpoint.pt").read_bytes()

    trained = DemoConfig(out=str(tmp_path / "trained"), preset=preset, train_prior=True)
    trained_stage = next(s for s in stages(trained, DemoPaths(trained), log=lambda m: None) if s.name == "prior")
    assert trained_stage.argv[:2] == ["prior", "fit"]


def test_install_refuses_an_existing_prior(tmp_path):
    install_shipped_prior(tmp_path)
    with pytest.raises(ValueError, match="already holds a prior"):
        install_shipped_prior(tmp_path)


def test_track_without_prior_uses_the_shipped_one(tiny_demo, tmp_path):
    capture = tmp_path / "capture"
    shutil.copytree(tiny_demo["out"] / "capture", capture)
    tracking = capture / "000" / "annotations" / "tracking"
    shutil.rmtree(tracking)
    result = CliRunner().invoke(cli, ["track", str(capture / "000"), "--sequences", "FREE", "--steps-first", "5",
                                      "--steps", "2", "--points", "200", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    assert (tracking / "FREE.npz").is_file()
    meta = json.loads((tracking / "FREE.json").read_text())
    assert Path(meta["prior"]) == SHIPPED_PRIOR
    for name in ("track-video", "distill"):
        command = cli.get_command(click.Context(cli), name)
        option = next(p for p in command.params if p.name == "prior_dir")
        assert Path(option.default) == SHIPPED_PRIOR and not option.required
