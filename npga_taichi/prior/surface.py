"""Sampling the zero level set of a neural SDF by Newton projection.

Used to draw canonical points on the prior's surface (for distillation and the avatar's
initialisation) and posed surface points of a tracked frame (for Chamfer evaluation).
"""
from __future__ import annotations

from typing import Callable

import torch


def sdf_and_gradient(sdf_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """SDF values (N,) and gradients (N, 3) of a point-wise SDF at x (N, 3)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        value = sdf_fn(x)
        (grad,) = torch.autograd.grad(value.sum(), x)
    return value.detach(), grad.detach()


def project_to_level_set(sdf_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                         iters: int = 6, chunk: int = 20000) -> tuple[torch.Tensor, torch.Tensor]:
    """Newton steps x ← x − f ∇f / |∇f|²; returns points (N, 3) and final |f| (N,)."""
    outs, res = [], []
    for part in x.split(chunk):
        for _ in range(iters):
            f, g = sdf_and_gradient(sdf_fn, part)
            part = part - (f / g.square().sum(-1).clamp_min(1e-6))[:, None] * g
        f, _ = sdf_and_gradient(sdf_fn, part)
        outs.append(part)
        res.append(f.abs())
    return torch.cat(outs), torch.cat(res)


def sample_level_set(sdf_fn: Callable[[torch.Tensor], torch.Tensor], n: int, lo: torch.Tensor,
                     hi: torch.Tensor, generator: torch.Generator | None = None,
                     shell: float = 0.05, tolerance: float = 1e-3, max_rounds: int = 40
                     ) -> torch.Tensor:
    """``n`` points (n, 3) on the zero level set inside the box [lo, hi].

    Uniform box samples within ``shell`` of the surface are Newton-projected and kept when
    |f| < ``tolerance`` and still inside the box. Raises RuntimeError if the surface is not found.
    """
    kept, have = [], 0
    for _ in range(max_rounds):
        cand = lo + (hi - lo) * torch.rand(max(4 * n, 8192), 3, generator=generator)
        with torch.no_grad():
            near = sdf_fn(cand).abs() < shell
        cand = cand[near]
        if cand.shape[0] == 0:
            continue
        pts, res = project_to_level_set(sdf_fn, cand)
        inside = ((pts >= lo) & (pts <= hi)).all(-1)
        ok = (res < tolerance) & inside & torch.isfinite(pts).all(-1)
        kept.append(pts[ok])
        have += int(ok.sum())
        if have >= n:
            break
    if have < n:
        raise RuntimeError(f"found only {have} of {n} points on the zero level set")
    return torch.cat(kept)[:n]
