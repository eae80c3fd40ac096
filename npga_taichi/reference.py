"""Pure-PyTorch twin of every rasterizer op: the oracle our Taichi kernels are checked against.

Everything here is ordinary differentiable PyTorch (float32 or float64, CPU or CUDA: the device
follows the inputs) and follows the rasterizer contract of ``../shared/DESIGN.md`` to the letter:

* :func:`quat_scale_to_covariance` -- Σ = R S Sᵀ Rᵀ from wxyz quaternions (normalised inside).
* :func:`project_gaussians` -- camera transform, clamped-Jacobian EWA projection, conics, the
  opacity-aware radius and the culling rule (radius 0 = culled).
* :func:`eval_sh` / :func:`sh_to_color` -- real spherical harmonics up to degree 3 (graphdeco basis).
* :func:`rasterize` -- the ORACLE: every visible Gaussian is composited at every pixel (no tile
  or radius culling inside the image, so it proves that culling never changes the image), in pixel
  chunks recomputed in the backward (checkpointing) so memory stays bounded; gradients are torch
  autograd's. :func:`rasterize_projected` is its compositing stage alone (for external projections).
* :func:`rasterize_tiled` -- a fast 16×16 tile-batched PyTorch rasterizer with the same semantics
  and a hand-written, vectorised backward; the PyTorch baseline that benchmarks time.

Compositing semantics (per pixel, centre (j+0.5, i+0.5)): visible Gaussians front to back by the
sort key float32(camera z), ties broken by Gaussian index; d = pixel - mean2d;
σ = ½(a dx² + c dy²) + b dx dy; α = min(0.999, o·exp(-σ)); a Gaussian contributes iff σ ≥ 0 and
α ≥ 1/255; compositing stops *before* the first contributing Gaussian whose T·(1-α) ≤ 1e-4.
image = Σ αᵢTᵢcᵢ + T_final·background, alpha = 1 - T_final, depth = Σ αᵢTᵢzᵢ.
"""
from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from npga_taichi.contract import (
    ALPHA_MAX,
    ALPHA_MIN,
    FRUSTUM_CLAMP,
    TILE_SIZE,
    T_EPS,
    RasterOutput,
    validate_inputs,
)

# Real SH constants of the graphdeco 3DGS basis (sh_utils.py), degree 0..3.
SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
         0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)

