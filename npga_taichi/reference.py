"""Pure-PyTorch twin of every rasterizer op: the oracle our Taichi kernels are checked against.

Everything here is ordinary differentiable PyTorch (float32 or float64, CPU or CUDA: the device
follows the inputs) and follows the rasterizer contract of ``../shared/DESIGN.md`` to the letter.
Each Taichi kernel module names its twin here, and the twin carries the kernel's name
(kernel module -> twin -> test file):

* ``kernels/projection.py`` (``project_gaussians_kernels``) -> :func:`project_gaussians`
  -> tests/test_projection.py
* ``kernels/sh.py`` (``sh_to_color_kernels``) -> :func:`sh_to_color` (bases: :func:`eval_sh`)
  -> tests/test_sh.py
* ``kernels/footprint.py`` (where a Gaussian can reach alpha 1/255) -> the ``hit`` rule of
  :func:`fragments` -> tests/test_render.py (binning test)
* ``kernels/tiles.py`` (binning, depth sort) -> the order of :func:`front_to_back`, per tile
  -> tests/test_render.py
* ``kernels/composite.py`` (``composite_kernels``) -> :func:`composite` -> tests/test_render.py
  (and the whole chain, ``render.rasterize`` -> :func:`rasterize`)

* :func:`quat_scale_to_covariance` -- Σ = R S Sᵀ Rᵀ from wxyz quaternions (normalised inside,
  scale-safely: :func:`normalize_quats`).
* :func:`project_gaussians` -- camera transform, clamped-Jacobian EWA projection, conics, the
  opacity-aware radius and the culling rule (radius 0 = culled).
* :func:`eval_sh` / :func:`sh_to_color` -- real spherical harmonics up to degree 3 (graphdeco basis).
* :func:`rasterize` -- the ORACLE: every visible Gaussian is composited at every pixel (no tile
  or radius culling inside the image, so it proves that culling never changes the image), in pixel
  chunks recomputed in the backward (checkpointing) so memory stays bounded; gradients are torch
  autograd's. :func:`rasterize_projected` is its compositing stage alone (for external projections).

The oracle itself is checked against independent code: projection and SH against gsplat's
PyTorch functions (tests/test_projection.py, tests/test_sh.py), compositing against a per-pixel
loop written from the contract text (tests/test_reference.py).

Compositing semantics (per pixel, centre (j+0.5, i+0.5)): visible Gaussians front to back by the
sort key float32(camera z), ties broken by Gaussian index; d = pixel - mean2d;
σ = ½(a dx² + c dy²) + b dx dy; α = min(0.999, o·exp(-σ)); a Gaussian contributes iff σ ≥ 0 and
α ≥ 1/255; compositing stops *before* the first contributing Gaussian whose T·(1-α) ≤ 1e-4.
image = Σ αᵢTᵢcᵢ + T_final·background, alpha = 1 - T_final, depth = Σ αᵢTᵢzᵢ.
"""
from __future__ import annotations

import ctypes
import functools

import torch
import torch.nn.functional as F

from npga_taichi.cameras import camera_center
from npga_taichi.contract import (
    ALPHA_MAX,
    ALPHA_MIN,
    FRUSTUM_CLAMP,
    T_EPS,
    RasterOutput,
    validate_inputs,
)
from npga_taichi.conventions import SH_C0, SH_C1, SH_C2, SH_C3

