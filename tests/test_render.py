"""Our Taichi rasterizer (npga_taichi.render) against the pure-PyTorch oracle (npga_taichi.reference).

Forward outputs and every gradient are compared with the oracle after pushing the same random
upstream gradient (image, alpha, depth) through both; float64 to 1e-6 relative, float32 image to
1e-5 absolute. ``torch.autograd.gradcheck`` checks the hand-written backwards on tiny scenes.
"""
import numpy as np
import pytest
import torch

from npga_taichi import reference, render
from npga_taichi.kernels import tiles as tile_kernels
from scenes import (
    GRAD_NAMES,
    camera_points,
    frustum_limit_x,
    make_scene,
    positional,
    set_camera_points,
)

def run_with_grads(rasterize_fn, scene, width, height, upstream, sh_degree=None, **kwargs):
    """Render, backprop sum(out * upstream) and return (output, {name: grad}, means2d.grad)."""
    leaves = {k: v.detach().clone().requires_grad_(k in GRAD_NAMES) for k, v in scene.items()}
    out = rasterize_fn(leaves["means"], leaves["quats"], leaves["scales"], leaves["opacities"], leaves["colors"],
                       leaves["viewmat"], leaves["K"], width, height, sh_degree=sh_degree,
                       background=leaves["background"], **kwargs)
    g_img, g_alpha, g_depth = upstream
    loss = (out.image * g_img).sum() + (out.alpha * g_alpha).sum() + (out.depth * g_depth).sum()
    loss.backward()
    grads = {k: leaves[k].grad for k in GRAD_NAMES}
    return out, grads, out.means2d.grad


def random_upstream(width, height, channels, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(height, width, channels, generator=g, dtype=torch.float64).to(dtype),
            torch.randn(height, width, 1, generator=g, dtype=torch.float64).to(dtype),
            torch.randn(height, width, 1, generator=g, dtype=torch.float64).to(dtype))


def rel_err(a, b):
    a, b = a.detach(), b.detach()
    scale = max(float(b.abs().max()), 1e-12) if b.numel() else 1.0
    return float((a - b).abs().max()) / scale if a.numel() else 0.0


def assert_matches_oracle(scene, width, height, sh_degree=None, tol=1e-6, **kwargs):
    channels = 3 if sh_degree is not None else scene["colors"].shape[1]
    upstream = random_upstream(width, height, channels, scene["means"].dtype)
    ours, g_ours, m2_ours = run_with_grads(render.rasterize, scene, width, height, upstream, sh_degree, **kwargs)
    ref, g_ref, m2_ref = run_with_grads(reference.rasterize, scene, width, height, upstream, sh_degree, **kwargs)
    assert torch.equal(ours.radii, ref.radii)
    for name in ("image", "alpha", "depth"):
        assert getattr(ours, name).shape == getattr(ref, name).shape, name
        assert rel_err(getattr(ours, name), getattr(ref, name)) <= tol, name
    visible = ref.radii > 0
    assert rel_err(ours.means2d[visible], ref.means2d[visible]) <= tol
    for name in GRAD_NAMES:
        assert g_ours[name] is not None, name
        assert rel_err(g_ours[name], g_ref[name]) <= tol, (name, rel_err(g_ours[name], g_ref[name]))
    assert rel_err(m2_ours, m2_ref) <= tol
    return ours, g_ours


@pytest.mark.parametrize(
    "n,width,height,channels,sh_degree,seed",
    [
        (60, 40, 30, 3, None, 0),     # RGB, image not a multiple of 16
        (40, 33, 17, None, 3, 1),    # SH degree 3 (gradients to SH and, through dir, to means)
        (40, 24, 20, 5, None, 2),    # generic channel loop (C > 4)
        (400, 96, 80, 3, None, 4),   # 30 tiles: each CPU thread reuses its backward scratch
    ],
)
def test_float64_forward_and_gradients_match_oracle(n, width, height, channels, sh_degree, seed):
    scene = make_scene(n, width, height, seed=seed, channels=channels or 3, sh_degree=sh_degree)
    ours, grads = assert_matches_oracle(scene, width, height, sh_degree=sh_degree)
    assert (ours.radii > 0).sum() > n // 2  # the scene is mostly visible: the test compares real work
    assert float(ours.alpha.detach().max()) > 0.5


