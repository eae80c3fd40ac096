"""Laplacian smoothness regularisers on a kNN graph of the canonical Gaussian positions.

The uniform graph Laplacian of a per-Gaussian field v is (L v)_i = v_i - mean_{j in N(i)} v_j;
the regulariser is mean_i ||(L v)_i||^2. It is zero exactly when v is constant on every
neighbourhood, so it pulls neighbouring Gaussians towards similar latent features and similar
predicted motion without fixing their absolute values.
"""
from __future__ import annotations

import warnings

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
    """(L v)_i = v_i - mean_j v_{neighbors[i, j]}; values (N, ...) -> same shape.

    The definition, by gathering: the PyTorch twin that :class:`KnnLaplacian` (what training
    uses) is tested against. Its backward scatters into v with atomics: ~5x slower on the CPU.
    """
    if neighbors.dim() != 2 or neighbors.shape[0] != values.shape[0]:
        raise ValueError(f"neighbors must be (N, k) with N = {values.shape[0]}, got {tuple(neighbors.shape)}")
    return values - values[neighbors].mean(dim=1)


def _neighbor_mean_matrix(rows: torch.Tensor, cols: torch.Tensor, k: int, n: int) -> torch.Tensor:
    """Sparse CSR (n, n) with 1/k at each (row, col) pair (a repeated pair sums)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.full(rows.shape, 1.0 / k, device=rows.device),
                                      (n, n), check_invariants=False)
        return coo.coalesce().to_sparse_csr()


class _SparseLaplacian(torch.autograd.Function):
    """L v = v - M v with M the neighbour-mean matrix; the gradient is g - M^T g."""

    @staticmethod
    def forward(ctx, values, mean, mean_t):
        ctx.mean_t = mean_t
        return values - (mean.to(values.dtype) @ values)

    @staticmethod
    def backward(ctx, grad):
        return grad - (ctx.mean_t.to(grad.dtype) @ grad), None, None


class KnnLaplacian:
    """The uniform graph Laplacian of a kNN graph, :func:`laplacian` as two sparse matrix
    products (forward M v, backward M^T g, M the (N, N) neighbour-mean matrix, N * k entries).

    Build once per graph (the avatar caches it until densification changes the graph); call it
    on values (N, C) or (N,) of any float dtype on ``neighbors``' device.
    """

    def __init__(self, neighbors: torch.Tensor):
        if neighbors.dim() != 2 or neighbors.shape[1] < 1:
            raise ValueError(f"neighbors must be (N, k) with k >= 1, got {tuple(neighbors.shape)}")
        n, k = neighbors.shape
        self.neighbors = neighbors
        rows = torch.arange(n, device=neighbors.device).repeat_interleave(k)
        cols = neighbors.reshape(-1)
        self.mean = _neighbor_mean_matrix(rows, cols, k, n)
        self.mean_t = _neighbor_mean_matrix(cols, rows, k, n)

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        n = self.neighbors.shape[0]
        if values.shape[0] != n:
            raise ValueError(f"values must have N = {n} rows (the graph's), got {tuple(values.shape)}")
        flat = values.reshape(n, -1)
        return _SparseLaplacian.apply(flat, self.mean, self.mean_t).reshape(values.shape)

    def loss(self, values: torch.Tensor) -> torch.Tensor:
        """mean_i ||(L v)_i||^2 for values (N, C) (or (N,)); 0 for a constant field."""
        lv = self(values.reshape(values.shape[0], -1))
        return lv.pow(2).sum(dim=-1).mean()


def laplacian_loss(values: torch.Tensor, neighbors: torch.Tensor) -> torch.Tensor:
    """mean_i ||(L v)_i||^2 for values (N, C) (or (N,)), by :func:`laplacian` (the twin of
    :meth:`KnnLaplacian.loss`)."""
    lv = laplacian(values.reshape(values.shape[0], -1), neighbors)
    return lv.pow(2).sum(dim=-1).mean()
