"""Initial Gaussian colours read from the training images instead of the prior's albedo.

The prior's albedo is a generic colour for the tracked identity (point-cloud tracking fits no
appearance code), so the first few hundred steps of a fit mostly repaint the Gaussians. Reading
each Gaussian's colour where the training cameras see it starts the fit from the person's
shaded colours: the held-out PSNR curve starts higher and the same PSNR comes sooner.

Visibility is a point z-buffer: each camera keeps, per pixel, the nearest projected Gaussian
centre (then the minimum over a 3 x 3 neighbourhood, which closes the holes between centres);
a Gaussian counts as seen by a camera if its depth is within ``depth_tolerance`` of that and it
falls inside the matte. Its colour is the median over the cameras that see it (robust to a
camera that sees it at a grazing angle or across a silhouette). Gaussians no camera sees keep
their colours.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F_nn

from npga_taichi.cameras import Camera


@torch.no_grad()
def colors_from_views(means: torch.Tensor, cameras: list[Camera], images: list[torch.Tensor],
                      mattes: list[torch.Tensor], depth_tolerance: float = 0.005
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-Gaussian RGB seen in ``images``.

    means: (N, 3) world-space centres (metres, the cameras' frame); cameras: V cameras;
    images: V (H, W, 3) in [0, 1]; mattes: V (H, W) or (H, W, 1) in [0, 1]; depth_tolerance in
    metres. Returns (rgb (N, 3), seen (N,) bool); rgb is meaningful only where ``seen``.
    """
    if not (len(cameras) == len(images) == len(mattes)) or not cameras:
        raise ValueError(f"need as many cameras, images and mattes (got {len(cameras)}, {len(images)}, "
                         f"{len(mattes)}), at least one")
    n = means.shape[0]
    samples = torch.full((len(cameras), n, 3), float("nan"), dtype=torch.float32, device=means.device)
    for v, (cam, image, matte) in enumerate(zip(cameras, images, mattes)):
        h, w = cam.height, cam.width
        uv, z = cam.project(means)
        uv, z = uv.float(), z.float()
        col, row = uv[:, 0].floor().long(), uv[:, 1].floor().long()
        inside = (z > 0) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
        pix = (row.clamp(0, h - 1) * w + col.clamp(0, w - 1))
        zbuf = torch.full((h * w,), float("inf"), dtype=torch.float32, device=means.device)
        zbuf.scatter_reduce_(0, pix[inside], z[inside], reduce="amin")
        # 3 x 3 minimum: a surface point's pixel may hold no centre of its own.
        zmin = -F_nn.max_pool2d(-zbuf.view(1, 1, h, w), 3, stride=1, padding=1).view(-1)
        m = matte.reshape(h, w).to(means.device, torch.float32).view(-1)
        visible = inside & (z <= zmin[pix] + depth_tolerance) & (m[pix] > 0.5)
        # Bilinear colour at the projected centre.
        grid = torch.stack([(uv[:, 0] / w) * 2 - 1, (uv[:, 1] / h) * 2 - 1], dim=-1).view(1, 1, n, 2)
        img = image.to(means.device, torch.float32).permute(2, 0, 1)[None]
        rgb = F_nn.grid_sample(img, grid, mode="bilinear", align_corners=False).view(3, n).T
        samples[v][visible] = rgb[visible]
    seen = ~torch.isnan(samples[..., 0]).all(dim=0)
    rgb = torch.nanmedian(samples, dim=0).values
    return torch.where(seen[:, None], rgb, torch.zeros_like(rgb)), seen