def test_float32_matches_oracle():
    width, height = 48, 40
    scene32 = make_scene(200, width, height, dtype=torch.float32, seed=3)
    scene64 = {k: v.double() for k, v in scene32.items()}
    upstream = random_upstream(width, height, 3, torch.float32)
    ours, g_ours, _ = run_with_grads(render.rasterize, scene32, width, height, upstream)
    ref, g_ref, _ = run_with_grads(reference.rasterize, scene32, width, height, upstream)
    exact, _, _ = run_with_grads(reference.rasterize, scene64, width, height, tuple(u.double() for u in upstream))
    assert ours.image.dtype == torch.float32
    assert float((ours.image - ref.image).abs().max()) <= 1e-5
    assert float((ours.alpha - ref.alpha).abs().max()) <= 1e-5
    assert float((ours.image.double() - exact.image).abs().max()) <= 1e-5
    for name in GRAD_NAMES:
        assert rel_err(g_ours[name], g_ref[name]) <= 2e-4, name


def test_sh_degrees_and_background_gradcheck():
    """gradcheck (float64) of every input, SH degrees 0..3 and the background."""
    width, height = 20, 16
    for degree in range(4):
        scene = make_scene(6, width, height, seed=10 + degree, sh_degree=degree, log_scale=-1.8)
        names = ("means", "quats", "scales", "opacities", "colors", "background")
        inputs = tuple(scene[k].clone().requires_grad_(True) for k in names)

        def fn(means, quats, scales, opacities, colors, background):
            out = render.rasterize(means, quats, scales, opacities, colors, scene["viewmat"], scene["K"],
                                   width, height, sh_degree=degree, background=background)
            return out.image, out.alpha, out.depth

        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def test_feature_channels_gradcheck():
    """gradcheck with feature colours (C = 2 unrolled and C = 7 generic), background and depth."""
    width, height = 20, 16
    for channels, seed in ((2, 20), (7, 21)):
        scene = make_scene(8, width, height, seed=seed, channels=channels, log_scale=-1.8)
        names = ("means", "quats", "scales", "opacities", "colors", "background")
        inputs = tuple(scene[k].clone().requires_grad_(True) for k in names)

        def fn(means, quats, scales, opacities, colors, background):
            out = render.rasterize(means, quats, scales, opacities, colors, scene["viewmat"], scene["K"],
                                   width, height, background=background)
            return out.image, out.alpha, out.depth

        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def test_frustum_clamp_gradients():
    """Gaussians far outside the view (J clamped) still project and differentiate like the oracle."""
    width, height = 32, 24
    scene = make_scene(30, width, height, seed=5, log_scale=-0.5)
    # move half the Gaussians just past the clamp limit on the right: their J is clamped, but their
    # footprint still reaches the image
    cam = camera_points(scene)
    lim_x_pos = frustum_limit_x(scene, width)
    cam[::2, 0] = 1.15 * lim_x_pos * cam[::2, 2]
    set_camera_points(scene, cam)
    ours, _ = assert_matches_oracle(scene, width, height)
    clamped = (cam[:, 0] / cam[:, 2]) > lim_x_pos
    assert bool(((ours.radii > 0) & clamped).any())  # a clamped Gaussian is visible


def test_means2d_retains_screen_space_gradient():
    scene = make_scene(20, 32, 32, seed=6)
    leaves = {k: v.clone().requires_grad_(k == "means") for k, v in scene.items()}
    out = render.rasterize(leaves["means"], leaves["quats"], leaves["scales"], leaves["opacities"],
                           leaves["colors"], leaves["viewmat"], leaves["K"], 32, 32)
    out.image.sum().backward()
    assert out.means2d.grad is not None and out.means2d.grad.shape == (20, 2)
    assert float(out.means2d.grad.abs().sum()) > 0
    assert bool((out.means2d.grad[out.radii == 0] == 0).all())


def test_no_grad_inputs_and_unused_outputs():
    """Inputs without requires_grad render; a loss on the image only still backprops."""
    scene = make_scene(20, 24, 24, seed=7)
    out = render.rasterize(scene["means"], scene["quats"], scene["scales"], scene["opacities"],
                           scene["colors"], scene["viewmat"], scene["K"], 24, 24)
    assert out.image.shape == (24, 24, 3) and out.alpha.shape == (24, 24, 1) and out.depth.shape == (24, 24, 1)
    assert not out.image.requires_grad
    colors = scene["colors"].clone().requires_grad_(True)
    out = render.rasterize(scene["means"], scene["quats"], scene["scales"], scene["opacities"],
                           colors, scene["viewmat"], scene["K"], 24, 24)
    out.image.sum().backward()
    assert colors.grad is not None and float(colors.grad.abs().sum()) > 0


