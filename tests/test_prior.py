"""MonoNPHM prior: importer against an independent re-implementation of the official forward
pass, checkpoint round trip, anchor layout, and a tiny training run whose loss must fall."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from torch import nn

from npga_taichi.prior.anchors import anchor_is_mirrored, anchor_mlp_types, symmetric_anchor_layout
from npga_taichi.prior.config import preset
from npga_taichi.prior.importer import import_official
from npga_taichi.prior.model import MonoNPHM, load_prior, save_prior

# --------------------------------------------------------------------------------------------
# An independent, deliberately naive transcription of the official MonoNPHM modules: the
# same module/parameter names as the public code (MLPDeepSDF with interleaved activations in
# a ModuleList, EnsembleDeepSDF.layers, NPHM.communcation_bottleneck*, mlp_pos, DeepSDF.lin*,
# DeformationNetwork.compressor) and a per-point Python loop for the neighbourhood blending.

OFFICIAL = dict(nloc=9, nsymm=3, nneigh=8, glob=8, loc=4, hid_geo=16, nl_geo=2, hid_app=12, nl_app=2,
                ex_hidden=24, ex_layers=4, lat_ex=6, lat_id=5, nhyper=2, blend_std=3.75)


class RefMLPDeepSDF(nn.Module):
    def __init__(self, d_in, hidden, n_layers, d_out, beta):
        super().__init__()
        dims = [d_in] + [hidden] * n_layers + [d_out]
        layers = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                layers.append(nn.Softplus(beta=beta) if beta > 0 else nn.ReLU())
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        feats = None
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i == len(self.layers) - 3:
                feats = x
        return x, feats


class RefEnsemble(nn.Module):
    def __init__(self, n_types, d_in, hidden, n_layers, d_out, beta):
        super().__init__()
        self.layers = nn.ModuleList(RefMLPDeepSDF(d_in, hidden, n_layers, d_out, beta) for _ in range(n_types))


class RefNPHM(nn.Module):
    def __init__(self, o):
        super().__init__()
        self.o = o
        n_types = o["nloc"] - o["nsymm"] + 1
        self.deepSDFensemble = RefEnsemble(n_types, o["glob"] + o["loc"] + 3 + o["nhyper"], o["hid_geo"],
                                           o["nl_geo"], 1, 100)
        self.communcation_bottleneck1 = nn.Linear(o["hid_geo"], 16)
        self.communcation_bottleneck2 = nn.Linear(16, 16)
        self.aggr_app = RefEnsemble(n_types, o["glob"] + o["loc"] + 16, o["hid_app"], o["nl_app"], 3, 0)
        self.mlp_pos = nn.Sequential(nn.Linear(o["glob"], 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                                     nn.Linear(64, o["nloc"] * 3))

    def get_anchors(self, geo, mean):
        return mean + self.mlp_pos(geo[:self.o["glob"]]).view(-1, 3)

    def forward(self, q, geo, app, mean):
        o = self.o
        g, l, A, S = o["glob"], o["loc"], o["nloc"], o["nsymm"]
        anchors = self.get_anchors(geo, mean)
        type_of = list(np.repeat(np.arange(S), 2)) + list(range(S, A - S + 1))
        sdf_out, col_out = [], []
        for p in q:
            d_all = (p[:3] - anchors).norm(dim=-1)
            nn_idx = list(torch.argsort(d_all)[:o["nneigh"]].tolist()) + [A]
            dists, sdfs, cols = [], [], []
            for j in nn_idx:
                pos = anchors[j] if j < A else torch.zeros(3)
                delta = p - torch.cat([pos, torch.zeros(o["nhyper"])])
                if j < 2 * S and j % 2 == 1:
                    delta = torch.cat([-delta[:1], delta[1:]])
                t = type_of[j]
                inp = torch.cat([geo[:g], geo[g + j * l:g + (j + 1) * l], delta])
                s, feat = self.deepSDFensemble.layers[t](inp)
                comm = self.communcation_bottleneck2(torch.relu(self.communcation_bottleneck1(feat)))
                c, _ = self.aggr_app.layers[t](torch.cat([app[:g], app[g + j * l:g + (j + 1) * l], comm]))
                sdfs.append(s[0])
                cols.append(c)
                dists.append(0.75 if j == A else float(delta[:3].norm()))
            dists = torch.tensor(dists)
            std = dists[:8].max() / o["blend_std"]
            w = torch.exp(-(dists / std) ** 2 / 2)
            w = w / (w.sum() + 1e-8)
            sdf_out.append((torch.stack(sdfs) * w).sum())
            col_out.append((torch.stack(cols) * w[:, None]).sum(0))
        return torch.stack(sdf_out), torch.stack(col_out)


class RefDeepSDF(nn.Module):
    def __init__(self, lat_dim, hidden, nlayers, out_dim):
        super().__init__()
        d_in = 3 + lat_dim
        dims = [d_in] + [hidden] * nlayers + [out_dim]
        self.num_layers = len(dims)
        self.skip_in = [nlayers // 2]
        for layer in range(self.num_layers - 1):
            in_dim = dims[layer] + d_in if layer in self.skip_in else dims[layer]
            setattr(self, f"lin{layer}", nn.Linear(in_dim, dims[layer + 1]))
        self.activation = nn.Softplus(beta=100)

    def forward(self, xyz, lat):
        inp = torch.cat([xyz, lat], dim=-1)
        x = inp
        for layer in range(self.num_layers - 1):
            if layer in self.skip_in:
                x = torch.cat([x, inp], -1) / np.sqrt(2)
            x = getattr(self, f"lin{layer}")(x)
            if layer < self.num_layers - 2:
                x = self.activation(x)
        return x


class RefDeformationNetwork(nn.Module):
    def __init__(self, o):
        super().__init__()
        geo_dim = o["glob"] + (o["nloc"] + 1) * o["loc"]
        self.compressor = nn.Sequential(nn.Linear((o["loc"] + 3) * o["nloc"] + o["loc"] + o["glob"], o["lat_id"]))
        self.defDeepSDF = RefDeepSDF(o["lat_ex"] + o["lat_id"], o["ex_hidden"], o["ex_layers"], 3 + o["nhyper"])
        assert self.compressor[0].in_features == geo_dim + 3 * o["nloc"]

    def forward(self, x, geo, ex, anchors):
        comp = self.compressor(torch.cat([geo, anchors.reshape(-1)]))
        return self.defDeepSDF(x, torch.cat([comp.expand(len(x), -1), ex.expand(len(x), -1)], -1))


CONFIG_YAML = """decoder:
  decoder_nloc: {nloc}
  ex:
    hidden_dim: {ex_hidden}
    lat_dim_ex: {lat_ex}
    lat_dim_id: {lat_id}
    mode: compress
    nhyper: {nhyper}
    nlayers: {ex_layers}
  id:
    gnn:
      hidden_dim_app: {hid_app}
      hidden_dim_geo: {hid_geo}
      nfreq_bands_app: 0
      nfreq_bands_geo: 0
      nlayers_app: {nl_app}
      nlayers_geo: {nl_geo}
    lat_dim_glob: {glob}
    lat_dim_glob_app: {glob}
    lat_dim_loc_app: {loc} #32
    lat_dim_loc_geo: {loc}
    nloc: {nloc}
    nneigh: {nneigh}
    nsymm_pairs: {nsymm}
    blend_std: {blend_std}
