"""Projection on its own: the Taichi kernel (kernels/projection.py), its PyTorch twin
``reference.project_gaussians`` and gsplat's PyTorch ``_fully_fused_projection``.

means2d, conics, depths and radii are compared output by output (not only through a whole
``rasterize``), the same random upstream gradient is pushed through each implementation, and the
kernel's hand-written backward is checked by float64 finite differences. Scenes include
Gaussians past the Jacobian's frustum clamp, behind the camera, before the near plane, too
transparent and off the image. Only the gsplat comparisons skip when gsplat is absent.
"""
from __future__ import annotations

import pytest
import torch

from npga_taichi import reference, render
from scenes import (
    F64,
    camera_points,
    frustum_limit_x,
    gsplat_torch_impl,
    make_scene,
    positional,
    random_like,
    set_camera_points,
)

NEAR, FAR, EPS2D = 0.01, 1e10, 0.3
F32 = torch.float32


def kernel_project(scene, width, height):
    """(means2d, conics, depths, radii) from the Taichi kernel (through its autograd Function)."""
    return render._ProjectGaussians.apply(scene["means"], scene["quats"], scene["scales"], scene["opacities"],
                                          scene["viewmat"], scene["K"], width, height, NEAR, FAR, EPS2D)


def twin_project(scene, width, height):
    return reference.project_gaussians(scene["means"], scene["quats"], scene["scales"], scene["opacities"],
                                       scene["viewmat"], scene["K"], width, height, NEAR, FAR, EPS2D)


def gsplat_project(scene, width, height):
    """gsplat's PyTorch projection: (means2d, conics, depths) with its own validity test."""
    impl = gsplat_torch_impl()
    covars, _ = impl._quat_scale_to_covar_preci(scene["quats"], scene["scales"], compute_preci=False)
    _, means2d, depths, conics, _ = impl._fully_fused_projection(
        scene["means"], covars, scene["viewmat"][None], scene["K"][None], width, height, EPS2D, NEAR, FAR)
    return means2d[0], conics[0], depths[0]


def awkward_scene(dtype, seed=0, n=80, width=48, height=36):
    """A projection scene with every culling case and the Jacobian clamp exercised."""
    scene = make_scene(n, width, height, dtype=F64, seed=seed, log_scale=-2.0)
    cam = camera_points(scene)
    lim = frustum_limit_x(scene, width)
    cam[0:10, 0] = torch.linspace(1.05, 1.6, 10, dtype=F64) * lim * cam[0:10, 2]   # x clamped, still visible
    cam[10:15, 1] = -torch.linspace(1.2, 2.0, 5, dtype=F64) * cam[10:15, 2]        # y clamped (negative side)
    cam[15:20, 2] = -cam[15:20, 2]                                                  # behind the camera
    cam[20:23, 2] = 0.005                                                           # before the near plane
    cam[23:26, 0] = 40.0 * cam[23:26, 2]                                            # far off the image
    scene["opacities"][26:29] = 0.5 / 255                                           # too transparent
    scene["scales"][29:35, 0] *= 12.0                                               # needles
    scene["scales"][29:35, 1] *= 0.05
    set_camera_points(scene, cam)
    return {k: v.to(dtype) for k, v in scene.items()}, width, height


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-30) if b.numel() else 0.0


def leaves(scene):
    return {k: v.detach().clone().requires_grad_(k in ("means", "quats", "scales")) for k, v in scene.items()}


def project_grads(project, scene, width, height, upstream, rows):
    """Gradients of sum(out * upstream) over ``rows`` (means2d, conics, depths) w.r.t. means,
    quats and scales, plus the forward outputs."""
    s = leaves(scene)
    means2d, conics, depths = project(s, width, height)[:3]
    mask = rows.to(means2d.dtype)
    loss = ((means2d * upstream[0]).sum(-1) * mask).sum() + ((conics * upstream[1]).sum(-1) * mask).sum() \
        + (depths * upstream[2] * mask).sum()
    grads = torch.autograd.grad(loss, [s["means"], s["quats"], s["scales"]])
    return (means2d, conics, depths), grads


