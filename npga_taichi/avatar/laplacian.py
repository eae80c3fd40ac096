"""Laplacian smoothness regularisers on a kNN graph of the canonical Gaussian positions.

The uniform graph Laplacian of a per-Gaussian field v is (L v)_i = v_i - mean_{j in N(i)} v_j;
the regulariser is mean_i ||(L v)_i||^2. It is zero exactly when v is constant on every
neighbourhood, so it pulls neighbouring Gaussians towards similar latent features and similar
predicted motion without fixing their absolute values.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree


def knn_graph(points: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k nearest *other* points, (N, k) int64 on ``points``' device.

    Built with scipy's cKDTree on the CPU (rebuilt after every densification). With fewer
    than k + 1 points the missing neighbours repeat the farthest one available.
    """
    n = points.shape[0]
    if n < 2:
        raise ValueError(f"a kNN graph needs at least 2 points, got {n}")
    pts = points.detach().cpu().double().numpy()
    k_eff = min(k + 1, n)
    _, idx = cKDTree(pts).query(pts, k=k_eff)
    idx = np.asarray(idx).reshape(n, k_eff)
    # Column 0 is normally the point itself, but exact duplicates may come first: move every
    # self-match to the end of its row (stable sort on the mask) and keep the first k_eff - 1.
    self_mask = idx == np.arange(n)[:, None]
    order = np.argsort(self_mask, axis=1, kind="stable")
    neigh = np.take_along_axis(idx, order, axis=1)[:, : k_eff - 1]
    if neigh.shape[1] < k:
        neigh = np.concatenate([neigh, np.repeat(neigh[:, -1:], k - neigh.shape[1], axis=1)], axis=1)
    return torch.from_numpy(neigh.astype(np.int64)).to(points.device)


def laplacian(values: torch.Tensor, neighbors: torch.Tensor) -> torch.Tensor:
    """(L v)_i = v_i - mean_j v_{neighbors[i, j]}; values (N, ...) -> same shape."""
    if neighbors.dim() != 2 or neighbors.shape[0] != values.shape[0]:
        raise ValueError(f"neighbors must be (N, k) with N = {values.shape[0]}, got {tuple(neighbors.shape)}")
    return values - values[neighbors].mean(dim=1)


def laplacian_loss(values: torch.Tensor, neighbors: torch.Tensor) -> torch.Tensor:
    """mean_i ||(L v)_i||^2 for values (N, C) (or (N,)); 0 for a constant field."""
    lv = laplacian(values.reshape(values.shape[0], -1), neighbors)
    return lv.pow(2).sum(dim=-1).mean()
