"""MonoNPHM's identity field: an ensemble of local MLPs around facial anchors (SDF + colour).

For a canonical query q = (x, hyper) (3 + n_hyper dims) and an identity with geometry code
``z_geo = [z_glob (G), z_loc_0 (L), ..., z_loc_A (L)]`` (the last local code belongs to the
global MLP) and appearance code ``z_app`` of the same layout:

1. anchors  a_k = a_k^mean + offset_k(z_glob)       (offsets regressed by a small MLP),
2. the K nearest anchors plus the global MLP at the origin serve the query,
3. each serving MLP (shared by a symmetric pair; δ.x mirrored for the second member) sees
   [z_glob, z_loc_k, δ_k = q − a_k (3 + n_hyper)] → Softplus(β) MLP → SDF_k; its last hidden
   layer (pre-activation) goes through the bottleneck (hidden → c → c) into the colour MLP
   [z_glob_app, z_loc_app_k, bottleneck] → ReLU MLP → RGB_k in [−1, 1] (not clamped),
4. SDF = Σ w_k SDF_k and RGB = Σ w_k RGB_k with the Gaussian kernel weights of
   :func:`npga_taichi.prior.anchors.blending_neighbors`.

Parameters are stacked per MLP type (``weights[l]: (T, out, in)``) so one module evaluates all
local MLPs; :mod:`npga_taichi.prior.importer` maps MonoNPHM's per-module names onto them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from npga_taichi.prior.anchors import anchor_is_mirrored, anchor_mlp_types, blending_neighbors
from npga_taichi.prior.config import PriorConfig


class EnsembleMLP(nn.Module):
    """``n_types`` independent MLPs of identical shape, evaluated on rows tagged by type.

    Layer l has ``weights[l]: (n_types, out, in)`` and ``biases[l]: (n_types, out)``; hidden
    layers use ``activation``; the output layer is linear. ``forward`` also returns the
    pre-activation output of the last hidden layer (MonoNPHM's colour-communication features).
    """

    def __init__(self, n_types: int, d_in: int, hidden: int, n_layers: int, d_out: int,
                 activation: nn.Module):
        super().__init__()
        dims = [d_in] + [hidden] * n_layers + [d_out]
        self.n_types = n_types
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_i, d_o in zip(dims[:-1], dims[1:]):
            # nn.Linear's default init (uniform ±1/sqrt(fan_in)), as MonoNPHM uses.
            bound = 1.0 / math.sqrt(d_i)
            self.weights.append(nn.Parameter(torch.empty(n_types, d_o, d_i).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(n_types, d_o).uniform_(-bound, bound)))
        self.activation = activation

    def forward(self, x: torch.Tensor, types: torch.Tensor,
                return_features: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (R, d_in); types: (R,) long in [0, n_types). Returns (R, d_out), (R, hidden)|None."""
        # Group rows by type once; each group runs through its own weights.
        perm = torch.argsort(types, stable=True)
        counts = torch.bincount(types, minlength=self.n_types).tolist()
        chunks = x[perm].split(counts)
        outs, feats = [], []
        n_lin = len(self.weights)
        for t, chunk in enumerate(chunks):
            if chunk.shape[0] == 0:
                continue
            h = chunk
            feat = None
            for layer in range(n_lin):
                h = F.linear(h, self.weights[layer][t], self.biases[layer][t])
                if layer == n_lin - 2:
                    feat = h
                if layer < n_lin - 1:
                    h = self.activation(h)
            outs.append(h)
            feats.append(feat)
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(perm.numel(), device=perm.device)
        out = torch.cat(outs, dim=0)[inverse]
        feat_out = torch.cat(feats, dim=0)[inverse] if return_features else None
        return out, feat_out


class IdentityField(nn.Module):
    """Local-ensemble SDF and colour of an identity in canonical space (see module docstring)."""

    def __init__(self, config: PriorConfig, anchors_mean: torch.Tensor):
        super().__init__()
        if anchors_mean.shape != (config.n_anchors, 3):
            raise ValueError(f"anchors_mean must be ({config.n_anchors}, 3), got "
                             f"{tuple(anchors_mean.shape)}")
        self.config = config
        c = config
        self.register_buffer("anchors_mean", anchors_mean.detach().clone().float())
        self.register_buffer("mlp_types", anchor_mlp_types(c), persistent=False)
        self.register_buffer("mirrored", anchor_is_mirrored(c), persistent=False)
        d_pos = 3 + c.n_hyper
        self.geometry = EnsembleMLP(c.n_mlp_types, c.lat_dim_glob + c.lat_dim_loc + d_pos,
                                    c.hidden_dim_geo, c.n_layers_geo, 1,
                                    nn.Softplus(beta=c.softplus_beta))
        self.bottleneck1 = nn.Linear(c.hidden_dim_geo, c.communication_dim)
        self.bottleneck2 = nn.Linear(c.communication_dim, c.communication_dim)
        self.color = EnsembleMLP(c.n_mlp_types, c.lat_dim_glob + c.lat_dim_loc + c.communication_dim,
                                 c.hidden_dim_app, c.n_layers_app, 3, nn.ReLU())
        self.anchor_offsets = nn.Sequential(
            nn.Linear(c.lat_dim_glob, c.pos_mlp_dim), nn.ReLU(),
            nn.Linear(c.pos_mlp_dim, c.pos_mlp_dim), nn.ReLU(),
            nn.Linear(c.pos_mlp_dim, c.n_anchors * 3))

    # ------------------------------------------------------------------------------------------
    def split_code(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, G + (A+1)L) code -> global (S, G) and local (S, A+1, L) parts."""
        c = self.config
        if z.shape[-1] != c.lat_dim_geo:
            raise ValueError(f"identity code has {z.shape[-1]} dims, expected {c.lat_dim_geo}")
        return z[:, :c.lat_dim_glob], z[:, c.lat_dim_glob:].reshape(z.shape[0], c.n_anchors + 1,
                                                                    c.lat_dim_loc)

    def anchors(self, z_geo: torch.Tensor) -> torch.Tensor:
        """Anchor positions of identities. z_geo: (S, G_geo) -> (S, n_anchors, 3) canonical."""
        glob, _ = self.split_code(z_geo)
        offsets = self.anchor_offsets(glob).view(-1, self.config.n_anchors, 3)
        return self.anchors_mean + offsets

    def forward(self, x_can: torch.Tensor, z_geo: torch.Tensor, z_app: torch.Tensor | None = None,
                shape_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Evaluate SDF (and colour when ``z_app`` is given).

        x_can: (N, 3) or (N, 3 + n_hyper) canonical (missing hyper dims are zero);
        z_geo / z_app: (S, G) codes of S identities; shape_index: (N,) long picking each point's
        identity (None: S must be 1). Returns sdf (N,) and rgb (N, 3) in [−1, 1] or None.
        """
        c = self.config
        n = x_can.shape[0]
        if x_can.shape[-1] == 3 and c.n_hyper:
            x_can = torch.cat([x_can, x_can.new_zeros(n, c.n_hyper)], dim=-1)
        if x_can.shape[-1] != 3 + c.n_hyper:
            raise ValueError(f"canonical points must have 3 or {3 + c.n_hyper} dims, "
                             f"got {x_can.shape[-1]}")
        if shape_index is None:
            if z_geo.shape[0] != 1:
                raise ValueError("several identity codes need a shape_index per point")
            shape_index = torch.zeros(n, dtype=torch.long, device=x_can.device)
        anchors = self.anchors(z_geo)                                            # (S, A, 3)
        glob, loc = self.split_code(z_geo)
        xyz = x_can[:, :3]
        if anchors.shape[0] == 1:
            idx, delta3, weights = blending_neighbors(xyz, anchors[0], c)
        else:
            idx, delta3, weights = _blending_neighbors_batched(xyz, anchors, shape_index, c)
        k1 = idx.shape[1]
        hyper = x_can[:, None, 3:].expand(n, k1, c.n_hyper)
        # Mirror δ.x for the second member of every symmetric pair.
        sign = torch.where(self.mirrored[idx], -1.0, 1.0).to(delta3.dtype)
        delta3 = torch.cat([delta3[..., :1] * sign[..., None], delta3[..., 1:]], dim=-1)
        delta = torch.cat([delta3, hyper], dim=-1)                              # (N, K+1, 3+h)
        s_idx = shape_index[:, None].expand(n, k1)
        net_in = torch.cat([glob[shape_index][:, None, :].expand(n, k1, c.lat_dim_glob),
                            loc[s_idx, idx], delta], dim=-1).reshape(n * k1, -1)
        types = self.mlp_types[idx].reshape(-1)
        want_color = z_app is not None
        sdf_k, feats = self.geometry(net_in, types, return_features=want_color)
        sdf = (sdf_k.view(n, k1) * weights).sum(dim=1)
        if not want_color:
            return sdf, None
        glob_a, loc_a = self.split_code(z_app)
        comm = self.bottleneck2(torch.relu(self.bottleneck1(feats)))
        color_in = torch.cat([glob_a[shape_index][:, None, :].expand(n, k1, c.lat_dim_glob),
                              loc_a[s_idx, idx]], dim=-1).reshape(n * k1, -1)
        rgb_k, _ = self.color(torch.cat([color_in, comm], dim=-1), types)
        rgb = (rgb_k.view(n, k1, 3) * weights[..., None]).sum(dim=1)
        return sdf, rgb


def _blending_neighbors_batched(xyz: torch.Tensor, anchors: torch.Tensor, shape_index: torch.Tensor,
                                config: PriorConfig):
    """:func:`blending_neighbors` for points of several identities (anchors (S, A, 3))."""
    idx_all = torch.empty(xyz.shape[0], config.n_neighbors + 1, dtype=torch.long, device=xyz.device)
    delta_all = xyz.new_empty(xyz.shape[0], config.n_neighbors + 1, 3)
    weight_all = xyz.new_empty(xyz.shape[0], config.n_neighbors + 1)
    for s in range(anchors.shape[0]):
        rows = (shape_index == s).nonzero(as_tuple=True)[0]
        if rows.numel() == 0:
            continue
        idx, delta, weights = blending_neighbors(xyz[rows], anchors[s], config)
        idx_all = idx_all.index_put((rows,), idx)
        delta_all = delta_all.index_put((rows,), delta)
        weight_all = weight_all.index_put((rows,), weights)
    return idx_all, delta_all, weight_all