def test_empty_and_all_culled_scenes_give_background():
    width, height = 20, 12
    background = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64)
    for n, behind in ((0, False), (5, True)):
        scene = make_scene(n, width, height, seed=8)
        if behind:  # move every Gaussian behind the camera
            cam = camera_points(scene)
            cam[:, 2] = -cam[:, 2]
            set_camera_points(scene, cam)
        scene["background"] = background
        leaves = {k: v.clone().requires_grad_(k in GRAD_NAMES) for k, v in scene.items()}
        out = render.rasterize(leaves["means"], leaves["quats"], leaves["scales"], leaves["opacities"],
                               leaves["colors"], leaves["viewmat"], leaves["K"], width, height,
                               background=leaves["background"])
        assert torch.equal(out.image, background.expand(height, width, 3))
        assert float(out.alpha.abs().max()) == 0.0 and float(out.depth.abs().max()) == 0.0
        assert int(out.radii.abs().sum()) == 0
        assert bool(torch.isfinite(out.means2d).all())  # culled entries stay finite
        (out.image.sum() + out.alpha.sum() + out.depth.sum()).backward()
        for name in ("means", "quats", "scales", "opacities", "colors"):
            assert float(leaves[name].grad.abs().sum()) == 0.0, name
        assert torch.allclose(leaves["background"].grad, torch.full((3,), float(width * height), dtype=torch.float64))


