"""Tile-parallel alpha compositing: forward and hand-written backward, 16-lane pixel rows.

PyTorch twin: :func:`npga_taichi.reference.composite` (the oracle's compositing; the whole chain
``render.rasterize`` against ``reference.rasterize``); tests: ``tests/test_render.py``. Kernels:
:func:`composite_kernels` -> ``(composite_forward, composite_backward)``.

Layout: intersections are sorted by (tile, float32 depth, Gaussian index) and each tile owns the
contiguous range ``ranges[tile] = [start, end)``. ``packed[i]`` is the footprint row of
intersection i's Gaussian (built by tile binning, kernels/footprint.py: mean, conic, opacity,
depth, ``sigma_cut`` beyond which no fragment reaches alpha 1/255, and the ellipse's half height
``y_extent``) in intersection order, so a tile streams its Gaussians from one contiguous block.

One parallel work item per tile (Taichi parallelises the outermost loop only; on the CPU the
loop runs over ``spread`` slots per tile, see ``runtime.parallel_spread``, because Taichi keeps
loops of fewer than ~1024 iterations on one thread). The 16 pixels of a tile row are 16 *lanes*
evaluated together with branch-free, statically unrolled code (selects and 0/1 factors instead
of ifs), which LLVM's SLP vectoriser turns into SIMD (two AVX registers per float32 row).
Per-pixel state saved for the backward is stored as *lane rows* (ndarrays whose element is a
16-vector), so a row's lanes are one vector load.

Forward: row by row, with the row's state (transmittance, colour and depth sums, last
contributor, done flags) in registers; each Gaussian whose y-extent covers the row is evaluated
on all 16 lanes and the row stops once all its pixels have terminated.

Backward: Gaussian by Gaussian, back to front, each over only the tile rows its ellipse crosses
and that it is not behind (``row_last``). Every row's running T and U (see
``composite_backward``) and the Gaussian's per-lane gradient terms live in a small scratch
array, and the terms are summed over lanes once per Gaussian rather than once per (Gaussian,
row). On the CPU that scratch is a Taichi field with one block per thread
(``ti.global_thread_idx()``): LLVM re-reads an ndarray's base pointer after every store, so
stores to an ndarray are never merged into vector stores, and without vector stores to anchor
it the SLP vectoriser left most of the gradient arithmetic scalar (and turned selects fed by
loads into one branch per lane). No atomics: intersection i's gradient row is written by its
tile only, at its slot (``render.TileBins``: each Gaussian's intersections in consecutive rows);
the caller sums the rows per Gaussian.

Per pixel, front to back (``contract``):
    sigma = 0.5 (a dx^2 + c dy^2) + b dx dy,   alpha = min(0.999, o exp(-sigma))
    a Gaussian contributes iff sigma >= 0 and alpha >= 1/255; compositing stops before the
    first contributing Gaussian with T (1 - alpha) <= 1e-4.
    image = sum alpha_i T_i c_i + T_final background, depth = sum alpha_i T_i z_i.
The forward saves T_final and ``last`` (1 + intersection index of the last contributor; the
tile start if none). The backward reconstructs T_i = T_{i+1} / (1 - alpha_i) from T_final
(Taichi's autodiff is wrong for loop-carried accumulators, taichi issue #8356, so it is
written by hand).

Channel counts C <= 4 are unrolled with the colours in registers; other C use a generic variant
that loops over channels at run time (slower, same results).
"""

import functools

import taichi as ti

from taichi.lang import impl

from npga_taichi.kernels import runtime

from npga_taichi.contract import ALPHA_MAX, ALPHA_MIN, T_EPS, TILE_SIZE
from npga_taichi.kernels.footprint import (
    F_CONIC_A, F_CONIC_B, F_CONIC_C, F_CUT, F_DEPTH, F_MEAN_X, F_MEAN_Y, F_OPACITY, F_Y_EXTENT,
)

