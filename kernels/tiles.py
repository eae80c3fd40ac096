"""Tile binning and sorting: which Gaussians touch which 16x16 tile, front to back.

Pipeline (all Taichi kernels except the prefix sum, which is ``torch.cumsum`` because Taichi
1.7's prefix sum is GPU-only):

1. ``count_tiles``   per Gaussian, the number of tiles its pixel rectangle touches
   (mean2d +- extent, extent = slightly enlarged opacity-aware radius; 0 if culled).
2. offsets = exclusive prefix sum of the counts (torch, int64).
3. ``emit_keys``     one (key, gaussian id) pair per (Gaussian, tile) intersection, emitted in
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

RADIX_BITS = 8
RADIX_BUCKETS = 1 << RADIX_BITS
RADIX_BLOCKS = 64  # independent histogram/scatter blocks (parallel work items) per pass


@functools.lru_cache(maxsize=None)
def binning_kernels(real):
    """Return ``(count_tiles, emit_keys)`` for float dtype ``real``."""
    runtime.ensure_initialized()  # kernels are compiled for the arch chosen once per process
    arr1 = ti.types.ndarray(dtype=real, ndim=1)
    arr2 = ti.types.ndarray(dtype=real, ndim=2)
    tile = float(TILE_SIZE)  # exact in f32

    @ti.func
    def tile_rect(mx, my, e, tiles_x, tiles_y):
        # A pixel (j, i) can be touched iff |j + 0.5 - mx| <= e and |i + 0.5 - my| <= e.
        # Clamp in floating point before the cast so far-away Gaussians cannot overflow int32.
        half = real(0.5)
        tx0 = ti.cast(ti.max(ti.floor((mx - e - half) / tile), real(0.0)), ti.i32)
        ty0 = ti.cast(ti.max(ti.floor((my - e - half) / tile), real(0.0)), ti.i32)
        tx1 = ti.cast(ti.min(ti.floor((mx + e - half) / tile), ti.cast(tiles_x - 1, real)), ti.i32)
        ty1 = ti.cast(ti.min(ti.floor((my + e - half) / tile), ti.cast(tiles_y - 1, real)), ti.i32)
        return tx0, ty0, tx1, ty1

    @ti.kernel
    def count_tiles(
        means2d: arr2, extents: arr1, radii: ti.types.ndarray(dtype=ti.i32, ndim=1),
        tiles_x: ti.i32, tiles_y: ti.i32, counts: ti.types.ndarray(dtype=ti.i64, ndim=1),
    ):
        for g in range(means2d.shape[0]):
            n = 0
            if radii[g] > 0:
                tx0, ty0, tx1, ty1 = tile_rect(means2d[g, 0], means2d[g, 1], extents[g], tiles_x, tiles_y)
                if tx1 >= tx0 and ty1 >= ty0:
                    n = (tx1 - tx0 + 1) * (ty1 - ty0 + 1)
            counts[g] = n

    @ti.kernel
    def emit_keys(
        means2d: arr2, extents: arr1, depths: arr1, radii: ti.types.ndarray(dtype=ti.i32, ndim=1),
        offsets: ti.types.ndarray(dtype=ti.i64, ndim=1), tiles_x: ti.i32, tiles_y: ti.i32,
        keys: ti.types.ndarray(dtype=ti.i64, ndim=1), ids: ti.types.ndarray(dtype=ti.i32, ndim=1),
    ):
        for g in range(means2d.shape[0]):
            if radii[g] > 0:
                tx0, ty0, tx1, ty1 = tile_rect(means2d[g, 0], means2d[g, 1], extents[g], tiles_x, tiles_y)
                depth_bits = ti.cast(ti.bit_cast(ti.cast(depths[g], ti.f32), ti.i32), ti.i64)
                pos = offsets[g]
                for ty in range(ty0, ty1 + 1):
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
