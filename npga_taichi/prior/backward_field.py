"""MonoNPHM's backward deformation field B: posed point -> canonical point (+ hyper coords).

    z_id  = Linear([z_geo, anchors.flatten()])            (compressed identity, 16-d published)
    inp   = [x (3), z_id, z_exp]
    h     = Softplus_β(Linear(h)) for n_layers layers; at layer n_layers // 2 the input is
            [h, inp] / √2 (DeepSDF skip connection)
    out   = Linear(h) -> (offset (3), hyper (n_hyper))
    B(x)  = (x + offset, hyper)

Layers are ``lin0 … lin{n_layers}`` as in MonoNPHM's ``DeepSDF`` (non-legacy skip layout).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from npga_taichi.prior.config import PriorConfig


class BackwardDeformationField(nn.Module):
    """B(x_posed, z_exp, identity) -> offsets (N, 3) and hyper coordinates (N, n_hyper)."""

    def __init__(self, config: PriorConfig):
        super().__init__()
        c = config
        self.config = c
        self.compressor = nn.Linear(c.lat_dim_geo + 3 * c.n_anchors, c.lat_dim_id_compressed)
        d_in = 3 + c.lat_dim_id_compressed + c.lat_dim_exp
        self.d_in = d_in
        dims = [d_in] + [c.hidden_dim_ex] * c.n_layers_ex + [3 + c.n_hyper]
        self.skip_layer = c.n_layers_ex // 2
        self.layers = nn.ModuleList()
        for layer in range(len(dims) - 1):
            in_dim = dims[layer] + (d_in if layer == self.skip_layer else 0)
            self.layers.append(nn.Linear(in_dim, dims[layer + 1]))
        # Start near the identity map: tiny output weights (training moves them as needed).
        with torch.no_grad():
            self.layers[-1].weight.mul_(0.01)
            self.layers[-1].bias.zero_()
        self.activation = nn.Softplus(beta=c.softplus_beta)

    def compress_identity(self, z_geo: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """z_geo: (S, G_geo), anchors: (S, A, 3) -> compressed identity codes (S, id_c)."""
        return self.compressor(torch.cat([z_geo, anchors.reshape(anchors.shape[0], -1)], dim=-1))

    def forward(self, x_posed: torch.Tensor, z_exp: torch.Tensor,
                z_id_compressed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_posed: (N, 3); z_exp: (N, E); z_id_compressed: (N, id_c).

        Returns offsets (N, 3) (canonical = x_posed + offsets) and hyper (N, n_hyper).
        """
        inp = torch.cat([x_posed, z_id_compressed, z_exp], dim=-1)
        h = inp
        last = len(self.layers) - 1
        for layer, lin in enumerate(self.layers):
            if layer == self.skip_layer:
                h = torch.cat([h, inp], dim=-1) / math.sqrt(2.0)
            h = lin(h)
            if layer < last:
                h = self.activation(h)
        return h[:, :3], h[:, 3:]
