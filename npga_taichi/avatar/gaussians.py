"""The canonical Gaussian cloud: raw (unconstrained) per-Gaussian parameters and activations.

Raw storage follows 3DGS: ``means`` (N, 3) canonical units, ``quats`` (N, 4) wxyz (normalised on
use), ``log_scales`` (N, 3), ``opacity_logits`` (N,), ``colors`` (N, C) = SH DC coefficients
(C = 3, colour = 0.5 + SH_C0 * dc) or rendered features (C = feature channels with the CNN),
``sh_rest`` (N, K - 1, 3) higher SH bands (K = (d + 1)^2, only when d > 0), and ``latents``
(N, D) latent features f_i (only when latents are used), and for avatars that take the eye
closure ``closure_colors`` (N, C) and ``closure_opacity`` (N,): what a Gaussian near an eye adds
to its colour and opacity logit when that eye is fully closed (per-Gaussian blend shapes, see
:func:`npga_taichi.avatar.deformation.deform_canonical`).

Every per-Gaussian tensor is an ``nn.Parameter`` registered under one of
:attr:`CanonicalGaussians.names`; adaptive density control rewrites exactly those rows.
"""
from __future__ import annotations

import math
import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import nn

from npga_taichi.conventions import SH_C0



def rgb_to_sh_dc(rgb: torch.Tensor) -> torch.Tensor:
    """Colour in [0, 1] -> SH DC coefficient such that degree-0 SH reproduces it."""
    return (rgb - 0.5) / SH_C0


def neighbour_spacing(points: np.ndarray, k: int = 3) -> np.ndarray:
    """Mean distance of every point to its ``k`` nearest other points, (N,)."""
    tree = cKDTree(points)
    k_eff = min(k + 1, len(points))
    dist, _ = tree.query(points, k=k_eff)
    dist = np.asarray(dist).reshape(len(points), -1)[:, 1:]
    return np.maximum(dist.mean(axis=1), 1e-7)