def test_more_than_a_million_intersections():
    """> 1e6 tile intersections: nothing is dropped (checked per pixel on a random subset against
    the oracle's compositing of the same projected, depth-sorted Gaussians)."""
    width = height = 256
    n = 4200
    g = torch.Generator().manual_seed(9)
    z = 3.0 + torch.rand(n, generator=g, dtype=torch.float64)
    means = torch.stack([0.2 * torch.randn(n, generator=g, dtype=torch.float64),
                         0.2 * torch.randn(n, generator=g, dtype=torch.float64), z], 1)
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    scales = 1.0 + 0.2 * torch.rand(n, 3, generator=g, dtype=torch.float64)
    opacities = 0.02 + 0.3 * torch.rand(n, generator=g, dtype=torch.float64)
    colors = torch.rand(n, 3, generator=g, dtype=torch.float64)
    viewmat = torch.eye(4, dtype=torch.float64)
    K = torch.tensor([[256.0, 0, 128.0], [0, 256.0, 128.0], [0, 0, 1.0]], dtype=torch.float64)
    args = (means.float(), quats.float(), scales.float(), opacities.float(), colors.float(), viewmat.float(), K.float())

    m2, conics, depths, radii = render._ProjectGaussians.apply(*args[:4], args[5], args[6], width, height,
                                                                          0.01, 1e10, 0.3)
    bins = render.bin_and_sort(m2, conics, args[3], depths, radii, width, height)
    ranges, total = bins.ranges, bins.total
    assert total > 1_000_000
    assert int((ranges[:, 1] - ranges[:, 0]).sum()) == total  # every intersection is in a tile range
    out = render.rasterize(*args, width, height)

    xy, con, dep, rad = reference.project_gaussians(*args[:4], args[5], args[6], width, height)
    visible = torch.nonzero(rad > 0).squeeze(1)
    order = visible[torch.sort(dep[visible], stable=True).indices]
    pix_idx = torch.randperm(width * height, generator=g)[:400]
    pix = torch.stack([(pix_idx % width).float() + 0.5, (pix_idx // width).float() + 0.5], 1)
    color, t_final, depth = reference.composite(pix, xy[order], con[order], args[3][order], args[4][order], dep[order])
    ours = out.image.reshape(-1, 3)[pix_idx]
    assert float((ours - color).abs().max()) <= 1e-5
    assert float((out.alpha.reshape(-1)[pix_idx] - (1 - t_final)).abs().max()) <= 1e-5


@pytest.mark.parametrize("n", [3000, 50_000])  # the single-threaded and the blocked parallel sort
def test_radix_sort_is_stable_and_exact(n):
    g = torch.Generator().manual_seed(11)
    keys = torch.randint(0, 1 << 19, (n,), generator=g, dtype=torch.int32) << 12  # many ties
    keys = keys | torch.randint(0, 4, (n,), generator=g, dtype=torch.int32)
    ids = torch.arange(n, dtype=torch.int32)
    hist = torch.empty((tile_kernels.RADIX_BLOCKS, 256), dtype=torch.int32)
    sk, si = tile_kernels.radix_sort_pairs(keys.clone(), ids.clone(), torch.empty_like(keys), torch.empty_like(ids),
                                           hist, n, 31)
    ref_keys, ref_order = torch.sort(keys, stable=True)
    assert torch.equal(sk, ref_keys)
    assert torch.equal(si.long(), ref_order)


RASTERIZERS = pytest.mark.parametrize("rasterize", [render.rasterize, reference.rasterize], ids=["kernel", "twin"])


@RASTERIZERS
@pytest.mark.parametrize(
    "change,match",
    [
        (dict(means=torch.full((3, 3), float("nan"))), "means"),
        (dict(quats=torch.zeros(3, 3)), "quats"),
        (dict(quats=torch.zeros(3, 4)), "quats"),
        (dict(scales=-torch.ones(3, 3)), "scales"),
        (dict(opacities=torch.full((3,), 2.0)), "opacities"),
        (dict(colors=torch.ones(2, 3)), "colors"),
        (dict(viewmat=torch.eye(3)), "viewmat"),
        (dict(K=torch.full((3, 3), float("inf"))), "K"),
        (dict(background=torch.zeros(4)), "background"),
    ],
)
def test_invalid_inputs_raise_value_error_naming_argument(rasterize, change, match):
    """Both rasterizers validate through contract.validate_inputs and name the argument."""
    scene = make_scene(3, 16, 16, dtype=torch.float32, seed=12)
    scene.update({k: v.float() for k, v in change.items()})
    with pytest.raises(ValueError, match=match):
        rasterize(*positional(scene), 16, 16, background=scene["background"])


def _singular(viewmat):
    v = viewmat.clone()
    v[2, :3] = v[0, :3]  # two equal rows: rank 2
    return v


def _reflected(viewmat):
    v = viewmat.clone()
    v[0, :3] = -v[0, :3]  # orthonormal but det = -1: a mirror, not a camera
    return v


@RASTERIZERS
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "bad,match",
    [
        (lambda v: torch.zeros_like(v), "viewmat"),
        (_singular, "viewmat"),
        (_reflected, "viewmat"),
        (lambda v: torch.cat([v[:3] * 1.01, v[3:]]), "viewmat"),  # scaled by 1 %: not a rotation
    ],
    ids=["zero", "singular", "reflection", "scaled"],
)
def test_viewmat_must_hold_a_rotation(rasterize, dtype, bad, match):
    """viewmat's 3x3 must be a rotation within contract.ROTATION_TOL (issue 13, row 12)."""
    scene = make_scene(5, 16, 16, dtype=dtype, seed=12)
    with pytest.raises(ValueError, match=match):
        rasterize(*positional(dict(scene, viewmat=bad(scene["viewmat"]))), 16, 16)


@RASTERIZERS
def test_viewmat_rounding_is_tolerated(rasterize):
    """A rotation rounded to float32 or to 5 decimals (a calibration file) still renders."""
    scene = make_scene(5, 16, 16, seed=12)
    rounded = scene["viewmat"].clone()
    rounded[:3, :3] = torch.round(rounded[:3, :3] * 1e5) / 1e5
    out = rasterize(*positional(dict(scene, viewmat=rounded)), 16, 16)
    assert out.image.shape == (16, 16, 3)
    f32 = {k: v.float() for k, v in scene.items()}
    assert rasterize(*positional(f32), 16, 16).image.dtype == torch.float32


@RASTERIZERS
def test_integer_arguments(rasterize):
    """width, height and sh_degree: bool is rejected (True is not 1), numpy integers accepted
    and render exactly like Python ints (issue 13, row 12)."""
    scene = make_scene(30, 24, 20, seed=13, sh_degree=1)
    args = positional(scene)
    for kwargs, match in ((dict(width=True), "width"), (dict(height=True), "height"),
                          (dict(sh_degree=True), "sh_degree"), (dict(sh_degree=False), "sh_degree"),
                          (dict(width=0), "width"), (dict(width=24.0), "width"), (dict(sh_degree=4), "sh_degree")):
        call = dict(width=24, height=20, sh_degree=1)
        call.update(kwargs)
        with pytest.raises(ValueError, match=match):
            rasterize(*args, call.pop("width"), call.pop("height"), **call)
    expected = rasterize(*args, 24, 20, sh_degree=1)
    assert float(expected.alpha.max()) > 0.5  # the scene is visible: the comparison means something
    out = rasterize(*args, np.int64(24), np.int32(20), sh_degree=np.int64(1))
    assert torch.equal(out.image, expected.image) and torch.equal(out.radii, expected.radii)


def test_wrong_dtype_raises():
    scene = make_scene(3, 16, 16, seed=13)
    with pytest.raises(ValueError, match="dtype"):
        render.rasterize(scene["means"].float(), *positional(scene)[1:], 16, 16)


def test_sh_extra_coefficients_are_ignored_and_get_zero_gradient():
    """colors (N, K, 3) with K > (d+1)^2: only the first (d+1)^2 rows are used."""
    width, height = 24, 20
    scene = make_scene(30, width, height, seed=14, sh_degree=3)
    ours, grads = assert_matches_oracle(scene, width, height, sh_degree=1)
    assert float(grads["colors"][:, 4:].abs().max()) == 0.0
    assert float(grads["colors"][:, :4].abs().max()) > 0.0


def test_alpha_only_loss_and_repeated_renders_before_backward():
    """Two renders pending before one backward (scratch reuse must not corrupt saved state)."""
    scene = make_scene(40, 32, 24, seed=15)
    other = make_scene(25, 20, 36, seed=16, channels=2)
    leaves = {k: v.clone().requires_grad_(k in GRAD_NAMES) for k, v in scene.items()}
    first = render.rasterize(leaves["means"], leaves["quats"], leaves["scales"], leaves["opacities"],
                             leaves["colors"], leaves["viewmat"], leaves["K"], 32, 24)
    second = render.rasterize(other["means"], other["quats"], other["scales"], other["opacities"],
                              other["colors"], other["viewmat"], other["K"], 20, 36)
    assert second.image.shape == (36, 20, 2)
    first.alpha.sum().backward()
    ref_leaves = {k: v.clone().requires_grad_(k in GRAD_NAMES) for k, v in scene.items()}
    ref = reference.rasterize(ref_leaves["means"], ref_leaves["quats"], ref_leaves["scales"],
                              ref_leaves["opacities"], ref_leaves["colors"], ref_leaves["viewmat"],
                              ref_leaves["K"], 32, 24)
    ref.alpha.sum().backward()
    for name in ("means", "quats", "scales", "opacities"):
        assert rel_err(leaves[name].grad, ref_leaves[name].grad) <= 1e-6, name
    assert float(leaves["colors"].grad.abs().max()) == 0.0  # alpha does not depend on colour


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_binning_keeps_every_contributing_tile_and_little_else(dtype):
    """Every (Gaussian, tile) pair with a pixel centre where the Gaussian reaches alpha >= 1/255
    (sigma >= 0) is emitted, and the exact-ellipse culling keeps few others: brute force over
    all pixels, on a scene with needles and large, faint Gaussians, an image size that is not a
    multiple of the tile size."""
    width, height = 150, 110
    scene = make_scene(600, width, height, dtype=dtype, seed=21, log_scale=-2.0)
    g = torch.Generator().manual_seed(22)
    needles = torch.rand(600, generator=g) < 0.3
    scene["scales"][needles, 0] *= 12.0
    scene["scales"][needles, 1] *= 0.05
    scene["opacities"][:100] = 0.01 + 0.02 * torch.rand(100, generator=g).to(dtype)
    m2, conics, depths, radii = render._ProjectGaussians.apply(
        scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["viewmat"], scene["K"],
        width, height, 0.01, 1e10, 0.3)
    bins = render.bin_and_sort(m2, conics, scene["opacities"], depths, radii, width, height)
    ids, ranges, total = bins.ids, bins.ranges, bins.total
    tiles_x = (width + 15) // 16
    tile_of = torch.repeat_interleave(torch.arange(ranges.shape[0]), (ranges[:, 1] - ranges[:, 0]).long())
    emitted = set(zip(ids[:total].tolist(), tile_of.tolist()))
    assert len(emitted) == total  # no pair twice
    # gradient slots: a permutation that gives each Gaussian its own consecutive block
    slots, gauss = bins.slots.long(), ids.long()
    assert torch.equal(torch.sort(slots).values, torch.arange(total))
    assert bool(((slots >= bins.first[gauss]) & (slots < bins.first[gauss] + bins.counts[gauss])).all())
    assert int(bins.counts.sum()) == total

    pix = reference.pixel_centers(width, height, torch.float64, "cpu")
    pixel_tile = ((pix[:, 1] // 16) * tiles_x + pix[:, 0] // 16).long()
    visible = torch.nonzero(radii > 0).squeeze(1)
    _, _, _, _, _, hit = reference.fragments(pix, m2.double()[visible], conics.double()[visible],
                                              scene["opacities"].double()[visible])
    needed = set()
    for j, gauss in enumerate(visible.tolist()):
        needed.update((gauss, t) for t in torch.unique(pixel_tile[hit[:, j]]).tolist())
    assert needed <= emitted
    assert len(emitted) <= 1.02 * len(needed) + 10
