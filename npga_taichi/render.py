"""Differentiable Gaussian rasterization: PyTorch autograd over our Taichi kernels.

:func:`rasterize` is the public entry point (the contract in ``npga_taichi.contract`` and
DESIGN.md "The rasterizer contract"). It chains three autograd Functions, as gsplat does, so
``means2d`` is an intermediate tensor of the graph whose ``.grad`` is the screen-space gradient
after ``backward()``:

    _ProjectGaussians   means, quats, scales (opacities for culling) -> means2d, conics, depths, radii
    _ShadeSH            means, SH coefficients -> colours            (only with ``sh_degree``)
    _Composite          means2d, conics, depths, opacities, colours, background -> image, alpha, depth

Each Function's backward is hand-written (kernels/projection.py, sh.py, composite.py); tile
binning and our radix sort run inside ``_Composite.forward`` (kernels/tiles.py). Each stage has a
PyTorch twin of the same name in :mod:`npga_taichi.reference` (``project_gaussians``,
``sh_to_color``, ``composite``) and a test file named after its kernel module.

Device follows the inputs (CPU or CUDA tensors, matching the Taichi arch); float32 and float64
both work, with one set of kernels per dtype compiled on first use (cached offline).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import taichi as ti

from npga_taichi import contract
from npga_taichi.cameras import camera_center
from npga_taichi.contract import TILE_SIZE, RasterOutput
from npga_taichi.kernels import runtime
from npga_taichi.kernels.composite import (
    GRAD_COLUMNS,
    channel_variant,
    composite_kernels,
    scratch_rows,
)
from npga_taichi.kernels.footprint import FOOTPRINT_WIDTH
from npga_taichi.kernels.projection import project_gaussians_kernels
from npga_taichi.kernels.sh import sh_to_color_kernels
from npga_taichi.kernels.tiles import (
    RADIX_BITS,
    RADIX_BLOCKS,
    binning_kernels,
    radix_sort_pairs,
    sum_slot_rows,
    tile_ranges,
)

__all__ = ["rasterize", "RasterOutput"]

_TI_DTYPES = {torch.float32: ti.f32, torch.float64: ti.f64}


class _ScratchCache:
    """Per (device, dtype, name) scratch tensors that are reused between calls and only grow.

    Only buffers whose contents never outlive one kernel sequence live here; anything saved for
    the backward is allocated per call (several renders may be pending before one backward).
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        numel = 1
        for s in shape:
            numel *= s
        key = (name, dtype, str(device))
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            # grow geometrically so a slowly growing scene does not reallocate every call
            size = max(numel, int(buf.numel() * 1.5) if buf is not None else numel, 1)
            buf = torch.empty(size, dtype=dtype, device=device)
            self._buffers[key] = buf
        return buf[:numel].view(shape)


_scratch = _ScratchCache()


def _real(t: torch.Tensor):
    return _TI_DTYPES[t.dtype]


def _tile_grid(width: int, height: int) -> tuple[int, int]:
    return (width + TILE_SIZE - 1) // TILE_SIZE, (height + TILE_SIZE - 1) // TILE_SIZE


class _ProjectGaussians(torch.autograd.Function):
    """means (N,3), quats (N,4), scales (N,3), opacities (N,) -> means2d (N,2), conics (N,3),
    depths (N,), radii (N,) int32 (not differentiable)."""

    @staticmethod
    def forward(ctx, means, quats, scales, opacities, viewmat, K, width, height, near, far, eps2d):
        means, quats, scales, opacities = _detached(means, quats, scales, opacities)
        n = means.shape[0]
        dt, dev = means.dtype, means.device
        means2d = torch.empty((n, 2), dtype=dt, device=dev)
        conics = torch.empty((n, 3), dtype=dt, device=dev)
        depths = torch.empty((n,), dtype=dt, device=dev)
        radii = torch.empty((n,), dtype=torch.int32, device=dev)
        if n > 0:
            forward_kernel, _ = project_gaussians_kernels(_real(means))
            forward_kernel(means, quats, scales, opacities, viewmat, K, float(width), float(height),
                           float(near), float(far), float(eps2d), means2d, conics, depths, radii)
        ctx.save_for_backward(means, quats, scales, viewmat, K, radii)
        ctx.config = (width, height, eps2d)
        ctx.mark_non_differentiable(radii)
        return means2d, conics, depths, radii

    @staticmethod
    def backward(ctx, v_means2d, v_conics, v_depths, _v_radii):
        means, quats, scales, viewmat, K, radii = ctx.saved_tensors
        width, height, eps2d = ctx.config
        v_means = torch.empty_like(means)  # the kernel writes every row (zeros where culled)
        v_quats = torch.empty_like(quats)
        v_scales = torch.empty_like(scales)
        n = means.shape[0]
        if n > 0:
            v_means2d = _grad_or_zeros(v_means2d, (n, 2), means)
            v_conics = _grad_or_zeros(v_conics, (n, 3), means)
            v_depths = _grad_or_zeros(v_depths, (n,), means)
            _, backward_kernel = project_gaussians_kernels(_real(means))
            backward_kernel(means, quats, scales, viewmat, K, float(width), float(height), float(eps2d), radii,
                            v_means2d, v_conics, v_depths, v_means, v_quats, v_scales)
        return v_means, v_quats, v_scales, None, None, None, None, None, None, None, None


