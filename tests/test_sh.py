"""Spherical harmonics on their own: the Taichi kernel (kernels/sh.py), its PyTorch twin
``reference.sh_to_color`` (bases ``reference.eval_sh``) and gsplat's ``_spherical_harmonics``.

Colours are compared directly (not only through a whole ``rasterize``), the same random upstream
gradient is pushed through kernel and twin (gradients to the coefficients and, through the view
direction, to the means), and the kernel's backward is checked by float64 finite differences.
Only the gsplat comparisons skip when gsplat is absent.
"""
from __future__ import annotations

import pytest
import torch

from npga_taichi import reference, render
from npga_taichi.cameras import camera_center
from scenes import F64, gsplat_torch_impl, make_scene, random_like

F32 = torch.float32


def kernel_sh(degree, means, viewmat, coeffs):
    """Colours (N, 3) from the Taichi kernel (through its autograd Function)."""
    return render._ShadeSH.apply(means, coeffs, camera_center(viewmat).contiguous(), degree)


def twin_sh(degree, means, viewmat, coeffs):
    return reference.sh_to_color(degree, means, viewmat, coeffs)


def sh_scene(degree, dtype, seed=0, n=200, extra=0):
    """Means, viewmat and SH coefficients (standard deviation 1, so some colours clamp at 0) with
    ``extra`` unused rows beyond (degree + 1)^2."""
    scene = make_scene(n, 32, 32, seed=seed, sh_degree=3)
    coeffs = 2.5 * scene["colors"][:, :(degree + 1) ** 2 + extra].contiguous()
    return scene["means"].to(dtype), scene["viewmat"].to(dtype), coeffs.to(dtype)


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-30)


def colors_and_grads(shade, degree, means, viewmat, coeffs, upstream):
    means = means.clone().requires_grad_()
    coeffs = coeffs.clone().requires_grad_()
    colors = shade(degree, means, viewmat, coeffs)
    g_means, g_coeffs = torch.autograd.grad((colors * upstream).sum(), [means, coeffs], allow_unused=True)
    if g_means is None:  # degree 0 in torch: the colour does not depend on the means
        g_means = torch.zeros_like(means)
    return colors.detach(), g_means, g_coeffs


@pytest.mark.parametrize("dtype,tol", [(F64, 1e-12), (F32, 2e-5)], ids=["float64", "float32"])
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_kernel_matches_twin(degree, dtype, tol):
    """Colours, coefficient and mean gradients; one unused coefficient row (zero gradient)."""
    means, viewmat, coeffs = sh_scene(degree, dtype, seed=degree, extra=1 if degree < 3 else 0)
    upstream = random_like([torch.empty(means.shape[0], 3, dtype=dtype)], seed=degree)[0]
    k_col, k_means, k_coeffs = colors_and_grads(kernel_sh, degree, means, viewmat, coeffs, upstream)
    t_col, t_means, t_coeffs = colors_and_grads(twin_sh, degree, means, viewmat, coeffs, upstream)
    assert bool((t_col == 0).any()) and bool((t_col > 0).any())  # the max(., 0) clamp is exercised
    assert rel_err(k_col, t_col) <= tol
    assert rel_err(k_coeffs, t_coeffs) <= 10 * tol
    if degree > 0:  # degree 0 does not depend on the direction
        assert rel_err(k_means, t_means) <= 100 * tol
    else:
        assert float(k_means.abs().max()) == 0.0 and float(t_means.abs().max()) == 0.0
    n_used = (degree + 1) ** 2
    if coeffs.shape[1] > n_used:
        assert float(k_coeffs[:, n_used:].abs().max()) == 0.0


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_kernel_gradcheck_float64(degree):
    """Finite differences of the kernel's colours w.r.t. means and coefficients."""
    means, viewmat, coeffs = sh_scene(degree, F64, seed=10 + degree, n=8)
    coeffs[:, 0] += 8.0  # keep every colour away from the max(., 0) kink
    assert bool((twin_sh(degree, means, viewmat, coeffs) > 1e-3).all())

    def fn(m, c):
        return kernel_sh(degree, m, viewmat, c)

    inputs = (means.clone().requires_grad_(), coeffs.clone().requires_grad_())
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Against gsplat (skipped without gsplat)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_eval_sh_matches_gsplat(degree):
    impl = gsplat_torch_impl()
    g = torch.Generator().manual_seed(degree)
    dirs = torch.randn(100, 3, generator=g, dtype=F64) * 3  # unnormalised: normalised inside
    coeffs = torch.randn(100, 16, 3, generator=g, dtype=F64)  # more coefficients than needed
    torch.testing.assert_close(reference.eval_sh(degree, dirs, coeffs),
                               impl._spherical_harmonics(degree, dirs, coeffs), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shade", [kernel_sh, twin_sh], ids=["kernel", "twin"])
@pytest.mark.parametrize("degree", [1, 3])
def test_sh_to_color_matches_gsplat(shade, degree):
    """Colours max(SH(mean - camera centre) + 0.5, 0) and their gradients against gsplat."""
    impl = gsplat_torch_impl()
    means, viewmat, coeffs = sh_scene(degree, F64, seed=20 + degree)
    upstream = random_like([torch.empty(means.shape[0], 3, dtype=F64)], seed=4)[0]

    def gsplat_shade(d, m, v, c):
        return torch.clamp(impl._spherical_harmonics(d, m - camera_center(v), c) + 0.5, min=0.0)

    col, g_means, g_coeffs = colors_and_grads(shade, degree, means, viewmat, coeffs, upstream)
    e_col, e_means, e_coeffs = colors_and_grads(gsplat_shade, degree, means, viewmat, coeffs, upstream)
    assert bool((e_col == 0).any())  # the clamp is exercised
    assert rel_err(col, e_col) <= 1e-12
    assert rel_err(g_coeffs, e_coeffs) <= 1e-11
    assert rel_err(g_means, e_means) <= 1e-10
