"""Tile binning and sorting: which Gaussians touch which 16x16 tile, front to back.

PyTorch twin: the compositing order :func:`npga_taichi.reference.front_to_back` (float32 depth,
ties by index), restricted per tile to the Gaussians whose ``reference.fragments`` hit one of its
pixels; tests: ``tests/test_render.py`` (binning, radix sort, > 1e6 intersections).

Pipeline (all Taichi kernels except the prefix sum, which is ``torch.cumsum`` because Taichi
1.7's prefix sum is GPU-only):

1. ``count_tiles``   per Gaussian, its footprint row (``kernels/footprint.py``: mean, conic,
   opacity, depth, the ellipse sigma <= cut outside which it cannot reach alpha 1/255) and the
   number of tiles whose pixel centres that ellipse may reach (0 if culled): per row of tiles,
   those under the ellipse's x-range over the row's pixel-centre rows (on random scenes ~30 %
   fewer than the square of side 2 radius).
   It also writes each Gaussian's depth key: the float32 bits of its camera depth as an int32
   (depth > near > 0, so the IEEE bits order like the depths).
2. radix sort        the Gaussians by depth key: our LSD radix sort (8 bits a pass, stable, so
   ties in float32 depth keep Gaussian index order, in float64 mode too).
3. offsets = exclusive prefix sum of the counts in that order (torch, int64).
4. ``emit_keys``     one (tile id, Gaussian id) pair per counted (Gaussian, tile), at its
   Gaussian's offset, so front to back.
5. radix sort        the pairs by tile id (stable: front to back within each tile).
6. ``tile_ranges``   per tile, the [start, end) range of its intersections in sorted order.

Steps 2-5 are the stable LSD radix sort of the 64-bit keys tile << 32 | depth bits over
intersections in Gaussian order, with its depth passes run once per Gaussian instead of once per
intersection (N keys, not M ~ 5 N), and 32-bit keys throughout.

Buffers are owned by the caller (``npga_taichi.render`` caches and grows them); no intersection
is ever dropped because the caller sizes the buffers from the exact count.
"""

import functools

import taichi as ti

import torch

from npga_taichi.contract import TILE_SIZE
from npga_taichi.kernels import runtime
from npga_taichi.kernels.footprint import (
    F_CONIC_A, F_CONIC_B, F_CONIC_C, F_CUT, F_DEPTH, F_MEAN_X, F_MEAN_Y, F_OPACITY, F_Y_EXTENT,
    band_constants, band_x_range, half_extents, sigma_cut,
)

