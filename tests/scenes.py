"""The one random-scene helper of the rasterizer tests (kernels, oracle, peer, CLI).

:func:`make_scene` places N Gaussians in the view frustum of a random rigid camera (camera space
first, then mapped to world space with the inverse of the viewmat, so the world->camera transform
is always exercised) and returns ``rasterize`` keyword arguments. :func:`camera_points` and
:func:`set_camera_points` move Gaussians in camera space (behind the camera, past the frustum
clamp, onto the near plane) without repeating the transform in every test.
"""
from __future__ import annotations

import pytest
import torch

F64 = torch.float64
SCENE_KEYS = ("means", "quats", "scales", "opacities", "colors", "viewmat", "K")
GRAD_NAMES = ("means", "quats", "scales", "opacities", "colors", "background")


def random_rotation(generator: torch.Generator, dtype=F64) -> torch.Tensor:
    """(3, 3) rotation matrix of a random unit quaternion."""
    q = torch.randn(4, generator=generator, dtype=F64)
    w, x, y, z = (q / q.norm()).tolist()
    return torch.tensor([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ], dtype=dtype)


def make_scene(n: int, width: int, height: int, *, dtype=F64, seed: int = 0, channels: int = 3,
               sh_degree: int | None = None, log_scale: float = -2.5, depth_range=(1.5, 4.0),
               spread: float = 1.2, opaque: float = 0.0) -> dict:
    """A random scene seen by a rotated, translated pinhole camera (focal 0.9 width, OpenCV axes).

    Gaussians: camera depth uniform in ``depth_range``, x/y uniform over ``spread`` times the
    frustum, random rotations (unnormalised quaternions), scales exp(log_scale + 0.4 N(0, 1)),
    opacities U(0.05, 0.95) (a fraction ``opaque`` set to 1), colours U(0, 1) with ``channels``
    channels, or SH coefficients 0.4 N(0, 1) of shape (N, (sh_degree + 1)^2, 3).
    Returns a dict with means, quats, scales, opacities, colors, viewmat, K and background
    (``channels`` or 3 values), all in ``dtype``.
    """
    g = torch.Generator().manual_seed(seed)
    f = 0.9 * width
    z = depth_range[0] + (depth_range[1] - depth_range[0]) * torch.rand(n, generator=g, dtype=F64)
    x = (torch.rand(n, generator=g, dtype=F64) - 0.5) * spread * z * width / f
    y = (torch.rand(n, generator=g, dtype=F64) - 0.5) * spread * z * height / f
    cam = torch.stack([x, y, z], 1)
    rot = random_rotation(g)
    trans = torch.randn(3, generator=g, dtype=F64)
    viewmat = torch.eye(4, dtype=F64)
    viewmat[:3, :3] = rot
    viewmat[:3, 3] = trans
    means = (cam - trans) @ rot  # world = R^T (cam - t)
    quats = torch.randn(n, 4, generator=g, dtype=F64)
    scales = torch.exp(log_scale + 0.4 * torch.randn(n, 3, generator=g, dtype=F64))
    opacities = 0.05 + 0.9 * torch.rand(n, generator=g, dtype=F64)
    if sh_degree is None:
        colors = torch.rand(n, channels, generator=g, dtype=F64)
    else:
        colors = 0.4 * torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g, dtype=F64)
    K = torch.tensor([[f, 0.0, 0.47 * width], [0.0, f * 1.05, 0.52 * height], [0.0, 0.0, 1.0]], dtype=F64)
    background = torch.rand(3 if sh_degree is not None else channels, generator=g, dtype=F64)
    if opaque:
        opacities = torch.where(torch.rand(n, generator=g, dtype=F64) < opaque, torch.ones_like(opacities),
                                opacities)
    scene = dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors,
                 viewmat=viewmat, K=K, background=background)
    return {k: v.to(dtype) for k, v in scene.items()}


def camera_points(scene: dict) -> torch.Tensor:
    """(N, 3) camera-space positions of the scene's means."""
    return scene["means"] @ scene["viewmat"][:3, :3].T + scene["viewmat"][:3, 3]


def set_camera_points(scene: dict, cam: torch.Tensor) -> None:
    """Move the scene's means to the camera-space positions ``cam`` (N, 3)."""
    rot, trans = scene["viewmat"][:3, :3], scene["viewmat"][:3, 3]
    scene["means"] = (cam - trans) @ rot


def positional(scene: dict) -> tuple:
    """(means, quats, scales, opacities, colors, viewmat, K): rasterize's first seven arguments."""
    return tuple(scene[k] for k in SCENE_KEYS)


def frustum_limit_x(scene: dict, width: int) -> float:
    """The x/z beyond which the projection's Jacobian is clamped (gsplat's lim_x_pos)."""
    fx, cx = float(scene["K"][0, 0]), float(scene["K"][0, 2])
    return (width - cx) / fx + 0.3 * 0.5 * width / fx


def random_like(tensors, seed: int):
    """Random upstream gradients shaped like ``tensors`` (same dtypes), reproducible by seed."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(t.shape, generator=g, dtype=F64).to(t.dtype) for t in tensors]


def gsplat_torch_impl():
    """gsplat's PyTorch reference functions; skips the calling test when gsplat is absent (it is
    in the test extra, so CI runs these comparisons)."""
    return pytest.importorskip("gsplat.cuda._torch_impl")
