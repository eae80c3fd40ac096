"""The PyTorch oracle (npga_taichi.reference) against independent implementations.

* projection, covariance and SH against gsplat's PyTorch implementation (float64, tight);
* compositing against a per-pixel brute-force loop written straight from the contract text
  (scalar torch ops, so its gradients are an independent check of the vectorised masking);
* ``rasterize_tiled`` (hand-written backward) against the oracle, and both against finite
  differences (gradcheck);
* validation errors name the argument.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from npga_taichi import reference as R
from npga_taichi.contract import ALPHA_MAX, ALPHA_MIN, T_EPS

gsplat_impl = pytest.importorskip("gsplat.cuda._torch_impl")

F64 = torch.float64


def make_camera(width, height, focal=None, dtype=F64):
    focal = focal or 0.9 * width
    K = torch.tensor([[focal, 0.0, width / 2 + 0.3], [0.0, focal * 1.1, height / 2 - 0.2], [0.0, 0.0, 1.0]],
                     dtype=dtype)
    # A rotated and translated camera, so world->camera is not the identity.
    angle = 0.3
    rot = torch.tensor([[math.cos(angle), 0.0, math.sin(angle)], [0.0, 1.0, 0.0],
                        [-math.sin(angle), 0.0, math.cos(angle)]], dtype=dtype)
    viewmat = torch.eye(4, dtype=dtype)
    viewmat[:3, :3] = rot
    viewmat[:3, 3] = torch.tensor([0.1, -0.2, 4.0], dtype=dtype)
    return viewmat, K


def make_scene(n, seed, channels=3, sh_degree=None, spread=1.0, scale=0.12, dtype=F64, opaque=0.0):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=F64) * 2 - 1) * spread
    quats = torch.randn(n, 4, generator=g, dtype=F64)
    scales = scale * torch.exp(0.4 * torch.randn(n, 3, generator=g, dtype=F64))
    opacities = 0.02 + 0.97 * torch.rand(n, generator=g, dtype=F64)
    if opaque:
        opacities = torch.where(torch.rand(n, generator=g, dtype=F64) < opaque, torch.ones_like(opacities),
                                opacities)
    if sh_degree is None:
        colors = torch.rand(n, channels, generator=g, dtype=F64)
    else:
        colors = 0.4 * torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g, dtype=F64)
    return [t.to(dtype) for t in (means, quats, scales, opacities, colors)]


# ----------------------------------------------------------------------------------------------
# Projection and SH vs gsplat
# ----------------------------------------------------------------------------------------------
def test_covariance_matches_gsplat():
    _, quats, scales, _, _ = make_scene(200, 0)
    ours = R.quat_scale_to_covariance(quats * 3.7, scales)  # unnormalised quats are normalised inside
    theirs, _ = gsplat_impl._quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)


def test_projection_matches_gsplat_incl_clamped_jacobian():
    width, height = 64, 48
    viewmat, K = make_camera(width, height)
    means, quats, scales, opacities, _ = make_scene(400, 1, spread=3.0, scale=0.2)
    # Gaussians far outside the frustum sideways (clamped x/z, y/z) and some behind the camera.
    means[:40, 0] += torch.linspace(-12, 12, 40, dtype=F64)
    means[40:80, 1] += torch.linspace(-10, 10, 40, dtype=F64)
    behind = torch.stack([torch.linspace(-1, 1, 10, dtype=F64), torch.zeros(10, dtype=F64),
                          torch.linspace(-2.0, 0.009, 10, dtype=F64), torch.ones(10, dtype=F64)], dim=-1)
    means[80:90] = (behind @ torch.linalg.inv(viewmat).T)[:, :3]
    means = means.requires_grad_()
    quats, scales = quats.requires_grad_(), scales.requires_grad_()

    means2d, conics, depths, radii = R.project_gaussians(means, quats, scales, opacities, viewmat, K,
                                                         width, height)
    covars, _ = gsplat_impl._quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    g_radii, g_means2d, g_depths, g_conics, _ = gsplat_impl._fully_fused_projection(
        means, covars, viewmat[None], K[None], width, height)
    g_means2d, g_depths, g_conics = g_means2d[0], g_depths[0], g_conics[0]

    in_depth = (g_depths > 0.01) & (g_depths < 1e10)
    # Preconditions: the clamp is really exercised and some Gaussians are behind the camera.
    lim_x = (width - K[0, 2]) / K[0, 0] + 0.3 * 0.5 * width / K[0, 0]
    cam = means.detach() @ viewmat[:3, :3].T + viewmat[:3, 3]
    clamped = in_depth & ((cam[:, 0] / cam[:, 2]).abs() > lim_x)
    assert clamped.sum() >= 5 and (~in_depth).sum() >= 5

    torch.testing.assert_close(depths, g_depths, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(means2d[in_depth], g_means2d[in_depth], rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(conics[in_depth], g_conics[in_depth], rtol=1e-10, atol=1e-14)
    # Depth culling agrees; the opacity-aware radius never exceeds gsplat's 3.33σ box by much
    # and is zero when gsplat's validity test fails.
    assert bool((radii[~in_depth] == 0).all())
    # Gradients through the same inputs agree (clamped Jacobian included).
    g = torch.Generator().manual_seed(5)
    w_m, w_c = torch.randn(means2d.shape, generator=g, dtype=F64), torch.randn(conics.shape, generator=g, dtype=F64)
    sel = in_depth[:, None].to(F64)
    ours = torch.autograd.grad((means2d * w_m * sel).sum() + (conics * w_c * sel).sum() * 100,
                               (means, quats, scales))
    theirs = torch.autograd.grad((g_means2d * w_m * sel).sum() + (g_conics * w_c * sel).sum() * 100,
                                 (means, quats, scales))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_radius_rule():
    """radius = ceil(sqrt(2 ln(255 o) λmax(Σ2d))), culled below 1/255 opacity and off-image."""
    width, height = 64, 48
    viewmat, K = make_camera(width, height)
    means, quats, scales, opacities, _ = make_scene(300, 2, spread=2.0)
    opacities[:10] = 0.5 / 255
    means2d, conics, depths, radii = R.project_gaussians(means, quats, scales, opacities, viewmat, K, width, height)
    cov2d = torch.linalg.inv(torch.stack([conics[:, 0], conics[:, 1], conics[:, 1], conics[:, 2]], -1)
                             .reshape(-1, 2, 2))
    lam = torch.linalg.eigvalsh(cov2d)[:, 1]
    expect = torch.ceil(torch.sqrt(2 * torch.log(255 * opacities).clamp_min(0) * lam))
    touches = ((means2d[:, 0] + expect > 0) & (means2d[:, 0] - expect < width)
               & (means2d[:, 1] + expect > 0) & (means2d[:, 1] - expect < height))
    expect = torch.where(touches & (depths > 0.01) & (opacities >= 1 / 255), expect, torch.zeros_like(expect))
    assert torch.equal(radii, expect.to(torch.int32))
    assert bool((radii[:10] == 0).all()) and (radii > 0).sum() > 100 and (~touches).sum() > 5


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_matches_gsplat(degree):
    g = torch.Generator().manual_seed(degree)
    dirs = torch.randn(100, 3, generator=g, dtype=F64) * 3  # unnormalised: normalised inside
    coeffs = torch.randn(100, 16, 3, generator=g, dtype=F64)  # more coefficients than needed
    ours = R.eval_sh(degree, dirs, coeffs)
    theirs = gsplat_impl._spherical_harmonics(degree, dirs, coeffs)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_sh_to_color_uses_direction_from_camera_centre():
    viewmat, _ = make_camera(32, 32)
    means, _, _, _, coeffs = make_scene(50, 3, sh_degree=3)
    centre = -viewmat[:3, :3].T @ viewmat[:3, 3]
    expect = torch.clamp(gsplat_impl._spherical_harmonics(3, means - centre, coeffs) + 0.5, min=0)
    torch.testing.assert_close(R.sh_to_color(3, means, viewmat, coeffs), expect, rtol=1e-12, atol=1e-12)
    assert (expect == 0).any()  # the clamp is exercised


# ----------------------------------------------------------------------------------------------
# Compositing vs a brute-force per-pixel loop written from the contract text
# ----------------------------------------------------------------------------------------------
def brute_force(means2d, conics, depths, radii, opacities, colors, width, height, background=None):
    """Per pixel, per Gaussian, scalar torch ops (differentiable). Returns image, alpha, depth, stats."""
    n, channels = colors.shape
    visible = [i for i in range(n) if int(radii[i]) > 0]
    order = sorted(visible, key=lambda i: (np.float32(float(depths[i])), i))
    stats = {"sigma_negative": 0, "alpha_small": 0, "clamped": 0, "stopped": 0, "contributed": 0}
    rows = []
    for i in range(height):
        for j in range(width):
            px, py = j + 0.5, i + 0.5
            T = torch.ones((), dtype=means2d.dtype)
            rgb = torch.zeros(channels, dtype=means2d.dtype)
            dep = torch.zeros((), dtype=means2d.dtype)
            for g in order:
                dx, dy = px - means2d[g, 0], py - means2d[g, 1]
                a, b, c = conics[g, 0], conics[g, 1], conics[g, 2]
                sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                if sigma < 0:
                    stats["sigma_negative"] += 1
                    continue
                alpha = opacities[g] * torch.exp(-sigma)
                if alpha > ALPHA_MAX:
                    alpha = torch.full_like(alpha, ALPHA_MAX)
                    stats["clamped"] += 1
                if alpha < ALPHA_MIN:
                    stats["alpha_small"] += 1
                    continue
                if T * (1 - alpha) <= T_EPS:
                    stats["stopped"] += 1
                    break
                rgb = rgb + alpha * T * colors[g]
                dep = dep + alpha * T * depths[g]
                T = T * (1 - alpha)
                stats["contributed"] += 1
            if background is not None:
                rgb = rgb + T * background
            rows.append(torch.cat([rgb, (1 - T)[None], dep[None]]))
    out = torch.stack(rows).reshape(height, width, channels + 2)
    return out[..., :channels], out[..., channels:channels + 1], out[..., channels + 1:], stats


def _grads(outputs, inputs, seed):
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outputs)
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def test_oracle_matches_brute_force_full_pipeline():
    """Projected 3D scene with opaque Gaussians (α clamp, early termination), background."""
    width, height = 13, 11
    viewmat, K = make_camera(width, height, focal=9.0)
    means, quats, scales, opacities, colors = make_scene(30, 4, channels=2, spread=1.2, scale=0.25, opaque=0.5)
    scales[:3] *= 30  # a few huge Gaussians: alpha reaches the 0.999 clamp near their centres
    opacities[:3] = 1.0
    background = torch.tensor([0.3, 0.7], dtype=F64)
    leaves = [t.requires_grad_() for t in (means, quats, scales, opacities, colors, background)]
    out = R.rasterize(*leaves[:5], viewmat, K, width, height, background=leaves[5])

    with torch.no_grad():
        means2d, conics, depths, radii = R.project_gaussians(means, quats, scales, opacities, viewmat, K, width, height)
    means2d, conics = means2d.requires_grad_(), conics.requires_grad_()
    img, alpha, depth, stats = brute_force(means2d, conics, depths, radii, opacities, colors, width, height,
                                           background)
    assert stats["stopped"] > 0 and stats["clamped"] > 0 and stats["alpha_small"] > 0
    torch.testing.assert_close(out.image, img, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.alpha, alpha, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.depth, depth, rtol=0, atol=1e-11)
    assert torch.equal(out.radii, radii)

    # Gradients w.r.t. projected quantities: the oracle (cumprod + masks) vs the scalar loop.
    ours_m2d = _grads([out.image, out.alpha, out.depth], [out.means2d], 7)[0]
    theirs = _grads([img, alpha, depth], [means2d, conics, opacities, colors, background], 7)
    torch.testing.assert_close(ours_m2d, theirs[0], rtol=1e-9, atol=1e-10)
    out2 = R.rasterize(*leaves[:5], viewmat, K, width, height, background=leaves[5])
    ours = _grads([out2.image, out2.alpha, out2.depth], [leaves[3], leaves[4], leaves[5]], 7)
    for a, b in zip(ours, theirs[2:]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_oracle_matches_brute_force_edge_cases():
    """Hand-made 2D Gaussians: an indefinite conic (σ < 0 regions), α clamped at 0.999, a stack
    of opaque Gaussians forcing early termination, float32-equal depths (ties by index)."""
    width, height = 9, 8
    means2d = torch.tensor([[4.0, 4.0], [3.0, 5.0], [5.5, 2.5], [4.2, 3.9], [4.1, 4.1], [4.0, 4.2],
                            [2.0, 2.0], [6.0, 6.0], [3.9, 4.3]], dtype=F64)
    conics = torch.tensor([[0.5, 0.0, 0.5], [0.2, 0.6, 0.3],  # 2nd: det < 0 -> sigma < 0 somewhere
                           [0.3, -0.1, 0.4], [0.1, 0.0, 0.1], [0.1, 0.02, 0.1], [0.08, 0.0, 0.12],
                           [1.0, 0.3, 0.6], [0.2, 0.05, 0.3], [0.05, 0.0, 0.05]], dtype=F64)
    opacities = torch.tensor([0.6, 0.9, 1.0, 1.0, 1.0, 1.0, 0.7, 0.5, 1.0], dtype=F64)
    # Gaussians 3 and 4: float64 depths differ but float32(z) ties -> index order (3 before 4).
    depths = torch.tensor([2.0, 1.5, 3.0, 2.5 + 1e-12, 2.5, 2.6, 1.0, 4.0, 2.7], dtype=F64)
    assert np.float32(depths[3].item()) == np.float32(depths[4].item())
    colors = torch.rand(9, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    radii = torch.ones(9, dtype=torch.int32)
    radii[7] = 0  # culled: must contribute nothing
    background = torch.tensor([0.1, 0.2, 0.3], dtype=F64)
    leaves = [t.clone().requires_grad_() for t in (means2d, conics, opacities, colors, background)]

    img, alpha, depth = R.rasterize_projected(leaves[0], leaves[1], depths, radii, leaves[2], leaves[3],
                                              width, height, leaves[4])
    ref_leaves = [t.clone().requires_grad_() for t in (means2d, conics, opacities, colors, background)]
    b_img, b_alpha, b_depth, stats = brute_force(ref_leaves[0], ref_leaves[1], depths, radii, ref_leaves[2],
                                                 ref_leaves[3], width, height, ref_leaves[4])
    assert stats["sigma_negative"] > 0 and stats["clamped"] > 0 and stats["stopped"] > 0
    torch.testing.assert_close(img, b_img, rtol=0, atol=1e-13)
    torch.testing.assert_close(alpha, b_alpha, rtol=0, atol=1e-13)
    torch.testing.assert_close(depth, b_depth, rtol=0, atol=1e-12)
    ours = _grads([img, alpha, depth], leaves, 3)
    theirs = _grads([b_img, b_alpha, b_depth], ref_leaves, 3)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert float(ours[3][7].abs().sum()) == 0.0  # the culled Gaussian

    # The tie order matters: swapping the two tied Gaussians' indices changes the image.
    perm = [0, 1, 2, 4, 3, 5, 6, 7, 8]
    swapped, _, _ = R.rasterize_projected(means2d[perm], conics[perm], depths[perm], radii[perm],
                                          opacities[perm], colors[perm], width, height, background)
    assert not torch.allclose(swapped, img.detach(), atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Culling, means2d.grad
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("raster", [R.rasterize, R.rasterize_tiled])
def test_culled_gaussians_get_zero_gradient(raster):
    width, height = 24, 20
    viewmat, K = make_camera(width, height, focal=20.0)
    means, quats, scales, opacities, colors = make_scene(20, 6, spread=0.8, scale=0.2)
    cam_to_world = torch.linalg.inv(viewmat)
    means[0] = (cam_to_world @ torch.tensor([0.0, 0.0, -1.0, 1.0], dtype=F64))[:3]   # behind the camera
    means[1] = (cam_to_world @ torch.tensor([0.0, 0.0, 0.005, 1.0], dtype=F64))[:3]  # before near
    opacities[2] = 0.9 / 255                                                         # too transparent
    means[3] = (cam_to_world @ torch.tensor([50.0, 0.0, 4.0, 1.0], dtype=F64))[:3]   # far off-image
    leaves = [t.requires_grad_() for t in (means, quats, scales, opacities, colors)]
    out = raster(*leaves, viewmat, K, width, height)
    assert out.radii.dtype == torch.int32 and out.radii.shape == (20,)
    assert out.radii[:4].tolist() == [0, 0, 0, 0] and bool((out.radii[4:] > 0).any())
    (out.image.sum() + out.depth.sum() + out.alpha.sum()).backward()
    for t in leaves:
        assert float(t.grad[:4].abs().sum()) == 0.0
        assert bool(torch.isfinite(t.grad).all())
    assert out.means2d.grad is not None and out.means2d.grad.shape == (20, 2)
    assert float(out.means2d.grad[4:].abs().sum()) > 0


# ----------------------------------------------------------------------------------------------
# rasterize_tiled == rasterize
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["rgb_background", "sh3", "opaque_features"])
def test_tiled_equals_oracle(case):
    width, height = 45, 37  # not multiples of the tile size
    viewmat, K = make_camera(width, height, focal=40.0)
    kwargs = {}
    if case == "rgb_background":
        scene = make_scene(250, 10, spread=1.6, scale=0.1)
        kwargs["background"] = torch.tensor([0.2, 0.5, 0.9], dtype=F64).requires_grad_()
    elif case == "sh3":
        scene = make_scene(200, 11, sh_degree=3, spread=1.5, scale=0.1)
        kwargs["sh_degree"] = 3
    else:
        scene = make_scene(300, 12, channels=5, spread=1.0, scale=0.15, opaque=0.6)
    leaves = [t.requires_grad_() for t in scene]
    results = []
    for raster in (R.rasterize, R.rasterize_tiled):
        out = raster(*leaves, viewmat, K, width, height, **kwargs)
        inputs = leaves + ([kwargs["background"]] if "background" in kwargs else []) + [out.means2d]
        results.append((out, _grads([out.image, out.alpha, out.depth], inputs, 1)))
    (o1, g1), (o2, g2) = results
    if case == "opaque_features":
        assert float(o1.alpha.detach().max()) > 1 - 2 * T_EPS  # early termination happened
    for name in ("image", "alpha", "depth"):
        torch.testing.assert_close(getattr(o2, name), getattr(o1, name), rtol=0, atol=1e-10)
    assert torch.equal(o1.radii, o2.radii)
    for a, b in zip(g2, g1):
        scale = float(b.abs().max()) + 1e-12
        torch.testing.assert_close(a / scale, b / scale, rtol=0, atol=1e-10)


def test_tiled_float32_close_to_oracle():
    width, height = 40, 33
    viewmat, K = make_camera(width, height, focal=36.0, dtype=torch.float32)
    leaves = [t.requires_grad_() for t in make_scene(300, 13, spread=1.5, scale=0.1, dtype=torch.float32)]
    o1 = R.rasterize(*leaves, viewmat, K, width, height)
    o2 = R.rasterize_tiled(*leaves, viewmat, K, width, height)
    assert o1.image.dtype == torch.float32 and o2.image.dtype == torch.float32
    torch.testing.assert_close(o2.image, o1.image, rtol=0, atol=1e-4)
    g1 = _grads([o1.image], leaves, 2)
    g2 = _grads([o2.image], leaves, 2)
    for a, b in zip(g2, g1):
        assert float((a - b).norm() / b.norm()) < 1e-3


@pytest.mark.parametrize("raster", [R.rasterize, R.rasterize_tiled])
def test_gradcheck_tiny_scene(raster):
    """Finite differences, independent of both autograd and the hand-written backward."""
    width, height = 10, 9
    viewmat, K = make_camera(width, height, focal=8.0)
    scene = make_scene(5, 21, spread=0.5, scale=0.3)
    background = torch.tensor([0.4, 0.1, 0.6], dtype=F64)
    leaves = [t.clone().requires_grad_() for t in scene + [background]]
    g = torch.Generator().manual_seed(0)
    w_img = torch.randn(height, width, 3, generator=g, dtype=F64)
    w_dep = torch.randn(height, width, 1, generator=g, dtype=F64)

    def f(means, quats, scales, opacities, colors, bg):
        out = raster(means, quats, scales, opacities, colors, viewmat, K, width, height, background=bg)
        return (out.image * w_img).sum() + (out.depth * w_dep).sum() + out.alpha.sum()

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_empty_and_fully_culled_scenes():
    viewmat, K = make_camera(20, 16)
    means, quats, scales, opacities, colors = make_scene(3, 0)
    opacities = torch.zeros(3, dtype=F64)  # all transparent -> all culled
    bg = torch.tensor([0.5, 0.25, 1.0], dtype=F64)
    for raster in (R.rasterize, R.rasterize_tiled):
        out = raster(means, quats, scales, opacities, colors, viewmat, K, 20, 16, background=bg)
        assert bool((out.radii == 0).all())
        torch.testing.assert_close(out.image, bg.expand(16, 20, 3))
        assert float(out.alpha.abs().max()) == 0.0 and float(out.depth.abs().max()) == 0.0


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("raster", [R.rasterize, R.rasterize_tiled])
@pytest.mark.parametrize("bad, name", [
    ("quats", "quats"), ("colors_sh", "colors"), ("K_dtype", "K"), ("opacity_range", "opacities"),
    ("scales_neg", "scales"), ("nan_means", "means"), ("background", "background"), ("width", "width"),
])
def test_validation_names_the_argument(raster, bad, name):
    viewmat, K = make_camera(16, 16)
    means, quats, scales, opacities, colors = make_scene(4, 0)
    kwargs = {}
    width = 16
    if bad == "quats":
        quats = quats[:, :3]
    elif bad == "colors_sh":
        kwargs["sh_degree"] = 2  # needs (N, >=9, 3)
    elif bad == "K_dtype":
        K = K.float()
    elif bad == "opacity_range":
        opacities = opacities + 1.0
    elif bad == "scales_neg":
        scales = -scales
    elif bad == "nan_means":
        means[0, 0] = float("nan")
    elif bad == "background":
        kwargs["background"] = torch.zeros(4, dtype=F64)
    elif bad == "width":
        width = 0
    with pytest.raises(ValueError, match=name):
        raster(means, quats, scales, opacities, colors, viewmat, K, width, 16, **kwargs)
