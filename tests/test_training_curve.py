"""Training curves: parsing log.jsonl (torn lines included) and drawing several runs."""
from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest

from npga_taichi.training_curve import plot_runs, read_curve


def _write_log(run, records, torn=False):
    run.mkdir(parents=True)
    lines = [json.dumps(r) for r in records]
    if torn:
        lines.append('{"step": 99, "psn')  # a kill mid-write
    (run / "log.jsonl").write_text("\n".join(lines) + "\n")


def test_read_curve_picks_validation_and_training_records(tmp_path):
    records = [{"step": s, "psnr": 10 + s / 10, "elapsed": s / 5} for s in range(10, 60, 10)]
    records[1].update(val_psnr=12.0, val_masked_psnr=11.0)
    records[4].update(val_psnr=14.0)  # no masked value: NaN there
    _write_log(tmp_path / "a", records, torn=True)
    c = read_curve(tmp_path / "a")
    assert c["step"].tolist() == [20, 50] and c["elapsed"].tolist() == [4.0, 10.0]
    assert c["val_psnr"].tolist() == [12.0, 14.0] and np.isnan(c["val_masked_psnr"][1])
    assert c["train_step"].tolist() == [10, 20, 30, 40, 50]
    with pytest.raises(ValueError, match="no training log"):
        read_curve(tmp_path / "missing")


def test_plot_runs_draws_every_run(tmp_path):
    for name, offset in (("a", 0.0), ("b", 2.0)):
        _write_log(tmp_path / name, [{"step": s, "psnr": 10 + offset + s / 100, "elapsed": s,
                                      "val_psnr": 9 + offset + s / 100, "val_masked_psnr": 8 + offset + s / 100}
                                     for s in range(100, 1100, 100)])
    out = plot_runs({"a": tmp_path / "a", "b": tmp_path / "b"}, tmp_path / "curves.png", "two runs")
    image = iio.imread(out)
    assert image.ndim == 3 and image.shape[1] > image.shape[0] > 200
    # Both runs' colours (matplotlib's C0 blue and C1 orange) appear in the figure.
    rgb = image[..., :3].reshape(-1, 3).astype(int)
    for colour in ((31, 119, 180), (255, 127, 14)):
        assert (np.abs(rgb - colour).sum(1) < 30).sum() > 50, colour
