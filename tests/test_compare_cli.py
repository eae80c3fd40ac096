"""`npga compare` end to end on tiny scenes (our Taichi kernels vs both references)."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("npga_taichi.render")

from npga_taichi.cli.compare import command  # noqa: E402
from npga_taichi.cli.main import cli  # noqa: E402
from npga_taichi.ply import write_ply  # noqa: E402

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
    g = torch.Generator().manual_seed(0)
    n = 300
    path = tmp_path / "cloud.ply"
    write_ply(path, means=torch.randn(n, 3, generator=g) * 0.5 + torch.tensor([2.0, -1.0, 5.0]),
              quats=torch.randn(n, 4, generator=g), log_scales=torch.randn(n, 3, generator=g) * 0.3 - 3.0,
              opacity_logits=torch.randn(n, generator=g), sh=torch.randn(n, 4, 3, generator=g) * 0.5)
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