training:
  batch_size: 16
"""


def _write_official(tmp_path, id_dec, ex_dec, anchors, latent=None, epoch=7):
    exp = tmp_path / "exp"
    (exp / "checkpoints").mkdir(parents=True)
    (exp / "configs.yaml").write_text(CONFIG_YAML.format(**OFFICIAL))
    np.save(exp / f"anchors_{OFFICIAL['nloc']}.npy", anchors.numpy()[None, None])
    ckpt = {"id_decoder": id_dec.state_dict(), "ex_decoder": ex_dec.state_dict(), "epoch": epoch}
    if latent is not None:
        ckpt["latent_codes"] = latent
    torch.save(ckpt, exp / "checkpoints" / f"checkpoint_epoch_{epoch}.tar")
    torch.save({"id_decoder": {}, "ex_decoder": {}}, exp / "checkpoints" / "checkpoint_epoch_2.tar")
    return exp


def _random_official(seed=0):
    torch.manual_seed(seed)
    id_dec, ex_dec = RefNPHM(OFFICIAL), RefDeformationNetwork(OFFICIAL)
    with torch.no_grad():  # larger weights than the default init so every path matters
        for p in list(id_dec.parameters()) + list(ex_dec.parameters()):
            p.mul_(1.5)
    anchors = torch.randn(OFFICIAL["nloc"], 3) * 0.3
    return id_dec, ex_dec, anchors


def test_importer_matches_official_forward(tmp_path):
    id_dec, ex_dec, anchors = _random_official()
    o = OFFICIAL
    geo_dim = o["glob"] + (o["nloc"] + 1) * o["loc"]
    latent = {"codebook.geo.embedding.weight": torch.randn(3, geo_dim) * 0.3,
              "codebook.app.embedding.weight": torch.randn(3, geo_dim) * 0.3,
              "codebook.exp.embedding.weight": torch.randn(5, o["lat_ex"]) * 0.3}
    exp = _write_official(tmp_path, id_dec, ex_dec, anchors, latent)
    model = import_official(exp)  # picks the latest epoch (7), not the empty epoch-2 file
    assert model.codes_geo.num_embeddings == 3 and model.codes_exp.num_embeddings == 5
    geo = latent["codebook.geo.embedding.weight"][1]
    app = latent["codebook.app.embedding.weight"][2]
    ex = latent["codebook.exp.embedding.weight"][4]
    assert torch.equal(model.codes_geo.weight[1], geo)
    x = torch.randn(12, 3) * 0.4
    with torch.no_grad():
        ref_anchors = id_dec.get_anchors(geo, anchors)
        out = ex_dec(x, geo, ex, ref_anchors)
        q = torch.cat([x + out[:, :3], out[:, 3:]], dim=-1)
        ref_sdf, ref_rgb = id_dec(q, geo, app, anchors)
        can = model.backward_with_hyper(x, ex, geo)
        sdf, rgb = model.sdf_and_color(can, geo, app)
        posed = model.posed_sdf(x, ex, geo)
    torch.testing.assert_close(model.anchors(geo), ref_anchors, atol=1e-6, rtol=0)
    torch.testing.assert_close(can, q, atol=1e-5, rtol=0)
    torch.testing.assert_close(sdf, ref_sdf, atol=1e-5, rtol=0)
    torch.testing.assert_close(posed, ref_sdf, atol=1e-5, rtol=0)
    torch.testing.assert_close(rgb, ref_rgb, atol=1e-5, rtol=0)
    assert ref_sdf.std() > 1e-3  # the comparison is not between constants


def test_importer_rejects_misfit_tensor(tmp_path):
    id_dec, ex_dec, anchors = _random_official(1)
    state = id_dec.state_dict()
    state["communcation_bottleneck1.weight"] = torch.zeros(16, OFFICIAL["hid_geo"] + 1)
    exp = tmp_path / "exp"
    (exp / "checkpoints").mkdir(parents=True)
    (exp / "configs.yaml").write_text(CONFIG_YAML.format(**OFFICIAL))
    torch.save({"id_decoder": state, "ex_decoder": ex_dec.state_dict()},
               exp / "checkpoints" / "checkpoint_epoch_1.tar")
    np.save(exp / "anchors_9.npy", anchors.numpy())
    with pytest.raises(ValueError, match="communcation_bottleneck1.weight"):
        import_official(exp)
    state = ex_dec.state_dict()
    del state["defDeepSDF.lin2.bias"]
    torch.save({"id_decoder": id_dec.state_dict(), "ex_decoder": state},
               exp / "checkpoints" / "checkpoint_epoch_1.tar")
    with pytest.raises(ValueError, match=r"ex_decoder\.defDeepSDF\.lin2\.bias"):
        import_official(exp)


def test_import_cli_and_roundtrip(tmp_path):
    from click.testing import CliRunner

    from npga_taichi.cli.main import cli

    id_dec, ex_dec, anchors = _random_official(2)
    exp = _write_official(tmp_path, id_dec, ex_dec, anchors)
    out = tmp_path / "prior"
    result = CliRunner().invoke(cli, ["prior", "import", str(exp), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    again = CliRunner().invoke(cli, ["prior", "import", str(exp), "--out", str(out)])
    assert again.exit_code != 0 and "--force" in again.output
    model = load_prior(out)
    geo = torch.randn(model.config.lat_dim_geo) * 0.2
    x = torch.randn(30, 3) * 0.3
    with torch.no_grad():
        ref_anchors = id_dec.get_anchors(geo, anchors)
        ex = torch.randn(OFFICIAL["lat_ex"]) * 0.3
        ref_can = x + ex_dec(x, geo, ex, ref_anchors)[:, :3]
        torch.testing.assert_close(model.backward(x, ex, geo), ref_can, atol=1e-5, rtol=0)


def test_checkpoint_roundtrip_and_interface(tmp_path):
    cfg = preset("tiny")
    torch.manual_seed(3)
    model = MonoNPHM(cfg, torch.randn(cfg.n_anchors, 3) * 0.3, n_identities=3, n_expressions=4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.meta = {"note": "roundtrip"}
    save_prior(model, tmp_path / "p")
    assert (tmp_path / "p" / "config.json").is_file()
    loaded = load_prior(tmp_path / "p")
    assert not loaded.training and loaded.config == cfg and loaded.meta == {"note": "roundtrip"}
    x = torch.randn(25, 3) * 0.3
    zg, za, ze = model.codes_geo.weight[1], model.codes_app.weight[2], model.codes_exp.weight[3]
    with torch.no_grad():
        for a, b in ((model.posed_sdf(x, ze, zg), loaded.posed_sdf(x, ze, zg)),
                     (model.albedo(x, zg, za), loaded.albedo(x, zg, za)),
                     (model.backward(x, ze, zg), loaded.backward(x, ze[None].expand(25, -1), zg))):
            assert torch.equal(a, b)
        alb = loaded.albedo(x, zg, za)
        assert alb.shape == (25, 3) and alb.min() >= 0 and alb.max() <= 1
        assert loaded.hyper(x, ze, zg).shape == (25, cfg.n_hyper)
        # The full codes really drive the field: another identity gives another SDF.
        assert not torch.allclose(loaded.sdf(x, zg), loaded.sdf(x, model.codes_geo.weight[0]))
    with pytest.raises(ValueError, match="checkpoint"):
        load_prior(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        load_prior(tmp_path / "bad")


def test_anchor_layout_is_symmetric():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(4000, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    anchors = symmetric_anchor_layout(pts, 11, 4)
    pairs = anchors[:8].reshape(4, 2, 3)
    np.testing.assert_allclose(pairs[:, 1], pairs[:, 0] * [-1, 1, 1])
    assert np.all(anchors[8:, 0] == 0) and np.all(pairs[:, 0, 0] > 0)
    cfg = preset("mononphm")
    types = anchor_mlp_types(cfg)
    assert types.max().item() + 1 == 36 and len(types) == 66
    assert anchor_is_mirrored(cfg).sum().item() == 30
    # Mirroring: a pair's partner sees δ.x negated, so mirrored queries give equal SDFs when the
    # identity is symmetric (pair codes equal, zero anchor offsets) and only pairs are near.
    small = preset("tiny")
    pair_only = MonoNPHM(small.__class__(**{**small.to_dict(), "n_anchors": 4, "n_symm_pairs": 2,
                                            "n_neighbors": 4, "n_blend_std_neighbors": 3}),
                         torch.tensor(symmetric_anchor_layout(pts, 4, 2)))
    with torch.no_grad():
        pair_only.id_decoder.anchor_offsets[-1].weight.zero_()
        pair_only.id_decoder.anchor_offsets[-1].bias.zero_()
        zp = torch.randn(pair_only.config.lat_dim_geo) * 0.3
        c = pair_only.config
        locp = zp[c.lat_dim_glob:].view(c.n_anchors + 1, c.lat_dim_loc)
        locp[1:4:2] = locp[0:4:2]
        # The global MLP sees raw x: give it no x-dependence by zeroing its x input weight.
        pair_only.id_decoder.geometry.weights[0][-1][:, -5] = 0.0
        x = torch.randn(50, 3) * 0.5
        mirrored = x * torch.tensor([-1.0, 1.0, 1.0])
        torch.testing.assert_close(pair_only.sdf(x, zp), pair_only.sdf(mirrored, zp), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_tiny_prior_fit_learns(tmp_path):
    from npga_taichi.prior.config import PriorTrainConfig
    from npga_taichi.prior.training import (batch_indices, fit_prior, shape_losses, training_set,
                                            weighted_total)

    cfg = PriorTrainConfig(preset="tiny", n_identities=2, n_expressions=2, n_heldout_expressions=1,
                           points_surface=300, points_near=300, points_space=100, batch_shapes=2,
                           batch_points=300, steps=300, eval_points=400, eval_fit_steps=10,
                           checkpoint_every=30, lr=3e-3, lr_deform=1e-3)
    out = tmp_path / "prior"
    metrics = fit_prior(out, cfg, progress=False, log=lambda m: None)
    model = load_prior(out)
    assert (out / "metrics.json").is_file() and model.config == preset("tiny")
    assert model.meta["identity_seeds"] == [1000, 1001] and model.meta["heldout_identity_seed"] == 999
    for key in ("sdf_mae_mm", "deform_mae_mm"):
        assert np.isfinite(metrics["heldout"][key]) and np.isfinite(metrics["train"][key])
    # B must have learned something: a dead deformation MLP (constant map) scores the identity's error.
    assert metrics["train"]["deform_mae_mm"] < 0.9 * metrics["train"]["deform_identity_mae_mm"]
    # Loss after training vs a freshly initialised model on the same batch.
    _, _, samples = training_set(cfg, progress=False)
    idx = batch_indices(samples, 300, torch.Generator().manual_seed(5))
    pairs = torch.arange(len(samples.identity))
    def loss_of(m):
        ids = samples.identity[pairs]
        losses = shape_losses(m, samples, pairs, idx, m.codes_geo(ids), m.codes_app(ids),
                              m.codes_exp(pairs), cfg)
        return float(weighted_total(losses, cfg))
    torch.manual_seed(0)
    fresh = MonoNPHM(model.config, model.id_decoder.anchors_mean, 2, len(pairs))
    assert loss_of(model) < 0.6 * loss_of(fresh)
    # A finished run is not overwritten silently.
    with pytest.raises(ValueError, match="--force"):
        fit_prior(out, cfg, progress=False, log=lambda m: None)


def test_sampler_puts_the_requested_share_on_expressive_parts():
    """The prior's training samples over-represent the small moving parts (issue 18): the first
    moving_share of each pair's surface rows lie on eyelids / lips / mouth or on points the
    expression moves, checked against the generator's own labels and backward field."""
    from npga_taichi.data.synthetic import EXPRESSION_NAMES, LABEL_NAMES, SyntheticHead
    from npga_taichi.prior.config import PriorTrainConfig
    from npga_taichi.prior.training import EXPRESSIVE_LABELS, sample_shapes

    head = SyntheticHead.from_seed(1000)
    expr = SyntheticHead.neutral_expression()
    for name, value in (("blink_left", 1.0), ("blink_right", 1.0), ("jaw_open", 0.6)):
        expr[EXPRESSION_NAMES.index(name)] = value
    sizes = dict(points_surface=400, points_near=400, points_space=50)
    lids = LABEL_NAMES.index("eyelids")
    expressive = torch.tensor([LABEL_NAMES.index(n) for n in EXPRESSIVE_LABELS])

    def labels(share):
        s = sample_shapes([head], [[expr]], PriorTrainConfig(moving_share=share, **sizes), seed=3,
                          progress=False)
        assert s.points.shape == (1, 850, 3) and s.kinds.tolist().count(0) == 400
        surf = s.points[0, :400]
        can = head.backward(surf, expr)
        torch.testing.assert_close(can, s.canonical[0, :400])
        moved = (can - surf).norm(dim=-1) * 250.0 > 1.0
        return head.surface_label(can), moved

    lab0, _ = labels(0.0)
    lab, moved = labels(0.25)
    first = torch.isin(lab[:100], expressive) | moved[:100]
    assert float(first.float().mean()) >= 0.95
    assert int((lab == lids).sum()) >= 5 * int((lab0 == lids).sum()) + 10
    with pytest.raises(ValueError, match="moving_share"):
        PriorTrainConfig(moving_share=1.5)
