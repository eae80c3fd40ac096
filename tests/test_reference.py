"""The PyTorch oracle (npga_taichi.reference) against independent implementations.

* compositing against a per-pixel brute-force loop written straight from the contract text
  (scalar torch ops, so its gradients are an independent check of the vectorised masking);
* the whole oracle against finite differences (gradcheck), culling and empty scenes.

None of this needs gsplat: the oracle's projection and SH are compared with gsplat's PyTorch
functions in tests/test_projection.py and tests/test_sh.py (skipped there without gsplat), the
benchmark's PyTorch peer against the oracle in tests/test_tiled_peer.py, and input validation
(shared by both rasterizers) in tests/test_render.py.
"""
from __future__ import annotations

import numpy as np
import torch

from npga_taichi import reference as R
from npga_taichi.contract import ALPHA_MAX, ALPHA_MIN, T_EPS
from scenes import F64, camera_points, make_scene, positional, set_camera_points


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
    scene = make_scene(30, width, height, seed=4, channels=2, log_scale=-1.4, opaque=0.5)
    means, quats, scales, opacities, colors, viewmat, K = positional(scene)
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
# Culling, means2d.grad, finite differences
# ----------------------------------------------------------------------------------------------
def test_culled_gaussians_get_zero_gradient():
    width, height = 24, 20
    scene = make_scene(20, width, height, seed=6, log_scale=-1.8)
    cam = camera_points(scene)
    cam[0, 2] = -1.0                          # behind the camera
    cam[1] = torch.tensor([0.0, 0.0, 0.005])  # before the near plane
    cam[3, 0] = 50.0 * cam[3, 2]              # far off the image
    set_camera_points(scene, cam)
    scene["opacities"][2] = 0.9 / 255         # too transparent
    leaves = [t.requires_grad_() for t in positional(scene)[:5]]
    out = R.rasterize(*leaves, scene["viewmat"], scene["K"], width, height)
    assert out.radii.dtype == torch.int32 and out.radii.shape == (20,)
    assert out.radii[:4].tolist() == [0, 0, 0, 0] and bool((out.radii[4:] > 0).any())
    (out.image.sum() + out.depth.sum() + out.alpha.sum()).backward()
    for t in leaves:
        assert float(t.grad[:4].abs().sum()) == 0.0
        assert bool(torch.isfinite(t.grad).all())
    assert out.means2d.grad is not None and out.means2d.grad.shape == (20, 2)
    assert float(out.means2d.grad[4:].abs().sum()) > 0


def test_gradcheck_tiny_scene():
    """Finite differences of the whole oracle (projection, SH-free colours, compositing,
    background), independent of autograd's bookkeeping."""
    width, height = 10, 9
    scene = make_scene(5, width, height, seed=21, log_scale=-1.2)
    names = ("means", "quats", "scales", "opacities", "colors", "background")
    leaves = [scene[k].clone().requires_grad_() for k in names]
    g = torch.Generator().manual_seed(0)
    w_img = torch.randn(height, width, 3, generator=g, dtype=F64)
    w_dep = torch.randn(height, width, 1, generator=g, dtype=F64)
    assert bool((R.rasterize(*positional(scene), width, height).radii > 0).all())

    def f(means, quats, scales, opacities, colors, bg):
        out = R.rasterize(means, quats, scales, opacities, colors, scene["viewmat"], scene["K"], width, height,
                          background=bg)
        return (out.image * w_img).sum() + (out.depth * w_dep).sum() + out.alpha.sum()

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_empty_and_fully_culled_scenes():
    scene = make_scene(3, 20, 16, seed=0)
    scene["opacities"] = torch.zeros(3, dtype=F64)  # all transparent -> all culled
    bg = torch.tensor([0.5, 0.25, 1.0], dtype=F64)
    out = R.rasterize(*positional(scene), 20, 16, background=bg)
    assert bool((out.radii == 0).all())
    torch.testing.assert_close(out.image, bg.expand(16, 20, 3))
    assert float(out.alpha.abs().max()) == 0.0 and float(out.depth.abs().max()) == 0.0