RADIX_BITS = 8
RADIX_BUCKETS = 1 << RADIX_BITS
RADIX_BLOCKS = 64  # independent histogram/scatter blocks (parallel work items) per pass
# On the CPU, sorts of up to this many keys run single-threaded (measured on 2 cores: a serial
# pass over 20k keys costs less than the dispatch of its two parallel loops).
RADIX_SERIAL_MAX = 32768


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
        """(ty0, ty1, x_ext, y_ext, exact, band): Gaussian g's rows of tiles, the half extents
        of its footprint ellipse, never beyond its radius (+1 px: the ellipse lies inside the
        radius up to rounding), whether its conic is positive definite (so each row of tiles
        can be narrowed to the ellipse) and then the ellipse's ``band_constants``."""
        a = footprint[g, F_CONIC_A]
        b = footprint[g, F_CONIC_B]
        c = footprint[g, F_CONIC_C]
        cut = footprint[g, F_CUT]
        x_ext, y_ext = half_extents(a, b, c, cut, real)
        r = ti.cast(radius + 1, real)
        x_ext = ti.min(x_ext, r)
        y_ext = ti.min(y_ext, r)
        my = footprint[g, F_MEAN_Y]
        ty0, ty1 = tile_span(my - y_ext, my + y_ext, height)
        exact = a * c - b * b > real(0.0) and a > real(0.0) and c > real(0.0)
        band = ti.Vector.zero(real, 4)
        if exact:
            inv_a, det, two_a_cut, dy_x_max = band_constants(a, b, c, cut, real)
            band = ti.Vector([inv_a, det, two_a_cut, dy_x_max])
        return ty0, ty1, x_ext, y_ext, exact, band

    @ti.func
    def row_tiles(footprint: ti.template(), g, ty, x_ext, y_ext, exact, band, width, height):
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
                footprint[g, F_CONIC_B], band[0], band[1], band[2], band[3], y_ext,
                ti.cast(y0, real) + half - my, ti.cast(ti.min(y0 + TILE_SIZE, height), real) - half - my, real)
            lo = ti.max(lo, mx + x_lo)
            hi = ti.min(hi, mx + x_hi)
            if not crosses:
                hi = lo - tile  # no pixel of the row
        return tile_span(lo, hi, width)

    @ti.kernel
    def count_tiles(
        means2d: arr2, conics: arr2, opacities: arr1, depths: arr1, radii: iarr1,
        width: ti.i32, height: ti.i32, footprint: arr2, counts: i64arr1, depth_keys: iarr1,
    ):
        """footprint (N, FOOTPRINT_WIDTH): every Gaussian's row; counts (N,): the tiles each
        visible Gaussian's footprint reaches (0 if culled); depth_keys (N,): the float32 bits
        of its depth as an int32 (depth > near > 0, so the bits order like the depths)."""
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
            key = 0
            if radii[g] > 0:
                ty0, ty1, x_ext, y_ext, exact, band = footprint_rows(footprint, g, radii[g], height)
                for ty in range(ty0, ty1 + 1):
                    tx0, tx1 = row_tiles(footprint, g, ty, x_ext, y_ext, exact, band, width, height)
                    n += ti.max(tx1 - tx0 + 1, 0)
                key = ti.bit_cast(ti.cast(depths[g], ti.f32), ti.i32)
            counts[g] = n
            depth_keys[g] = key

    @ti.kernel
    def emit_keys(
        footprint: arr2, radii: iarr1, offsets: i64arr1,
        width: ti.i32, height: ti.i32, tiles_x: ti.i32, tile_keys: iarr1, ids: iarr1,
    ):
        """One (tile id, Gaussian id) pair per tile counted by ``count_tiles``, Gaussian g's
        from ``offsets[g]`` on (offsets in front-to-back order, so the pairs are too)."""
        for g in range(footprint.shape[0]):
            if radii[g] > 0:
                ty0, ty1, x_ext, y_ext, exact, band = footprint_rows(footprint, g, radii[g], height)
                pos = offsets[g]
                for ty in range(ty0, ty1 + 1):
                    tx0, tx1 = row_tiles(footprint, g, ty, x_ext, y_ext, exact, band, width, height)
                    for tx in range(tx0, tx1 + 1):
                        tile_keys[pos] = ty * tiles_x + tx
                        ids[pos] = g
                        pos += 1

    return count_tiles, emit_keys


@ti.func
def _radix_pass(
    keys_in: ti.template(), ids_in: ti.template(), keys_out: ti.template(), ids_out: ti.template(),
    hist: ti.template(), n: ti.i32, shift: ti.i32, n_blocks: ti.i32, spread: ti.i32, serial: ti.template(),
):
    """One stable LSD pass on the digit (key >> shift) & 255 over keys_in[:n], in ``n_blocks``
    blocks (one when ``serial``: the loops then run on the calling thread)."""
    chunk = (n + n_blocks - 1) // n_blocks
    # 1. per-block digit histograms (each block owns a row: plain stores, no atomics); the
    #    block loops run over n_blocks * spread slots (see runtime.parallel_spread)
    if ti.static(serial):
        ti.loop_config(serialize=True)
    for slot in range(n_blocks * spread):
        if slot % spread != 0:
            continue
        b = slot // spread
        for d in range(RADIX_BUCKETS):
            hist[b, d] = 0
        for i in range(b * chunk, ti.min(n, (b + 1) * chunk)):
            d = (keys_in[i] >> shift) & (RADIX_BUCKETS - 1)
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
    if ti.static(serial):
        ti.loop_config(serialize=True)
    for slot in range(n_blocks * spread):
        if slot % spread != 0:
            continue
        b = slot // spread
        for i in range(b * chunk, ti.min(n, (b + 1) * chunk)):
            d = (keys_in[i] >> shift) & (RADIX_BUCKETS - 1)
            pos = hist[b, d]
            hist[b, d] = pos + 1
            keys_out[pos] = keys_in[i]
            ids_out[pos] = ids_in[i]


