"""The benchmark's PyTorch speed peer (benchmarks/tiled_peer.py) against the oracle.

The peer is not part of the package, but the speed-ups in the README are only fair if it
renders the same images with the same gradients as the oracle: images, alpha, depth, radii and
every gradient (hand-written backward) against the oracle's autograd, and finite differences.
"""
from __future__ import annotations

import pytest
import torch

from npga_taichi import reference as R
from npga_taichi.contract import T_EPS
from benchmark_modules import load_benchmark
from scenes import F64, camera_points, make_scene, positional, set_camera_points


rasterize_tiled = load_benchmark("tiled_peer").rasterize_tiled


def _grads(outputs, inputs, seed):
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outputs)
    return torch.autograd.grad(loss, inputs, allow_unused=True)


@pytest.mark.parametrize("case", ["rgb_background", "sh3", "opaque_features"])
def test_tiled_equals_oracle(case):
    width, height = 45, 37  # not multiples of the tile size
    kwargs = {}
    if case == "rgb_background":
        scene = make_scene(250, width, height, seed=10, log_scale=-2.2)
        kwargs["background"] = scene["background"].requires_grad_()
    elif case == "sh3":
        scene = make_scene(200, width, height, seed=11, sh_degree=3, log_scale=-2.2)
        kwargs["sh_degree"] = 3
    else:
        scene = make_scene(300, width, height, seed=12, channels=5, log_scale=-1.9, opaque=0.6)
    leaves = [t.requires_grad_() for t in positional(scene)[:5]]
    camera = (scene["viewmat"], scene["K"], width, height)
    results = []
    for raster in (R.rasterize, rasterize_tiled):
        out = raster(*leaves, *camera, **kwargs)
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
    scene = make_scene(300, width, height, seed=13, log_scale=-2.2, dtype=torch.float32)
    leaves = [t.requires_grad_() for t in positional(scene)[:5]]
    o1 = R.rasterize(*leaves, scene["viewmat"], scene["K"], width, height)
    o2 = rasterize_tiled(*leaves, scene["viewmat"], scene["K"], width, height)
    assert o1.image.dtype == torch.float32 and o2.image.dtype == torch.float32
    torch.testing.assert_close(o2.image, o1.image, rtol=0, atol=1e-4)
    g1 = _grads([o1.image], leaves, 2)
    g2 = _grads([o2.image], leaves, 2)
    for a, b in zip(g2, g1):
        assert float((a - b).norm() / b.norm()) < 1e-3


def test_tiled_gradcheck_and_culling():
    """Finite differences of the peer's hand-written backward; culled Gaussians get zero gradient."""
    width, height = 10, 9
    scene = make_scene(6, width, height, seed=21, log_scale=-1.2)
    cam = camera_points(scene)
    cam[5, 2] = -cam[5, 2]  # behind the camera: culled
    set_camera_points(scene, cam)
    names = ("means", "quats", "scales", "opacities", "colors", "background")
    leaves = [scene[k].clone().requires_grad_() for k in names]
    radii = rasterize_tiled(*positional(scene), width, height).radii
    assert bool((radii[:5] > 0).all()) and int(radii[5]) == 0
    g = torch.Generator().manual_seed(0)
    w_img = torch.randn(height, width, 3, generator=g, dtype=F64)
    w_dep = torch.randn(height, width, 1, generator=g, dtype=F64)

    def f(means, quats, scales, opacities, colors, bg):
        out = rasterize_tiled(means, quats, scales, opacities, colors, scene["viewmat"], scene["K"], width, height,
                              background=bg)
        return (out.image * w_img).sum() + (out.depth * w_dep).sum() + out.alpha.sum()

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-5, rtol=1e-4)
    f(*leaves).backward()
    for t in leaves[:5]:
        assert float(t.grad[5].abs().sum()) == 0.0


def test_tiled_empty_scene_gives_background():
    scene = make_scene(3, 20, 16, seed=0)
    scene["opacities"] = torch.zeros(3, dtype=F64)
    out = rasterize_tiled(*positional(scene), 20, 16, background=scene["background"])
    assert bool((out.radii == 0).all())
    torch.testing.assert_close(out.image, scene["background"].expand(16, 20, 3))
