"""Facial anchors of the MonoNPHM identity field: layout, symmetry, neighbours, blending.

Anchor order (MonoNPHM's): the first ``2 * n_symm`` anchors are symmetric pairs
``(a_0, a_0', a_1, a_1', ...)`` where the primed one is the mirror image (x -> -x) of its
partner; then the ``n_anchors - 2 * n_symm`` "middle" anchors on the symmetry plane. Both members
of a pair share one local MLP; the primed one sees its local offset δ mirrored in x, so the
shared MLP describes both sides of the face in the same local frame. One extra *global* MLP sits
at the origin with a fixed kernel distance.
"""
from __future__ import annotations

import numpy as np
import torch

from npga_taichi.prior.config import PriorConfig


def anchor_mlp_types(config: PriorConfig) -> torch.Tensor:
    """(n_anchors + 1,) long: which local MLP serves each anchor; the last entry is the global MLP.

    Pairs share a type (0,0,1,1,...), middle anchors get their own, the global MLP is type
    ``n_mlp_types - 1``.
    """
    pairs = torch.arange(config.n_symm_pairs).repeat_interleave(2)
    middle = torch.arange(config.n_symm_pairs, config.n_anchors - config.n_symm_pairs + 1)
    return torch.cat([pairs, middle])


def anchor_is_mirrored(config: PriorConfig) -> torch.Tensor:
    """(n_anchors + 1,) bool: True for the second member of each pair (δ.x is negated)."""
    mirrored = torch.zeros(config.n_anchors + 1, dtype=torch.bool)
    mirrored[1:2 * config.n_symm_pairs:2] = True
    return mirrored


def symmetric_anchor_layout(surface_points: np.ndarray, n_anchors: int, n_symm_pairs: int,
                            midline_width: float = 0.04, seed: int = 0) -> np.ndarray:
    """Place anchors on a head surface by farthest-point sampling, symmetric about x = 0.

    surface_points: (M, 3) canonical points on a (mean) head surface.
    Pairs come from points with x > ``midline_width`` (each mirrored to -x); middle anchors from
    points with |x| < ``midline_width`` (their x set to 0). Returns (n_anchors, 3) float32 in
    MonoNPHM's order (pairs interleaved, then middle anchors).
    """
    pts = np.asarray(surface_points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"surface_points must be (M, 3), got {pts.shape}")
    n_middle = n_anchors - 2 * n_symm_pairs
    side = pts[pts[:, 0] > midline_width]
    mid = pts[np.abs(pts[:, 0]) < midline_width].copy()
    mid[:, 0] = 0.0
    if len(side) < n_symm_pairs or len(mid) < n_middle:
        raise ValueError("not enough surface points to place the anchors "
                         f"({len(side)} lateral, {len(mid)} on the midline)")
    rng = np.random.default_rng(seed)
    chosen_side = _farthest_points(side, n_symm_pairs, rng)
    chosen_mid = _farthest_points(mid, n_middle, rng, avoid=np.concatenate(
        [chosen_side, chosen_side * np.array([-1.0, 1.0, 1.0])]) if n_symm_pairs else None)
    mirrored = chosen_side * np.array([-1.0, 1.0, 1.0])
    pairs = np.stack([chosen_side, mirrored], axis=1).reshape(-1, 3)
    return np.concatenate([pairs, chosen_mid], axis=0).astype(np.float32)


def _farthest_points(points: np.ndarray, count: int, rng: np.random.Generator,
                     avoid: np.ndarray | None = None) -> np.ndarray:
    """Greedy farthest-point sampling of ``count`` rows of ``points`` (away from ``avoid``)."""
    if count == 0:
        return np.zeros((0, 3))
    if avoid is not None and len(avoid):
        dist = np.min(np.linalg.norm(points[:, None] - avoid[None], axis=-1), axis=1)
        first = int(np.argmax(dist))
    else:
        dist = np.full(len(points), np.inf)
        first = int(rng.integers(len(points)))
    chosen = [first]
    dist = np.minimum(dist, np.linalg.norm(points - points[first], axis=1))
    for _ in range(count - 1):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(points - points[nxt], axis=1))
    return points[chosen]


def blending_neighbors(query_xyz: torch.Tensor, anchors: torch.Tensor,
                       config: PriorConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest anchors of each query and their Gaussian blending weights.

    query_xyz: (N, 3); anchors: (n_anchors, 3) (already offset for this identity).
    Returns ``idx`` (N, K+1) long — K nearest anchors ascending by distance, then the global
    MLP's index ``n_anchors`` — ``delta`` (N, K+1, 3) = query − anchor (origin for the global
    MLP; not yet mirrored) and ``weights`` (N, K+1) summing to 1. The kernel's std is the
    largest distance among the ``n_blend_std_neighbors`` first entries divided by ``blend_std``;
    the global MLP counts with the fixed distance ``global_distance`` (MonoNPHM's 0.75).
    """
    k = config.n_neighbors
    dist_all = torch.cdist(query_xyz, anchors)                              # (N, A)
    dist, idx = torch.topk(dist_all, k, dim=1, largest=False, sorted=True)  # (N, K)
    n = query_xyz.shape[0]
    glob_idx = torch.full((n, 1), config.n_anchors, dtype=idx.dtype, device=idx.device)
    idx = torch.cat([idx, glob_idx], dim=1)
    anchors_ext = torch.cat([anchors, anchors.new_zeros(1, 3)], dim=0)
    delta = query_xyz[:, None, :] - anchors_ext[idx]                        # (N, K+1, 3)
    # Recompute distances from delta so gradients reach the query points and anchors.
    dist = delta[:, :k].norm(dim=-1)
    dist = torch.cat([dist, dist.new_full((n, 1), config.global_distance)], dim=1)
    std = dist[:, :config.n_blend_std_neighbors].amax(dim=1, keepdim=True) / config.blend_std
    logits = -0.5 * (dist / std.clamp_min(1e-8)).square()
    kernel = logits.exp()
    weights = kernel / (kernel.sum(dim=1, keepdim=True) + 1e-8)
    return idx, delta, weights
