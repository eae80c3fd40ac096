"""`npga demo --preset tiny`: the whole pipeline once per test session (shared by the render,
eval and export tests through the ``tiny_demo`` fixture), resuming, and its argument errors."""
from __future__ import annotations

import json
import math
from pathlib import Path

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


def test_metrics_json_is_standard_json(tiny_demo):
    text = (tiny_demo["out"] / "eval" / "summary.json").read_text()
    data = json.loads(text)  # parses with the standard library: no bare Infinity/NaN
    assert "Infinity" not in text and "NaN" not in text
    assert math.isfinite(data["psnr"]) and data["lpips_available"] in (True, False)
