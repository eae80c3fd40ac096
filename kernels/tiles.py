"""Tile binning and sorting: which Gaussians touch which 16x16 tile, front to back.

Pipeline (all Taichi kernels except the prefix sum, which is ``torch.cumsum`` because Taichi
1.7's prefix sum is GPU-only):

1. ``count_tiles``   per Gaussian, its footprint row (``kernels/footprint.py``: mean, conic,
   opacity, depth, the ellipse sigma <= cut outside which it cannot reach alpha 1/255) and the
   number of tiles whose pixel centres that ellipse may reach (0 if culled): per row of tiles,
   those under the ellipse's x-range over the row's pixel-centre rows (on random scenes ~30 %
   fewer than the square of side 2 radius).
2. offsets = exclusive prefix sum of the counts (torch, int64).
3. ``emit_keys``     one (key, gaussian id) pair per counted (Gaussian, tile), emitted in
   Gaussian order; key = tile_id << 32 | float32 bits of the camera depth (depth > near > 0, so
   the IEEE bits order like the depths).
4. radix sort        our LSD radix sort (8 bits a pass, stable), so equal keys keep Gaussian
   order: ties in float32 depth are broken by Gaussian index, in float64 mode too.
5. ``tile_ranges``   per tile, the [start, end) range of its intersections in sorted order.

Buffers are owned by the caller (``npga_taichi.render`` caches and grows them); no intersection
is ever dropped because the caller sizes the buffers from the exact count.
"""

import functools

import taichi as ti

from npga_taichi.kernels import runtime
import torch

from npga_taichi.contract import TILE_SIZE
from npga_taichi.kernels.footprint import (
    F_CONIC_A, F_CONIC_B, F_CONIC_C, F_CUT, F_DEPTH, F_MEAN_X, F_MEAN_Y, F_OPACITY, F_Y_EXTENT,
    band_x_range, half_extents, sigma_cut,
)

RADIX_BITS = 8
RADIX_BUCKETS = 1 << RADIX_BITS
RADIX_BLOCKS = 64  # independent histogram/scatter blocks (parallel work items) per pass