class _ShadeSH(torch.autograd.Function):
    """means (N,3), coeffs (N,K,3), camera centre (3,) -> colours (N,3) = max(SH(dir)+0.5, 0)."""

    @staticmethod
    def forward(ctx, means, coeffs, campos, degree):
        means, coeffs = _detached(means, coeffs)
        n = means.shape[0]
        colors = torch.empty((n, 3), dtype=means.dtype, device=means.device)
        if n > 0:
            forward_kernel, _ = sh_to_color_kernels(_real(means))
            forward_kernel(means, coeffs, campos, degree, colors)
        ctx.save_for_backward(means, coeffs, campos)
        ctx.degree = degree
        return colors

    @staticmethod
    def backward(ctx, v_colors):
        means, coeffs, campos = ctx.saved_tensors
        v_coeffs = torch.zeros_like(coeffs)
        v_means = torch.zeros_like(means)
        if means.shape[0] > 0 and v_colors is not None:
            _, backward_kernel = sh_to_color_kernels(_real(means))
            backward_kernel(means, coeffs, campos, ctx.degree, v_colors.contiguous(), v_coeffs, v_means)
        return v_means, v_coeffs, None, None


def _detached(*tensors):
    """Plain tensors for the kernels (Taichi inspects ``.grad`` of tensors that require grad)."""
    return tuple(t.detach() for t in tensors)


def _grad_or_zeros(grad, shape, like):
    if grad is None:
        return torch.zeros(shape, dtype=like.dtype, device=like.device)
    return grad.contiguous()


class TileBins(NamedTuple):
    """Tile intersections of one render, from :func:`bin_and_sort`.

    Intersections are first emitted grouped by Gaussian (Gaussians front to back): Gaussian g's
    occupy *slots* first[g] .. first[g] + counts[g] - 1. They are then sorted by (tile, float32
    depth, Gaussian index); a sorted intersection's slot is where the backward writes its
    gradient row, so summing the rows per Gaussian reads contiguous memory.
    """

    ids: torch.Tensor        # (M,) int32 Gaussian of each sorted intersection (>= 1 entry)
    slots: torch.Tensor      # (M,) int32 slot of each sorted intersection (>= 1 entry)
    ranges: torch.Tensor     # (n_tiles, 2) int32 [start, end) of each tile's sorted intersections
    total: int               # M
    footprint: torch.Tensor  # (N, FOOTPRINT_WIDTH) per-Gaussian rows (kernels/footprint.py); scratch
                             # reused by the next call
    first: torch.Tensor      # (N,) int64 first slot of each Gaussian
    counts: torch.Tensor     # (N,) int64 intersections of each Gaussian


