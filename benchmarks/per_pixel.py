"""A straightforward per-pixel Taichi rasterizer: the calibration point of the speed bar.

Issue 2 sets the bar at 100x the PyTorch peer and expects "a straightforward per-pixel Taichi
loop" to reach about half of it. This module is that loop, so the benchmark can measure the
claim on the machine it runs on: one parallel iteration per pixel walks its tile's sorted list
front to back (forward) and back to front (backward, recomputing each fragment and reducing the
Gaussians' gradients with atomic adds). Projection, tile binning and sorting are ours
(``npga_taichi.render``), so only the compositing differs from :func:`render.rasterize`; the
benchmark checks both agree before timing.

Semantics are the contract's (no background, alpha, or depth outputs: the benchmark's loss
only reads the image). Not part of the package: a measuring stick, not an alternative.
"""

import functools
import inspect

import taichi as ti
import torch

from npga_taichi import render
from npga_taichi.contract import ALPHA_MAX, ALPHA_MIN, T_EPS, TILE_SIZE
from npga_taichi.kernels import runtime
from npga_taichi.kernels.footprint import F_CONIC_A, F_CONIC_B, F_CONIC_C, F_MEAN_X, F_MEAN_Y, F_OPACITY


# near, far, eps2d as render.rasterize defaults them
_DEFAULTS = {k: p.default for k, p in inspect.signature(render.rasterize).parameters.items()
             if k in ("near", "far", "eps2d")}