@functools.lru_cache(maxsize=None)
def binning_kernels(real):
    """Return ``(count_tiles, emit_keys)`` for float dtype ``real``."""
    runtime.ensure_initialized()  # kernels are compiled for the arch chosen once per process
    arr1 = ti.types.ndarray(dtype=real, ndim=1)
    arr2 = ti.types.ndarray(dtype=real, ndim=2)
    iarr1 = ti.types.ndarray(dtype=ti.i32, ndim=1)
    i64arr1 = ti.types.ndarray(dtype=ti.i64, ndim=1)
    tile = float(TILE_SIZE)  # exact in f32
    half = 0.5  # exact in f32, so safe as an untyped literal in f64 kernels

    @ti.func
    def tile_span(lo, hi, limit):
        """Tiles (t0, t1) holding the pixels j < limit whose centres j + 0.5 lie in [lo, hi]
        (t1 < t0 if none). Clamped in floating point before the cast (no int32 overflow)."""
        j0 = ti.cast(ti.min(ti.max(ti.ceil(lo - half), real(0.0)), ti.cast(limit, real)), ti.i32)
        j1 = ti.cast(ti.min(ti.max(ti.floor(hi - half), real(-1.0)), ti.cast(limit - 1, real)), ti.i32)
        t0, t1 = 0, -1
        if j0 <= j1:
            t0, t1 = j0 // TILE_SIZE, j1 // TILE_SIZE
        return t0, t1

    @ti.func
    def footprint_rows(footprint: ti.template(), g, radius, height):
        """(ty0, ty1, x_ext, y_ext, exact) of Gaussian g: its rows of tiles, the half extents of
        its footprint ellipse, never beyond its radius (+1 px: the ellipse lies inside the
        radius up to rounding), and whether its conic is positive definite (so each row of
        tiles can be narrowed to the ellipse)."""
        a = footprint[g, F_CONIC_A]
        b = footprint[g, F_CONIC_B]
        c = footprint[g, F_CONIC_C]
        x_ext, y_ext = half_extents(a, b, c, footprint[g, F_CUT], real)
        r = ti.cast(radius + 1, real)
        x_ext = ti.min(x_ext, r)
        y_ext = ti.min(y_ext, r)
        my = footprint[g, F_MEAN_Y]
        ty0, ty1 = tile_span(my - y_ext, my + y_ext, height)
        return ty0, ty1, x_ext, y_ext, a * c - b * b > real(0.0) and a > real(0.0) and c > real(0.0)

    @ti.func
    def row_tiles(footprint: ti.template(), g, ty, x_ext, y_ext, exact, width, height):
        """Tiles (tx0, tx1) of row ty whose pixel centres Gaussian g's footprint ellipse may
        reach: exactly those the ellipse's x-range over the row's band of pixel-centre rows
        reaches (the whole box width for a degenerate conic); tx1 < tx0 if none."""
        mx = footprint[g, F_MEAN_X]
        lo = mx - x_ext
        hi = mx + x_ext
        if exact:
            my = footprint[g, F_MEAN_Y]
            y0 = ty * TILE_SIZE
            x_lo, x_hi, crosses = band_x_range(
                footprint[g, F_CONIC_A], footprint[g, F_CONIC_B], footprint[g, F_CONIC_C], footprint[g, F_CUT],
                y_ext, ti.cast(y0, real) + half - my, ti.cast(ti.min(y0 + TILE_SIZE, height), real) - half - my, real)
            lo = ti.max(lo, mx + x_lo)
            hi = ti.min(hi, mx + x_hi)
            if not crosses:
                hi = lo - tile  # no pixel of the row
        return tile_span(lo, hi, width)

    @ti.kernel
    def count_tiles(
        means2d: arr2, conics: arr2, opacities: arr1, depths: arr1, radii: iarr1,
        width: ti.i32, height: ti.i32, tiles_x: ti.i32, tiles_y: ti.i32, footprint: arr2, counts: i64arr1,
    ):
        """footprint (N, FOOTPRINT_WIDTH): every Gaussian's row; counts (N,): the tiles each
        visible Gaussian's footprint reaches (0 if culled)."""
        for g in range(means2d.shape[0]):
            a = conics[g, 0]
            c = conics[g, 2]
            cut = sigma_cut(opacities[g], real)
            _x_ext, y_ext = half_extents(a, conics[g, 1], c, cut, real)
            footprint[g, F_MEAN_X] = means2d[g, 0]
            footprint[g, F_MEAN_Y] = means2d[g, 1]
            footprint[g, F_CONIC_A] = a
            footprint[g, F_CONIC_B] = conics[g, 1]
            footprint[g, F_CONIC_C] = c
            footprint[g, F_OPACITY] = opacities[g]
            footprint[g, F_DEPTH] = depths[g]
            footprint[g, F_CUT] = cut
            footprint[g, F_Y_EXTENT] = y_ext
            n = 0
            if radii[g] > 0:
                ty0, ty1, x_ext, y_ext, exact = footprint_rows(footprint, g, radii[g], height)
                for ty in range(ty0, ty1 + 1):
                    tx0, tx1 = row_tiles(footprint, g, ty, x_ext, y_ext, exact, width, height)
                    n += ti.max(tx1 - tx0 + 1, 0)
            counts[g] = n

    @ti.kernel
    def emit_keys(
        footprint: arr2, radii: iarr1, offsets: i64arr1,
        width: ti.i32, height: ti.i32, tiles_x: ti.i32, tiles_y: ti.i32, keys: i64arr1, ids: iarr1,
    ):
        """One (key, Gaussian id) pair per tile counted by ``count_tiles``, from ``offsets[g]``."""
        for g in range(footprint.shape[0]):
            if radii[g] > 0:
                ty0, ty1, x_ext, y_ext, exact = footprint_rows(footprint, g, radii[g], height)
                depth_bits = ti.cast(ti.bit_cast(ti.cast(footprint[g, F_DEPTH], ti.f32), ti.i32), ti.i64)
                pos = offsets[g]
                for ty in range(ty0, ty1 + 1):
                    tx0, tx1 = row_tiles(footprint, g, ty, x_ext, y_ext, exact, width, height)
                    for tx in range(tx0, tx1 + 1):
                        tile_id = ti.cast(ty * tiles_x + tx, ti.i64)
                        keys[pos] = (tile_id << 32) | depth_bits
                        ids[pos] = g
                        pos += 1

    return count_tiles, emit_keys


