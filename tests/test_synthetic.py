"""The procedural head: SDF, backward deformation, rendering.

Checks against independent facts: an SDF must grow by h along its normal, the backward field
is the identity at the neutral expression and locally invertible, and expressions must change
the picture where they act (mouth for the jaw, eyes for blinks) and nowhere else much.
"""
import numpy as np
import pytest
import torch

from npga_taichi.data import synthetic as syn
from npga_taichi.data.head_render import render_head

from heads import expression, front_camera



@pytest.fixture(scope="module")
def head():
    return syn.SyntheticHead.from_seed(1234)



def test_interface_sizes():
    assert syn.NUM_IDENTITY_PARAMS >= 6 and syn.NUM_EXPRESSION_PARAMS >= 10
    assert len(syn.EXPRESSION_NAMES) == syn.NUM_EXPRESSION_PARAMS
    a, b = syn.SyntheticHead.from_seed(1), syn.SyntheticHead.from_seed(2)
    assert a.identity.shape == (syn.NUM_IDENTITY_PARAMS,) and not np.allclose(a.identity, b.identity)
    np.testing.assert_array_equal(syn.SyntheticHead.from_seed(1).identity, a.identity)
    with pytest.raises(ValueError, match="identity"):
        syn.SyntheticHead(np.zeros(3))


def test_neutral_backward_is_identity(head):
    x = torch.rand(512, 3) - 0.5
    np.testing.assert_array_equal(head.backward(x, torch.zeros(syn.NUM_EXPRESSION_PARAMS)).numpy(), x.numpy())
    np.testing.assert_array_equal(head.posed_sdf(x, np.zeros(syn.NUM_EXPRESSION_PARAMS)).numpy(), head.sdf(x).numpy())
    # a non-zero expression moves points near the mouth, but not the back of the head
    e = torch.as_tensor(expression(jaw_open=1.0, smile_left=1.0))
    mouth = torch.tensor([[0.0, -0.26, 0.38], [0.08, -0.22, 0.37]])
    back = torch.tensor([[0.0, 0.2, -0.45]])
    assert (head.backward(mouth, e) - mouth).norm(dim=1).min() > 0.01
    np.testing.assert_allclose(head.backward(back, e).numpy(), back.numpy(), atol=1e-6)
    # per-point expressions (N, E) agree with a shared one
    both = head.backward(mouth, e.expand(2, -1))
    np.testing.assert_allclose(both.numpy(), head.backward(mouth, e).numpy(), atol=1e-7)


def test_sdf_behaves_like_a_distance(head):
    assert head.sdf(torch.tensor([[0.0, 0.1, 0.0]]))[0] < -0.1  # inside the cranium
    assert head.sdf(torch.tensor([[0.0, 0.1, 2.0]]))[0] > 0.5   # in front of the face
    pts, normals = head.sample_surface(400, seed=3, return_normals=True)
    assert head.sdf(pts).abs().max() < 1e-4
    h = 0.01
    out = head.sdf(pts + h * normals)
    inside = head.sdf(pts - h * normals)
    # thin parts (ears, lids, lips) can be thinner than h: judge the typical point
    assert np.median(out.numpy()) == pytest.approx(h, rel=0.2)
    assert np.median(inside.numpy()) == pytest.approx(-h, rel=0.2)
    assert (out > 0).float().mean() > 0.9  # crevices (mouth slit, nostrils) are narrower than h
    a = head.albedo(pts)
    assert a.shape == (400, 3) and a.min() >= 0 and a.max() <= 1


def test_backward_is_locally_invertible(head):
    """det(d backward / d x) > 0 on the posed surface for random expressions in [0, 1]."""
    rng = np.random.default_rng(0)
    for _ in range(2):
        e = syn.SyntheticHead.random_expression(rng, active=0.8)
        pts = head.sample_surface(300, expr=e, seed=1)
        assert head.posed_sdf(pts, e).abs().max() < 1e-4
        h = 1e-3
        cols = []
        for k in range(3):
            dx = torch.zeros(3)
            dx[k] = h
            cols.append((head.backward(pts + dx, e) - head.backward(pts - dx, e)) / (2 * h))
        J = torch.stack(cols, dim=2).double()
        assert torch.linalg.det(J).min() > 0.05



def test_expressions_change_the_rendering_where_they_act(head):
    cam = front_camera()
    vm, K = cam.viewmat[None], cam.K[None]

    def render(e):
        rgba, hits, _ = render_head(head, e, vm, K, cam.width, cam.height)
        return rgba[0].numpy(), hits[0].numpy()

    neutral, hits = render(np.zeros(syn.NUM_EXPRESSION_PARAMS, np.float32))
    again, _ = render(expression())
    np.testing.assert_array_equal(neutral, again)
    alpha = neutral[..., 3]
    assert 0.15 < alpha.mean() < 0.7 and alpha.max() == 1.0 and alpha.min() == 0.0
    assert set(np.unique(alpha)) <= {0.0, 0.25, 0.5, 0.75, 1.0}  # 4 samples per pixel
    partial = ((alpha > 0) & (alpha < 1)).sum()
    assert partial > 0.5 * (alpha > 0).sum() ** 0.5  # antialiased silhouette
    # hit points project back into their own pixel
    ok = np.isfinite(hits[..., 0])
    uv, z = cam.project(torch.from_numpy(hits[ok][:, :3]))
    rows, cols = np.nonzero(ok)
    assert np.abs(uv[:, 0].numpy() - (cols + 0.5)).max() < 0.8
    assert np.abs(uv[:, 1].numpy() - (rows + 0.5)).max() < 0.8

    def region_change(e, world_point, radius_px=6):
        img, _ = render(e)
        diff = np.abs(img[..., :3] - neutral[..., :3]).sum(-1)
        uv, _ = cam.project(torch.tensor([world_point], dtype=torch.float32))
        u, v = uv[0].numpy()
        yy, xx = np.mgrid[: cam.height, : cam.width]
        near = (xx + 0.5 - u) ** 2 + (yy + 0.5 - v) ** 2 < radius_px ** 2
        return diff[near].mean(), diff[~near].mean()

    s = syn.UNIT_METRES
    mouth = [0.0, -0.23 * s, 0.38 * s]
    left_eye = [0.112 * s, 0.045 * s, 0.35 * s]
    inside, outside = region_change(expression(jaw_open=1.0), mouth)
    assert inside > 0.1 and inside > 5 * outside
    inside, outside = region_change(expression(blink_left=1.0), left_eye, radius_px=3)
    assert inside > 0.05 and inside > 5 * outside
    # another identity is a visibly different person
    other, _, _ = render_head(syn.SyntheticHead.from_seed(99), np.zeros(syn.NUM_EXPRESSION_PARAMS, np.float32),
                           vm, K, cam.width, cam.height)
    assert np.abs(other[0].numpy()[..., :3] - neutral[..., :3]).mean() > 0.02