# Loop slots a CPU thread takes from the shared queue at once: small, because tile costs differ
# a lot.
TILES_PER_TASK = 2
LANES = TILE_SIZE  # pixels of a tile row, processed together
HALVINGS = (8, 4, 2, 1)  # pairwise-sum widths that reduce LANES values to one
# grad_isect columns: d/d(mean_x, mean_y, conic a, b, c, opacity, depth), then one per channel
GRAD_COLUMNS = 7
# Per-lane gradient terms of one intersection besides its colours, accumulated over its rows
# and summed over the lanes once: ev = e v_alpha (e = exp(-sigma), v_sigma = -o ev), ev dy,
# ev dy^2, then w g_z; one w g term per unrolled colour channel follows. A lane's dx is the same
# in every row, so the dx, dx^2 and dx dy moments are formed from these at the lane sum.
LANE_TERMS = 4


def scratch_rows(static_channels: int) -> int:
    """Lane rows of backward scratch per work item: (T, U) per tile row, then LANE_TERMS + C
    gradient accumulators (C = 0 for the generic variant, which adds colour gradients to
    grad_isect)."""
    return 2 * TILE_SIZE + LANE_TERMS + static_channels


@ti.func
def select_max(a, b):
    """max(a, b) for non-NaN operands in one instruction (maxps): ti.max lowers to LLVM's
    maxnum, whose NaN rules cost x86 a compare-and-blend around every max."""
    return ti.select(a > b, a, b)


@ti.func
def select_min(a, b):
    """min(a, b) for non-NaN operands in one instruction (minps); see select_max."""
    return ti.select(a < b, a, b)


@ti.func
def fast_exp_f32(x):
    """exp(x) in float32 for x <= 0 (Cephes expf: Cody-Waite reduction + degree-5 minimax
    polynomial, relative error <= 1.2e-7). Written as plain arithmetic so LLVM can vectorise it;
    the libm call it replaces cost ~17 ns per fragment."""
    n = ti.floor(x * 1.44269504088896341 + 0.5)
    r = x - n * 0.693359375 + n * 2.12194440e-4
    z = r * r
    y = (((((1.9875691500e-4 * r + 1.3981999507e-3) * r + 8.3334519073e-3) * r + 4.1665795894e-2) * r
          + 1.6666665459e-1) * r + 5.0000001201e-1) * z + r + 1.0
    # 2^n by building the float's exponent bits; n >= -126 as long as x > -87
    return y * ti.bit_cast((ti.cast(select_max(n, -126.0), ti.i32) + 127) << 23, ti.f32)


STATIC_CHANNELS_MAX = 4  # channel counts up to this are unrolled (colours kept in registers)


def channel_variant(n_channels: int) -> int:
    """Kernel variant for a channel count: C itself when unrolled, 0 for the generic loop."""
    return n_channels if n_channels <= STATIC_CHANNELS_MAX else 0


