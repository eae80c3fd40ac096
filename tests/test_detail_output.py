"""benchmarks/detail_output.py: how much of G's output is static and how much follows the expression."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from benchmark_modules import load_benchmark

from npga_taichi.avatar.config import AvatarConfig
from npga_taichi.avatar.model import NPGAAvatar

EXP = 5


def _avatar(relative: bool) -> NPGAAvatar:
    torch.manual_seed(0)
    avatar = NPGAAvatar(AvatarConfig(num_init_gaussians=40, max_gaussians=40, latent_dim=4, sh_degree=0,
                                     detail_hidden=16, detail_layers=2, scratch_field_hidden=16,
                                     scratch_field_layers=2, detail_relative_to_rest=relative), None, exp_dim=EXP)
    with torch.no_grad():
        avatar.gaussians.means.copy_(torch.randn(40, 3) * 0.3)
        avatar.gaussians.latents.copy_(torch.randn(40, 4))
        avatar.detail.mlp.out.weight.normal_(0, 0.1)  # a trained G
        avatar.detail.mlp.out.bias.normal_(0, 0.1)
    return avatar


def _tracking(codes: np.ndarray) -> SimpleNamespace:
    t = len(codes)
    return SimpleNamespace(timesteps=np.arange(t), z_exp=codes.astype(np.float32), rot=np.tile(np.eye(3), (t, 1, 1)),
                           trans=np.zeros((t, 3)), scale=0.25, eye_closure=None, part_motion=None)


def test_a_still_expression_is_all_static_and_a_g_relative_to_rest_is_zero_at_rest():
    bench = load_benchmark("detail_output")
    rest = np.zeros((6, EXP))
    varied = np.random.default_rng(0).normal(size=(6, EXP))
    plain, relative = _avatar(False), _avatar(True)

    still = bench.measure(plain, {"EXP-1": _tracking(rest), "FREE": _tracking(varied)}, stride=1)
    assert still["train"]["frames"] == 6 and still["held_out"]["frames"] == 6
    for row in still["train"]["outputs"].values():  # one code on every frame: nothing changes
        assert row["dynamic_rms"] == pytest.approx(0.0, abs=1e-9)
        assert row["static_rms"] == pytest.approx(row["rms"]) and row["rms"] > 0
    for row in still["held_out"]["outputs"].values():  # varied codes: part of it follows them
        assert 0 < row["dynamic_share"] < 1

    at_rest = bench.measure(relative, {"EXP-1": _tracking(rest)}, stride=2)
    assert at_rest["train"]["frames"] == 3 and "held_out" not in at_rest
    assert all(row["rms"] < 1e-6 for row in at_rest["train"]["outputs"].values())
    # position offsets are reported in mm: 1 canonical unit = MM_PER_UNIT mm
    moved = bench.measure(relative, {"EXP-1": _tracking(varied)}, stride=1)["train"]["outputs"]["d_means"]
    from npga_taichi.conventions import MM_PER_UNIT
    with torch.no_grad():
        raw = torch.stack([relative.detail(relative.gaussians.means, relative.gaussians.latents,
                                           torch.as_tensor(c, dtype=torch.float32))["d_means"] for c in varied])
    assert moved["rms"] == pytest.approx(float(raw.double().pow(2).mean().sqrt()) * MM_PER_UNIT, rel=1e-4)
    shift = raw.double().mean(1) * MM_PER_UNIT  # (frames, 3): the whole head's shift per frame
    assert moved["translation"]["rms"] == pytest.approx(float(shift.norm(dim=1).pow(2).mean().sqrt()), rel=1e-4)
    assert moved["translation"]["dynamic_rms"] == pytest.approx(
        float((shift - shift.mean(0)).norm(dim=1).pow(2).mean().sqrt()), rel=1e-4)
    assert 0 < moved["translation"]["dynamic_rms"] < moved["translation"]["rms"]
    assert still["train"]["outputs"]["d_means"]["translation"]["dynamic_rms"] == pytest.approx(0.0, abs=1e-9)


def test_an_avatar_without_g_is_a_clear_error():
    bench = load_benchmark("detail_output")
    avatar = NPGAAvatar(AvatarConfig(num_init_gaussians=8, max_gaussians=8, use_detail=False), None, exp_dim=EXP)
    with pytest.raises(ValueError, match="no detail network"):
        bench.measure(avatar, {"EXP-1": _tracking(np.zeros((2, EXP)))})


def test_the_command_reads_a_fitted_run(tiny_demo, tmp_path):
    bench = load_benchmark("detail_output")
    out = tmp_path / "detail.json"
    result = bench.main([str((tiny_demo["out"] / "run")), "--stride", "7", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    row = result[str((tiny_demo["out"] / "run"))]
    assert row["detail_relative_to_rest"] is True and row["train"]["frames"] > 0
    assert set(row["train"]["outputs"]) == set(bench.OUTPUTS)
