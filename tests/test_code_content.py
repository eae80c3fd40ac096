"""benchmarks/code_content.py: how much of each expression's true motion F reproduces."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from benchmark_modules import load_benchmark


@pytest.fixture(scope="module")
def truth(tiny_demo):
    from npga_taichi.data import synthetic as syn

    pdir = next(Path(tiny_demo["out"], "capture").iterdir())
    plan = json.loads((pdir / "groundtruth" / "groundtruth.json").read_text())
    return pdir, plan, syn.SyntheticHead(np.asarray(plan["identity"], np.float32))


def test_a_field_that_moves_as_the_truth_gets_all_of_it_and_one_that_ignores_the_codes_none(truth):
    bench = load_benchmark("code_content")
    _, plan, head = truth
    # "codes" = the true expression parameters; the oracle F inverts the analytic backward offset
    # to first order, which is exact in the benchmark's own measure (|B(x, e) - x| at x)
    codes = {seq: np.asarray(p["expression"], np.float32) for seq, p in plan["sequences"].items()}
    oracle = lambda x, e: 2 * x - head.backward(x, e)  # noqa: E731
    still = lambda x, e: x + 0.0 * e.sum()  # noqa: E731
    got, none = (bench.measure(plan, head, f, codes, points=1500) for f in (oracle, still))
    moved = [n for n, p in got["parameters"].items() if p["frames"] > 0]
    assert "jaw_open" in moved and len(moved) >= 3  # the tiny capture's EXP-1 and EMO-1
    for name in moved:
        assert got["parameters"][name]["share"] == pytest.approx(1.0, abs=1e-4)
        corr = got["parameters"][name]["correlation"]  # None from fewer than 3 frames
        assert (corr is None and got["parameters"][name]["frames"] < 3) or corr == pytest.approx(1.0, abs=1e-4)
        assert none["parameters"][name]["share"] == 0.0
    assert got["parameters"]["jaw_open"]["truth_max_mm"] > 5.0  # the jaw opens by centimetres
    for result in (got, none):  # neutral frames: true codes do not move, so nothing drifts
        assert result["code_drift"]["neutral_frames_mean"] in (None, 0.0)
        assert all(p["drift_mm"] in (None, 0.0) for p in result["parameters"].values())


def test_the_command_reads_a_tracked_capture_and_its_distilled_field(truth, tiny_demo, tmp_path):
    bench = load_benchmark("code_content")
    pdir, plan, _ = truth
    out = tmp_path / "content.json"
    result = bench.main(["--capture", str(pdir), "--field", str(Path(tiny_demo["out"], "distill")),
                         "--points", "1500", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert set(result["parameters"]) == set(plan["expression_names"])
    jaw = result["parameters"]["jaw_open"]
    assert jaw["frames"] > 0 and jaw["region_points"] > 0 and np.isfinite(jaw["share"])
    assert torch.isfinite(torch.tensor(result["code_drift"]["active_frames_mean"]))