@functools.lru_cache(maxsize=None)
def composite_kernels(real, static_channels: int):
    """Return ``(composite_forward, composite_backward)`` for dtype ``real``.

    ``static_channels`` = C (1..4) unrolls the channel loops and keeps colours and colour sums in
    registers; 0 builds the generic variant for any C (channel loops at run time).
    Image-sized arrays are passed flattened: pixel q = row * width + column, channel-minor.
    """
    runtime.ensure_initialized()  # kernels are compiled for the arch chosen once per process
    arr1 = ti.types.ndarray(dtype=real, ndim=1)
    arr2 = ti.types.ndarray(dtype=real, ndim=2)
    iarr1 = ti.types.ndarray(dtype=ti.i32, ndim=1)
    iarr2 = ti.types.ndarray(dtype=ti.i32, ndim=2)
    # per-pixel state in lane rows: element k = the 16 pixels of tile row k, read as one vector
    # load (scalar loads from i32 index arithmetic are not provably adjacent, which left the
    # lane arithmetic consuming them scalar)
    lanes_real = ti.types.ndarray(dtype=ti.types.vector(LANES, real), ndim=1)
    lanes_int = ti.types.ndarray(dtype=ti.types.vector(LANES, ti.i32), ndim=1)
    half, one = 0.5, 1.0  # exact in f32, so safe as untyped literals in f64 kernels
    # inexact constants are cast inside the kernels: real(...) only works in Taichi scope
    NC = static_channels
    NCV = max(NC, 1)  # rows of the register colour matrices (unused in the generic variant)

    @ti.func
    def tile_bounds(tile, tiles_x, width, height):
        x0 = (tile % tiles_x) * TILE_SIZE
        y0 = (tile // tiles_x) * TILE_SIZE
        return x0, y0, ti.min(x0 + TILE_SIZE, width), ti.min(y0 + TILE_SIZE, height)

    @ti.func
    def exp_neg(s):
        """exp(-s): a vectorisable polynomial in float32 (libm's expf runs ~20x slower here and
        dominates compositing), the exact libm exp in float64 (gradcheck precision)."""
        result = real(0.0)
        if ti.static(real == ti.f32):
            result = fast_exp_f32(-s)
        else:
            result = ti.exp(-s)
        return result

    @ti.func
    def fragment(a, b, c, o, cut, dx, dy):
        """(hit, e = exp(-sigma), raw = o e, alpha) of one Gaussian at one pixel, branch-free.

        hit = sigma >= 0 and alpha >= 1/255 (the contract; sigma <= cut is implied and keeps the
        polynomial exp in range: its argument is clamped to [0, cut], which changes no hit).
        """
        sigma = half * (a * dx * dx + c * dy * dy) + b * dx * dy
        e = exp_neg(select_min(select_max(sigma, real(0.0)), cut))
        raw = o * e
        alpha = select_min(raw, real(ALPHA_MAX))
        hit = (sigma >= real(0.0)) & (sigma <= cut) & (alpha >= real(ALPHA_MIN))
        return hit, e, raw, alpha

    N_TERMS = LANE_TERMS + NC
    on_cpu = runtime.current_arch() == "cpu"
    # The backward's working vectors live in a small scratch array per work item: each tile
    # row's running T and U, then one accumulator per term. On the CPU that is a field with one
    # block per thread, not an ndarray: LLVM re-reads an ndarray's base pointer after every store
    # and so never merges stores to one into vector stores, and without vector stores to anchor
    # it, its SLP vectoriser leaves most of the lane arithmetic scalar. On a GPU every tile is
    # a thread with its own block of the ndarray ``scratch`` passed by the caller.
    # ti.global_thread_idx() on the CPU is the worker's index in [0, cpu_max_num_threads), and a
    # kernel launch runs to completion before the next, so one block per worker never races.
    scratch_slots = impl.current_cfg().cpu_max_num_threads if on_cpu else 1
    SCRATCH = scratch_rows(NC)
    cpu_scratch = ti.Vector.field(LANES, real, shape=(scratch_slots * SCRATCH,))

    @ti.func
    def scratch_base(tile):
        """First scratch element of this work item (scratch_rows(C) elements each)."""
        slot = tile
        if ti.static(on_cpu):
            slot = ti.cast(ti.global_thread_idx(), ti.i32)
        return slot * SCRATCH

    @ti.func
    def scratch_load(scratch: ti.template(), k):
        v = ti.Vector.zero(real, LANES)
        if ti.static(on_cpu):
            v = cpu_scratch[k]
        else:
            v = scratch[k]
        return v

    @ti.func
    def scratch_store(scratch: ti.template(), k, v):
        if ti.static(on_cpu):
            cpu_scratch[k] = v
        else:
            scratch[k] = v

    @ti.func
    def lane_sum(v):
        """Sum of a LANES-vector, written as pairwise halvings (LLVM's reassociation may still
        turn it into a chain; it runs once per intersection, not per lane)."""
        for width in ti.static(HALVINGS):
            for l in ti.static(range(width)):
                v[l] = v[l] + v[l + width]
        return v[0]

    @ti.func
    def load_gaussian(packed: ti.template(), ids: ti.template(), colors: ti.template(), i):
        """Intersection i's packed row (mean_x, conic a, b, c, opacity, depth, sigma_cut), its
        Gaussian g and, for unrolled channel counts, g's colour (zeros otherwise)."""
        g = ids[i]
        col = ti.Vector.zero(real, NCV)
        if ti.static(NC > 0):
            for ch in ti.static(range(NC)):
                col[ch] = colors[g, ch]
        return (packed[i, F_MEAN_X], packed[i, F_CONIC_A], packed[i, F_CONIC_B], packed[i, F_CONIC_C],
                packed[i, F_OPACITY], packed[i, F_DEPTH], packed[i, F_CUT], g, col)

    @ti.func
    def lane_pixel(x0, lane, width):
        """Column of a lane, clamped into the image (lanes past the right edge never hit)."""
        return ti.min(x0 + lane, width - 1)

    @ti.kernel
    def composite_forward(
        packed: arr2, ids: iarr1, colors: arr2, ranges: iarr2, background: arr1,
        width: ti.i32, height: ti.i32, tiles_x: ti.i32, spread: ti.i32,
        image: arr1, alpha_out: arr1, depth: arr1, t_final: lanes_real, last: lanes_int, row_last: iarr1,
    ):
        """image (H*W*C), alpha_out = 1 - T_final, depth (H*W) are written for every pixel;
        t_final and last as lane rows (H * tiles_x elements of 16 pixels, element
        py * tiles_x + tile column) for every lane (T = 1 and last = tile start past the right
        edge), so the backward loads a row's lanes as one vector; ``row_last`` (H * tiles_x) the
        largest ``last`` of each tile row."""
        n_channels = colors.shape[1]
        ti.loop_config(block_dim=TILES_PER_TASK)
        for slot in range(ranges.shape[0] * spread):  # see runtime.parallel_spread
            if slot % spread != 0:
                continue
            tile = slot // spread
            x0, y0, x1, y1 = tile_bounds(tile, tiles_x, width, height)
            start = ranges[tile, 0]
            end = ranges[tile, 1]
            x0f = ti.cast(x0, real) + half
            for py in range(y0, y1):
                row = py * width
                dy_base = ti.cast(py, real) + half
                T = ti.Vector.one(real, LANES)
                dep = ti.Vector.zero(real, LANES)
                acc = ti.Matrix.zero(real, NCV, LANES)
                lastv = ti.Vector.zero(ti.i32, LANES) + start
                done = ti.Vector.zero(ti.i32, LANES)
                for l in ti.static(range(LANES)):
                    done[l] = ti.select(x0 + l < x1, 0, 1)  # lanes past the image edge
                if ti.static(NC == 0):
                    for px in range(x0, x1):
                        for ch in range(n_channels):
                            image[(row + px) * n_channels + ch] = real(0.0)
                remaining = x1 - x0
                for i in range(start, end):
                    if remaining <= 0:
                        break  # every pixel of the row has terminated
                    dy = dy_base - packed[i, F_MEAN_Y]
                    if ti.abs(dy) <= packed[i, F_Y_EXTENT]:  # the row crosses the ellipse sigma <= cut
                        mx, a, b, c, o, z, cut, g, col = load_gaussian(packed, ids, colors, i)
                        n_term = 0
                        for l in ti.static(range(LANES)):
                            dx = x0f + l - mx
                            hit, _e, _raw, alpha = fragment(a, b, c, o, cut, dx, dy)
                            hit = hit & (done[l] == 0)
                            t_next = T[l] * (one - alpha)
                            term = hit & (t_next <= real(T_EPS))
                            contrib = hit & (t_next > real(T_EPS))
                            w = ti.select(contrib, alpha * T[l], real(0.0))
                            if ti.static(NC > 0):
                                for ch in ti.static(range(NC)):
                                    acc[ch, l] += w * col[ch]
                            else:
                                k = (row + lane_pixel(x0, l, width)) * n_channels
                                for ch in range(n_channels):
                                    image[k + ch] = image[k + ch] + w * colors[g, ch]
                            dep[l] += w * z
                            T[l] = ti.select(contrib, t_next, T[l])
                            lastv[l] = ti.select(contrib, i + 1, lastv[l])
                            done[l] = ti.select(term, 1, done[l])
                            n_term += ti.select(term, 1, 0)
                        remaining -= n_term
                lane_row = py * tiles_x + x0 // TILE_SIZE
                t_final[lane_row] = T
                last[lane_row] = lastv
                row_end = start
                for l in ti.static(range(LANES)):
                    row_end = ti.max(row_end, lastv[l])
                row_last[lane_row] = row_end
                for l in ti.static(range(LANES)):
                    if x0 + l < x1:
                        q = row + x0 + l
                        alpha_out[q] = one - T[l]
                        depth[q] = dep[l]
                        if ti.static(NC > 0):
                            for ch in ti.static(range(NC)):
                                image[q * NC + ch] = acc[ch, l] + T[l] * background[ch]
                        else:
                            for ch in range(n_channels):
                                image[q * n_channels + ch] = image[q * n_channels + ch] + T[l] * background[ch]

    @ti.kernel
    def composite_backward(
        packed: arr2, ids: iarr1, slots: iarr1, colors: arr2, ranges: iarr2, background: arr1,
        width: ti.i32, height: ti.i32, tiles_x: ti.i32, spread: ti.i32,
        t_final: lanes_real, last: lanes_int, row_last: iarr1,
        v_image: lanes_real, v_alpha: lanes_real, v_depth: lanes_real,
        grad_isect: arr2, v_background_tiles: arr2, scratch: lanes_real,
    ):
        """Per-intersection gradients ``grad_isect`` (M, 7 + C), intersection i's in row
        ``slots[i]``: d/d(mean_x, mean_y, conic a, b, c, opacity, depth, colour channels) of the
        Gaussian ``ids[i]`` through tile i's pixels (every intersection's row is written; the
        caller sums them per Gaussian); background gradient as one partial sum per
        tile, ``v_background_tiles`` (n_tiles, C). Per-pixel inputs are lane rows like
        ``t_final`` (element py * tiles_x + tile column; zeros past the right edge and for an
        unused output); ``v_image`` is channel-planar: element (ch * H + py) * tiles_x + column.
        ``scratch`` (GPU only: scratch_rows(C) lane rows per tile) holds working vectors.

        Each tile walks its Gaussians back to front, each over the tile rows its ellipse crosses,
        keeping per row the pixels' running T_k (from T_final, T_k = T_{k+1} / (1 - alpha_k))
        and U. For contributor k of a pixel, with S_k = sum_{j>k} alpha_j T_j c_j + T_final bg
        and D_k = sum_{j>k} alpha_j T_j z_j (suffix sums):
        dL/dalpha_k = g.(T_k c_k - S_k/(1-alpha_k)) + g_z (T_k z_k - D_k/(1-alpha_k))
                      + g_alpha T_final/(1-alpha_k)
                    = T_k (g.c_k + g_z z_k) - U_k / (1-alpha_k),
        U_k = g.S_k + g_z D_k - g_alpha T_final, with the pixel's upstream gradients
        (g, g_z, g_alpha) fixed: one number per pixel instead of C + 1, starting at
        T_final (g.bg - g_alpha) and growing by alpha_k T_k (g.c_k + g_z z_k).
        The sigma gradient is -o e^-sigma dL/dalpha (raw = o e^-sigma below the 0.999 clamp).
        A Gaussian's terms are accumulated per lane over its rows and summed over the lanes once.
        """
        n_channels = colors.shape[1]
        plane = height * tiles_x  # lane rows per channel plane of v_image
        ti.loop_config(block_dim=TILES_PER_TASK)
        for slot in range(ranges.shape[0] * spread):  # see runtime.parallel_spread
            if slot % spread != 0:
                continue
            tile = slot // spread
            x0, y0, x1, y1 = tile_bounds(tile, tiles_x, width, height)
            column = tile % tiles_x
            start = ranges[tile, 0]
            end = ranges[tile, 1]
            x0f = ti.cast(x0, real) + half
            base = scratch_base(tile)
            acc_base = base + 2 * TILE_SIZE
            tile_last = start
            for ch in range(n_channels):
                v_background_tiles[tile, ch] = real(0.0)
            for py in range(y0, y1):
                lane_row = py * tiles_x + column
                T_final = t_final[lane_row]
                U = -v_alpha[lane_row] * T_final
                for ch in range(n_channels):
                    g_ch = v_image[ch * plane + lane_row]
                    U += T_final * g_ch * background[ch]
                    v_background_tiles[tile, ch] = v_background_tiles[tile, ch] + lane_sum(T_final * g_ch)
                scratch_store(scratch, base + 2 * (py - y0), T_final)
                scratch_store(scratch, base + 2 * (py - y0) + 1, U)
                tile_last = ti.max(tile_last, row_last[lane_row])
            for i in range(tile_last, end):  # behind every pixel's last contributor
                for k in range(grad_isect.shape[1]):
                    grad_isect[slots[i], k] = real(0.0)
            for step in range(tile_last - start):
                i = tile_last - 1 - step
                out = slots[i]  # the gradient row of intersection i
                my = packed[i, F_MEAN_Y]
                y_extent = packed[i, F_Y_EXTENT]
                # tile rows whose centre is within y_extent of the mean (clamped before the cast)
                r0 = ti.cast(ti.max(ti.ceil(my - y_extent - half), ti.cast(y0, real)), ti.i32)
                r1 = ti.cast(ti.min(ti.floor(my + y_extent - half), ti.cast(y1 - 1, real)), ti.i32)
                mx, a, b, c, o, z, cut, g, col = load_gaussian(packed, ids, colors, i)
                if ti.static(NC == 0):
                    for ch in range(n_channels):
                        grad_isect[out, GRAD_COLUMNS + ch] = real(0.0)
                for r in ti.static(range(N_TERMS)):
                    scratch_store(scratch, acc_base + r, ti.Vector.zero(real, LANES))
                hit_rows = 0
                for py in range(r0, r1 + 1):
                    lane_row = py * tiles_x + column
                    if i >= row_last[lane_row]:
                        continue  # behind every pixel of this row
                    dy = ti.cast(py, real) + half - my
                    lastv = last[lane_row]
                    # lane masks as 0/1 factors: LLVM scalarises (and branches on) selects whose
                    # i1 condition vectors are rebuilt in the gradient block below
                    hits = ti.Vector.zero(real, LANES)  # the fragment contributes
                    keeps = ti.Vector.zero(real, LANES)  # ... and alpha = raw (below the 0.999 clamp)
                    es = ti.Vector.zero(real, LANES)
                    alphas = ti.Vector.zero(real, LANES)
                    n_hit = 0
                    for l in ti.static(range(LANES)):
                        hit, e, raw, alpha = fragment(a, b, c, o, cut, x0f + l - mx, dy)
                        hit = hit & (i < lastv[l])
                        hits[l] = ti.select(hit, one, real(0.0))
                        keeps[l] = ti.select(hit & (raw <= real(ALPHA_MAX)), one, real(0.0))
                        n_hit += ti.select(hit, 1, 0)
                        es[l] = e
                        alphas[l] = alpha
                    if n_hit == 0:
                        continue  # the row crosses the ellipse outside this tile or behind its last contributors
                    hit_rows += 1
                    k = base + 2 * (py - y0)
                    T_run = scratch_load(scratch, k)
                    U = scratch_load(scratch, k + 1)
                    terms = ti.Matrix.zero(real, N_TERMS, LANES)
                    g_dep = v_depth[lane_row]
                    G = ti.Matrix.zero(real, NCV, LANES)
                    if ti.static(NC > 0):
                        for ch in ti.static(range(NC)):
                            g_ch = v_image[ch * plane + lane_row]
                            for l in ti.static(range(LANES)):
                                G[ch, l] = g_ch[l]
                    dy2 = dy * dy
                    for l in ti.static(range(LANES)):
                        alpha = alphas[l]
                        inv = one / (one - alpha)
                        T = T_run[l] * inv  # T_k from T_{k+1}
                        w_hit = alpha * T * hits[l]
                        g_dot_c = g_dep[l] * z  # g . c_k + g_z z_k
                        if ti.static(NC > 0):
                            for ch in ti.static(range(NC)):
                                g_dot_c += G[ch, l] * col[ch]
                                terms[LANE_TERMS + ch, l] = w_hit * G[ch, l]
                        else:
                            for ch in range(n_channels):
                                gpix = v_image[ch * plane + lane_row][l]
                                g_dot_c += gpix * colors[g, ch]
                                grad_isect[out, GRAD_COLUMNS + ch] = grad_isect[out, GRAD_COLUMNS + ch] + w_hit * gpix
                        # alpha = min(0.999, raw): no gradient through the clamp
                        v_alpha_k = (T * g_dot_c - inv * U[l]) * keeps[l]
                        U[l] += w_hit * g_dot_c
                        T_run[l] = ti.select(hits[l] > real(0.0), T, T_run[l])
                        ev = es[l] * v_alpha_k
                        terms[0, l] = ev
                        terms[1, l] = ev * dy
                        terms[2, l] = ev * dy2
                        terms[3, l] = w_hit * g_dep[l]
                    scratch_store(scratch, k, T_run)
                    scratch_store(scratch, k + 1, U)
                    for r in ti.static(range(N_TERMS)):
                        row = scratch_load(scratch, acc_base + r)
                        for l in ti.static(range(LANES)):
                            row[l] += terms[r, l]
                        scratch_store(scratch, acc_base + r, row)
                # sums of ev, ev dx, ev dy, ev dx^2, ev dx dy, ev dy^2, w g_z, then the colours
                sums = ti.Vector.zero(real, GRAD_COLUMNS + NC)
                if hit_rows > 0:
                    dxs = ti.Vector.zero(real, LANES)
                    for l in ti.static(range(LANES)):
                        dxs[l] = x0f + l - mx
                    ev = scratch_load(scratch, acc_base)
                    ev_dy = scratch_load(scratch, acc_base + 1)
                    sums[0] = lane_sum(ev)
                    sums[1] = lane_sum(ev * dxs)
                    sums[2] = lane_sum(ev_dy)
                    sums[3] = lane_sum(ev * dxs * dxs)
                    sums[4] = lane_sum(ev_dy * dxs)
                    sums[5] = lane_sum(scratch_load(scratch, acc_base + 2))
                    for r in ti.static(range(3, N_TERMS)):
                        sums[r + 3] = lane_sum(scratch_load(scratch, acc_base + r))
                s_dx_vs = -o * sums[1]
                s_dy_vs = -o * sums[2]
                grad_isect[out, 0] = -(a * s_dx_vs + b * s_dy_vs)
                grad_isect[out, 1] = -(b * s_dx_vs + c * s_dy_vs)
                grad_isect[out, 2] = -half * o * sums[3]
                grad_isect[out, 3] = -o * sums[4]
                grad_isect[out, 4] = -half * o * sums[5]
                grad_isect[out, 5] = sums[0]
                grad_isect[out, 6] = sums[6]
                if ti.static(NC > 0):
                    for ch in ti.static(range(NC)):
                        grad_isect[out, GRAD_COLUMNS + ch] = sums[GRAD_COLUMNS + ch]

    return composite_forward, composite_backward
