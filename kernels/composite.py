"""Tile-parallel alpha compositing: forward and hand-written backward.

Layout: intersections are sorted by (tile, float32 depth, Gaussian index) and each tile owns the
contiguous range ``ranges[tile] = [start, end)``. ``pack_intersections`` gathers the per-Gaussian
parameters into intersection order once, so a tile streams its Gaussians from one contiguous
block: ``packed[i] = (mean_x, mean_y, conic_a, conic_b, conic_c, opacity, depth, extent)``.

One parallel work item per tile (Taichi parallelises the outermost loop only). Inside a tile the
loop runs Gaussian-outer, pixel-inner over only the pixels of the Gaussian's rectangle
(mean2d +- extent clipped to the tile), so a Gaussian's gradient is accumulated in registers and
added to the global gradient with one atomic add per Gaussian per tile.

Per pixel, front to back (``contract``):
    sigma = 0.5 (a dx^2 + c dy^2) + b dx dy,   alpha = min(0.999, o exp(-sigma))
    a Gaussian contributes iff sigma >= 0 and alpha >= 1/255; compositing stops before the
    first contributing Gaussian with T (1 - alpha) <= 1e-4.
    image = sum alpha_i T_i c_i + T_final background, depth = sum alpha_i T_i z_i.
The forward saves T_final and ``last`` (1 + intersection index of the last contributor; the
tile start if none). The backward walks each tile back to front from its largest ``last``,
reconstructing T_i = T_{i+1} / (1 - alpha_i) from T_final (Taichi's autodiff is wrong for
loop-carried accumulators, taichi issue #8356, so it is written by hand).

Pixel state (T, last, a done flag, the running suffix sums of the backward) lives in image-sized
buffers that a tile touches only inside its own 16x16 block, so it stays in L1.
"""

import functools

import taichi as ti

from npga_taichi.kernels import runtime

from npga_taichi.contract import ALPHA_MAX, ALPHA_MIN, T_EPS, TILE_SIZE

