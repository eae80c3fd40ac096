"""Gaussians of a frame -> the arrays viser's browser splat renderer draws.

viser 1.1.1 (``scene.add_gaussian_splats`` / ``GaussianSplatHandle.set_gaussians``) packs each
Gaussian into 32 bytes: the centre as three float32, the six upper-triangular covariance terms
as **float16**, RGBA as four uint8. It has no spherical harmonics.

Units: we send millimetres and give the splat node a scale of 1/1000. float16 has an 11-bit
significand, a smallest normal number of 6.1e-5 and nothing below 6e-8. A head Gaussian of
σ = 0.3 mm has a covariance of 9e-8 m² in metres: subnormal, stored with one or two
significant bits, and the off-diagonal terms of a thin Gaussian (≈1e-9 m²) become exactly zero,
so splats turn into wrong-shaped or vanishing blobs. In millimetres the same entries are 0.09
mm² and 1e-3 mm², normal float16 numbers with three significant digits; the largest float16
(65504) still holds σ = 255 mm, far more than any head Gaussian. The client multiplies the
covariance by the node's world matrix (scale included) before projecting, so the picture is
the same as if metres had been sent in full precision.

Colours: Gaussians whose colours are SH coefficients are *baked* for one eye position
(``max(SH(mean − eye) + 0.5, 0)``, the rasterizer's rule, via the oracle's ``eval_sh``). Screen-CNN
avatars carry features; their first three channels are colour relative to the training
background (see ``avatar/screen_cnn.py``), so the browser shows ``background + features[:3]``
without the CNN's residual. The viewer's *exact* renderer is the faithful one for both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from npga_taichi.reference import eval_sh, quat_scale_to_covariance

MM_PER_METRE = 1000.0
NODE_SCALE = 1.0 / MM_PER_METRE  # the splat node's scale: millimetres -> world metres


@dataclass
class SplatArrays:
    """What ``GaussianSplatHandle.set_gaussians`` takes, in millimetres (see the module docstring).

    centers (N, 3) float32 mm; covariances (N, 3, 3) float32 mm²; rgbs (N, 3) float32 in [0, 1];
    opacities (N, 1) float32 in [0, 1].
    """

    centers: np.ndarray
    covariances: np.ndarray
    rgbs: np.ndarray
    opacities: np.ndarray

    def __len__(self) -> int:
        return len(self.centers)

    def as_kwargs(self) -> dict:
        return {"centers": self.centers, "covariances": self.covariances, "rgbs": self.rgbs,
                "opacities": self.opacities}


def baked_colors(gaussians: Mapping[str, object], eye, background=None) -> torch.Tensor:
    """(N, 3) RGB in [0, 1] of rasterize arrays seen from world point ``eye (3,)``.

    SH colours (``sh_degree`` d, colours (N, K, 3)) are evaluated along mean − eye; plain RGB
    (N, 3) passes through; CNN features (N, C > 3, sh_degree None) give ``background + f[:3]``.
    """
    colors = gaussians["colors"]
    degree = gaussians.get("sh_degree")
    if degree is not None:
        means = gaussians["means"]
        eye = torch.as_tensor(np.asarray(eye, dtype=np.float64)).to(means)
        rgb = eval_sh(int(degree), means - eye, colors) + 0.5
    elif colors.shape[1] == 3:
        rgb = colors
    else:
        base = torch.zeros(3) if background is None else torch.as_tensor(background).float()
        rgb = base.to(colors) + colors[:, :3]
    return rgb.clamp(0.0, 1.0)


def to_splats(gaussians: Mapping[str, object], eye, background=None) -> SplatArrays:
    """World-space rasterize arrays (metres) -> :class:`SplatArrays` in millimetres.

    means (N, 3), quats (N, 4) wxyz, scales (N, 3), opacities (N,), colors as in
    :func:`baked_colors`. Covariances are Σ = R S Sᵀ Rᵀ (the rasterizer's), computed in float32
    from millimetre scales.
    """
    with torch.no_grad():
        means = gaussians["means"].float()
        cov = quat_scale_to_covariance(gaussians["quats"].float(), gaussians["scales"].float() * MM_PER_METRE)
        rgb = baked_colors(gaussians, eye, background)
        return SplatArrays(
            centers=(means * MM_PER_METRE).cpu().numpy(),
            covariances=cov.cpu().numpy(),
            rgbs=rgb.float().cpu().numpy(),
            opacities=gaussians["opacities"].float().reshape(-1, 1).clamp(0, 1).cpu().numpy(),
        )


def concat_gaussians(parts: list[Mapping[str, object]], offsets: list) -> dict:
    """Rasterize arrays of several avatars in one scene: avatar k shifted by ``offsets[k] (3,)``
    metres. All parts need the same colour layout (same ``sh_degree`` and colour shape)."""
    first = parts[0]
    for p in parts[1:]:
        if p.get("sh_degree") != first.get("sh_degree") or p["colors"].shape[1:] != first["colors"].shape[1:]:
            raise ValueError("avatars with different colour layouts cannot share one rasterization")
    out = {k: torch.cat([p[k] for p in parts]) for k in ("quats", "scales", "opacities", "colors")}
    out["means"] = torch.cat([p["means"] + torch.as_tensor(np.asarray(o), dtype=p["means"].dtype,
                                                           device=p["means"].device)
                              for p, o in zip(parts, offsets)])
    out["sh_degree"] = first.get("sh_degree")
    return out