@functools.lru_cache(maxsize=None)
def _kernels(real):
    runtime.ensure_initialized()
    arr1 = ti.types.ndarray(dtype=real, ndim=1)
    arr2 = ti.types.ndarray(dtype=real, ndim=2)
    iarr1 = ti.types.ndarray(dtype=ti.i32, ndim=1)
    iarr2 = ti.types.ndarray(dtype=ti.i32, ndim=2)

    @ti.func
    def fragment(packed: ti.template(), i, x, y):
        """(hit, dx, dy, e = exp(-sigma), alpha) of intersection i at pixel centre (x, y)."""
        dx = x - packed[i, F_MEAN_X]
        dy = y - packed[i, F_MEAN_Y]
        sigma = real(0.5) * (packed[i, F_CONIC_A] * dx * dx + packed[i, F_CONIC_C] * dy * dy) \
            + packed[i, F_CONIC_B] * dx * dy
        e = ti.exp(-ti.max(sigma, real(0.0)))
        alpha = ti.min(real(ALPHA_MAX), packed[i, F_OPACITY] * e)
        return sigma >= real(0.0) and alpha >= real(ALPHA_MIN), dx, dy, e, alpha

    @ti.func
    def pixel(p, width):
        """(tile, x, y) of pixel p = row * width + column: its tile and its centre."""
        px = p % width
        py = p // width
        tile = (py // TILE_SIZE) * ((width + TILE_SIZE - 1) // TILE_SIZE) + px // TILE_SIZE
        return tile, ti.cast(px, real) + real(0.5), ti.cast(py, real) + real(0.5)

    @ti.kernel
    def forward(packed: arr2, ids: iarr1, colors: arr2, ranges: iarr2, width: ti.i32, height: ti.i32,
                image: arr2, t_final: arr1, last: iarr1):
        for p in range(width * height):
            tile, x, y = pixel(p, width)
            for ch in range(colors.shape[1]):
                image[p, ch] = real(0.0)
            T = real(1.0)
            end = ranges[tile, 0]
            for i in range(ranges[tile, 0], ranges[tile, 1]):
                hit, _dx, _dy, _e, alpha = fragment(packed, i, x, y)
                if hit:
                    t_next = T * (real(1.0) - alpha)
                    if t_next <= real(T_EPS):
                        break
                    for ch in range(colors.shape[1]):
                        image[p, ch] += alpha * T * colors[ids[i], ch]
                    T = t_next
                    end = i + 1
            t_final[p] = T
            last[p] = end

    @ti.kernel
    def backward(packed: arr2, ids: iarr1, colors: arr2, ranges: iarr2, width: ti.i32, height: ti.i32,
                 t_final: arr1, last: iarr1, v_image: arr2, suffix: arr2,
                 v_means2d: arr2, v_conics: arr2, v_opacities: arr1, v_colors: arr2):
        """``suffix`` (H*W, C) is scratch for each pixel's running sum of alpha_j T_j c_j."""
        for p in range(width * height):
            tile, x, y = pixel(p, width)
            for ch in range(colors.shape[1]):
                suffix[p, ch] = real(0.0)
            T = t_final[p]
            start = ranges[tile, 0]
            for k in range(last[p] - start):
                i = last[p] - 1 - k
                hit, dx, dy, e, alpha = fragment(packed, i, x, y)
                if hit:
                    g = ids[i]
                    T = T / (real(1.0) - alpha)  # T_i from T_{i+1}
                    v_alpha = real(0.0)
                    for ch in range(colors.shape[1]):
                        v_alpha += (T * colors[g, ch] - suffix[p, ch] / (real(1.0) - alpha)) * v_image[p, ch]
                        suffix[p, ch] += alpha * T * colors[g, ch]
                        ti.atomic_add(v_colors[g, ch], alpha * T * v_image[p, ch])
                    o = packed[i, F_OPACITY]
                    if o * e <= real(ALPHA_MAX):  # no gradient through the 0.999 clamp
                        ti.atomic_add(v_opacities[g], e * v_alpha)
                        v_sigma = -o * e * v_alpha
                        a = packed[i, F_CONIC_A]
                        b = packed[i, F_CONIC_B]
                        c = packed[i, F_CONIC_C]
                        ti.atomic_add(v_conics[g, 0], real(0.5) * v_sigma * dx * dx)
                        ti.atomic_add(v_conics[g, 1], v_sigma * dx * dy)
                        ti.atomic_add(v_conics[g, 2], real(0.5) * v_sigma * dy * dy)
                        ti.atomic_add(v_means2d[g, 0], -v_sigma * (a * dx + b * dy))
                        ti.atomic_add(v_means2d[g, 1], -v_sigma * (b * dx + c * dy))

    return forward, backward


class _PerPixelComposite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, depths, radii, width, height):
        means2d, conics, opacities, colors, depths = (t.detach() for t in (means2d, conics, opacities, colors, depths))
        dt, dev = means2d.dtype, means2d.device
        bins = render.bin_and_sort(means2d, conics, opacities, depths, radii, width, height)
        ids, ranges, total = bins.ids, bins.ranges, bins.total
        packed = bins.footprint.index_select(0, ids) if total else torch.zeros((1, bins.footprint.shape[1]), dtype=dt, device=dev)
        image = torch.empty((height * width, colors.shape[1]), dtype=dt, device=dev)
        t_final = torch.empty((height * width,), dtype=dt, device=dev)
        last = torch.empty((height * width,), dtype=torch.int32, device=dev)
        forward_kernel, _ = _kernels(render._real(means2d))
        forward_kernel(packed, ids, colors, ranges, width, height, image, t_final, last)
        ctx.save_for_backward(packed, ids, colors, ranges, t_final, last)
        ctx.config = (width, height, means2d.shape[0])
        return image.view(height, width, colors.shape[1])

    @staticmethod
    def backward(ctx, v_image):
        packed, ids, colors, ranges, t_final, last = ctx.saved_tensors
        width, height, n = ctx.config
        dt, dev = packed.dtype, packed.device
        v_means2d = torch.zeros((n, 2), dtype=dt, device=dev)
        v_conics = torch.zeros((n, 3), dtype=dt, device=dev)
        v_opacities = torch.zeros((n,), dtype=dt, device=dev)
        v_colors = torch.zeros((n, colors.shape[1]), dtype=dt, device=dev)
        suffix = torch.empty((height * width, colors.shape[1]), dtype=dt, device=dev)
        _, backward_kernel = _kernels(render._real(packed))
        backward_kernel(packed, ids, colors, ranges, width, height, t_final, last,
                        v_image.contiguous().view(height * width, -1), suffix,
                        v_means2d, v_conics, v_opacities, v_colors)
        return v_means2d, v_conics, v_opacities, v_colors, None, None, None, None


def rasterize_per_pixel(means, quats, scales, opacities, colors, viewmat, K, width, height):
    """Same arguments as :func:`render.rasterize` (features, no SH, no background); returns a
    :class:`render.RasterOutput` whose alpha and depth are None."""
    means2d, conics, depths, radii = render._ProjectGaussians.apply(
        means.contiguous(), quats.contiguous(), scales.contiguous(), opacities.contiguous(),
        viewmat.contiguous(), K.contiguous(), width, height, _DEFAULTS["near"], _DEFAULTS["far"], _DEFAULTS["eps2d"])
    image = _PerPixelComposite.apply(means2d, conics, opacities.contiguous(), colors.contiguous(), depths,
                                     radii, width, height)
    return render.RasterOutput(image=image, alpha=None, depth=None, radii=radii, means2d=means2d)
