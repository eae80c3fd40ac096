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


@functools.lru_cache(maxsize=None)
def composite_kernels(real):
    """Return ``(pack_intersections, composite_forward, composite_backward)`` for dtype ``real``."""
    runtime.ensure_initialized()  # kernels are compiled for the arch chosen once per process
    arr1 = ti.types.ndarray(dtype=real, ndim=1)
    arr2 = ti.types.ndarray(dtype=real, ndim=2)
    arr3 = ti.types.ndarray(dtype=real, ndim=3)
    iarr1 = ti.types.ndarray(dtype=ti.i32, ndim=1)
    iarr2 = ti.types.ndarray(dtype=ti.i32, ndim=2)
    half, one = 0.5, 1.0  # exact in f32, so safe as untyped literals in f64 kernels
    # inexact constants are cast inside the kernels: real(...) only works in Taichi scope

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
    def sigma_cutoff(o):
        return ti.log(real(255.0) * o) + real(SIGMA_CUT_SLACK)

    @ti.kernel
    def composite_forward(
        packed: arr2, ids: iarr1, colors: arr2, ranges: iarr2, background: arr1,
        width: ti.i32, height: ti.i32, tiles_x: ti.i32,
        image: arr3, t_final: arr2, depth: arr2, last: iarr2, done: iarr2,
    ):
        n_channels = colors.shape[1]
        for tile in range(ranges.shape[0]):
            x0, y0, x1, y1 = tile_bounds(tile, tiles_x, width, height)
            start = ranges[tile, 0]
            end = ranges[tile, 1]
            for py in range(y0, y1):
                for px in range(x0, x1):
                    t_final[py, px] = one
                    depth[py, px] = real(0.0)
                    last[py, px] = start
                    done[py, px] = 0
                    for ch in range(n_channels):
                        image[py, px, ch] = real(0.0)
            remaining = (x1 - x0) * (y1 - y0)
            for i in range(start, end):
                if remaining == 0:
                    break
                mx = packed[i, 0]
                my = packed[i, 1]
                a = packed[i, 2]
                b = packed[i, 3]
                c = packed[i, 4]
                o = packed[i, 5]
                z = packed[i, 6]
                g = ids[i]
                sigma_cut = sigma_cutoff(o)
                rx0, rx1, ry0, ry1 = pixel_rect(mx, my, packed[i, 7], x0, y0, x1, y1)
                for py in range(ry0, ry1 + 1):
                    dy = ti.cast(py, real) + half - my
                    for px in range(rx0, rx1 + 1):
                        if done[py, px] == 0:
                            dx = ti.cast(px, real) + half - mx
                            hit, _sigma, _raw, alpha = fragment(a, b, c, o, sigma_cut, dx, dy)
                            if hit:
                                T = t_final[py, px]
                                t_next = T * (one - alpha)
                                if t_next <= real(T_EPS):
                                    done[py, px] = 1
                                    remaining -= 1
                                else:
                                    w = alpha * T
                                    for ch in range(n_channels):
                                        image[py, px, ch] = image[py, px, ch] + w * colors[g, ch]
                                    depth[py, px] = depth[py, px] + w * z
                                    t_final[py, px] = t_next
                                    last[py, px] = i + 1
            for py in range(y0, y1):
                for px in range(x0, x1):
                    T = t_final[py, px]
                    for ch in range(n_channels):
                        image[py, px, ch] = image[py, px, ch] + T * background[ch]

    @ti.kernel
    def composite_backward(
        packed: arr2, ids: iarr1, colors: arr2, ranges: iarr2, background: arr1,
        width: ti.i32, height: ti.i32, tiles_x: ti.i32,
        t_final: arr2, last: iarr2, v_image: arr3, v_alpha: arr2, v_depth: arr2,
        t_run: arr2, suffix_color: arr3, suffix_depth: arr2, color_acc: arr2,
        v_means2d: arr2, v_conics: arr2, v_opacities: arr1, v_depths: arr1, v_colors: arr2,
        v_background_tiles: arr2,
    ):
        """Gradients to means2d, conics, opacities, depths, colors (atomic per Gaussian per tile)
        and background (one partial sum per tile, ``v_background_tiles`` (n_tiles, C))."""
        n_channels = colors.shape[1]
        for tile in range(ranges.shape[0]):
            x0, y0, x1, y1 = tile_bounds(tile, tiles_x, width, height)
            start = ranges[tile, 0]
            last_max = start
            for ch in range(n_channels):
                v_background_tiles[tile, ch] = real(0.0)
            for py in range(y0, y1):
                for px in range(x0, x1):
                    T = t_final[py, px]
                    t_run[py, px] = T
                    suffix_depth[py, px] = real(0.0)
                    for ch in range(n_channels):
                        suffix_color[py, px, ch] = T * background[ch]
                        v_background_tiles[tile, ch] = v_background_tiles[tile, ch] + T * v_image[py, px, ch]
                    last_max = ti.max(last_max, last[py, px])
            for k in range(last_max - start):
                i = last_max - 1 - k
                mx = packed[i, 0]
                my = packed[i, 1]
                a = packed[i, 2]
                b = packed[i, 3]
                c = packed[i, 4]
                o = packed[i, 5]
                z = packed[i, 6]
                g = ids[i]
                sigma_cut = sigma_cutoff(o)
                rx0, rx1, ry0, ry1 = pixel_rect(mx, my, packed[i, 7], x0, y0, x1, y1)
                g_mx = real(0.0)
                g_my = real(0.0)
                g_a = real(0.0)
                g_b = real(0.0)
                g_c = real(0.0)
                g_o = real(0.0)
                g_z = real(0.0)
                for ch in range(n_channels):
                    color_acc[tile, ch] = real(0.0)
                for py in range(ry0, ry1 + 1):
                    dy = ti.cast(py, real) + half - my
                    for px in range(rx0, rx1 + 1):
                        if i < last[py, px]:
                            dx = ti.cast(px, real) + half - mx
                            hit, sigma, raw, alpha = fragment(a, b, c, o, sigma_cut, dx, dy)
                            if hit:
                                one_minus = one - alpha
                                T = t_run[py, px] / one_minus  # T_i from T_{i+1}
                                w = alpha * T
                                v_alpha_i = real(0.0)
                                for ch in range(n_channels):
                                    gpix = v_image[py, px, ch]
                                    col = colors[g, ch]
                                    color_acc[tile, ch] = color_acc[tile, ch] + w * gpix
                                    s = suffix_color[py, px, ch]
                                    v_alpha_i += gpix * (T * col - s / one_minus)
                                    suffix_color[py, px, ch] = s + w * col
                                gd = v_depth[py, px]
                                sd = suffix_depth[py, px]
                                g_z += w * gd
                                v_alpha_i += gd * (T * z - sd / one_minus)
                                suffix_depth[py, px] = sd + w * z
                                v_alpha_i += v_alpha[py, px] * t_final[py, px] / one_minus
                                t_run[py, px] = T
                                if raw <= real(ALPHA_MAX):  # alpha = min(0.999, raw): no gradient when clamped
                                    e = raw / o  # = exp(-sigma); o >= 1/255 for every binned Gaussian
                                    g_o += e * v_alpha_i
                                    v_sigma = -raw * v_alpha_i
                                    g_a += half * dx * dx * v_sigma
                                    g_b += dx * dy * v_sigma
                                    g_c += half * dy * dy * v_sigma
                                    g_mx += -(a * dx + b * dy) * v_sigma
                                    g_my += -(b * dx + c * dy) * v_sigma
                ti.atomic_add(v_means2d[g, 0], g_mx)
                ti.atomic_add(v_means2d[g, 1], g_my)
                ti.atomic_add(v_conics[g, 0], g_a)
                ti.atomic_add(v_conics[g, 1], g_b)
                ti.atomic_add(v_conics[g, 2], g_c)
                ti.atomic_add(v_opacities[g], g_o)
                ti.atomic_add(v_depths[g], g_z)
                for ch in range(n_channels):
                    ti.atomic_add(v_colors[g, ch], color_acc[tile, ch])

    return pack_intersections, composite_forward, composite_backward