class CanonicalGaussians(nn.Module):
    """Per-Gaussian parameters in canonical space; see the module docstring for the layout."""

    def __init__(self, num: int, color_dim: int = 3, sh_degree: int | None = 3, latent_dim: int = 0,
                 dtype: torch.dtype = torch.float32, closure_shapes: bool = False):
        super().__init__()
        self.sh_degree = sh_degree
        self.color_dim = color_dim
        self.latent_dim = latent_dim
        z = lambda *shape: nn.Parameter(torch.zeros(*shape, dtype=dtype))  # noqa: E731
        self.means = z(num, 3)
        quats = torch.zeros(num, 4, dtype=dtype)
        quats[:, 0] = 1
        self.quats = nn.Parameter(quats)
        self.log_scales = z(num, 3)
        self.opacity_logits = z(num)
        self.colors = z(num, color_dim)
        self.names = ["means", "quats", "log_scales", "opacity_logits", "colors"]
        if sh_degree is not None and sh_degree > 0:
            self.sh_rest = z(num, (sh_degree + 1) ** 2 - 1, 3)
            self.names.append("sh_rest")
        if latent_dim > 0:
            self.latents = z(num, latent_dim)
            self.names.append("latents")
        if closure_shapes:
            self.closure_colors = z(num, color_dim)
            self.closure_opacity = z(num)
            self.names += ["closure_colors", "closure_opacity"]

    def __len__(self) -> int:
        return self.means.shape[0]

    def per_gaussian(self) -> dict[str, nn.Parameter]:
        """Every per-Gaussian parameter by name (rows = Gaussians)."""
        return {name: getattr(self, name) for name in self.names}

    def set_param(self, name: str, value: torch.Tensor) -> nn.Parameter:
        """Replace a per-Gaussian parameter (new row count allowed); returns the new Parameter."""
        if name not in self.names:
            raise KeyError(name)
        param = nn.Parameter(value.detach().clone())
        setattr(self, name, param)
        return param

    def resize(self, num: int) -> None:
        """Re-allocate every per-Gaussian parameter with ``num`` rows (before load_state_dict)."""
        for name, p in self.per_gaussian().items():
            self.set_param(name, torch.zeros((num,) + tuple(p.shape[1:]), dtype=p.dtype, device=p.device))

    # Activations -------------------------------------------------------------------------------
    def scales(self) -> torch.Tensor:
        return torch.exp(self.log_scales)

    def opacities(self) -> torch.Tensor:
        return torch.sigmoid(self.opacity_logits)

    @torch.no_grad()
    def set_rgb(self, rgb: torch.Tensor, which: torch.Tensor | None = None,
                background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> None:
        """Make the Gaussians ``which`` (bool (N,), default all) render as RGB ``rgb`` (M, 3) in
        [0, 1] seen head-on: SH DC (higher bands untouched), or RGB - background in the first three
        feature channels (the rest zeroed) for the screen CNN (see :mod:`.screen_cnn`)."""
        dtype, device = self.colors.dtype, self.colors.device
        which = torch.ones(len(self), dtype=torch.bool, device=device) if which is None else which.to(device)
        rgb = rgb.to(device, dtype).clamp(0.0, 1.0)
        if self.sh_degree is not None:
            self.colors.data[which] = rgb_to_sh_dc(rgb)
        else:
            features = torch.zeros(int(which.sum()), self.colors.shape[1], dtype=dtype, device=device)
            features[:, :3] = rgb - torch.tensor(background, dtype=dtype, device=device)
            self.colors.data[which] = features

    @torch.no_grad()
    def initialize(self, points: torch.Tensor, colors: torch.Tensor, init_opacity: float,
                   scale_mult: float = 1.0, latent_std: float = 0.0,
                   generator: torch.Generator | None = None,
                   background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> None:
        """Set the cloud from surface samples.

        points: (N, 3) canonical positions; colors: (N, 3) RGB in [0, 1]. With SH the DC term
        reproduces the RGB; with rendered features (``sh_degree`` None, for the screen CNN) the
        first three channels get RGB - background (see :mod:`.screen_cnn`), the rest zero.
        Scales are isotropic = ``scale_mult`` x mean distance to the 3 nearest neighbours.
        """
        n = points.shape[0]
        self.resize(n)
        dtype, device = self.means.dtype, self.means.device
        self.means.data.copy_(points.to(dtype))
        spacing = torch.from_numpy(neighbour_spacing(points.detach().cpu().double().numpy()))
        self.log_scales.data.copy_(torch.log(spacing * scale_mult).to(dtype)[:, None].expand(n, 3))
        self.quats.data.zero_()
        self.quats.data[:, 0] = 1
        self.opacity_logits.data.fill_(math.log(init_opacity / (1 - init_opacity)))
        self.set_rgb(colors, background=background)
        if "latents" in self.names and latent_std > 0:
            self.latents.data.copy_(latent_std * torch.randn(n, self.latent_dim, generator=generator,
                                                             dtype=dtype).to(device))


def thin_evenly(points: torch.Tensor, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``num`` of ``points`` (M >= num, 3), spread evenly over the surface they sample.

    Keeps one random point per voxel of the coarsest grid that still has >= num occupied voxels,
    then draws ``num`` of those (Newton-projected samples bunch up where |grad SDF| is small).
    """
    if len(points) < num:
        raise ValueError(f"only {len(points)} surface samples for {num} Gaussians")
    pts = points[torch.randperm(len(points), generator=generator)]
    lo = pts.min(0).values
    size = float((pts.max(0).values - lo).max()) + 1e-9
    thinned, voxel = pts, size / 1024
    while voxel < size:
        keys = torch.floor((pts - lo) / voxel).long()
        keys = (keys[:, 0] * 4096 + keys[:, 1]) * 4096 + keys[:, 2]
        _, first = np.unique(keys.numpy(), return_index=True)
        if len(first) < num:
            break
        thinned, voxel = pts[torch.from_numpy(np.sort(first))], voxel * 1.25
    return thinned[torch.randperm(len(thinned), generator=generator)[:num]]
