"""Adaptive density control (ADC) of the canonical Gaussians, driven by screen-space gradients.

As in 3DGS: Gaussians whose average screen-space positional gradient is large are cloned when
small and split in two (shrunk by 1.6) when large; nearly transparent or oversized Gaussians are
pruned; opacities are periodically reset. The new count never exceeds a cap.

Every edit is expressed as one row map ``source`` (M,) over the old Gaussians, applied to every
per-Gaussian parameter *and* to its Adam moments (``exp_avg``, ``exp_avg_sq``) in one place
(:func:`remap_gaussians`), so parameters, optimiser state and latents cannot drift apart. Rows
marked ``fresh`` (new Gaussians) start with zero moments, as in 3DGS.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from npga_taichi.avatar.gaussians import CanonicalGaussians
from npga_taichi.avatar.rotations import quat_to_rotmat

ADAM_ROW_STATES = ("exp_avg", "exp_avg_sq")


class GradientStats:
    """Running sums of the screen-space gradient norm per Gaussian (3DGS's xyz_gradient_accum).

    The gradient w.r.t. the pixel-space ``means2d`` is converted to NDC units (times W/2, H/2)
    so the 3DGS threshold (2e-4) keeps its meaning at any resolution.
    """

    def __init__(self, num: int, device: torch.device | str = "cpu"):
        self.grad_sum = torch.zeros(num, dtype=torch.float64, device=device)
        self.count = torch.zeros(num, dtype=torch.float64, device=device)

    @staticmethod
    def increments(means2d_grad: torch.Tensor, radii: torch.Tensor, width: int,
                   height: int) -> tuple[torch.Tensor, torch.Tensor]:
        """What one rendered view adds: (gradient norm (N,), count (N,)) float64, zero where the
        Gaussian was not visible. means2d_grad (N, 2) pixels, radii (N,) (0 = not visible)."""
        visible = radii > 0
        g = means2d_grad.detach().to(torch.float64)
        g = g * torch.tensor([width / 2.0, height / 2.0], dtype=torch.float64, device=g.device)
        return torch.where(visible, g.norm(dim=-1), 0.0), visible.to(torch.float64)

    def add(self, grad_sum: torch.Tensor, count: torch.Tensor) -> None:
        """Add summed :meth:`increments` (of one step's views, over all ranks)."""
        self.grad_sum += grad_sum.to(self.grad_sum)
        self.count += count.to(self.count)

    def update(self, means2d_grad: torch.Tensor, radii: torch.Tensor, width: int, height: int) -> None:
        """Accumulate one rendered view (see :meth:`increments`)."""
        self.add(*self.increments(means2d_grad, radii, width, height))

    def mean(self) -> torch.Tensor:
        return self.grad_sum / self.count.clamp_min(1)

    def remap(self, source: torch.Tensor, fresh: torch.Tensor) -> None:
        """Follow a row map of the Gaussians; new rows start from zero."""
        self.grad_sum = torch.where(fresh, 0.0, self.grad_sum[source])
        self.count = torch.where(fresh, 0.0, self.count[source])

    def reset(self) -> None:
        self.grad_sum.zero_()
        self.count.zero_()

    def state_dict(self) -> dict:
        return {"grad_sum": self.grad_sum.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.grad_sum = state["grad_sum"].clone()
        self.count = state["count"].clone()


def _find_in_optimizer(optimizer: torch.optim.Optimizer, param: nn.Parameter) -> tuple[dict, int]:
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            if p is param:
                return group, i
    raise KeyError("parameter not in the optimiser")


@torch.no_grad()
def remap_gaussians(gaussians: CanonicalGaussians, optimizer: torch.optim.Optimizer | None,
                    source: torch.Tensor, fresh: torch.Tensor,
                    overrides: dict[str, torch.Tensor] | None = None) -> None:
    """Rebuild every per-Gaussian parameter as ``old[source]`` (M rows) with optional overrides.

    source:    (M,) int64 rows of the old cloud each new row copies
    fresh:     (M,) bool, True for new Gaussians: their Adam moments start at zero
    overrides: name -> (M, ...) replacement values (e.g. split children's means and scales)
    The optimiser's per-row state follows the same map; its step counters are unchanged.
    """
    overrides = overrides or {}
    source = source.to(torch.long)
    for name, old in gaussians.per_gaussian().items():
        value = overrides[name] if name in overrides else old.data[source]
        new = gaussians.set_param(name, value)
        if optimizer is None:
            continue
        group, i = _find_in_optimizer(optimizer, old)
        group["params"][i] = new
        state = optimizer.state.pop(old, None)
        if state:
            mask = fresh.view(-1, *([1] * (old.dim() - 1)))
            for key in ADAM_ROW_STATES:
                if key in state:
                    state[key] = torch.where(mask, torch.zeros((), dtype=state[key].dtype),
                                             state[key][source])
            optimizer.state[new] = state


@dataclass
class DensifyResult:
    """What one ADC pass did (counts of Gaussians)."""

    before: int
    cloned: int
    split: int
    pruned: int
    after: int


@torch.no_grad()
def densify_and_prune(gaussians: CanonicalGaussians, optimizer: torch.optim.Optimizer | None,
                      stats: GradientStats, *, grad_threshold: float, extent: float,
                      percent_dense: float, prune_opacity: float, max_scale_frac: float,
                      max_gaussians: int, generator: torch.Generator | None = None) -> DensifyResult:
    """One ADC pass: clone small / split large high-gradient Gaussians, prune bad ones, cap N.

    Pruned: opacity < ``prune_opacity`` or largest scale > ``max_scale_frac * extent``.
    When the candidates would exceed ``max_gaussians`` the ones with the largest gradient win.
    ``stats`` follows the map (new rows zero). Returns the counts.
    """
    n = len(gaussians)
    grads = stats.mean().to(gaussians.means.device)
    max_scale = gaussians.scales().max(dim=-1).values
    prune = (gaussians.opacities() < prune_opacity) | (max_scale > max_scale_frac * extent)
    high = (grads >= grad_threshold) & ~prune
    small = max_scale <= percent_dense * extent
    clone_idx = torch.nonzero(high & small).flatten()
    split_idx = torch.nonzero(high & ~small).flatten()

    # Cap: a clone adds one Gaussian, a split adds one net (two children replace the parent).
    kept_base = n - int(prune.sum())
    room = max(max_gaussians - kept_base, 0)
    if len(clone_idx) + len(split_idx) > room:
        cand = torch.cat([clone_idx, split_idx])
        order = torch.argsort(grads[cand], descending=True, stable=True)[:room]
        chosen = torch.zeros(n, dtype=torch.bool, device=grads.device)
        chosen[cand[order]] = True
        clone_idx = torch.nonzero(high & small & chosen).flatten()
        split_idx = torch.nonzero(high & ~small & chosen).flatten()

    is_split = torch.zeros(n, dtype=torch.bool, device=grads.device)
    is_split[split_idx] = True
    keep_idx = torch.nonzero(~prune & ~is_split).flatten()
    children = torch.cat([split_idx, split_idx])
    source = torch.cat([keep_idx, clone_idx, children])
    fresh = torch.cat([torch.zeros(len(keep_idx), dtype=torch.bool),
                       torch.ones(len(clone_idx) + len(children), dtype=torch.bool)]).to(source.device)

    overrides = {}
    if len(children):
        # Children sampled from the parent Gaussian (canonical frame), scales / 1.6 (3DGS).
        scales = gaussians.scales()[children]
        local = torch.randn(len(children), 3, generator=generator, dtype=scales.dtype).to(scales.device) * scales
        rot = quat_to_rotmat(gaussians.quats[children])
        child_means = gaussians.means[children] + torch.einsum("nij,nj->ni", rot, local)
        child_log_scales = torch.log(scales / 1.6)
        n_plain = len(keep_idx) + len(clone_idx)
        overrides["means"] = torch.cat([gaussians.means[source[:n_plain]], child_means])
        overrides["log_scales"] = torch.cat([gaussians.log_scales[source[:n_plain]], child_log_scales])

    remap_gaussians(gaussians, optimizer, source, fresh, overrides)
    stats.remap(source, fresh)
    return DensifyResult(before=n, cloned=len(clone_idx), split=len(split_idx),
                         pruned=int(prune.sum()), after=len(gaussians))


@torch.no_grad()
def reset_opacity(gaussians: CanonicalGaussians, optimizer: torch.optim.Optimizer | None,
                  value: float = 0.01) -> None:
    """Clamp every opacity to at most ``value`` and zero the opacity logits' Adam moments."""
    cap = math.log(value / (1 - value))
    gaussians.opacity_logits.data.clamp_(max=cap)
    if optimizer is not None:
        state = optimizer.state.get(gaussians.opacity_logits)
        if state:
            for key in ADAM_ROW_STATES:
                if key in state:
                    state[key].zero_()