PACKED_WIDTH = 8  # mean_x, mean_y, conic a, b, c, opacity, depth, extent
# sigma > ln(255 o) + SIGMA_CUT_SLACK means alpha <= e^-SLACK / 255 < 1/255 with a margin far
# above rounding error, so the exp can be skipped without changing which fragments hit.
SIGMA_CUT_SLACK = 1e-3
ROW_SLACK = 1e-2  # pixels added on both ends of an ellipse chord
# Tiles a CPU thread takes from the shared queue at once: small, because tile costs differ a lot
# (Taichi's default of 32 leaves one core idle at the end of a 256-tile image).
TILES_PER_TASK = 2


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

    ``static_channels`` = C (1..4) unrolls the channel loops and keeps a Gaussian's colour and
    colour gradient in registers; 0 builds the generic variant for any C (loops at run time).
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
    NCV = max(NC, 1)  # length of the register colour vectors (unused in the generic variant)

    @ti.kernel
    def pack_intersections(
        ids: iarr1, n: ti.i32, means2d: arr2, conics: arr2, opacities: arr1, depths: arr1,
        extents: arr1, packed: arr2,
    ):
        for i in range(n):
            g = ids[i]
            packed[i, 0] = means2d[g, 0]
            packed[i, 1] = means2d[g, 1]
            packed[i, 2] = conics[g, 0]
            packed[i, 3] = conics[g, 1]
            packed[i, 4] = conics[g, 2]
            packed[i, 5] = opacities[g]
            packed[i, 6] = depths[g]
            packed[i, 7] = extents[g]

    @ti.func
    def tile_bounds(tile, tiles_x, width, height):
        x0 = (tile % tiles_x) * TILE_SIZE
        y0 = (tile // tiles_x) * TILE_SIZE
        return x0, y0, ti.min(x0 + TILE_SIZE, width), ti.min(y0 + TILE_SIZE, height)

    @ti.func
    def pixel_rect(mx, my, e, x0, y0, x1, y1):
        """Pixels (j, i) of the tile with |j + 0.5 - mx| <= e and |i + 0.5 - my| <= e."""
        rx0 = ti.cast(ti.max(ti.ceil(mx - e - half), ti.cast(x0, real)), ti.i32)
        rx1 = ti.cast(ti.min(ti.floor(mx + e - half), ti.cast(x1 - 1, real)), ti.i32)
        ry0 = ti.cast(ti.max(ti.ceil(my - e - half), ti.cast(y0, real)), ti.i32)
        ry1 = ti.cast(ti.min(ti.floor(my + e - half), ti.cast(y1 - 1, real)), ti.i32)
        return rx0, rx1, ry0, ry1

    @ti.func
    def row_span(mx, a, inv_a, b, det_q, two_a_cut, dy, rx0, rx1):
        """Pixels px in [rx0, rx1] of one row whose sigma can be <= cut (the ellipse's chord).

        sigma(dx) = a/2 dx^2 + b dy dx + c/2 dy^2 <= cut  <=>  dx in (-b dy -+ sqrt(disc)) / a,
        disc = 2 a cut - (a c - b^2) dy^2. Widened by a small margin: a pixel just outside has
        sigma ~ cut, where alpha < 0.999/255 cannot hit, so rounding here never drops a hit.
        ``inv_a`` = 1/a, ``det_q`` = a c - b^2 and ``two_a_cut`` = 2 a cut are per Gaussian.
        """
        lo = rx1 + 1
        hi = rx1
        disc = two_a_cut - det_q * dy * dy
        if disc >= real(0.0):
            half_chord = ti.sqrt(disc) * inv_a + real(ROW_SLACK)
            centre = mx - half - b * dy * inv_a
            lo = ti.cast(ti.max(ti.ceil(centre - half_chord), ti.cast(rx0, real)), ti.i32)
            hi = ti.cast(ti.min(ti.floor(centre + half_chord), ti.cast(rx1, real)), ti.i32)
        return lo, hi

    @ti.func
    def sigma_cutoff(o):
        return ti.log(real(255.0) * o) + real(SIGMA_CUT_SLACK)

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
    def fragment(a, b, c, o, sigma_cut, dx, dy):
        """(hit, sigma, unclamped o exp(-sigma), alpha) of one Gaussian at one pixel.

        hit = sigma >= 0 and alpha >= 1/255 (the contract). ``sigma_cut`` = ln(255 o) + 1e-3
        skips the exp where alpha < 0.999/255 for sure; it never decides a hit by itself.
        """
        sigma = half * (a * dx * dx + c * dy * dy) + b * dx * dy
        raw = real(0.0)
        alpha = real(0.0)
        hit = False
        if sigma >= real(0.0) and sigma <= sigma_cut:
            raw = o * exp_neg(sigma)
            alpha = ti.min(real(ALPHA_MAX), raw)
            hit = alpha >= real(ALPHA_MIN)
        return hit, sigma, raw, alpha

    @ti.func
    def load_color(colors: arr2, g):
        col = ti.Vector.zero(real, NCV)
        if ti.static(NC > 0):
            for ch in ti.static(range(NC)):
                col[ch] = colors[g, ch]
        return col

    @ti.kernel
    def composite_forward(
        packed: arr2, ids: iarr1, colors: arr2, ranges: iarr2, background: arr1,
        width: ti.i32, height: ti.i32, tiles_x: ti.i32,
        image: arr1, t_final: arr1, alpha_out: arr1, depth: arr1, last: iarr1, done: iarr1,
    ):
        """image (H*W*C), t_final, alpha_out = 1 - t_final, depth, last, done (H*W) are written
        for every pixel."""
        n_channels = colors.shape[1]
        ti.loop_config(block_dim=TILES_PER_TASK)
        for tile in range(ranges.shape[0]):
            x0, y0, x1, y1 = tile_bounds(tile, tiles_x, width, height)
            start = ranges[tile, 0]
            end = ranges[tile, 1]
            for py in range(y0, y1):
                for px in range(x0, x1):
                    q = py * width + px
                    t_final[q] = one
                    depth[q] = real(0.0)
                    last[q] = start
                    done[q] = 0
                    for ch in range(n_channels):
                        image[q * n_channels + ch] = real(0.0)
            remaining = (x1 - x0) * (y1 - y0)
            for i in range(start, end):
                if remaining == 0:
                    break  # every pixel of the tile has terminated
                mx = packed[i, 0]
                my = packed[i, 1]
                a = packed[i, 2]
                b = packed[i, 3]
                c = packed[i, 4]
                o = packed[i, 5]
                z = packed[i, 6]
                g = ids[i]
                col = load_color(colors, g)
                sigma_cut = sigma_cutoff(o)
                inv_a = one / a
                det_q = a * c - b * b
                two_a_cut = real(2.0) * a * sigma_cut
                rx0, rx1, ry0, ry1 = pixel_rect(mx, my, packed[i, 7], x0, y0, x1, y1)
                for py in range(ry0, ry1 + 1):
                    dy = ti.cast(py, real) + half - my
                    lo, hi = row_span(mx, a, inv_a, b, det_q, two_a_cut, dy, rx0, rx1)
                    row = py * width
                    for px in range(lo, hi + 1):
                        q = row + px
                        if done[q] == 0:
                            dx = ti.cast(px, real) + half - mx
                            hit, _sigma, _raw, alpha = fragment(a, b, c, o, sigma_cut, dx, dy)
                            if hit:
                                T = t_final[q]
                                t_next = T * (one - alpha)
                                if t_next <= real(T_EPS):
                                    done[q] = 1
                                    remaining -= 1
                                else:
                                    w = alpha * T
                                    if ti.static(NC > 0):
                                        for ch in ti.static(range(NC)):
                                            image[q * NC + ch] = image[q * NC + ch] + w * col[ch]
                                    else:
                                        for ch in range(n_channels):
                                            k = q * n_channels + ch
                                            image[k] = image[k] + w * colors[g, ch]
                                    depth[q] = depth[q] + w * z
                                    t_final[q] = t_next
                                    last[q] = i + 1
            for py in range(y0, y1):
                for px in range(x0, x1):
                    q = py * width + px
                    T = t_final[q]
                    alpha_out[q] = one - T
                    for ch in range(n_channels):
                        image[q * n_channels + ch] = image[q * n_channels + ch] + T * background[ch]

    @ti.kernel
    def composite_backward(
        packed: arr2, ids: iarr1, colors: arr2, ranges: iarr2, background: arr1,
        width: ti.i32, height: ti.i32, tiles_x: ti.i32,
        t_final: arr1, last: iarr1, v_image: arr1, v_alpha: arr1, v_depth: arr1,
        has_v_alpha: ti.i32, has_v_depth: ti.i32,
        t_run: arr1, suffix_color: arr1, suffix_depth: arr1, color_acc: arr1,
        v_means2d: arr2, v_conics: arr2, v_opacities: arr1, v_depths: arr1, v_colors: arr2,
        v_background_tiles: arr2,
    ):
        """Gradients to means2d, conics, opacities, depths, colors (atomic per Gaussian per tile)
        and background (one partial sum per tile, ``v_background_tiles`` (n_tiles, C)).
        The per-Gaussian outputs are zeroed here (no torch fill between kernels). ``v_alpha`` /
        ``v_depth`` are read only when ``has_v_alpha`` / ``has_v_depth`` (else any 1-element array).

        For contributor k of a pixel, with S_k = sum_{j>k} alpha_j T_j c_j + T_final bg and
        D_k = sum_{j>k} alpha_j T_j z_j (suffix sums, built while walking back to front):
        dL/dalpha_k = g.(T_k c_k - S_k/(1-alpha_k)) + g_z (T_k z_k - D_k/(1-alpha_k))
                      + g_alpha T_final/(1-alpha_k).
        """
        n_channels = colors.shape[1]
        for g in range(v_means2d.shape[0]):
            v_means2d[g, 0] = real(0.0)
            v_means2d[g, 1] = real(0.0)
            v_conics[g, 0] = real(0.0)
            v_conics[g, 1] = real(0.0)
            v_conics[g, 2] = real(0.0)
            v_opacities[g] = real(0.0)
            v_depths[g] = real(0.0)
            for ch in range(n_channels):
                v_colors[g, ch] = real(0.0)
        ti.loop_config(block_dim=TILES_PER_TASK)
        for tile in range(ranges.shape[0]):
            x0, y0, x1, y1 = tile_bounds(tile, tiles_x, width, height)
            start = ranges[tile, 0]
            last_max = start
            for ch in range(n_channels):
                v_background_tiles[tile, ch] = real(0.0)
            for py in range(y0, y1):
                for px in range(x0, x1):
                    q = py * width + px
                    T = t_final[q]
                    t_run[q] = T
                    suffix_depth[q] = real(0.0)
                    for ch in range(n_channels):
                        k = q * n_channels + ch
                        suffix_color[k] = T * background[ch]
                        v_background_tiles[tile, ch] = v_background_tiles[tile, ch] + T * v_image[k]
                    last_max = ti.max(last_max, last[q])
            for step in range(last_max - start):
                i = last_max - 1 - step
                mx = packed[i, 0]
                my = packed[i, 1]
                a = packed[i, 2]
                b = packed[i, 3]
                c = packed[i, 4]
                o = packed[i, 5]
                z = packed[i, 6]
                g = ids[i]
                col = load_color(colors, g)
                g_col = ti.Vector.zero(real, NCV)
                sigma_cut = sigma_cutoff(o)
                inv_a = one / a
                det_q = a * c - b * b
                two_a_cut = real(2.0) * a * sigma_cut
                rx0, rx1, ry0, ry1 = pixel_rect(mx, my, packed[i, 7], x0, y0, x1, y1)
                g_mx = real(0.0)
                g_my = real(0.0)
                g_a = real(0.0)
                g_b = real(0.0)
                g_c = real(0.0)
                g_o = real(0.0)
                g_z = real(0.0)
                if ti.static(NC == 0):
                    for ch in range(n_channels):
                        color_acc[tile * n_channels + ch] = real(0.0)
                for py in range(ry0, ry1 + 1):
                    dy = ti.cast(py, real) + half - my
                    lo, hi = row_span(mx, a, inv_a, b, det_q, two_a_cut, dy, rx0, rx1)
                    row = py * width
                    for px in range(lo, hi + 1):
                        q = row + px
                        if i < last[q]:
                            dx = ti.cast(px, real) + half - mx
                            hit, sigma, raw, alpha = fragment(a, b, c, o, sigma_cut, dx, dy)
                            if hit:
                                inv = one / (one - alpha)
                                T = t_run[q] * inv  # T_k from T_{k+1}
                                w = alpha * T
                                v_alpha_k = real(0.0)
                                if ti.static(NC > 0):
                                    for ch in ti.static(range(NC)):
                                        k = q * NC + ch
                                        gpix = v_image[k]
                                        s = suffix_color[k]
                                        g_col[ch] += w * gpix
                                        v_alpha_k += gpix * (T * col[ch] - s * inv)
                                        suffix_color[k] = s + w * col[ch]
                                else:
                                    for ch in range(n_channels):
                                        k = q * n_channels + ch
                                        gpix = v_image[k]
                                        s = suffix_color[k]
                                        cc = colors[g, ch]
                                        ka = tile * n_channels + ch
                                        color_acc[ka] = color_acc[ka] + w * gpix
                                        v_alpha_k += gpix * (T * cc - s * inv)
                                        suffix_color[k] = s + w * cc
                                if has_v_depth:
                                    gd = v_depth[q]
                                    sd = suffix_depth[q]
                                    g_z += w * gd
                                    v_alpha_k += gd * (T * z - sd * inv)
                                    suffix_depth[q] = sd + w * z
                                if has_v_alpha:
                                    v_alpha_k += v_alpha[q] * t_final[q] * inv
                                t_run[q] = T
                                if raw <= real(ALPHA_MAX):  # alpha = min(0.999, raw): no gradient when clamped
                                    g_o += raw / o * v_alpha_k  # raw / o = exp(-sigma); o >= 1/255 here
                                    v_sigma = -raw * v_alpha_k
                                    g_a += half * dx * dx * v_sigma
                                    g_b += dx * dy * v_sigma
                                    g_c += half * dy * dy * v_sigma
                                    g_mx -= (a * dx + b * dy) * v_sigma
                                    g_my -= (b * dx + c * dy) * v_sigma
                ti.atomic_add(v_means2d[g, 0], g_mx)
                ti.atomic_add(v_means2d[g, 1], g_my)
                ti.atomic_add(v_conics[g, 0], g_a)
                ti.atomic_add(v_conics[g, 1], g_b)
                ti.atomic_add(v_conics[g, 2], g_c)
                ti.atomic_add(v_opacities[g], g_o)
                ti.atomic_add(v_depths[g], g_z)
                if ti.static(NC > 0):
                    for ch in ti.static(range(NC)):
                        ti.atomic_add(v_colors[g, ch], g_col[ch])
                else:
                    for ch in range(n_channels):
                        ti.atomic_add(v_colors[g, ch], color_acc[tile * n_channels + ch])

    return pack_intersections, composite_forward, composite_backward
