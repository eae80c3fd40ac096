"""benchmarks/ablation_frames.py: per-frame PSNR differences between ablation arms."""
import csv
import json

import numpy as np
import pytest
from benchmark_modules import load_benchmark

COLUMNS = ("sequence", "timestep", "camera", "psnr", "psnr_masked", "psnr_eyes", "psnr_mouth", "ssim")


def _run(root, name, psnr_of):
    """A run folder with eval/metrics.csv for 3 frames x 2 cameras; psnr_of(t, cam) -> dB."""
    run = root / name
    (run / "eval").mkdir(parents=True)
    with open(run / "eval" / "metrics.csv", "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(COLUMNS)
        for t in range(3):
            for cam in ("a", "b"):
                p = psnr_of(t, cam)
                out.writerow(["FREE", t, cam, p, p - 5, p - 10, p - 12, 0.9])
    return str(run)


def test_differences_are_seed_means_per_frame_and_the_figure_is_drawn(tmp_path):
    bench = load_benchmark("ablation_frames")
    ref = [_run(tmp_path, f"ref{s}", lambda t, c, s=s: 30.0 + s) for s in range(2)]  # mean 30.5
    # the arm loses 1 dB on frame 1 only, seen by one camera of two: -0.5 there, 0 elsewhere
    arm = [_run(tmp_path, f"arm{s}", lambda t, c, s=s: 30.0 + s - (1.0 if (t, c) == (1, "b") else 0.0))
           for s in range(2)]
    out, fig = tmp_path / "d.json", tmp_path / "d.png"
    bench.main(["--arm", "G", *arm, "--reference", "no detail", *ref, "--out", str(out), "--figure", str(fig)])
    diff = json.loads(out.read_text())["arms"]["G"]
    assert diff["frames"] == ["FREE/0", "FREE/1", "FREE/2"]
    for metric in ("psnr", "psnr_masked", "psnr_eyes", "psnr_mouth"):
        np.testing.assert_allclose(diff[metric], [0.0, -0.5, 0.0], atol=1e-12)
    assert fig.stat().st_size > 10_000


def test_missing_or_mismatched_runs_are_clear_errors(tmp_path, capsys):
    bench = load_benchmark("ablation_frames")
    ref = _run(tmp_path, "ref", lambda t, c: 30.0)
    with pytest.raises(SystemExit):
        bench.main(["--arm", "G", str(tmp_path / "nothing"), "--reference", "r", ref, "--out", str(tmp_path / "x")])
    assert "no metrics" in capsys.readouterr().err
    other = tmp_path / "other"
    (other / "eval").mkdir(parents=True)
    (other / "eval" / "metrics.csv").write_text(",".join(COLUMNS) + "\nFREE,7,a,30,25,20,18,0.9\n")
    with pytest.raises(SystemExit):
        bench.main(["--arm", "G", str(other), "--reference", "r", ref, "--out", str(tmp_path / "x")])
    assert "different held-out frames" in capsys.readouterr().err
    (other / "eval" / "metrics.csv").write_text(",".join(COLUMNS) + "\nFREE,0,a,30,25,,18,0.9\n")  # no eye region
    with pytest.raises(SystemExit):
        bench.main(["--arm", "G", str(other), "--reference", "r", ref, "--out", str(tmp_path / "x")])
    assert "expected values in the columns" in capsys.readouterr().err