# ----------------------------------------------------------------------------------------------
# Kernel vs twin
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,tol,conic_tol,grad_tol", [(F64, 1e-12, 1e-10, 1e-9), (F32, 2e-6, 1e-4, 2e-4)])
def test_kernel_matches_twin_output_by_output(dtype, tol, conic_tol, grad_tol):
    scene, width, height = awkward_scene(dtype)
    k_means2d, k_conics, k_depths, k_radii = kernel_project(scene, width, height)
    t_means2d, t_conics, t_depths, t_radii = twin_project(scene, width, height)
    visible = t_radii > 0
    # the scene exercises every rule: visible, clamped-and-visible, and each way of being culled
    cam = camera_points(scene).double()
    clamped = (cam[:, 0] / cam[:, 2]) > frustum_limit_x(scene, width)
    assert int(visible.sum()) > 30 and bool((visible & clamped).any())
    assert not bool(visible[15:29].any())
    if dtype == F64:
        assert torch.equal(k_radii, t_radii)
    else:  # float32: a radius may round across an integer; visibility may not change
        assert int((k_radii - t_radii).abs().max()) <= 1 and torch.equal(k_radii > 0, visible)
    assert k_radii.dtype == torch.int32
    assert rel_err(k_depths, t_depths) <= tol
    assert rel_err(k_means2d, t_means2d) <= tol  # culled rows too: both use z = 1 there
    assert rel_err(k_conics[visible], t_conics[visible]) <= conic_tol
    assert bool(torch.isfinite(k_conics).all()) and bool(torch.isfinite(k_means2d).all())  # culled: finite

    upstream = random_like([k_means2d, k_conics, k_depths], seed=3)
    (_, k_grads) = project_grads(kernel_project, scene, width, height, upstream, visible)
    (_, t_grads) = project_grads(twin_project, scene, width, height, upstream, visible)
    for name, a, b in zip(("means", "quats", "scales"), k_grads, t_grads):
        assert rel_err(a, b) <= grad_tol, (name, rel_err(a, b))
        assert float(a[~visible].abs().max()) == 0.0, name  # culled: no gradient


def test_kernel_gradcheck_float64():
    """Finite differences of the kernel's means2d, conics and depths w.r.t. means, quats, scales
    (two Gaussians past the x clamp, one needle)."""
    width, height = 24, 20
    scene = make_scene(6, width, height, seed=7, log_scale=-1.5)
    cam = camera_points(scene)
    cam[:2, 0] = 1.08 * frustum_limit_x(scene, width) * cam[:2, 2]
    set_camera_points(scene, cam)
    scene["scales"][2, 0] *= 10.0
    assert bool((kernel_project(scene, width, height)[3] > 0).all())

    def fn(means, quats, scales):
        s = dict(scene, means=means, quats=quats, scales=scales)
        return kernel_project(s, width, height)[:3]

    inputs = tuple(scene[k].clone().requires_grad_() for k in ("means", "quats", "scales"))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_radius_rule():
    """radius = ceil(sqrt(2 ln(255 o) λmax(Σ2d))), culled below 1/255 opacity and off-image (twin;
    the kernel's radii equal the twin's above)."""
    width, height = 64, 48
    scene = make_scene(300, width, height, seed=2, spread=2.0, log_scale=-2.0)
    scene["opacities"][:10] = 0.5 / 255
    means2d, conics, depths, radii = twin_project(scene, width, height)
    cov2d = torch.linalg.inv(torch.stack([conics[:, 0], conics[:, 1], conics[:, 1], conics[:, 2]], -1)
                             .reshape(-1, 2, 2))
    lam = torch.linalg.eigvalsh(cov2d)[:, 1]
    opacities = scene["opacities"]
    expect = torch.ceil(torch.sqrt(2 * torch.log(255 * opacities).clamp_min(0) * lam))
    touches = ((means2d[:, 0] + expect > 0) & (means2d[:, 0] - expect < width)
               & (means2d[:, 1] + expect > 0) & (means2d[:, 1] - expect < height))
    expect = torch.where(touches & (depths > NEAR) & (opacities >= 1 / 255), expect, torch.zeros_like(expect))
    assert torch.equal(radii, expect.to(torch.int32))
    assert bool((radii[:10] == 0).all()) and (radii > 0).sum() > 100 and (~touches).sum() > 5


