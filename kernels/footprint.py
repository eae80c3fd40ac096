"""Screen footprint of a projected Gaussian: the ellipse outside which it cannot reach 1/255.

PyTorch twin: the contribution rule (``hit``) of :func:`npga_taichi.reference.fragments`, which
this ellipse bounds; tests: ``tests/test_render.py`` (binning against a brute-force scan of
``reference.fragments`` over every pixel).

A fragment at offset (dx, dy) from ``mean2d`` has sigma = 0.5 (a dx^2 + c dy^2) + b dx dy for the
conic (a, b, c) and contributes only if o exp(-sigma) >= 1/255, i.e. sigma <= ln(255 o). The
footprint is the ellipse sigma <= ``cut`` = ln(255 o) + SIGMA_CUT_SLACK: tile binning keeps a tile
only if the ellipse reaches one of its pixel centres (so no intersection that could contribute is
ever dropped, and few that cannot are kept), and compositing skips the rows it does not cross.

Every function takes the float type ``real`` (ti.f32 / ti.f64) as a template argument.
"""

import taichi as ti

# sigma > ln(255 o) + SIGMA_CUT_SLACK means alpha <= e^-SLACK / 255 < 1/255 with a margin far
# above rounding error, so pixels outside the ellipse sigma <= cut can be skipped.
SIGMA_CUT_SLACK = 1e-3
EXTENT_SLACK = 1e-2  # pixels added to the ellipse's half width and height (rounding never drops a hit)
NO_EXTENT = 1e30  # half extent of a degenerate (non positive-definite after rounding) conic

# Columns of a footprint row (N, FOOTPRINT_WIDTH), built once per Gaussian by tile binning and
# copied per intersection for compositing.
F_MEAN_X, F_MEAN_Y, F_CONIC_A, F_CONIC_B, F_CONIC_C, F_OPACITY, F_DEPTH, F_CUT, F_Y_EXTENT = range(9)
FOOTPRINT_WIDTH = 9


@ti.func
def sigma_cut(o, real: ti.template()):
    """cut >= 0 such that sigma > cut implies alpha < 1/255 for opacity o."""
    return ti.max(ti.log(real(255.0) * o) + real(SIGMA_CUT_SLACK), real(0.0))


@ti.func
def half_extents(a, b, c, cut, real: ti.template()):
    """(half width, half height) in pixels of the ellipse sigma <= cut, plus EXTENT_SLACK;
    NO_EXTENT for a conic that is not positive definite (after rounding)."""
    det = a * c - b * b
    x_extent = real(NO_EXTENT)
    y_extent = real(NO_EXTENT)
    if det > real(0.0) and a > real(0.0) and c > real(0.0):
        # the conic is Sigma^-1, so Sigma_xx = c / det and Sigma_yy = a / det
        x_extent = ti.sqrt(real(2.0) * cut * c / det) + real(EXTENT_SLACK)
        y_extent = ti.sqrt(real(2.0) * cut * a / det) + real(EXTENT_SLACK)
    return x_extent, y_extent


@ti.func
def band_constants(a, b, c, cut, real: ti.template()):
    """(inv_a, det, two_a_cut, dy_x_max) of a positive-definite conic: what
    :func:`band_x_range` needs, computed once per Gaussian (its divisions and square root cost
    more than a band's test). dy_x_max is the y-offset of the ellipse's rightmost point."""
    det = a * c - b * b
    x_half = ti.sqrt(real(2.0) * cut * c / det)
    return real(1.0) / a, det, real(2.0) * a * cut, -b * x_half / c


@ti.func
def band_x_range(b, inv_a, det, two_a_cut, dy_x_max, y_extent, y_lo, y_hi, real: ti.template()):
    """(x_lo, x_hi, nonempty): the x-offsets from the mean covered by the ellipse sigma <= cut
    (constants from :func:`band_constants`, half height ``y_extent`` from :func:`half_extents`)
    within the band of y-offsets [y_lo, y_hi], widened by EXTENT_SLACK.

    The ellipse's right edge x_r(dy) = (-b dy + sqrt(2 a cut - det dy^2)) / a is concave with
    its maximum at dy_x_max, so over the band it peaks at dy_x_max clamped into the band; the
    left edge likewise (convex, minimum at -dy_x_max). The band is first clipped to the
    ellipse's rows, where both edges are defined."""
    lo = ti.max(y_lo, -y_extent)
    hi = ti.min(y_hi, y_extent)
    dy_r = ti.min(ti.max(dy_x_max, lo), hi)
    dy_l = ti.min(ti.max(-dy_x_max, lo), hi)
    x_hi = (-b * dy_r + ti.sqrt(ti.max(two_a_cut - det * dy_r * dy_r, real(0.0)))) * inv_a
    x_lo = (-b * dy_l - ti.sqrt(ti.max(two_a_cut - det * dy_l * dy_l, real(0.0)))) * inv_a
    return x_lo - real(EXTENT_SLACK), x_hi + real(EXTENT_SLACK), lo <= hi