# Fragments (pixels × Gaussians) evaluated at once by the oracle; with ~15 live temporaries per
# fragment one chunk's recomputed autograd graph takes ~120 MB (float32) / ~240 MB (float64).
ORACLE_CHUNK_FRAGMENTS = 2_000_000
# Slack on the radius when binning tiles (absorbs float rounding of the radius computation).
BINNING_REL_SLACK = 1e-3
BINNING_ABS_SLACK = 1e-2
# Fragments per tile group in rasterize_tiled (tiles × 256 pixels × padded list length).
TILED_GROUP_FRAGMENTS = 4_000_000


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------
def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (N, 3, 3) from quaternions (N, 4) in wxyz order (normalised here)."""
    q = F.normalize(quats, dim=-1)
    w, x, y, z = q.unbind(-1)
    rot = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )
    return rot.reshape(q.shape[:-1] + (3, 3))


def quat_scale_to_covariance(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """World covariances Σ = R S Sᵀ Rᵀ.

    quats: (N, 4) wxyz, any non-zero norm (normalised inside); scales: (N, 3) activated (> 0).
    Returns (N, 3, 3).
    """
    m = quat_to_rotmat(quats) * scales[..., None, :]  # R S: column k of R scaled by s_k
    return m @ m.transpose(-1, -2)


def camera_center(viewmat: torch.Tensor) -> torch.Tensor:
    """World position (3,) of the camera of a world→camera matrix (4, 4): -Rᵀ t."""
    return -viewmat[:3, :3].transpose(0, 1) @ viewmat[:3, 3]


def project_gaussians(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = 0.3,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """EWA-project 3D Gaussians into a pinhole camera (OpenCV axes) and apply the culling rule.

    means (N, 3) world, quats (N, 4) wxyz, scales (N, 3), opacities (N,) in [0, 1],
    viewmat (4, 4) world→camera, K (3, 3) pixels.

    Returns ``(means2d (N, 2), conics (N, 3), depths (N,), radii (N,) int32)``:
    means2d = (fx x/z + cx, fy y/z + cy); conics = (a, b, c) = (inv[0,0], inv[0,1], inv[1,1]) of
    Σ2d = J W Σ Wᵀ Jᵀ + eps2d·I, where J uses x/z and y/z clamped to 1.3× the frustum exactly as
    gsplat's ``_persp_proj``; depths = camera z; radii = ceil(sqrt(2 ln(255 o) λmax(Σ2d))), and 0
    (culled) when z ≤ near or z ≥ far, o < 1/255, det(Σ2d) ≤ 0, or the square [mean2d ± r] does not
    touch the image [0, W) × [0, H). Culled entries of means2d/conics are finite but meaningless.
    """
    rot_w, t_w = viewmat[:3, :3], viewmat[:3, 3]
    p_cam = means @ rot_w.transpose(0, 1) + t_w
    tx, ty, tz = p_cam.unbind(-1)
    in_depth = (tz > near) & (tz < far)
    # Culled-by-depth Gaussians get a harmless z so nothing below divides by zero (no NaN grads).
    z = torch.where(in_depth, tz, torch.ones_like(tz))

    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    # Clamp the Jacobian's x/z, y/z to the frustum widened by 30% of its half-extent (gsplat).
    margin = FRUSTUM_CLAMP - 1.0
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + margin * tan_fovx
    lim_x_neg = cx / fx + margin * tan_fovx
    lim_y_pos = (height - cy) / fy + margin * tan_fovy
    lim_y_neg = cy / fy + margin * tan_fovy
    jx = z * torch.clamp(tx / z, min=-lim_x_neg, max=lim_x_pos)
    jy = z * torch.clamp(ty / z, min=-lim_y_neg, max=lim_y_pos)
    zeros = torch.zeros_like(z)
    jac = torch.stack(
        [fx / z, zeros, -fx * jx / (z * z), zeros, fy / z, -fy * jy / (z * z)], dim=-1
    ).reshape(-1, 2, 3)

    cov_world = quat_scale_to_covariance(quats, scales)
    cov_cam = rot_w @ cov_world @ rot_w.transpose(0, 1)
    cov2d = jac @ cov_cam @ jac.transpose(-1, -2)
    s00 = cov2d[:, 0, 0] + eps2d
    s01 = cov2d[:, 0, 1]
    s11 = cov2d[:, 1, 1] + eps2d
    det = s00 * s11 - s01 * s01
    det_ok = det > 0
    det_safe = torch.where(det_ok, det, torch.ones_like(det))
    conics = torch.stack([s11 / det_safe, -s01 / det_safe, s00 / det_safe], dim=-1)

    means2d = torch.stack([fx * tx / z + cx, fy * ty / z + cy], dim=-1)

    radii = _contract_radii(means2d, s00, s01, s11, tz, opacities, width, height, near, far)
    return means2d, conics, tz, radii


@torch.no_grad()
def _contract_radii(means2d, s00, s01, s11, depths, opacities, width, height, near, far):
    """The contract's radius and culling rule, from the 2D covariance (s00, s01, s11) incl. eps2d.

    r = ceil(sqrt(2 ln(255 o) λmax)); 0 (culled) when z ≤ near or z ≥ far, o < 1/255,
    det ≤ 0, r = 0, or the square [mean2d ± r] does not touch [0, W) × [0, H). Returns int32 (N,).
    """
    det = s00 * s11 - s01 * s01
    mid = 0.5 * (s00 + s11)
    lam_max = mid + torch.sqrt(torch.clamp(mid * mid - det, min=0.0))
    log_term = torch.log(torch.clamp(opacities * 255.0, min=1.0))  # ln(255 o), 0 if o < 1/255
    radius = torch.ceil(torch.sqrt(2.0 * log_term * torch.clamp(lam_max, min=0.0)))
    mx, my = means2d[:, 0], means2d[:, 1]
    touches = (mx + radius > 0) & (mx - radius < width) & (my + radius > 0) & (my - radius < height)
    visible = ((depths > near) & (depths < far) & (opacities >= ALPHA_MIN) & (det > 0) & touches
               & (radius > 0))
    return torch.where(visible, radius, torch.zeros_like(radius)).to(torch.int32)


@torch.no_grad()
def radii_from_conics(means2d: torch.Tensor, conics: torch.Tensor, depths: torch.Tensor,
                      opacities: torch.Tensor, width: int, height: int, near: float = 0.01,
                      far: float = 1e10) -> torch.Tensor:
    """Contract radii (N,) int32 for an external projection (e.g. gsplat's) given its
    means2d (N, 2), conics (N, 3) = inverse 2D covariance (a, b, c) incl. eps2d, depths (N,)."""
    a, b, c = conics.unbind(-1)
    det_c = a * c - b * b
    ok = det_c > 0
    inv = torch.where(ok, 1.0 / torch.where(ok, det_c, torch.ones_like(det_c)), torch.zeros_like(det_c))
    radii = _contract_radii(means2d, c * inv, -b * inv, a * inv, depths, opacities, width, height, near, far)
    return torch.where(ok, radii, torch.zeros_like(radii))


# --------------------------------------------------------------------------------------------
# Spherical harmonics
# --------------------------------------------------------------------------------------------
def eval_sh(degree: int, dirs: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Evaluate real SH of ``degree`` (0..3) in the graphdeco basis.

    dirs (..., 3) view directions (normalised here); coeffs (..., K ≥ (degree+1)², C); only the
    first (degree+1)² coefficients are used. Returns (..., C) = Σ_k basis_k(dir) coeffs[k].
    """
    if not 0 <= degree <= 3:
        raise ValueError(f"degree must be in 0..3, got {degree}")
    if coeffs.shape[-2] < (degree + 1) ** 2:
        raise ValueError(f"coeffs needs at least {(degree + 1) ** 2} SH coefficients for degree "
                         f"{degree}, got {coeffs.shape[-2]}")
    d = F.normalize(dirs, dim=-1)
    x, y, z = (d[..., i:i + 1] for i in range(3))
    sh = coeffs
    out = SH_C0 * sh[..., 0, :]
    if degree > 0:
        out = out - SH_C1 * y * sh[..., 1, :] + SH_C1 * z * sh[..., 2, :] - SH_C1 * x * sh[..., 3, :]
    if degree > 1:
        xx, yy, zz = x * x, y * y, z * z
        xy, yz, xz = x * y, y * z, x * z
        out = (out + SH_C2[0] * xy * sh[..., 4, :] + SH_C2[1] * yz * sh[..., 5, :]
               + SH_C2[2] * (2 * zz - xx - yy) * sh[..., 6, :]
               + SH_C2[3] * xz * sh[..., 7, :] + SH_C2[4] * (xx - yy) * sh[..., 8, :])
        if degree > 2:
            out = (out + SH_C3[0] * y * (3 * xx - yy) * sh[..., 9, :]
                   + SH_C3[1] * xy * z * sh[..., 10, :]
                   + SH_C3[2] * y * (4 * zz - xx - yy) * sh[..., 11, :]
                   + SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[..., 12, :]
                   + SH_C3[4] * x * (4 * zz - xx - yy) * sh[..., 13, :]
                   + SH_C3[5] * z * (xx - yy) * sh[..., 14, :]
                   + SH_C3[6] * x * (xx - 3 * yy) * sh[..., 15, :])
    return out


def sh_to_color(degree: int, means: torch.Tensor, viewmat: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Per-Gaussian RGB max(SH(dir) + 0.5, 0), dir = normalised(mean - camera centre).

    means (N, 3) world, viewmat (4, 4) world→camera, coeffs (N, K, 3). Returns (N, 3).
    """
    dirs = means - camera_center(viewmat)
    return torch.clamp(eval_sh(degree, dirs, coeffs) + 0.5, min=0.0)


# --------------------------------------------------------------------------------------------
# Shared front end: projection, colours, visibility and depth order
# --------------------------------------------------------------------------------------------
def _front_to_back(radii: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
    """Indices (M,) of the visible (radius > 0) Gaussians in compositing order.

    Contract: sort key float32(z) (also in float64 mode), ties by Gaussian index -> a stable
    sort of the index-ordered visible list."""
    with torch.no_grad():
        visible = torch.nonzero(radii > 0).squeeze(1)
        order = torch.sort(depths.detach()[visible].to(torch.float32), stable=True).indices
        return visible[order]


def _project_with_colors(means, quats, scales, opacities, colors, viewmat, K, width, height,
                         sh_degree, near, far, eps2d):
    """Shared front end of both rasterizers: projection (means2d kept for its .grad) and
    per-Gaussian colours (SH evaluated when ``sh_degree`` is given)."""
    means2d, conics, depths, radii = project_gaussians(
        means, quats, scales, opacities, viewmat, K, width, height, near, far, eps2d)
    if means2d.requires_grad:
        means2d.retain_grad()  # the screen-space gradient densification reads
    if sh_degree is not None:
        colors = sh_to_color(sh_degree, means, viewmat, colors)
    return means2d, conics, depths, radii, colors


# --------------------------------------------------------------------------------------------
# Compositing (shared by the oracle and the tiled rasterizer)
# --------------------------------------------------------------------------------------------
def _fragments(pix, xy, conics, opacities, valid=None):
    """Per-fragment quantities for pixels × sorted Gaussians.

    pix (..., P, 2) pixel centres; xy (..., L, 2); conics (..., L, 3); opacities (..., L);
    valid (..., L) bool or None (padding mask). Returns dx, dy, sigma, gauss = o·exp(-σ)
    (σ clamped at 0 inside the exp so masked σ < 0 cannot overflow), alpha = min(0.999, gauss)
    and hit = σ ≥ 0 & α ≥ 1/255 (& valid), all (..., P, L).
    """
    dx = pix[..., :, None, 0] - xy[..., None, :, 0]
    dy = pix[..., :, None, 1] - xy[..., None, :, 1]
    a = conics[..., None, :, 0]
    b = conics[..., None, :, 1]
    c = conics[..., None, :, 2]
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    nonneg = sigma >= 0
    gauss = opacities[..., None, :] * torch.exp(-torch.where(nonneg, sigma, torch.zeros_like(sigma)))
    alpha = torch.clamp(gauss, max=ALPHA_MAX)
    hit = nonneg & (alpha >= ALPHA_MIN)
    if valid is not None:
        hit = hit & valid[..., None, :]
    return dx, dy, sigma, gauss, alpha, hit


def _transmittance(alpha, hit):
    """Front-to-back transmittance with early termination, all along the last dim.

    Returns (weights αᵢTᵢ for contributing fragments else 0, T before each fragment, contributing
    mask, T_final). Because T only decreases, "T·(1-α) > 1e-4 for this and every earlier
    contributing fragment" reduces to the inclusive running product staying above 1e-4.
    """
    one_minus = torch.where(hit, 1.0 - alpha, torch.ones_like(alpha))
    t_incl = torch.cumprod(one_minus, dim=-1)
    contrib = hit & (t_incl > T_EPS)
    t_excl = torch.cat([torch.ones_like(t_incl[..., :1]), t_incl[..., :-1]], dim=-1)
    weights = torch.where(contrib, alpha * t_excl, torch.zeros_like(alpha))
    t_final = torch.where(contrib, one_minus, torch.ones_like(one_minus)).prod(dim=-1)
    return weights, t_excl, contrib, t_final


def composite(pix, xy, conics, opacities, colors, depths, valid=None):
    """Differentiable front-to-back compositing of sorted Gaussians at given pixels.

    pix (..., P, 2) pixel centres; xy (..., L, 2), conics (..., L, 3), opacities (..., L),
    colors (..., L, C), depths (..., L) in front-to-back order; valid (..., L) padding mask.
    Returns (color (..., P, C) without background, T_final (..., P), depth (..., P)).
    """
    _, _, _, _, alpha, hit = _fragments(pix, xy, conics, opacities, valid)
    weights, _, _, t_final = _transmittance(alpha, hit)
    color = weights @ colors
    depth = (weights @ depths[..., :, None])[..., 0]
    return color, t_final, depth


def _pixel_centers(width: int, height: int, dtype, device) -> torch.Tensor:
    """(H*W, 2) pixel centres (j + 0.5, i + 0.5) in row-major order."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device) + 0.5,
        torch.arange(width, dtype=dtype, device=device) + 0.5,
        indexing="ij",
    )
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)


