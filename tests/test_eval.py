"""Evaluation: metrics against scikit-image, identical images, masking, LPIPS gating, `npga eval`."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from skimage.metrics import structural_similarity

from npga_taichi import evaluation, metrics
from npga_taichi.evaluation import EvalItem


def _smooth_image(rng, h, w):
    """A structured image (smooth blobs + noise): SSIM far from both 0 and 1."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * x + c) * np.cos(4 * y - c) for c in range(3)], -1) * 0.4 + 0.5
    return np.clip(base + 0.05 * rng.standard_normal((h, w, 3)), 0, 1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(32, 40), (23, 17)])
def test_ssim_matches_scikit_image(dtype, shape):
    rng = np.random.default_rng(0)
    a = _smooth_image(rng, *shape)
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1)
    ref = structural_similarity(a, b, channel_axis=2, data_range=1.0, gaussian_weights=True,
                                sigma=1.5, use_sample_covariance=False)
    ours = float(metrics.ssim(torch.tensor(a, dtype=dtype), torch.tensor(b, dtype=dtype)))
    assert 0.1 < ref < 0.99
    assert abs(ours - ref) < 1e-4


def test_identical_images_give_inf_psnr_and_unit_ssim(tmp_path):
    rng = np.random.default_rng(1)
    img = torch.tensor(_smooth_image(rng, 24, 20), dtype=torch.float32)
    alpha = torch.ones(24, 20, 1)
    assert evaluation.psnr_value(img, img) == math.inf
    assert float(metrics.ssim(img, img)) == pytest.approx(1.0, abs=1e-7)
    result = evaluation.evaluate([EvalItem("FREE", 0, "cam", img, img.clone(), alpha)], use_lpips=False,
                                 progress=False)
    row = result.rows[0]
    assert row.psnr == math.inf and row.psnr_masked == math.inf and row.psnr_unmasked == math.inf
    assert row.ssim == pytest.approx(1.0, abs=1e-9)
    assert row.lpips is None
    evaluation.write_csv(result, tmp_path / "m.csv")
    evaluation.write_summary(result.summary(), tmp_path / "s.json")
    assert evaluation.read_csv(tmp_path / "m.csv")[0]["psnr"] == math.inf
    summary = json.loads((tmp_path / "s.json").read_text())  # standard JSON: inf written as a string
    assert summary["psnr"] == "inf" and summary["lpips"] is None and summary["lpips_available"] is False


def test_psnr_value_matches_definition():
    a = torch.zeros(8, 8, 3, dtype=torch.float64)
    b = torch.full((8, 8, 3), 0.1, dtype=torch.float64)
    assert evaluation.psnr_value(a, b) == pytest.approx(20.0)  # 10 log10(1 / 0.01)


def test_masking_ignores_everything_outside_the_matte():
    rng = np.random.default_rng(2)
    gt = torch.tensor(_smooth_image(rng, 30, 30))
    alpha = torch.zeros(30, 30, 1, dtype=torch.float64)
    alpha[8:22, 8:22] = 1.0
    pred = gt.clone()
    pred[alpha[..., 0] == 0] = torch.rand(int((alpha == 0).sum()), 3, dtype=torch.float64)  # garbage outside
    score = evaluation.score_item(EvalItem("S", 0, "c", pred, gt, alpha), torch.ones(3, dtype=torch.float64), None)
    assert score.psnr == math.inf and score.psnr_masked == math.inf
    # ... except psnr_unmasked, which takes the render as drawn: the garbage is spill there
    outside = (alpha[..., 0] == 0)
    spill_mse = float(((pred[outside] - 1.0) ** 2).sum() / (outside.numel() * 3))
    assert score.psnr_unmasked == pytest.approx(10 * math.log10(1.0 / spill_mse))
    pred_in = pred.clone()
    pred_in[10, 10] += 0.5  # one wrong pixel inside the matte does count
    score = evaluation.score_item(EvalItem("S", 0, "c", pred_in.clamp(0, 1), gt, alpha),
                                  torch.ones(3, dtype=torch.float64), None)
    assert math.isfinite(score.psnr) and score.psnr_masked < score.psnr


def test_worst_frames_are_the_lowest_psnr(tmp_path):
    rng = np.random.default_rng(3)
    gt = torch.tensor(_smooth_image(rng, 16, 16), dtype=torch.float32)
    alpha = torch.ones(16, 16, 1)
    items = [EvalItem("S", t, "c", (gt + noise).clamp(0, 1), gt, alpha)
             for t, noise in enumerate([0.0, 0.3, 0.01, 0.2, 0.05])]
    result = evaluation.evaluate(items, n_worst=2, use_lpips=False, progress=False)
    assert [s.timestep for s, _ in result.worst] == [1, 3]
    path = evaluation.write_worst_image(result, tmp_path / "worst.png")
    import imageio.v2 as imageio

    assert imageio.imread(path).shape == (32, 48, 3)  # 2 rows of GT | render | error


