"""Forward field F: root finding, feature lifting, save/load, cycle distillation against a
backward field with substantial deformations, and the prior -> track -> distill CLI chain."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from npga_taichi.prior.config import preset
from npga_taichi.prior.distill import DistillConfig, distill
from npga_taichi.prior.forward_field import (ForwardDeformationField, ForwardFieldConfig,
                                             load_forward_field, save_forward_field)
from npga_taichi.prior.model import MonoNPHM
from npga_taichi.prior.root_finding import invert_pointwise, jacobian_3x3
from npga_taichi.prior.tracking import Tracking


def test_newton_inverts_a_known_map():
    a = torch.tensor([[0.2, 0.05, 0.0], [0.0, 0.1, 0.15], [0.1, 0.0, 0.25]], dtype=torch.float64)

    def fn(x):  # invertible: x + 0.3 tanh(x A): Jacobian I + small
        return x + 0.3 * torch.tanh(x @ a) + torch.stack([0.05 * torch.sin(3 * x[:, 1]),
                                                           torch.zeros_like(x[:, 0]),
                                                           0.04 * x[:, 0] ** 2], dim=-1)

    x_true = torch.randn(64, 3, dtype=torch.float64)
    target = fn(x_true)
    root, residual, ok = invert_pointwise(fn, target, max_iters=25, tol=1e-10)
    assert ok.all() and residual.max() < 1e-10
    torch.testing.assert_close(root, x_true, atol=1e-8, rtol=0)
    _, jac = jacobian_3x3(fn, x_true[:4])
    num = torch.stack([(fn(x_true[:4] + 1e-6 * e) - fn(x_true[:4] - 1e-6 * e)) / 2e-6
                       for e in torch.eye(3, dtype=torch.float64)], dim=-1)
    torch.testing.assert_close(jac, num, atol=1e-6, rtol=0)


def test_forward_field_lifting_and_roundtrip(tmp_path):
    torch.manual_seed(0)
    field = ForwardDeformationField(ForwardFieldConfig(lat_dim_exp=5, hidden_dim=32, n_layers=3, n_freqs=2))
    x = torch.randn(10, 3) * 0.3
    assert torch.equal(field(x, torch.randn(5)), x)  # starts at the identity map
    with torch.no_grad():
        for p in field.parameters():
            p.add_(0.1 * torch.randn_like(p))
    z = torch.randn(10, 5)
    before = field(x, z)
    field.expand_feature_input(7)
    assert field.feature_dim == 7
    torch.testing.assert_close(field(x, z, torch.randn(10, 7)), before, atol=1e-6, rtol=0)
    torch.testing.assert_close(field(x, z), before, atol=1e-6, rtol=0)
    save_forward_field(field, tmp_path / "F")
    loaded = load_forward_field(tmp_path / "F")
    f = torch.randn(10, 7)
    assert torch.equal(loaded(x, z, f), field(x, z, f))
    with pytest.raises(ValueError, match="features"):
        loaded(x, z, torch.randn(10, 3))
    with pytest.raises(ValueError, match="z_exp"):
        loaded(x, torch.randn(4))


def _deforming_prior(seed=0):
    """A tiny MonoNPHM whose backward field moves points by ~10-20 mm (1 unit = 250 mm)."""
    torch.manual_seed(seed)
    cfg = preset("tiny")
    pts = torch.randn(cfg.n_anchors, 3)
    model = MonoNPHM(cfg, 0.35 * pts / pts.norm(dim=-1, keepdim=True))
    with torch.no_grad():
        model.ex_decoder.layers[-1].weight.normal_(0, 0.04)
        # The identity field: an SDF close to a sphere of radius 0.4 around the anchors.
        model.id_decoder.geometry.weights[-1].zero_()
        model.id_decoder.geometry.biases[-1].zero_()
    sphere = lambda x, z_geo, shape_index=None: x[:, :3].norm(dim=-1) - 0.4  # noqa: E731
    model.sdf = sphere
    model.eval()
    return model


def _tracks(model, n_frames=30, seed=0):
    rng = np.random.default_rng(seed)
    e = model.config.lat_dim_exp
    out = []
    for name in ("EXP-1", "FREE"):
        z = np.cumsum(rng.normal(0, 0.15, size=(n_frames, e)), axis=0).astype(np.float32)
        out.append(Tracking(name, np.arange(n_frames), z, np.zeros(model.config.lat_dim_geo, np.float32),
                            np.zeros(model.config.lat_dim_app, np.float32), np.tile(np.eye(3, dtype=np.float32),
                            (n_frames, 1, 1)), np.zeros((n_frames, 3), np.float32), 0.25,
                            np.zeros(n_frames, np.float32)))
    return out


def test_distilled_cycle_error_falls_under_bound(tmp_path):
    model = _deforming_prior()
    tracks = _tracks(model)
    cfg = DistillConfig(hidden_dim=64, n_layers=3, n_freqs=2, steps=250, batch_points=1024, lr=3e-3,
                        lr_decay_every=100, surface_points=3000, eval_points=300, eval_codes=6,
                        root_points=60, root_codes=2, jitter=0.3, checkpoint_every=100)
    # The deformation is large: F = identity would leave a cycle error of many millimetres.
    x = torch.randn(500, 3)
    x = 0.4 * x / x.norm(dim=-1, keepdim=True)
    z = torch.as_tensor(tracks[1].z_exp[::5])
    with torch.no_grad():
        identity_err = torch.cat([(model.backward(x, zz, torch.zeros(model.config.lat_dim_geo)) - x).norm(dim=-1)
                                  for zz in z]) * 250
    assert identity_err.median() > 5.0
    metrics = distill(model, tracks, tmp_path / "F", cfg, progress=False, log=lambda m: None)
    assert metrics["heldout_codes"] == "sequence FREE"
    assert metrics["cycle_heldout_median_mm"] < 0.35 * float(identity_err.median())
    assert metrics["cycle_heldout_p95_mm"] < float(identity_err.median())
    # F agrees with the Newton inverse of B where that converges.
    assert metrics["root_converged_fraction"] > 0.9
    assert metrics["f_vs_root_median_mm"] < 0.5 * float(identity_err.median())
    saved = json.loads((tmp_path / "F" / "metrics.json").read_text())
    assert saved["cycle_heldout_median_mm"] == metrics["cycle_heldout_median_mm"]
    field = load_forward_field(tmp_path / "F")
    assert field.config.lat_dim_exp == model.config.lat_dim_exp
    with pytest.raises(ValueError, match="--force"):
        distill(model, tracks, tmp_path / "F", cfg, progress=False, log=lambda m: None)


@pytest.mark.slow
def test_prior_track_distill_cli_chain(tmp_path):
    """The whole chain through the CLI on a minimal synthetic capture."""
    from click.testing import CliRunner

    from npga_taichi.cli.main import cli
    from npga_taichi.data.capture import CaptureConfig, write_capture
    from npga_taichi.prior.tracking import load_tracking

    cap_cfg = CaptureConfig.preset("tiny", downscale=64, frames_per_sequence=3, sequences=("EXP-1", "FREE"),
                                   samples_per_side=1, points_per_frame=1500)
    write_capture(tmp_path / "cap", cap_cfg, progress=False)
    runner = CliRunner()
    prior = tmp_path / "prior"
    res = runner.invoke(cli, ["prior", "fit", "--out", str(prior), "--preset", "tiny", "--steps", "40",
                              "--identities", "2", "--expressions", "2", "--quiet", "--json"])
    assert res.exit_code == 0, res.output
    assert "heldout" in json.loads(res.output)
    res = runner.invoke(cli, ["track", str(tmp_path / "cap"), "--prior", str(prior), "--steps-first", "30",
                              "--steps", "5", "--points", "300", "--quiet", "--json"])
    assert res.exit_code == 0, res.output
    tdir = tmp_path / "cap" / "000" / "annotations" / "tracking"
    tr = load_tracking(tdir / "FREE.npz")
    assert tr.z_exp.shape == (3, preset("tiny").lat_dim_exp) and np.isfinite(tr.residual).all()
    # Resume: existing sequences are skipped.
    res = runner.invoke(cli, ["track", str(tmp_path / "cap"), "--prior", str(prior), "--quiet", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["sequences"]["FREE"]["skipped"] == "exists"
    res = runner.invoke(cli, ["distill", "--prior", str(prior), "--tracking", str(tdir), "--steps", "30",
                              "--hidden", "32", "--layers", "2", "--quiet", "--json"])
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.output)
    assert metrics["heldout_codes"] == "sequence FREE" and np.isfinite(metrics["cycle_heldout_median_mm"])
    assert (tmp_path / "cap" / "000" / "annotations" / "forward_field" / "forward_field.pt").is_file()