# --------------------------------------------------------------------------------------------
# The oracle
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return None


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc only).

    The oracle allocates and frees the same ~10-100 MB temporaries hundreds of times; glibc's
    dynamic mmap threshold then serves them from the heap, which fragments, and the process
    grows by tens of MB per chunk (18 GB at 256×256 with 20k Gaussians). Trimming after every
    chunk keeps the footprint at one chunk's working set."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class _OracleChunk(torch.autograd.Function):
    """One pixel chunk of the oracle: :func:`composite` without keeping its graph.

    forward(pix, xy, conics, opacities, colors, depths) -> :func:`composite`'s outputs; the
    backward recomputes the chunk with autograd enabled and differentiates it with
    ``torch.autograd.grad`` (explicit gradient checkpointing), so gradients are autograd's.
    """

    @staticmethod
    def forward(ctx, pix, xy, conics, opacities, colors, depths):
        ctx.save_for_backward(pix, xy, conics, opacities, colors, depths)
        with torch.no_grad():
            out = composite(pix, xy, conics, opacities, colors, depths)
        _release_freed_memory()
        return out

    @staticmethod
    def backward(ctx, *grad_outputs):
        saved = ctx.saved_tensors
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(need) for t, need in zip(saved, ctx.needs_input_grad)]
            outputs = composite(*inputs)
            wanted = [t for t in inputs if t.requires_grad]
            grads = iter(torch.autograd.grad(outputs, wanted, grad_outputs, allow_unused=True)) if wanted else iter(())
            result = tuple(next(grads) if t.requires_grad else None for t in inputs)
        del outputs
        _release_freed_memory()
        return result