def test_lpips_is_unavailable_without_weights_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache: nothing may be fetched
    ok, reason = evaluation.lpips_status()
    assert not ok and ("not installed" in reason or "not on disk" in reason or "missing" in reason)
    with pytest.raises(RuntimeError, match="LPIPS unavailable"):
        evaluation.LpipsMetric()
    assert list(tmp_path.iterdir()) == []  # and nothing was downloaded


def test_empty_selection_is_a_clear_error():
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluation.evaluate([], use_lpips=False, progress=False)


def test_shape_mismatch_is_a_clear_error():
    a = torch.zeros(12, 12, 3)
    with pytest.raises(ValueError, match="differ in size"):
        evaluation.score_item(EvalItem("S", 3, "c", a, torch.zeros(12, 13, 3), torch.ones(12, 13, 1)),
                              torch.ones(3), None)


# ------------------------------------------------------------------------- `npga eval` on a run



def test_eval_cli_writes_csv_summary_and_worst_frames(tiny_demo, tmp_path):
    from npga_taichi.cli.main import cli
    from npga_taichi.reenactment import LoadedRun

    run_dir = tiny_demo["out"] / "run"
    result = CliRunner().invoke(cli, ["eval", str(run_dir), "--out", str(tmp_path / "ev"), "--max-frames", "2",
                                      "--worst", "2", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    held = LoadedRun(run_dir).heldout_cameras()
    rows = evaluation.read_csv(tmp_path / "ev" / "metrics.csv")
    assert len(rows) == summary["num_images"] == 2 * len(held)
    assert {r["camera"] for r in rows} == set(held) and {r["sequence"] for r in rows} == {"FREE"}
    assert summary["psnr"] == pytest.approx(np.mean([r["psnr"] for r in rows]))
    # a synthetic capture: eye / mouth region metrics from its label maps, and expression ratios
    # for the frames where blink, jaw or brows are active (or a note saying there are none)
    assert set(summary["regions"]) == {"eyes", "mouth"} and summary["regions_note"] == ""
    assert summary["regions"]["eyes"]["num_images"] > 0
    assert all(r["psnr_eyes"] is not None for r in rows)
    assert summary["fidelity"] is None or set(summary["fidelity"]) == {"blink", "jaw", "brows"}
    assert summary["fidelity_note"]
    assert all(r["lpips"] is None for r in rows) or evaluation.lpips_status()[0]
    import imageio.v2 as imageio

    worst = imageio.imread(tmp_path / "ev" / "worst.png")
    cam = LoadedRun(run_dir).camera(held[0])
    assert worst.shape == (2 * cam.height, 3 * cam.width, 3)
    again = CliRunner().invoke(cli, ["eval", str(run_dir), "--out", str(tmp_path / "ev"), "--max-frames", "2"])
    assert again.exit_code == 1 and "--force" in again.output  # never overwrites silently
    assert "metrics.csv" in again.output  # and names what it would overwrite


def test_evaluate_run_is_library_code_with_plain_errors(tiny_demo, tmp_path):
    """The library raises ValueError / FileExistsError naming the argument or file (no click)."""
    run_dir = tiny_demo["out"] / "run"
    with pytest.raises(ValueError, match="unknown camera"):
        evaluation.evaluate_run(run_dir, tmp_path / "x", camera_spec="123", progress=False)
    with pytest.raises(ValueError, match="not a run directory"):
        evaluation.evaluate_run(tmp_path, tmp_path / "y", progress=False)
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "summary.json").write_text("{}")
    with pytest.raises(FileExistsError, match="summary.json"):
        evaluation.evaluate_run(run_dir, tmp_path / "z", progress=False)
    summary = evaluation.evaluate_run(run_dir, tmp_path / "w", max_frames=1, camera_spec="222200037",
                                      use_lpips=False, n_worst=0, progress=False, expression_fidelity=False)
    assert summary["num_images"] == 1 and summary["fidelity"] is None and "skipped" in summary["fidelity_note"]


def test_eval_cli_bad_arguments(tiny_demo, tmp_path):
    from npga_taichi.cli.main import cli

    run_dir = tiny_demo["out"] / "run"
    runner = CliRunner()
    bad_cam = runner.invoke(cli, ["eval", str(run_dir), "--cameras", "123", "--out", str(tmp_path / "a")])
    assert bad_cam.exit_code == 1 and "unknown camera" in bad_cam.output and "--cameras" in bad_cam.output
    assert "Traceback" not in bad_cam.output
    bad_seq = runner.invoke(cli, ["eval", str(run_dir), "--sequence", "NOPE", "--out", str(tmp_path / "b")])
    assert bad_seq.exit_code == 1 and "NOPE" in bad_seq.output
    not_run = runner.invoke(cli, ["eval", str(tmp_path), "--out", str(tmp_path / "c")])
    assert not_run.exit_code == 1 and "not a run directory" in not_run.output
