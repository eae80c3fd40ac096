"""The distilled forward deformation field F(x_canonical, z_exp[, features]) -> x_posed.

NPGA replaces root finding through MonoNPHM's backward field B with an MLP trained by cycle
consistency, B(F(x, z), z) ≈ x. F predicts an offset: x_posed = x + MLP([γ(x), z, f]) where γ
is an optional Fourier encoding. Per-Gaussian latent features f are appended to the input by
the avatar ("lifting" F to a higher-dimensional input); :meth:`expand_feature_input` adds their
input weights initialised to zero so outputs do not change at that moment.

Saved as a directory with ``config.json``, ``forward_field.pt`` and ``metrics.json``.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from npga_taichi.config_io import DictConfig
from npga_taichi.checkpoint import load_module_payload, load_weights, save_module_dir

FORMAT = "npga-forward-field"


@dataclass
class ForwardFieldConfig(DictConfig):
    """Sizes of the forward deformation MLP."""

    lat_dim_exp: int = 16          # expression code size (must match the prior's)
    hidden_dim: int = 128          # MLP width
    n_layers: int = 4              # hidden layers
    n_freqs: int = 4               # Fourier frequencies of x (0: raw coordinates only)
    feature_dim: int = 0           # per-point latent feature size (grown by expand_feature_input)
    activation: str = "softplus"   # hidden activation: softplus (β=100) or relu



class ForwardDeformationField(nn.Module):
    """F(x_canonical (N, 3), z_exp (E,)|(N, E), features (N, Fd)|None) -> x_posed (N, 3)."""

    def __init__(self, config: ForwardFieldConfig):
        super().__init__()
        if config.activation not in ("softplus", "relu"):
            raise ValueError(f"activation must be softplus or relu, got {config.activation!r}")
        self.config = config
        self.register_buffer("freqs", (2.0 ** torch.arange(config.n_freqs)) * math.pi,
                             persistent=False)
        d_pos = 3 * (1 + 2 * config.n_freqs)
        d_in = d_pos + config.lat_dim_exp + config.feature_dim
        dims = [d_in] + [config.hidden_dim] * config.n_layers + [3]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        # Start at the identity map (zero offset).
        with torch.no_grad():
            self.layers[-1].weight.zero_()
            self.layers[-1].bias.zero_()
        self.activation = (nn.Softplus(beta=100.0) if config.activation == "softplus" else nn.ReLU())

    @property
    def feature_dim(self) -> int:
        return self.config.feature_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.n_freqs == 0:
            return x
        angles = x[:, :, None] * self.freqs                                   # (N, 3, F)
        return torch.cat([x, angles.sin().flatten(1), angles.cos().flatten(1)], dim=-1)

    def offset(self, x_canonical: torch.Tensor, z_exp: torch.Tensor,
               features: torch.Tensor | None = None) -> torch.Tensor:
        """The predicted displacement (N, 3): x_posed − x_canonical."""
        n = x_canonical.shape[0]
        if z_exp.dim() == 1:
            z_exp = z_exp[None].expand(n, -1)
        if z_exp.shape != (n, self.config.lat_dim_exp):
            raise ValueError(f"z_exp must be ({self.config.lat_dim_exp},) or "
                             f"({n}, {self.config.lat_dim_exp}); got {tuple(z_exp.shape)}")
        parts = [self.encode(x_canonical), z_exp]
        if self.config.feature_dim:
            if features is None:
                features = x_canonical.new_zeros(n, self.config.feature_dim)
            if features.shape != (n, self.config.feature_dim):
                raise ValueError(f"features must be ({n}, {self.config.feature_dim}), "
                                 f"got {tuple(features.shape)}")
            parts.append(features)
        elif features is not None and features.shape[-1] != 0:
            raise ValueError("this forward field takes no features; call expand_feature_input first")
        h = torch.cat(parts, dim=-1)
        last = len(self.layers) - 1
        for i, lin in enumerate(self.layers):
            h = lin(h)
            if i < last:
                h = self.activation(h)
        return h

    def forward(self, x_canonical: torch.Tensor, z_exp: torch.Tensor,
                features: torch.Tensor | None = None) -> torch.Tensor:
        return x_canonical + self.offset(x_canonical, z_exp, features)

    def expand_feature_input(self, feature_dim: int) -> None:
        """Grow the input by ``feature_dim`` zero-initialised columns (outputs stay the same)."""
        if feature_dim < 0:
            raise ValueError("feature_dim must be >= 0")
        if feature_dim == 0:
            return
        first = self.layers[0]
        grown = nn.Linear(first.in_features + feature_dim, first.out_features,
                          device=first.weight.device, dtype=first.weight.dtype)
        with torch.no_grad():
            grown.weight.zero_()
            grown.weight[:, :first.in_features] = first.weight
            grown.bias.copy_(first.bias)
        self.layers[0] = grown
        self.config = dataclasses.replace(self.config,
                                          feature_dim=self.config.feature_dim + feature_dim)


def save_forward_field(field: ForwardDeformationField, path: str | os.PathLike,
                       extra: dict[str, Any] | None = None) -> Path:
    """Write ``forward_field.pt`` and ``config.json`` atomically into directory ``path``."""
    return save_module_dir(path, "forward_field.pt", FORMAT, field, field.config, extra=extra or {})


def load_forward_field(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                       with_extra: bool = False):
    """Load F from a directory (or its ``forward_field.pt``); eval mode."""
    payload, file = load_module_payload(path, "forward_field.pt", FORMAT, "forward-field", map_location)
    field = ForwardDeformationField(ForwardFieldConfig.from_dict(payload["config"]))
    load_weights(field, payload["state_dict"], file)
    field.eval()
    if with_extra:
        return field, payload.get("extra", {})
    return field
