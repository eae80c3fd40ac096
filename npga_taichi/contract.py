"""The rasterizer contract shared by our Taichi rasterizer and its PyTorch oracle.

Both :func:`npga_taichi.render.rasterize` and :func:`npga_taichi.reference.rasterize` validate
their inputs with :func:`validate_inputs` and return a :class:`RasterOutput`, so they accept and
reject exactly the same things. The numeric constants below *are* the contract
(see ../shared/DESIGN.md, "The rasterizer contract").
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

TILE_SIZE = 16            # pixels per tile side used by tile binning (culling never changes the image)
ALPHA_MIN = 1.0 / 255.0   # a Gaussian contributes to a pixel iff sigma >= 0 and alpha >= ALPHA_MIN
ALPHA_MAX = 0.999         # alpha = min(ALPHA_MAX, opacity * exp(-sigma))
T_EPS = 1e-4              # stop before the first Gaussian whose T * (1 - alpha) <= T_EPS
FRUSTUM_CLAMP = 1.3       # J's x/z and y/z are clamped to 1.3x the frustum (3DGS / gsplat)
MAX_SH_DEGREE = 3
# viewmat's upper-left 3x3 must be a rotation: every entry of R R^T - I within this, det R > 0.
# Loose enough for float32 matrices and calibration files written with ~5 significant digits
# (errors ~1e-6 .. 1e-5), tight enough to reject scaled, sheared, singular or all-zero matrices.
ROTATION_TOL = 1e-3


@dataclass
class RasterOutput:
    """Result of one rasterization.

    image:   (H, W, C) composited colours (or features) plus T_final * background
    alpha:   (H, W, 1) 1 - T_final
    depth:   (H, W, 1) expected camera-z depth, sum_i alpha_i T_i z_i (not normalised by alpha)
    radii:   (N,) int32 pixel radius per Gaussian, 0 = culled
    means2d: (N, 2) projected centres in pixels; part of the autograd graph, so after
             ``backward()`` its ``.grad`` is the screen-space gradient densification uses
    """

    image: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    radii: torch.Tensor
    means2d: torch.Tensor


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def is_int(value) -> bool:
    """True for Python and numpy integers; False for bool (True is not a width of 1)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _rotation_error(m: list[float]) -> tuple[float, float]:
    """(max |R R^T - I| entry, det R) of the row-major 3x3 ``m`` (plain floats: 9 numbers are
    cheaper in Python than in torch ops, and the check runs on every render)."""
    rows = [m[0:3], m[3:6], m[6:9]]
    err = max(abs(sum(a * b for a, b in zip(rows[i], rows[j])) - (1.0 if i == j else 0.0))
              for i in range(3) for j in range(i, 3))
    (a, b, c), (d, e, f), (g, h, k) = rows
    det = a * (e * k - f * h) - b * (d * k - f * g) + c * (d * h - e * g)
    return err, det