@ti.func
def _radix_pass(
    keys_in: ti.template(), ids_in: ti.template(), keys_out: ti.template(), ids_out: ti.template(),
    hist: ti.template(), n: ti.i32, shift: ti.i32, spread: ti.i32,
):
    """One stable LSD pass on the digit (key >> shift) & 255 over keys_in[:n]."""
    n_blocks = hist.shape[0]
    chunk = (n + n_blocks - 1) // n_blocks
    # 1. per-block digit histograms (each block owns a row: plain stores, no atomics); the
    #    block loops run over n_blocks * spread slots (see runtime.parallel_spread)
    for slot in range(n_blocks * spread):
        if slot % spread != 0:
            continue
        b = slot // spread
        for d in range(RADIX_BUCKETS):
            hist[b, d] = 0
        for i in range(b * chunk, ti.min(n, (b + 1) * chunk)):
            d = ti.cast((keys_in[i] >> shift) & (RADIX_BUCKETS - 1), ti.i32)
            hist[b, d] = hist[b, d] + 1
    # 2. exclusive scan in (digit, block) order: the output position of every block's run
    ti.loop_config(serialize=True)
    for _ in range(1):
        running = 0
        for d in range(RADIX_BUCKETS):
            for b in range(n_blocks):
                c = hist[b, d]
                hist[b, d] = running
                running += c
    # 3. scatter; within a block in input order, so the pass is stable
    for slot in range(n_blocks * spread):
        if slot % spread != 0:
            continue
        b = slot // spread
        for i in range(b * chunk, ti.min(n, (b + 1) * chunk)):
            d = ti.cast((keys_in[i] >> shift) & (RADIX_BUCKETS - 1), ti.i32)
            pos = hist[b, d]
            hist[b, d] = pos + 1
            keys_out[pos] = keys_in[i]
            ids_out[pos] = ids_in[i]


@functools.lru_cache(maxsize=None)
def _radix_sort_kernel(n_passes: int):
    """All passes of one sort in a single kernel launch (a Taichi launch costs ~0.1 ms of
    Python and dispatch on the CPU): even passes read (keys, ids), odd ones the tmp pair."""
    runtime.ensure_initialized()
    i64 = ti.types.ndarray(dtype=ti.i64, ndim=1)
    i32 = ti.types.ndarray(dtype=ti.i32, ndim=1)

    @ti.kernel
    def radix_sort(keys: i64, ids: i32, keys_tmp: i64, ids_tmp: i32,
                   hist: ti.types.ndarray(dtype=ti.i32, ndim=2), n: ti.i32, spread: ti.i32):
        for p in ti.static(range(n_passes)):
            if ti.static(p % 2 == 0):
                _radix_pass(keys, ids, keys_tmp, ids_tmp, hist, n, p * RADIX_BITS, spread)
            else:
                _radix_pass(keys_tmp, ids_tmp, keys, ids, hist, n, p * RADIX_BITS, spread)

    return radix_sort


@ti.kernel
def _tile_ranges(
    keys: ti.types.ndarray(dtype=ti.i64, ndim=1), n: ti.i32, ranges: ti.types.ndarray(dtype=ti.i32, ndim=2),
):
    for t in range(ranges.shape[0]):
        ranges[t, 0] = 0
        ranges[t, 1] = 0
    for i in range(n):
        tile_id = ti.cast(keys[i] >> 32, ti.i32)
        if i == 0 or ti.cast(keys[i - 1] >> 32, ti.i32) != tile_id:
            ranges[tile_id, 0] = i
        if i == n - 1 or ti.cast(keys[i + 1] >> 32, ti.i32) != tile_id:
            ranges[tile_id, 1] = i + 1


def radix_sort_pairs(keys: torch.Tensor, ids: torch.Tensor, keys_tmp: torch.Tensor, ids_tmp: torch.Tensor,
                     hist: torch.Tensor, n: int, key_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable sort of ``keys[:n]`` (non-negative int64 < 2**key_bits) carrying ``ids[:n]``.

    ``keys_tmp``/``ids_tmp`` are scratch buffers of at least n entries and ``hist`` an int32
    (RADIX_BLOCKS, 256) scratch. Returns the (keys, ids) buffers holding the sorted result
    (one of the two pairs, depending on the number of passes).
    """
    n_passes = (key_bits + RADIX_BITS - 1) // RADIX_BITS
    spread = runtime.parallel_spread(hist.shape[0], keys.device.type == "cpu")
    _radix_sort_kernel(n_passes)(keys, ids, keys_tmp, ids_tmp, hist, n, spread)
    return (keys, ids) if n_passes % 2 == 0 else (keys_tmp, ids_tmp)


def tile_ranges(sorted_keys: torch.Tensor, n: int, ranges: torch.Tensor) -> None:
    """Fill ``ranges`` (n_tiles, 2) int32 with each tile's [start, end) in the sorted keys."""
    _tile_ranges(sorted_keys, n, ranges)