# ----------------------------------------------------------------------------------------------
# Kernel and twin vs gsplat (skipped without gsplat)
# ----------------------------------------------------------------------------------------------
def test_covariance_matches_gsplat():
    impl = gsplat_torch_impl()
    scene = make_scene(200, 32, 32, seed=0)
    quats, scales = scene["quats"], scene["scales"]
    ours = reference.quat_scale_to_covariance(quats * 3.7, scales)  # unnormalised quats are normalised inside
    theirs, _ = impl._quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("project", [kernel_project, twin_project], ids=["kernel", "twin"])
def test_projection_matches_gsplat(project):
    """means2d, conics, depths and their gradients (clamped Jacobian included) against gsplat's
    PyTorch projection, float64, for every Gaussian in the depth range."""
    scene, width, height = awkward_scene(F64, seed=1)
    g_means2d, g_conics, g_depths = gsplat_project(scene, width, height)
    means2d, conics, depths, radii = project(scene, width, height)
    in_depth = (g_depths > NEAR) & (g_depths < FAR)
    assert (~in_depth).sum() >= 5
    torch.testing.assert_close(depths, g_depths, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(means2d[in_depth], g_means2d[in_depth], rtol=1e-12, atol=1e-10)
    visible = radii > 0  # culled conics are meaningless (the kernel skips some)
    torch.testing.assert_close(conics[visible], g_conics[visible], rtol=1e-10, atol=1e-14)
    assert bool((radii[~in_depth] == 0).all())

    upstream = random_like([means2d, conics, depths], seed=5)
    upstream[1] = upstream[1] * 100  # conics are small: weight them like the means
    _, ours = project_grads(project, scene, width, height, upstream, visible)

    def gsplat_as_project(s, w, h):
        return gsplat_project(s, w, h)

    _, theirs = project_grads(gsplat_as_project, scene, width, height, upstream, visible)
    for name, a, b in zip(("means", "quats", "scales"), ours, theirs):
        assert rel_err(a, b) <= 1e-9, (name, rel_err(a, b))


# ----------------------------------------------------------------------------------------------
# Quaternions of extreme magnitude (issue 13, row 5)
# ----------------------------------------------------------------------------------------------
EXTREME_SCALES = {F32: (1e-20, 1e20), F64: (1e-170, 1e170)}  # |q|^2 under- or overflows


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("rasterize", [render.rasterize, reference.rasterize], ids=["kernel", "twin"])
def test_extreme_quaternions_render_like_their_normalised_versions(dtype, rasterize):
    """q·s with s so small or large that |q|² under- or overflows renders exactly like q, and
    the quaternion gradient is the normalised one divided by s (the other gradients equal)."""
    width, height = 32, 24
    scene = make_scene(25, width, height, dtype=F64, seed=31, log_scale=-1.8)
    scene["scales"][:, 0] *= 4.0  # elongated, so a lost rotation shows in the image
    scene["quats"] = scene["quats"] / scene["quats"].norm(dim=-1, keepdim=True)
    scene = {k: v.to(dtype) for k, v in scene.items()}
    upstream = random_like([torch.empty(height, width, 3, dtype=dtype)], seed=2)[0]

    def render_with(quats):
        s = {k: v.detach().clone().requires_grad_(k in ("means", "quats", "scales", "opacities", "colors"))
             for k, v in dict(scene, quats=quats).items()}
        out = rasterize(*positional(s), width, height)
        (out.image * upstream).sum().backward()
        return out.image.detach(), {k: s[k].grad for k in ("means", "quats", "scales", "opacities", "colors")}

    tol = 1e-5 if dtype == F32 else 1e-10
    image, grads = render_with(scene["quats"])
    assert float(image.max()) > 0.1
    for s in EXTREME_SCALES[dtype]:
        extreme = scene["quats"] * s
        assert bool(torch.isfinite(extreme).all()) and bool((extreme.abs().amax(-1) > 0).all())
        image_s, grads_s = render_with(extreme)
        assert rel_err(image_s, image) <= tol, s
        assert rel_err(grads_s["quats"] * s, grads["quats"]) <= 10 * tol, s
        for name in ("means", "scales", "opacities", "colors"):
            assert rel_err(grads_s[name], grads[name]) <= 10 * tol, (s, name)
