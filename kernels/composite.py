"""Tile-parallel alpha compositing: forward and hand-written backward, 16-lane pixel rows.

Layout: intersections are sorted by (tile, float32 depth, Gaussian index) and each tile owns the
contiguous range ``ranges[tile] = [start, end)``. ``pack_intersections`` gathers the per-Gaussian
parameters into intersection order once, so a tile streams its Gaussians from one contiguous
block: ``packed[i] = (mean_x, mean_y, conic_a, conic_b, conic_c, opacity, depth, sigma_cut,
y_extent)`` with ``sigma_cut`` = max(ln(255 o) + 1e-3, 0) (no fragment with a larger sigma can
reach alpha >= 1/255) and ``y_extent`` the half height of the ellipse sigma <= sigma_cut.

One parallel work item per tile (Taichi parallelises the outermost loop only; on the CPU the
loop runs over ``spread`` slots per tile, see ``runtime.parallel_spread``, because Taichi keeps
loops of fewer than ~1024 iterations on one thread); inside, the tile is processed row by row.
The 16 pixels of a tile row are 16 *lanes* whose state (transmittance, colour and depth
accumulators, last contributor, done flag) lives in registers: each Gaussian of
the tile whose y-extent covers the row is evaluated on all 16 lanes with branch-free, statically
unrolled code (selects instead of ifs), which LLVM's SLP vectoriser turns into SIMD (one AVX-512
register holds a float32 row). A row stops as soon as all its pixels have terminated. Although
lanes outside a Gaussian's ellipse are evaluated too (they simply do not hit), the forward is
~4x cheaper than the per-pixel scalar loop it replaces (20k random Gaussians at 256^2: ~19 ms
instead of ~75 ms process CPU time on the 2-core dev machine). Measured and rejected: also
testing the ellipse's chord against the row's x-range (the scalar test cost more than it saved).

Per pixel, front to back (``contract``):
    sigma = 0.5 (a dx^2 + c dy^2) + b dx dy,   alpha = min(0.999, o exp(-sigma))
    a Gaussian contributes iff sigma >= 0 and alpha >= 1/255; compositing stops before the
    first contributing Gaussian with T (1 - alpha) <= 1e-4.
    image = sum alpha_i T_i c_i + T_final background, depth = sum alpha_i T_i z_i.
The forward saves T_final and ``last`` (1 + intersection index of the last contributor; the
tile start if none). The backward walks each row back to front from its largest ``last``,
reconstructing T_i = T_{i+1} / (1 - alpha_i) from T_final (Taichi's autodiff is wrong for
loop-carried accumulators, taichi issue #8356, so it is written by hand). Per (Gaussian, row)
it first evaluates the 16 fragments (vectorised) and skips the gradient arithmetic when no lane
is hit; a Gaussian's gradient is summed over the 16 lanes and added to a per-*intersection* row
of ``grad_isect`` that only its tile writes (no atomics); the caller reduces intersections to
Gaussians (``index_add_``). Per pixel the backward carries T and one weighted suffix sum (see
``composite_backward``). The gradient arithmetic is only partly vectorised by LLVM (the row's
upstream gradients enter as 16 loop-invariant scalars, and Taichi's i32 index arithmetic keeps
LLVM from proving lane loads adjacent): ~57 ms instead of ~120 ms for the scene above, which
is where further speed lies. Measured and rejected: Gaussian-outer/rows-inner with the pixel
state in memory (lane loads and stores are not vectorised, ~2x slower).

Channel counts C <= 4 are unrolled with the colours in registers; other C use a generic variant
that loops over channels at run time (slower, same results).
"""

import functools

import taichi as ti

from npga_taichi.kernels import runtime

from npga_taichi.contract import ALPHA_MAX, ALPHA_MIN, T_EPS, TILE_SIZE

PACKED_WIDTH = 9  # mean_x, mean_y, conic a, b, c, opacity, depth, sigma_cut, y_extent
# sigma > ln(255 o) + SIGMA_CUT_SLACK means alpha <= e^-SLACK / 255 < 1/255 with a margin far
# above rounding error, so rows outside the ellipse sigma <= cut can be skipped.
SIGMA_CUT_SLACK = 1e-3
ROW_SLACK = 1e-2  # pixels added to the ellipse's y-extent (rounding never drops a hit row)
# Loop slots a CPU thread takes from the shared queue at once: small, because tile costs differ
# a lot.
TILES_PER_TASK = 2
LANES = TILE_SIZE  # pixels of a tile row, processed together
# grad_isect columns: d/d(mean_x, mean_y, conic a, b, c, opacity, depth), then one per channel
GRAD_COLUMNS = 7


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
    return y * ti.bit_cast((ti.cast(ti.max(n, -126.0), ti.i32) + 127) << 23, ti.f32)