def bin_and_sort(means2d, conics, opacities, depths, radii, width: int, height: int) -> TileBins:
    """Tile intersections sorted by (tile, float32 depth, Gaussian index), see :class:`TileBins`."""
    tiles_x, tiles_y = _tile_grid(width, height)
    n_tiles = tiles_x * tiles_y
    n = means2d.shape[0]
    dt, dev = means2d.dtype, means2d.device
    ranges = torch.zeros((n_tiles, 2), dtype=torch.int32, device=dev)
    footprint = _scratch.get("footprint", (n, FOOTPRINT_WIDTH), dt, dev)
    counts = torch.zeros((n,), dtype=torch.int64, device=dev)
    first = torch.zeros((n,), dtype=torch.int64, device=dev)
    none = torch.zeros((1,), dtype=torch.int32, device=dev)
    if n == 0:
        return TileBins(none, none, ranges, 0, footprint, first, counts)
    count_tiles, emit_keys = binning_kernels(_real(means2d))
    depth_keys = _scratch.get("depth_keys", (n,), torch.int32, dev)
    count_tiles(means2d, conics, opacities, depths, radii, width, height, footprint, counts, depth_keys)
    # The order is that of a stable LSD radix sort of the keys tile << 32 | float32 depth bits
    # over intersections in Gaussian order; its depth passes are run first, once per Gaussian
    # (N keys instead of M), and the intersections are emitted front to back for the tile passes.
    hist = _scratch.get("radix_hist", (RADIX_BLOCKS, 1 << RADIX_BITS), torch.int32, dev)
    gauss = torch.arange(n, dtype=torch.int32, device=dev)
    _, order = radix_sort_pairs(depth_keys, gauss, _scratch.get("depth_keys_tmp", (n,), torch.int32, dev),
                                _scratch.get("order_tmp", (n,), torch.int32, dev), hist, n, 31)
    counts_sorted = counts.index_select(0, order)
    ends = torch.cumsum(counts_sorted, 0)
    total = int(ends[-1])
    if total >= 2**31 - 1:
        raise ValueError(f"{total} tile intersections exceed the int32 index range; render smaller images")
    if total == 0:
        return TileBins(none, none, ranges, 0, footprint, first, counts)
    # each Gaussian's first slot, scattered back to Gaussian order so emit_keys reads its inputs
    # sequentially (gathering them in depth order made it 1.5x slower)
    first.index_copy_(0, order.long(), ends - counts_sorted)
    tile_keys = torch.empty((total,), dtype=torch.int32, device=dev)
    slot_ids = _scratch.get("slot_ids", (total,), torch.int32, dev)
    emit_keys(footprint, radii, first, width, height, tiles_x, tile_keys, slot_ids)
    # both buffers of the tile sort are fresh: either may come back as the result
    slots = torch.arange(total, dtype=torch.int32, device=dev)
    tile_keys, slots = radix_sort_pairs(tile_keys, slots, torch.empty_like(tile_keys), torch.empty_like(slots),
                                        hist, total, max(1, (n_tiles - 1).bit_length()))
    tile_ranges(tile_keys, total, ranges)
    return TileBins(slot_ids.index_select(0, slots), slots, ranges, total, footprint, first, counts)