# Fragments (pixels × Gaussians) evaluated at once by the oracle; with ~15 live temporaries per
# fragment one chunk's recomputed autograd graph takes ~120 MB (float32) / ~240 MB (float64).
ORACLE_CHUNK_FRAGMENTS = 2_000_000


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------
def normalize_quats(quats: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (N, 4) of non-zero quaternions (N, 4), computed scale-safely.

    quat / max_k |quat_k| has norm in [1, 2], so its norm neither overflows nor underflows where
    |quat|² would (float32: components ≤ 1e-19 or ≥ 1e20); the kernel does the same. The result
    does not depend on that divisor, so it is detached: the gradient is exactly that of
    quat / |quat|.
    """
    scaled = quats / quats.detach().abs().amax(dim=-1, keepdim=True)
    return scaled / torch.linalg.vector_norm(scaled, dim=-1, keepdim=True)


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (N, 3, 3) from non-zero quaternions (N, 4) in wxyz order (normalised
    here by :func:`normalize_quats`)."""
    q = normalize_quats(quats)
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
def front_to_back(radii: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
    """Indices (M,) of the visible (radius > 0) Gaussians in compositing order.

    Contract: sort key float32(z) (also in float64 mode), ties by Gaussian index -> a stable
    sort of the index-ordered visible list."""
    with torch.no_grad():
        visible = torch.nonzero(radii > 0).squeeze(1)
        order = torch.sort(depths.detach()[visible].to(torch.float32), stable=True).indices
        return visible[order]


def project_and_shade(means, quats, scales, opacities, colors, viewmat, K, width, height,
                      sh_degree, near, far, eps2d):
    """Front end of the oracle (and of the benchmark's PyTorch peer): projection (means2d kept
    for its .grad) and per-Gaussian colours (SH evaluated when ``sh_degree`` is given).
    Returns (means2d, conics, depths, radii, colours)."""
    means2d, conics, depths, radii = project_gaussians(
        means, quats, scales, opacities, viewmat, K, width, height, near, far, eps2d)
    if means2d.requires_grad:
        means2d.retain_grad()  # the screen-space gradient densification reads
    if sh_degree is not None:
        colors = sh_to_color(sh_degree, means, viewmat, colors)
    return means2d, conics, depths, radii, colors


# --------------------------------------------------------------------------------------------
# Compositing (also used by the benchmark's PyTorch peer, benchmarks/tiled_peer.py)
# --------------------------------------------------------------------------------------------
def fragments(pix, xy, conics, opacities, valid=None):
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


def transmittance(alpha, hit):
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
    _, _, _, _, alpha, hit = fragments(pix, xy, conics, opacities, valid)
    weights, _, _, t_final = transmittance(alpha, hit)
    color = weights @ colors
    depth = (weights @ depths[..., :, None])[..., 0]
    return color, t_final, depth


def pixel_centers(width: int, height: int, dtype, device) -> torch.Tensor:
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
    index = front_to_back(radii, depths)
    xy, con, op, col, z = means2d[index], conics[index], opacities[index], colors[index], depths[index]
    pix = pixel_centers(width, height, means2d.dtype, means2d.device)
    chunk = max(1, ORACLE_CHUNK_FRAGMENTS // max(index.numel(), 1))
    parts = [_OracleChunk.apply(pix[start:start + chunk], xy, con, op, col, z)
             for start in range(0, pix.shape[0], chunk)]
    image = torch.cat([p[0] for p in parts]).reshape(height, width, colors.shape[1])
    t_final = torch.cat([p[1] for p in parts]).reshape(height, width, 1)
    depth = torch.cat([p[2] for p in parts]).reshape(height, width, 1)
    if background is not None:
        image = image + t_final * background
    return image, 1.0 - t_final, depth


def rasterize(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
              colors: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor, width: int, height: int,
              sh_degree: int | None = None, background: torch.Tensor | None = None, near: float = 0.01,
              far: float = 1e10, eps2d: float = 0.3) -> RasterOutput:
    """The oracle rasterizer: exact contract semantics, gradients by torch autograd.

    Same arguments and output as :func:`npga_taichi.render.rasterize` (see the module docstring
    and ``contract.py``): :func:`project_gaussians` + :func:`sh_to_color` +
    :func:`rasterize_projected`. Slow but memory-bounded.
    """
    validate_inputs(means, quats, scales, opacities, colors, viewmat, K, width, height,
                    sh_degree, background, near, far, eps2d)
    width, height = int(width), int(height)  # numpy integers are accepted
    sh_degree = None if sh_degree is None else int(sh_degree)
    means2d, conics, depths, radii, rgb = project_and_shade(
        means, quats, scales, opacities, colors, viewmat, K, width, height, sh_degree, near, far, eps2d)
    image, alpha, depth = rasterize_projected(means2d, conics, depths, radii, opacities, rgb,
                                              width, height, background)
    return RasterOutput(image=image, alpha=alpha, depth=depth, radii=radii, means2d=means2d)