def rasterize_projected(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    depths: torch.Tensor,
    radii: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    width: int,
    height: int,
    background: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Oracle compositing of already projected Gaussians (differentiable by autograd).

    means2d (N, 2) pixels, conics (N, 3) (a, b, c), depths (N,) camera z, radii (N,) (only
    radius > 0 Gaussians are composited; the radius is not used for culling inside the image),
    opacities (N,), colors (N, C), background (C,) or None.
    Returns (image (H, W, C), alpha (H, W, 1), depth (H, W, 1)). Every visible Gaussian is
    evaluated at every pixel, in chunks of ~``ORACLE_CHUNK_FRAGMENTS`` fragments, each recomputed
    in the backward (gradient checkpointing, :class:`_OracleChunk`), so memory stays bounded
    (≈ 0.2-0.5 GB) at any size. Slow by design.
    """
    index = _front_to_back(radii, depths)
    xy, con, op, col, z = means2d[index], conics[index], opacities[index], colors[index], depths[index]
    pix = _pixel_centers(width, height, means2d.dtype, means2d.device)
    chunk = max(1, ORACLE_CHUNK_FRAGMENTS // max(index.numel(), 1))
    parts = [_OracleChunk.apply(pix[start:start + chunk], xy, con, op, col, z)
             for start in range(0, pix.shape[0], chunk)]
    image = torch.cat([p[0] for p in parts]).reshape(height, width, colors.shape[1])
    t_final = torch.cat([p[1] for p in parts]).reshape(height, width, 1)
    depth = torch.cat([p[2] for p in parts]).reshape(height, width, 1)
    if background is not None:
        image = image + t_final * background
    return image, 1.0 - t_final, depth


def rasterize(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    sh_degree: int | None = None,
    background: torch.Tensor | None = None,
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = 0.3,
) -> RasterOutput:
    """The oracle rasterizer: exact contract semantics, gradients by torch autograd.

    Same arguments and output as :func:`npga_taichi.render.rasterize` (see the module docstring
    and ``contract.py``): :func:`project_gaussians` + :func:`sh_to_color` +
    :func:`rasterize_projected`. Slow but memory-bounded.
    """
    validate_inputs(means, quats, scales, opacities, colors, viewmat, K, width, height,
                    sh_degree, background, near, far, eps2d)
    means2d, conics, depths, radii, rgb = _project_with_colors(
        means, quats, scales, opacities, colors, viewmat, K, width, height, sh_degree, near, far, eps2d)
    image, alpha, depth = rasterize_projected(means2d, conics, depths, radii, opacities, rgb,
                                              width, height, background)
    return RasterOutput(image=image, alpha=alpha, depth=depth, radii=radii, means2d=means2d)


# --------------------------------------------------------------------------------------------
# The fast tile-batched rasterizer
# --------------------------------------------------------------------------------------------
@dataclass
class _TilePlan:
    """Which sorted-visible Gaussians each 16×16 tile must look at.

    Only tiles with at least one candidate are listed. ``gauss_ids[starts[t]:starts[t]+counts[t]]``
    are the candidates of tile ``tile_ids[t]`` in front-to-back order.
    """

    width: int
    height: int
    tiles_x: int
    tiles_y: int
    tile_ids: torch.Tensor   # (T,) int64 tile index ty * tiles_x + tx
    starts: torch.Tensor     # (T,) int64 offset into gauss_ids
    counts: torch.Tensor     # (T,) int64 candidate count
    gauss_ids: torch.Tensor  # (I,) int64 index into the sorted visible Gaussians


def _tile_plan(xy: torch.Tensor, radius: torch.Tensor, width: int, height: int) -> _TilePlan:
    """Bin sorted visible Gaussians (xy (M, 2), integer radius (M,)) into the tiles their
    square [xy ± r] touches. Every pixel a Gaussian can contribute to has its centre inside
    that square (σ ≥ |d|² / (2 λmax) and α ≥ 1/255 ⇒ |d| ≤ r), so binning never changes the image."""
    device = xy.device
    tiles_x = (width + TILE_SIZE - 1) // TILE_SIZE
    tiles_y = (height + TILE_SIZE - 1) // TILE_SIZE
    with torch.no_grad():
        # The integer radius bounds the exact reach up to rounding of its float computation;
        # a little slack keeps a pixel whose alpha rounds to exactly 1/255 inside its tiles.
        r = radius.to(xy.dtype) * (1.0 + BINNING_REL_SLACK) + BINNING_ABS_SLACK
        x0 = torch.floor((xy[:, 0] - r) / TILE_SIZE).clamp(0, tiles_x - 1).long()
        x1 = torch.floor((xy[:, 0] + r) / TILE_SIZE).clamp(0, tiles_x - 1).long()
        y0 = torch.floor((xy[:, 1] - r) / TILE_SIZE).clamp(0, tiles_y - 1).long()
        y1 = torch.floor((xy[:, 1] + r) / TILE_SIZE).clamp(0, tiles_y - 1).long()
        span_x = x1 - x0 + 1
        per_gauss = span_x * (y1 - y0 + 1)
        total = int(per_gauss.sum())
        gauss = torch.repeat_interleave(torch.arange(xy.shape[0], device=device), per_gauss)
        first = torch.cumsum(per_gauss, 0) - per_gauss
        local = torch.arange(total, device=device) - first[gauss]
        tile = (y0[gauss] + local // span_x[gauss]) * tiles_x + x0[gauss] + local % span_x[gauss]
        # Stable sort by tile keeps the front-to-back order inside each tile.
        tile_sorted, order = torch.sort(tile, stable=True)
        gauss_ids = gauss[order]
        tile_ids, counts = torch.unique_consecutive(tile_sorted, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
    return _TilePlan(width, height, tiles_x, tiles_y, tile_ids, starts, counts, gauss_ids)


def _tile_groups(lengths: torch.Tensor, budget: int) -> list[tuple[torch.Tensor, int]]:
    """Batch tiles of similar list length: returns (positions into the tile list, padded L).

    Tiles are taken longest first, so each group pads to its first tile's length and holds
    at most ``budget`` fragments (tiles × 256 pixels × L)."""
    order = torch.sort(lengths, descending=True, stable=True).indices
    lens = lengths[order].tolist()
    groups, i = [], 0
    pixels = TILE_SIZE * TILE_SIZE
    while i < len(lens) and lens[i] > 0:
        length = lens[i]
        count = max(1, budget // (pixels * length))
        groups.append((order[i:i + count], length))
        i += count
    return groups


def _tile_pixels(plan: _TilePlan, tiles: torch.Tensor, dtype) -> torch.Tensor:
    """Pixel centres (B, 256, 2) of the given tiles, row-major inside each tile."""
    local = _pixel_centers(TILE_SIZE, TILE_SIZE, dtype, tiles.device)
    origin = torch.stack([tiles % plan.tiles_x, tiles // plan.tiles_x], dim=-1).to(dtype) * TILE_SIZE
    return origin[:, None, :] + local[None]


def _group_lists(plan: _TilePlan, positions: torch.Tensor, length: int):
    """Padded candidate lists (B, L) and their validity mask for tiles at ``positions``."""
    ar = torch.arange(length, device=positions.device)
    valid = ar[None, :] < plan.counts[positions][:, None]
    idx = (plan.starts[positions][:, None] + ar[None, :]).clamp(max=plan.gauss_ids.numel() - 1)
    gid = torch.where(valid, plan.gauss_ids[idx], torch.zeros_like(idx))
    return gid, valid


def _tiles_to_image(plan: _TilePlan, per_tile: torch.Tensor) -> torch.Tensor:
    """(tiles_y*tiles_x, 256, C) tile-major buffer -> (H, W, C) image (cropped)."""
    c = per_tile.shape[-1]
    img = per_tile.reshape(plan.tiles_y, plan.tiles_x, TILE_SIZE, TILE_SIZE, c)
    img = img.permute(0, 2, 1, 3, 4).reshape(plan.tiles_y * TILE_SIZE, plan.tiles_x * TILE_SIZE, c)
    return img[:plan.height, :plan.width]


def _image_to_tiles(plan: _TilePlan, image: torch.Tensor) -> torch.Tensor:
    """(H, W, C) image -> (tiles_y*tiles_x, 256, C) tile-major buffer (zero padded)."""
    c = image.shape[-1]
    full = image.new_zeros(plan.tiles_y * TILE_SIZE, plan.tiles_x * TILE_SIZE, c)
    full[:plan.height, :plan.width] = image
    full = full.reshape(plan.tiles_y, TILE_SIZE, plan.tiles_x, TILE_SIZE, c).permute(0, 2, 1, 3, 4)
    return full.reshape(plan.tiles_y * plan.tiles_x, TILE_SIZE * TILE_SIZE, c)


class _TiledComposite(torch.autograd.Function):
    """Tile-batched compositing with a hand-written backward.

    forward(xy (M,2), conics (M,3), opacities (M,), colors (M,C), depths (M,), plan)
    -> (color (H,W,C), T_final (H,W,1), depth (H,W,1)). The backward recomputes each tile
    group's fragments (bounded memory) and applies the analytic gradient of front-to-back
    compositing; it only revisits each tile's list up to its last contributing Gaussian.
    """

    @staticmethod
    def forward(ctx, xy, conics, opacities, colors, depths, plan: _TilePlan):
        n_tiles = plan.tiles_x * plan.tiles_y
        pixels = TILE_SIZE * TILE_SIZE
        channels = colors.shape[1]
        out_color = colors.new_zeros(n_tiles, pixels, channels)
        out_t = colors.new_ones(n_tiles, pixels, 1)
        out_depth = colors.new_zeros(n_tiles, pixels, 1)
        used = torch.zeros_like(plan.counts)  # per listed tile: last contributing position + 1
        for positions, length in _tile_groups(plan.counts, TILED_GROUP_FRAGMENTS):
            gid, valid = _group_lists(plan, positions, length)
            tiles = plan.tile_ids[positions]
            pix = _tile_pixels(plan, tiles, xy.dtype)
            _, _, _, _, alpha, hit = _fragments(pix, xy[gid], conics[gid], opacities[gid], valid)
            weights, _, contrib, t_final = _transmittance(alpha, hit)
            out_color[tiles] = weights @ colors[gid]
            out_depth[tiles] = weights @ depths[gid][..., None]
            out_t[tiles] = t_final[..., None]
            any_contrib = contrib.any(dim=1)  # (B, L)
            last = length - torch.flip(any_contrib, dims=[-1]).to(torch.int8).argmax(dim=-1)
            used[positions] = torch.where(any_contrib.any(dim=-1), last, torch.zeros_like(last))
        ctx.save_for_backward(xy, conics, opacities, colors, depths, used)
        ctx.plan = plan
        return (_tiles_to_image(plan, out_color), _tiles_to_image(plan, out_t),
                _tiles_to_image(plan, out_depth))

    @staticmethod
    def backward(ctx, grad_color, grad_t, grad_depth):
        xy, conics, opacities, colors, depths, used = ctx.saved_tensors
        plan: _TilePlan = ctx.plan
        g_color = _image_to_tiles(plan, grad_color)
        g_t = _image_to_tiles(plan, grad_t)[..., 0]
        g_depth = _image_to_tiles(plan, grad_depth)[..., 0]
        d_xy = torch.zeros_like(xy)
        d_conics = torch.zeros_like(conics)
        d_opac = torch.zeros_like(opacities)
        d_colors = torch.zeros_like(colors)
        d_depths = torch.zeros_like(depths)
        for positions, length in _tile_groups(used, TILED_GROUP_FRAGMENTS):
            gid, valid = _group_lists(plan, positions, length)
            valid = valid & (torch.arange(length, device=valid.device)[None, :] < used[positions][:, None])
            tiles = plan.tile_ids[positions]
            pix = _tile_pixels(plan, tiles, xy.dtype)
            xy_g, con_g, op_g, col_g, z_g = xy[gid], conics[gid], opacities[gid], colors[gid], depths[gid]
            dx, dy, _, gauss, alpha, hit = _fragments(pix, xy_g, con_g, op_g, valid)
            weights, t_excl, contrib, t_final = _transmittance(alpha, hit)
            gc, gt, gd = g_color[tiles], g_t[tiles], g_depth[tiles]  # (B,P,C), (B,P), (B,P)

            # dL/d(w_i) for w_i = α_i T_i: the colour and depth it carries.
            g_w = gc @ col_g.transpose(1, 2) + gd[..., None] * z_g[:, None, :]
            v = weights * g_w
            # Σ_{j>i} w_j g_j: exclusive suffix sums along the list.
            suffix = torch.flip(torch.cumsum(torch.flip(v, dims=[-1]), dim=-1), dims=[-1])
            suffix = torch.cat([suffix[..., 1:], torch.zeros_like(suffix[..., :1])], dim=-1)
            # T_j (j > i) and T_final each carry a factor (1 - α_i).
            d_alpha = t_excl * g_w - (suffix + t_final[..., None] * gt[..., None]) / (1.0 - alpha)
            d_gauss = torch.where(contrib & (gauss <= ALPHA_MAX), d_alpha, torch.zeros_like(d_alpha))
            d_sigma = -d_gauss * gauss
            a = con_g[:, None, :, 0]
            b = con_g[:, None, :, 1]
            c = con_g[:, None, :, 2]

            grad_xy = torch.stack([-(d_sigma * (a * dx + b * dy)).sum(1),
                                   -(d_sigma * (b * dx + c * dy)).sum(1)], dim=-1)
            grad_con = torch.stack([0.5 * (d_sigma * dx * dx).sum(1), (d_sigma * dx * dy).sum(1),
                                    0.5 * (d_sigma * dy * dy).sum(1)], dim=-1)
            grad_op = (d_gauss * gauss).sum(1) / op_g
            grad_col = weights.transpose(1, 2) @ gc
            grad_z = (weights * gd[..., None]).sum(1)

            flat = gid.reshape(-1)
            d_xy.index_add_(0, flat, grad_xy.reshape(-1, 2))
            d_conics.index_add_(0, flat, grad_con.reshape(-1, 3))
            d_opac.index_add_(0, flat, grad_op.reshape(-1))
            d_colors.index_add_(0, flat, grad_col.reshape(-1, colors.shape[1]))
            d_depths.index_add_(0, flat, grad_z.reshape(-1))
        return d_xy, d_conics, d_opac, d_colors, d_depths, None


def rasterize_tiled(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    sh_degree: int | None = None,
    background: torch.Tensor | None = None,
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = 0.3,
) -> RasterOutput:
    """Fast tile-batched PyTorch rasterizer with the oracle's exact semantics.

    Same arguments and output as :func:`rasterize`. Projection, SH and depth order are the
    oracle's (one shared front end); compositing bins visible Gaussians into 16×16 tiles by
    their opacity-aware radius, batches tiles of similar list length into padded tensors and
    runs a hand-written vectorised backward (see :class:`_TiledComposite`).
    """
    validate_inputs(means, quats, scales, opacities, colors, viewmat, K, width, height,
                    sh_degree, background, near, far, eps2d)
    means2d, conics, depths, radii, rgb = _project_with_colors(
        means, quats, scales, opacities, colors, viewmat, K, width, height, sh_degree, near, far, eps2d)
    index = _front_to_back(radii, depths)
    xy = means2d[index]
    plan = _tile_plan(xy.detach(), radii[index], width, height)
    color, t_final, depth = _TiledComposite.apply(xy, conics[index], opacities[index], rgb[index],
                                                  depths[index], plan)
    image = color if background is None else color + t_final * background
    return RasterOutput(image=image, alpha=1.0 - t_final, depth=depth, radii=radii, means2d=means2d)