class _Composite(torch.autograd.Function):
    """(means2d, conics, depths, opacities, colors (N,C), background (C,)) -> image (H,W,C),
    alpha (H,W,1), depth (H,W,1)."""

    @staticmethod
    def forward(ctx, means2d, conics, depths, opacities, colors, background, radii, width, height):
        means2d, conics, depths, opacities, colors, background = _detached(
            means2d, conics, depths, opacities, colors, background)
        dt, dev = means2d.dtype, means2d.device
        real = _real(means2d)
        channels = colors.shape[1]
        tiles_x, _ = _tile_grid(width, height)
        bins = bin_and_sort(means2d, conics, opacities, depths, radii, width, height)
        ids, ranges, total = bins.ids, bins.ranges, bins.total
        composite_forward, _ = composite_kernels(real, channel_variant(channels))
        # each tile streams its Gaussians' footprint rows from one contiguous block (a torch
        # gather: 5x faster than the same copy as a Taichi kernel on the CPU)
        if total > 0:
            packed = bins.footprint.index_select(0, ids)
        else:
            packed = torch.zeros((1, FOOTPRINT_WIDTH), dtype=dt, device=dev)
        colors_arg = colors if colors.shape[0] > 0 else torch.zeros((1, channels), dtype=dt, device=dev)
        image = torch.empty((height, width, channels), dtype=dt, device=dev)
        alpha = torch.empty((height, width, 1), dtype=dt, device=dev)
        depth = torch.empty((height, width, 1), dtype=dt, device=dev)
        # saved per-pixel state as lane rows: rows padded to whole tiles, 16 pixels per element
        t_final = torch.empty((height * tiles_x, TILE_SIZE), dtype=dt, device=dev)
        last = torch.empty((height * tiles_x, TILE_SIZE), dtype=torch.int32, device=dev)
        row_last = torch.empty((height * tiles_x,), dtype=torch.int32, device=dev)
        spread = runtime.parallel_spread(ranges.shape[0], dev.type == "cpu")
        composite_forward(packed, ids, colors_arg, ranges, background, width, height, tiles_x, spread,
                          image.view(-1), alpha.view(-1), depth.view(-1), t_final, last, row_last)
        ctx.save_for_backward(packed, ids, colors_arg, ranges, background, t_final, last, row_last,
                              bins.slots, bins.first, bins.counts)
        ctx.config = (width, height, colors.shape[0], total)
        # unused outputs arrive as None in backward instead of materialised zero images
        ctx.set_materialize_grads(False)
        return image, alpha, depth

    @staticmethod
    def backward(ctx, v_image, v_alpha, v_depth):
        packed, ids, colors, ranges, background, t_final, last, row_last, slots, first, counts = ctx.saved_tensors
        width, height, n, total = ctx.config
        dt, dev = packed.dtype, packed.device
        channels = colors.shape[1]
        tiles_x, tiles_y = _tile_grid(width, height)
        n_tiles = tiles_x * tiles_y
        # upstream gradients as lane rows like t_final (channel planes for the image)
        v_image = _lane_rows("v_image", v_image, height, width, channels, packed)
        v_alpha = _lane_rows("v_alpha", v_alpha, height, width, 1, packed)
        v_depth = _lane_rows("v_depth", v_depth, height, width, 1, packed)
        # one gradient row per intersection, at its slot (written by its tile only, no atomics),
        # then summed per Gaussian; columns: mean2d x, y, conic a, b, c, opacity, depth, channels
        grad_isect = _scratch.get("grad_isect", (packed.shape[0], GRAD_COLUMNS + channels), dt, dev)
        v_background_tiles = torch.empty((n_tiles, channels), dtype=dt, device=dev)
        variant = channel_variant(channels)
        _, composite_backward = composite_kernels(_real(packed), variant)
        on_cpu = dev.type == "cpu"
        # working vectors of the backward: per-thread scratch inside the kernels on the CPU,
        # one block per tile here on a GPU
        rows = 1 if on_cpu else n_tiles * scratch_rows(variant)
        scratch = _scratch.get("composite_scratch", (rows, TILE_SIZE), dt, dev)
        composite_backward(packed, ids, slots, colors, ranges, background, width, height, tiles_x,
                           runtime.parallel_spread(n_tiles, on_cpu), t_final, last, row_last,
                           v_image, v_alpha, v_depth, grad_isect, v_background_tiles, scratch)
        if total > 0:
            # contiguous per Gaussian (slots), so this reads memory in order: 1.6x faster than
            # index_add_ over the sorted intersections; every row of grads is written
            grads = torch.empty((n, GRAD_COLUMNS + channels), dtype=dt, device=dev)
            sum_slot_rows(_real(packed), grads.shape[1])(grad_isect, first, counts, grads)
        else:
            grads = torch.zeros((n, GRAD_COLUMNS + channels), dtype=dt, device=dev)
        v_means2d, v_conics = grads[:, 0:2], grads[:, 2:5]
        v_opacities, v_depths, v_colors = grads[:, 5], grads[:, 6], grads[:, GRAD_COLUMNS:]
        v_background = v_background_tiles.sum(0)
        return (v_means2d, v_conics, v_depths, v_opacities, v_colors, v_background, None, None, None)


def _lane_rows(name, grad, height, width, channels, like):
    """An upstream gradient (H, W[, C]) or None in the kernels' lane layout: channel planes of
    rows padded by zeros to whole tiles, as a (C * H * tiles_x, 16) tensor (element
    (ch * H + row) * tiles_x + tile column holds 16 pixels)."""
    tiles_x, _ = _tile_grid(width, height)
    pitch = tiles_x * TILE_SIZE
    buf = _scratch.get(name, (channels, height, pitch), like.dtype, like.device)
    if grad is None:
        buf.zero_()
    else:
        if pitch > width:
            buf[:, :, width:].zero_()
        buf[:, :, :width].copy_(grad.reshape(height, width, channels).permute(2, 0, 1))
    return buf.view(channels * height * tiles_x, TILE_SIZE)