STATIC_CHANNELS_MAX = 4  # channel counts up to this are unrolled (colours kept in registers)


def channel_variant(n_channels: int) -> int:
    """Kernel variant for a channel count: C itself when unrolled, 0 for the generic loop."""
    return n_channels if n_channels <= STATIC_CHANNELS_MAX else 0


@functools.lru_cache(maxsize=None)
def composite_kernels(real, static_channels: int):
    """Return ``(pack_intersections, composite_forward, composite_backward)`` for dtype ``real``.

    ``static_channels`` = C (1..4) unrolls the channel loops and keeps colours and colour sums in
    registers; 0 builds the generic variant for any C (channel loops at run time).
    Image-sized arrays are passed flattened: pixel q = row * width + column, channel-minor.
    """
    runtime.ensure_initialized()  # kernels are compiled for the arch chosen once per process
    arr1 = ti.types.ndarray(dtype=real, ndim=1)
    arr2 = ti.types.ndarray(dtype=real, ndim=2)
    iarr1 = ti.types.ndarray(dtype=ti.i32, ndim=1)
    iarr2 = ti.types.ndarray(dtype=ti.i32, ndim=2)
    half, one = 0.5, 1.0  # exact in f32, so safe as untyped literals in f64 kernels
    # inexact constants are cast inside the kernels: real(...) only works in Taichi scope
    NC = static_channels
    NCV = max(NC, 1)  # rows of the register colour matrices (unused in the generic variant)

    @ti.kernel
    def pack_intersections(
        ids: iarr1, n: ti.i32, means2d: arr2, conics: arr2, opacities: arr1, depths: arr1, packed: arr2,
    ):
        for i in range(n):
            g = ids[i]
            a = conics[g, 0]
            b = conics[g, 1]
            c = conics[g, 2]
            o = opacities[g]
            cut = ti.max(ti.log(real(255.0) * o) + real(SIGMA_CUT_SLACK), real(0.0))
            det = a * c - b * b
            # sigma <= cut spans |dy| <= sqrt(2 cut Sigma_yy), Sigma_yy = a / det (conic = Sigma^-1)
            y_extent = real(1e30)
            if det > real(0.0) and a > real(0.0):
                y_extent = ti.sqrt(real(2.0) * cut * a / det) + real(ROW_SLACK)
            packed[i, 0] = means2d[g, 0]
            packed[i, 1] = means2d[g, 1]
            packed[i, 2] = a
            packed[i, 3] = b
            packed[i, 4] = c
            packed[i, 5] = o
            packed[i, 6] = depths[g]
            packed[i, 7] = cut
            packed[i, 8] = y_extent

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
        e = exp_neg(ti.min(ti.max(sigma, real(0.0)), cut))
        raw = o * e
        alpha = ti.min(real(ALPHA_MAX), raw)
        hit = (sigma >= real(0.0)) & (sigma <= cut) & (alpha >= real(ALPHA_MIN))
        return hit, e, raw, alpha

    @ti.func
    def load_color(colors: arr2, g):
        col = ti.Vector.zero(real, NCV)
        if ti.static(NC > 0):
            for ch in ti.static(range(NC)):
                col[ch] = colors[g, ch]
        return col

    @ti.func
    def lane_pixel(x0, lane, width):
        """Column of a lane, clamped into the image (lanes past the right edge never hit)."""
        return ti.min(x0 + lane, width - 1)

    @ti.kernel
    def composite_forward(
        packed: arr2, ids: iarr1, colors: arr2, ranges: iarr2, background: arr1,
        width: ti.i32, height: ti.i32, tiles_x: ti.i32, pitch: ti.i32, spread: ti.i32,
        image: arr1, alpha_out: arr1, depth: arr1, t_final: arr1, last: iarr1,
    ):
        """image (H*W*C), alpha_out = 1 - T_final, depth (H*W) are written for every pixel;
        t_final and last (H*pitch, rows padded to whole tiles: pitch = tiles_x * 16) for every
        lane (T = 1 and last = tile start past the right edge), so the backward loads a row's
        lanes unconditionally as vectors."""
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
                    dy = dy_base - packed[i, 1]
                    if ti.abs(dy) <= packed[i, 8]:  # the row crosses the ellipse sigma <= cut
                        mx = packed[i, 0]
                        a = packed[i, 2]
                        b = packed[i, 3]
                        c = packed[i, 4]
                        o = packed[i, 5]
                        z = packed[i, 6]
                        cut = packed[i, 7]
                        g = ids[i]
                        col = load_color(colors, g)
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
                for l in ti.static(range(LANES)):
                    t_final[py * pitch + x0 + l] = T[l]
                    last[py * pitch + x0 + l] = lastv[l]
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
        packed: arr2, ids: iarr1, colors: arr2, ranges: iarr2, background: arr1,
        width: ti.i32, height: ti.i32, tiles_x: ti.i32, pitch: ti.i32, spread: ti.i32,
        t_final: arr1, last: iarr1, v_image: arr1, v_alpha: arr1, v_depth: arr1,
        grad_isect: arr2, v_background_tiles: arr2,
    ):
        """Per-intersection gradients ``grad_isect`` (M, 7 + C): d/d(mean_x, mean_y, conic a, b,
        c, opacity, depth, colour channels) of the Gaussian ``ids[i]`` through tile i's pixels
        (every row of every tile's range is written); background gradient as one partial sum per
        tile, ``v_background_tiles`` (n_tiles, C). All per-pixel inputs are in the padded layout
        of ``t_final`` (H*pitch[*C], zeros in the padding; zeros for an unused output), so a
        row's 16 lanes are read without branches.

        For contributor k of a pixel, with S_k = sum_{j>k} alpha_j T_j c_j + T_final bg and
        D_k = sum_{j>k} alpha_j T_j z_j (suffix sums, built while walking back to front):
        dL/dalpha_k = g.(T_k c_k - S_k/(1-alpha_k)) + g_z (T_k z_k - D_k/(1-alpha_k))
                      + g_alpha T_final/(1-alpha_k)
                    = T_k (g.c_k + g_z z_k) - (U_k - g_alpha T_final) / (1-alpha_k),
        with the pixel's upstream gradients (g, g_z, g_alpha) fixed, so only the weighted suffix
        sum U_k = g.S_k + g_z D_k is carried (one number per pixel instead of C + 1):
        U starts at T_final g.bg and grows by alpha_k T_k (g.c_k + g_z z_k).
        The sigma gradient is -o e^-sigma dL/dalpha (raw = o e^-sigma below the 0.999 clamp).
        """
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
            for i in range(start, end):
                for k in range(grad_isect.shape[1]):
                    grad_isect[i, k] = real(0.0)
            for ch in range(n_channels):
                v_background_tiles[tile, ch] = real(0.0)
            for py in range(y0, y1):
                dy_base = ti.cast(py, real) + half
                T_run = ti.Vector.one(real, LANES)
                lastv = ti.Vector.zero(ti.i32, LANES) + start
                U = ti.Vector.zero(real, LANES)  # g . S + g_z D, the weighted suffix sum
                G = ti.Matrix.zero(real, NCV, LANES)  # upstream image gradient
                g_dep = ti.Vector.zero(real, LANES)
                g_alpha_t = ti.Vector.zero(real, LANES)  # v_alpha * T_final
                row_last = start
                bg_sum = ti.Vector.zero(real, NCV)
                for l in ti.static(range(LANES)):
                    q = py * pitch + x0 + l
                    T = t_final[q]
                    T_run[l] = T
                    lastv[l] = last[q]
                    g_dep[l] = v_depth[q]
                    g_alpha_t[l] = v_alpha[q] * T
                    if ti.static(NC > 0):
                        for ch in ti.static(range(NC)):
                            G[ch, l] = v_image[q * NC + ch]
                            U[l] += T * background[ch] * G[ch, l]
                            bg_sum[ch] += T * G[ch, l]
                    else:
                        for ch in range(n_channels):
                            gpix = v_image[q * n_channels + ch]
                            U[l] += T * background[ch] * gpix
                            v_background_tiles[tile, ch] = v_background_tiles[tile, ch] + T * gpix
                    row_last = ti.max(row_last, lastv[l])
                if ti.static(NC > 0):
                    for ch in ti.static(range(NC)):
                        v_background_tiles[tile, ch] = v_background_tiles[tile, ch] + bg_sum[ch]
                for step in range(row_last - start):
                    i = row_last - 1 - step
                    dy = dy_base - packed[i, 1]
                    if ti.abs(dy) <= packed[i, 8]:
                        mx = packed[i, 0]
                        a = packed[i, 2]
                        b = packed[i, 3]
                        c = packed[i, 4]
                        o = packed[i, 5]
                        z = packed[i, 6]
                        cut = packed[i, 7]
                        g = ids[i]
                        col = load_color(colors, g)
                        hits = ti.Vector.zero(ti.i32, LANES)
                        es = ti.Vector.zero(real, LANES)
                        raws = ti.Vector.zero(real, LANES)
                        alphas = ti.Vector.zero(real, LANES)
                        n_hit = 0
                        for l in ti.static(range(LANES)):
                            hit, e, raw, alpha = fragment(a, b, c, o, cut, x0f + l - mx, dy)
                            hit = hit & (i < lastv[l])
                            hits[l] = ti.select(hit, 1, 0)
                            n_hit += hits[l]
                            es[l] = e
                            raws[l] = raw
                            alphas[l] = alpha
                        if n_hit == 0:
                            continue  # the row crosses the ellipse outside this tile or after its last contributors
                        # lane sums of e v_alpha (e = exp(-sigma)) times 1, dx, dx^2, then w g_z and w g;
                        # v_sigma = -o e v_alpha, so the sigma sums are -o times the first three
                        s_ev = real(0.0)
                        s_dx_ev = real(0.0)
                        s_dx2_ev = real(0.0)
                        s_z = real(0.0)
                        s_col = ti.Vector.zero(real, NCV)
                        for l in ti.static(range(LANES)):
                            dx = x0f + l - mx
                            hit = hits[l] != 0
                            raw = raws[l]
                            alpha = alphas[l]
                            inv = one / (one - alpha)
                            T = T_run[l] * inv  # T_k from T_{k+1}
                            w_hit = ti.select(hit, alpha * T, real(0.0))
                            g_dot_c = g_dep[l] * z  # g . c_k + g_z z_k
                            if ti.static(NC > 0):
                                for ch in ti.static(range(NC)):
                                    g_dot_c += G[ch, l] * col[ch]
                                    s_col[ch] += w_hit * G[ch, l]
                            else:
                                k = (py * pitch + x0 + l) * n_channels
                                for ch in range(n_channels):
                                    gpix = v_image[k + ch]
                                    g_dot_c += gpix * colors[g, ch]
                                    grad_isect[i, GRAD_COLUMNS + ch] = grad_isect[i, GRAD_COLUMNS + ch] + w_hit * gpix
                            v_alpha_k = T * g_dot_c - inv * (U[l] - g_alpha_t[l])
                            U[l] += w_hit * g_dot_c
                            s_z += w_hit * g_dep[l]
                            T_run[l] = ti.select(hit, T, T_run[l])
                            # alpha = min(0.999, raw): no gradient through the clamp
                            v_alpha_k = ti.select(hit & (raw <= real(ALPHA_MAX)), v_alpha_k, real(0.0))
                            ev = es[l] * v_alpha_k
                            s_ev += ev
                            s_dx_ev += dx * ev
                            s_dx2_ev += dx * dx * ev
                        s_o = s_ev
                        s_vs = -o * s_ev
                        s_dx_vs = -o * s_dx_ev
                        s_dx2_vs = -o * s_dx2_ev
                        # plain read-add-write, not +=: Taichi makes += on global arrays atomic, and
                        # only this tile writes row i (atomics cost ~1/4 of the backward)
                        grad_isect[i, 0] = grad_isect[i, 0] - (a * s_dx_vs + b * dy * s_vs)
                        grad_isect[i, 1] = grad_isect[i, 1] - (b * s_dx_vs + c * dy * s_vs)
                        grad_isect[i, 2] = grad_isect[i, 2] + half * s_dx2_vs
                        grad_isect[i, 3] = grad_isect[i, 3] + dy * s_dx_vs
                        grad_isect[i, 4] = grad_isect[i, 4] + half * dy * dy * s_vs
                        grad_isect[i, 5] = grad_isect[i, 5] + s_o
                        grad_isect[i, 6] = grad_isect[i, 6] + s_z
                        if ti.static(NC > 0):
                            for ch in ti.static(range(NC)):
                                grad_isect[i, GRAD_COLUMNS + ch] = grad_isect[i, GRAD_COLUMNS + ch] + s_col[ch]

    return pack_intersections, composite_forward, composite_backward