@functools.lru_cache(maxsize=None)
def _radix_sort_kernel(n_passes: int, serial: bool):
    """All passes of one sort in a single kernel launch (a Taichi launch costs ~0.1 ms of
    Python and dispatch on the CPU): even passes read (keys, ids), odd ones the tmp pair.
    ``serial`` runs every loop on the calling thread: on the CPU each parallel loop costs
    ~55 us of thread-pool dispatch, more than a small sort's whole pass."""
    runtime.ensure_initialized()
    i32 = ti.types.ndarray(dtype=ti.i32, ndim=1)

    @ti.kernel
    def radix_sort(keys: i32, ids: i32, keys_tmp: i32, ids_tmp: i32,
                   hist: ti.types.ndarray(dtype=ti.i32, ndim=2), n: ti.i32, n_blocks: ti.i32, spread: ti.i32):
        for p in ti.static(range(n_passes)):
            if ti.static(p % 2 == 0):
                _radix_pass(keys, ids, keys_tmp, ids_tmp, hist, n, p * RADIX_BITS, n_blocks, spread, serial)
            else:
                _radix_pass(keys_tmp, ids_tmp, keys, ids, hist, n, p * RADIX_BITS, n_blocks, spread, serial)

    return radix_sort


@ti.kernel
def _tile_ranges(tile_keys: ti.types.ndarray(dtype=ti.i32, ndim=1), n: ti.i32,
                 ranges: ti.types.ndarray(dtype=ti.i32, ndim=2)):
    """ranges (zeroed by the caller): [start, end) of every tile present in tile_keys[:n]."""
    for i in range(n):
        tile_id = tile_keys[i]
        if i == 0 or tile_keys[i - 1] != tile_id:
            ranges[tile_id, 0] = i
        if i == n - 1 or tile_keys[i + 1] != tile_id:
            ranges[tile_id, 1] = i + 1


def radix_sort_pairs(keys: torch.Tensor, ids: torch.Tensor, keys_tmp: torch.Tensor, ids_tmp: torch.Tensor,
                     hist: torch.Tensor, n: int, key_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable sort of ``keys[:n]`` (int32, non-negative, < 2**key_bits) carrying ``ids[:n]``.

    ``keys_tmp``/``ids_tmp`` are scratch buffers of at least n entries and ``hist`` an int32
    (RADIX_BLOCKS, 256) scratch. Returns the (keys, ids) buffers holding the sorted result
    (one of the two pairs, depending on the number of passes).
    """
    n_passes = max(1, (key_bits + RADIX_BITS - 1) // RADIX_BITS)
    on_cpu = keys.device.type == "cpu"
    serial = on_cpu and n <= RADIX_SERIAL_MAX
    n_blocks = 1 if serial else hist.shape[0]
    spread = 1 if serial else runtime.parallel_spread(n_blocks, on_cpu)
    _radix_sort_kernel(n_passes, serial)(keys, ids, keys_tmp, ids_tmp, hist, n, n_blocks, spread)
    return (keys, ids) if n_passes % 2 == 0 else (keys_tmp, ids_tmp)


@functools.lru_cache(maxsize=None)
def sum_slot_rows(real, width: int):
    """Kernel ``(rows (M, width), first (N,) int64, counts (N,) int64, out (N, width))``:
    out[g] = the sum of rows first[g] .. first[g] + counts[g] - 1 (a Gaussian's intersections
    occupy consecutive slots, see ``render.TileBins``), in slot order. ``width`` is static so a
    row is summed as one unrolled vector (a run-time column loop made it 2x slower)."""
    runtime.ensure_initialized()
    arr2 = ti.types.ndarray(dtype=real, ndim=2)
    i64 = ti.types.ndarray(dtype=ti.i64, ndim=1)

    @ti.kernel
    def sum_rows(rows: arr2, first: i64, counts: i64, out: arr2):
        for g in range(out.shape[0]):
            start = ti.cast(first[g], ti.i32)
            total = ti.Vector.zero(real, width)
            for j in range(start, start + ti.cast(counts[g], ti.i32)):
                for k in ti.static(range(width)):
                    total[k] += rows[j, k]
            for k in ti.static(range(width)):
                out[g, k] = total[k]

    return sum_rows


def tile_ranges(sorted_tile_keys: torch.Tensor, n: int, ranges: torch.Tensor) -> None:
    """Fill ``ranges`` (n_tiles, 2) int32 with each tile's [start, end) in the sorted keys
    (0, 0 for a tile without intersections)."""
    ranges.zero_()
    _tile_ranges(sorted_tile_keys, n, ranges)