def rasterize(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
              colors: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor, width: int, height: int,
              sh_degree: int | None = None, background: torch.Tensor | None = None, near: float = 0.01,
              far: float = 1e10, eps2d: float = 0.3) -> RasterOutput:
    """Render N Gaussians into one pinhole camera, differentiably.

    means (N, 3) world; quats (N, 4) wxyz, any non-zero magnitude (normalised inside, scale-safely);
    scales (N, 3) > 0 (activated);
    opacities (N,) in [0, 1]; colors (N, C) features (any C >= 1) or, with ``sh_degree`` = d,
    SH coefficients (N, K >= (d+1)^2, 3) shaded as max(SH(dir) + 0.5, 0) with
    dir = normalise(mean - camera centre); viewmat (4, 4) world->camera, OpenCV axes, its 3x3 a
    rotation (``contract.ROTATION_TOL``); K (3, 3) pixels; width, height (and sh_degree) Python
    or numpy integers, not bool; background (C,) or None (zeros). All tensors share one dtype
    (float32 or float64) and one device. Pixel centres are at (j + 0.5, i + 0.5).

    Returns a :class:`RasterOutput` with image (H, W, C), alpha (H, W, 1), depth (H, W, 1),
    radii (N,) int32 (0 = culled) and means2d (N, 2), whose ``.grad`` holds the screen-space
    gradient after ``backward()`` when the inputs require grad. Gradients flow to means, quats,
    scales, opacities, colors / SH coefficients and background (not to viewmat or K).
    """
    channels = contract.validate_inputs(means, quats, scales, opacities, colors, viewmat, K, width, height,
                                        sh_degree, background, near, far, eps2d)
    width, height = int(width), int(height)  # numpy integers are accepted; the kernels take int
    sh_degree = None if sh_degree is None else int(sh_degree)
    runtime.check_device("means", means)
    dt, dev = means.dtype, means.device
    if background is None:
        background = torch.zeros((channels,), dtype=dt, device=dev)
    viewmat_c = viewmat.detach().contiguous()
    K_c = K.detach().contiguous()
    means_c = means.contiguous()
    means2d, conics, depths, radii = _ProjectGaussians.apply(
        means_c, quats.contiguous(), scales.contiguous(), opacities.contiguous(), viewmat_c, K_c,
        width, height, near, far, eps2d)
    if sh_degree is not None:
        campos = camera_center(viewmat_c).contiguous()
        colors_rgb = _ShadeSH.apply(means_c, colors.contiguous(), campos, sh_degree)
    else:
        colors_rgb = colors.contiguous()
    image, alpha, depth = _Composite.apply(means2d, conics, depths, opacities.contiguous(), colors_rgb,
                                           background.contiguous(), radii, width, height)
    if means2d.requires_grad:
        means2d.retain_grad()
    return RasterOutput(image=image, alpha=alpha, depth=depth, radii=radii, means2d=means2d)


def compile_kernels(width: int, height: int, sh_degree: int | None = 3, channels: int = 3,
                    dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> None:
    """Compile (or load from the offline cache) the kernels that :func:`rasterize` forward and
    backward use for (width x height) images, by rendering random Gaussians twice: a few (the
    radix sorts' serial variants) and ~2000 covering many tiles (the tile sort's parallel variant
    past ``RADIX_SERIAL_MAX`` intersections). Colours are SH coefficients of ``sh_degree``, or
    ``channels`` plain features when ``sh_degree`` is None (screen-CNN avatars).

    A cold compile of these kernels takes ~16 s on a 2-core CPU; ``npga demo`` runs this in a
    second process while the capture's own kernel compiles on one core (npga_taichi.pipeline).
    """
    gen = torch.Generator().manual_seed(0)
    f = float(max(width, height))
    K = torch.tensor([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]], dtype=dtype)
    viewmat = torch.eye(4, dtype=dtype)
    for n, radius_px in ((16, 3.0), (2000, 45.0)):
        z = 2.0 + torch.rand(n, 1, generator=gen, dtype=dtype)
        xy = (torch.rand(n, 2, generator=gen, dtype=dtype) - 0.5) * torch.tensor([width, height], dtype=dtype) / f
        leaves = {
            "means": torch.cat([xy * z, z], 1),
            "quats": torch.randn(n, 4, generator=gen, dtype=dtype),
            "scales": (radius_px / 3.0) * z.expand(n, 3) / f,
            "opacities": torch.full((n,), 0.5, dtype=dtype),
            "colors": (torch.rand(n, (sh_degree + 1) ** 2, 3, generator=gen, dtype=dtype) * 0.3
                       if sh_degree is not None else torch.rand(n, channels, generator=gen, dtype=dtype)),
            "background": torch.ones(3 if sh_degree is not None else channels, dtype=dtype),
        }
        leaves = {k: v.to(device).requires_grad_(True) for k, v in leaves.items()}
        out = rasterize(leaves["means"], leaves["quats"], leaves["scales"], leaves["opacities"], leaves["colors"],
                        viewmat.to(device), K.to(device), width, height, sh_degree=sh_degree,
                        background=leaves["background"])
        (out.image.sum() + out.alpha.sum() + out.depth.sum()).backward()