def validate_inputs(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
                    colors: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor, width: int, height: int,
                    sh_degree: int | None = None, background: torch.Tensor | None = None, near: float = 0.01,
                    far: float = 1e10, eps2d: float = 0.3) -> int:
    """Check shapes, dtypes, devices, finiteness and ranges; return the channel count C.

    ``width``, ``height`` and ``sh_degree`` must be integers (Python or numpy, not bool): callers
    convert them with ``int()`` afterwards. ``viewmat``'s rotation part must be a rotation
    (see :data:`ROTATION_TOL`). Every failure is a ValueError that names the offending argument.
    """
    tensors = {
        "means": means, "quats": quats, "scales": scales, "opacities": opacities,
        "colors": colors, "viewmat": viewmat, "K": K,
    }
    if background is not None:
        tensors["background"] = background
    for name, t in tensors.items():
        _require(isinstance(t, torch.Tensor), f"{name} must be a torch.Tensor, got {type(t).__name__}")
    dtype, device = means.dtype, means.device
    _require(dtype in (torch.float32, torch.float64), f"means must be float32 or float64, got {dtype}")
    for name, t in tensors.items():
        _require(t.dtype == dtype, f"{name} has dtype {t.dtype} but means has {dtype}; use one dtype")
        _require(t.device == device, f"{name} is on {t.device} but means is on {device}")

    _require(means.dim() == 2 and means.shape[1] == 3, f"means must be (N, 3), got {tuple(means.shape)}")
    n = means.shape[0]
    _require(tuple(quats.shape) == (n, 4), f"quats must be (N, 4) = ({n}, 4), got {tuple(quats.shape)}")
    _require(tuple(scales.shape) == (n, 3), f"scales must be (N, 3) = ({n}, 3), got {tuple(scales.shape)}")
    _require(tuple(opacities.shape) == (n,), f"opacities must be (N,) = ({n},), got {tuple(opacities.shape)}")
    if sh_degree is None:
        _require(colors.dim() == 2 and colors.shape[0] == n and colors.shape[1] >= 1,
                 f"colors must be (N, C) with C >= 1 and N = {n}, got {tuple(colors.shape)}")
        channels = colors.shape[1]
    else:
        _require(is_int(sh_degree) and 0 <= sh_degree <= MAX_SH_DEGREE,
                 f"sh_degree must be an int in 0..{MAX_SH_DEGREE} or None, got {sh_degree!r}")
        k = (sh_degree + 1) ** 2
        _require(colors.dim() == 3 and colors.shape[0] == n and colors.shape[1] >= k and colors.shape[2] == 3,
                 f"colors must be SH coefficients (N, K>={k}, 3) for sh_degree={sh_degree}, "
                 f"got {tuple(colors.shape)}")
        channels = 3
    _require(tuple(viewmat.shape) == (4, 4), f"viewmat must be (4, 4), got {tuple(viewmat.shape)}")
    _require(tuple(K.shape) == (3, 3), f"K must be (3, 3), got {tuple(K.shape)}")
    if background is not None:
        _require(tuple(background.shape) == (channels,),
                 f"background must be ({channels},) to match the colour channels, got {tuple(background.shape)}")
    _require(is_int(width) and width > 0, f"width must be a positive int, got {width!r}")
    _require(is_int(height) and height > 0, f"height must be a positive int, got {height!r}")
    _require(0 < near < far, f"near and far must satisfy 0 < near < far, got near={near}, far={far}")
    _require(eps2d >= 0, f"eps2d must be >= 0, got {eps2d}")

    # Value checks in a handful of torch ops (each op costs tens of microseconds even on small
    # tensors, and this runs on every render): one finiteness test over all inputs, then the
    # ranges from four reductions and the camera matrices read back at once (one device sync on
    # a GPU); the offender is named on the slow path.
    with torch.no_grad():
        flat = torch.cat([t.detach().reshape(-1) for t in tensors.values()])
        # NaN and Inf propagate into a sum, so a finite sum proves every input finite (20x
        # cheaper than isfinite().all()); a sum that overflows only sends us down the exact path
        if not bool(torch.isfinite(flat.sum())):
            for name, t in tensors.items():
                _require(bool(torch.isfinite(t).all()), f"{name} contains NaN or Inf")
        values = [viewmat.detach()[:3, :3].reshape(-1), K.detach().reshape(-1)]
        if n:
            o_min, o_max = torch.aminmax(opacities.detach())
            values.append(torch.stack([scales.detach().min(), o_min, o_max,
                                       quats.detach().abs().amax(dim=-1).min()]))
        values = torch.cat(values).tolist()
    if n:
        scale_min, o_min, o_max, quat_max_min = values[18:22]
        _require(scale_min > 0, "scales must be positive (activated, e.g. exp(log_scales))")
        _require(o_min >= 0 and o_max <= 1, "opacities must lie in [0, 1] (activated, e.g. sigmoid(logits))")
        _require(quat_max_min > 0, "quats contains a zero quaternion")
    rot_err, det = _rotation_error(values[:9])
    _require(rot_err <= ROTATION_TOL and det > 0,
             f"viewmat's upper-left 3x3 must be a rotation (R R^T = I within {ROTATION_TOL:g}, det > 0), "
             f"got max |R R^T - I| = {rot_err:.3g}, det = {det:.3g}")
    fx, fy = values[9], values[13]
    _require(fx > 0 and fy > 0, f"K must have positive focal lengths, got fx={fx}, fy={fy}")
    return channels
