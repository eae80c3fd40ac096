"""Initial colours from the training images (npga_taichi.avatar.color_init)."""
import math

import torch

from npga_taichi.avatar.color_init import colors_from_views
from npga_taichi.avatar.gaussians import CanonicalGaussians
from npga_taichi.cameras import Camera
from npga_taichi.conventions import SH_C0


def _camera(yaw: float, w: int = 40, h: int = 30) -> Camera:
    """Camera 1 m from the origin looking at it, turned by ``yaw`` about the y axis."""
    c, s = math.cos(yaw), math.sin(yaw)
    view = torch.eye(4)
    view[:3, :3] = torch.tensor([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])
    view[2, 3] = 1.0
    K = torch.tensor([[50.0, 0, w / 2], [0, 50.0, h / 2], [0, 0, 1]])
    return Camera("c", view, K, w, h)


def _gradient_image(w: int = 40, h: int = 30) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    return torch.stack([xx / w, yy / h, 0.5 + 0 * xx], dim=-1)


def test_front_points_get_the_pixel_colour_and_hidden_ones_are_not_seen():
    cam = _camera(0.0)
    g = torch.Generator().manual_seed(0)
    front = torch.cat([(torch.rand(200, 2, generator=g) - 0.5) * 0.3, torch.zeros(200, 1)], dim=1)
    behind = front + torch.tensor([0.0, 0.0, 0.1])  # same pixels, 10 cm further: occluded
    outside = torch.tensor([[2.0, 0.0, 0.0]])      # projects outside the image
    means = torch.cat([front, behind, outside])
    image = _gradient_image()
    rgb, seen = colors_from_views(means, [cam], [image], [torch.ones(30, 40)])
    assert seen[:200].all() and not seen[200:].any()
    uv, _ = cam.project(front)
    expect = torch.stack([uv[:, 0] - 0.5, uv[:, 1] - 0.5], dim=-1) / torch.tensor([40.0, 30.0])
    inner = ((uv[:, 0] > 1) & (uv[:, 0] < 39) & (uv[:, 1] > 1) & (uv[:, 1] < 29))
    # Bilinear sampling of a linear ramp is exact away from the border.
    torch.testing.assert_close(rgb[:200][inner, :2], expect[inner], atol=1e-5, rtol=0)
    assert torch.allclose(rgb[:200, 2], torch.tensor(0.5))


def test_matte_and_median_over_cameras():
    cams = [_camera(-0.1), _camera(0.0), _camera(0.1)]
    means = torch.zeros(1, 3)
    colours = [torch.full((30, 40, 3), v) for v in (0.2, 0.6, 0.9)]
    mattes = [torch.ones(30, 40)] * 3
    rgb, seen = colors_from_views(means, cams, colours, mattes)
    assert seen.all() and torch.allclose(rgb, torch.tensor([[0.6, 0.6, 0.6]]))
    # Outside the matte in every camera: not seen.
    _, seen = colors_from_views(means, cams, colours, [torch.zeros(30, 40)] * 3)
    assert not seen.any()


def test_set_rgb_writes_sh_dc_only_where_asked():
    g = CanonicalGaussians(4, sh_degree=1)
    g.colors.data.fill_(7.0)
    which = torch.tensor([True, False, True, False])
    g.set_rgb(torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.0, 0.5]]), which)
    assert torch.allclose(g.colors[0], torch.zeros(3))
    torch.testing.assert_close(g.colors[2], (torch.tensor([1.0, 0.0, 0.5]) - 0.5) / SH_C0)
    assert torch.all(g.colors[[1, 3]] == 7.0)
