"""Invert the backward field by root finding: find x_posed with B(x_posed) = x_canonical.

This is the slow ground truth that the distilled forward field F replaces: MonoNPHM itself runs
Broyden iterations per query. Here: batched Newton with exact 3×3 Jacobians from autograd
(three vector-Jacobian products per step, one per output coordinate), damped by backtracking
so the residual never grows, started at x_canonical (or a given guess such as F's output).
"""
from __future__ import annotations

from typing import Callable

import torch


def jacobian_3x3(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Value (N, 3) and per-point Jacobian (N, 3, 3) of a point-wise map fn: (N, 3) -> (N, 3).

    ``J[n, i, j] = d fn(x)[n, i] / d x[n, j]``; fn must treat rows independently.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        y = fn(x)
        rows = []
        for i in range(3):
            grad_out = torch.zeros_like(y)
            grad_out[:, i] = 1.0
            (g,) = torch.autograd.grad(y, x, grad_out, retain_graph=i < 2)
            rows.append(g)
    return y.detach(), torch.stack(rows, dim=1)


def invert_pointwise(fn: Callable[[torch.Tensor], torch.Tensor], target: torch.Tensor,
                     init: torch.Tensor | None = None, max_iters: int = 30, tol: float = 1e-6
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solve fn(x) = target per row by damped Newton.

    target: (N, 3); init: (N, 3) start (defaults to target). Returns x (N, 3), the final
    residual norm (N,) and a converged mask (N,) (residual < tol). Rows stop updating once
    converged; singular Jacobians fall back to a small gradient step.
    """
    x = (target if init is None else init).detach().clone()
    eye = torch.eye(3, dtype=x.dtype, device=x.device)
    residual = None
    for _ in range(max_iters):
        y, jac = jacobian_3x3(fn, x)
        r = y - target
        residual = r.norm(dim=-1)
        active = residual >= tol
        if not bool(active.any()):
            break
        # Levenberg-style damping keeps the solve well-posed near folds.
        step = torch.linalg.solve(jac + 1e-6 * eye, r.unsqueeze(-1)).squeeze(-1)
        step = torch.where(torch.isfinite(step), step, r)
        scale = torch.ones_like(residual)
        # Backtracking: halve steps that do not reduce the residual (up to 4 times).
        for _ in range(4):
            cand = x - scale[:, None] * step
            with torch.no_grad():
                cand_res = (fn(cand) - target).norm(dim=-1)
            worse = cand_res > residual
            if not bool((worse & active).any()):
                break
            scale = torch.where(worse, scale * 0.5, scale)
        x = torch.where(active[:, None], x - scale[:, None] * step, x)
    with torch.no_grad():
        residual = (fn(x) - target).norm(dim=-1)
    return x.detach(), residual, residual < tol
