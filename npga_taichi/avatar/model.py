"""NPGAAvatar: the canonical Gaussians, their latents, F, G and the optional screen CNN.

Public API used by ``npga render / eval / export``:

* :func:`load_avatar` ``(run_dir, device) -> (avatar, paths, (avatar_config, train_config, extra))``
* :meth:`NPGAAvatar.gaussians_for_frame` ``(z_exp, rot, trans, scale) -> dict`` of world-space
  rasterize inputs: ``means (N,3)``, ``quats (N,4)`` wxyz, ``scales (N,3)``, ``opacities (N,)``,
  ``colors`` = SH ``(N,K,3)`` with ``sh_degree`` = d, or features ``(N,C)`` with ``sh_degree``
  None (CNN avatars: rasterize over a zero background, then ``avatar.cnn`` (B,C,H,W)->(B,3,H,W)).
* :func:`render_frame` ``(avatar, camera, frame, background) -> RenderResult`` (RGB image +
  the raw RasterOutput), the same call the trainer uses.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from npga_taichi.avatar.config import AvatarConfig, load_configs
from npga_taichi.avatar.deformation import (FrameCode, PosedGaussians, ScratchForwardField,
                                            apply_rigid_pose, deform_canonical)
from npga_taichi.avatar.detail_network import DetailNetwork
from npga_taichi.avatar.gaussians import CanonicalGaussians
from npga_taichi.avatar.laplacian import knn_graph
from npga_taichi.avatar.screen_cnn import ScreenCNN
from npga_taichi.checkpoint import load_checkpoint
from npga_taichi.contract import RasterOutput

RASTERIZERS = ("taichi", "reference", "tiled")


def get_rasterizer(name: str | None = None) -> Callable[..., RasterOutput]:
    """The rasterize function: ``taichi`` (ours, default), ``reference`` (slow oracle) or
    ``tiled`` (PyTorch tile rasterizer); env ``NPGA_RASTERIZER`` picks when ``name`` is None."""
    name = name or os.environ.get("NPGA_RASTERIZER", "taichi")
    if name not in RASTERIZERS:
        raise ValueError(f"rasterizer must be one of {RASTERIZERS}, got {name!r}")
    if name == "taichi":
        from npga_taichi.render import rasterize
        return rasterize
    from npga_taichi import reference
    return reference.rasterize if name == "reference" else reference.rasterize_tiled


@dataclass
class RenderCamera:
    """What rasterize needs of a camera: viewmat (4,4) world->camera OpenCV, K (3,3) pixels."""

    viewmat: torch.Tensor
    K: torch.Tensor
    width: int
    height: int

    @staticmethod
    def from_camera(camera: Any, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                    scale: float = 1.0) -> "RenderCamera":
        """From any object with viewmat, K, width, height; ``scale`` < 1 downsizes the image
        (K's focal lengths and principal point scale with the image, pixel centres at j + 0.5)."""
        viewmat = torch.as_tensor(np.asarray(camera.viewmat) if not isinstance(camera.viewmat, torch.Tensor)
                                  else camera.viewmat).to(device, dtype)
        K = torch.as_tensor(np.asarray(camera.K) if not isinstance(camera.K, torch.Tensor)
                            else camera.K).to(device, dtype).clone()
        width, height = int(camera.width), int(camera.height)
        if scale != 1.0:
            new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
            K[0] *= new_w / width
            K[1] *= new_h / height
            width, height = new_w, new_h
        return RenderCamera(viewmat, K, width, height)


@dataclass
class RenderResult:
    """image: (H, W, 3) RGB; raster: the rasterizer's output (features for CNN avatars);
    posed: the world-space Gaussians that were rendered (with ``dynamics`` for regularisers)."""

    image: torch.Tensor
    raster: RasterOutput
    posed: PosedGaussians


def _scale_value(scale: Any) -> float:
    t = torch.as_tensor(scale)
    if t.numel() != 1:
        raise ValueError(f"the head pose scale must be a single number, got shape {tuple(t.shape)}")
    return float(t)


class NPGAAvatar(nn.Module):
    """Everything a trained avatar consists of.

    gaussians: canonical cloud (+ latents); field: F (distilled or scratch; None when static);
    detail: G (None with --no-detail or static); cnn: screen CNN (None unless use_cnn);
    neighbors: (N, k) canonical kNN graph for the Laplacians; extent: radius of the canonical
    cloud at initialisation (canonical units; scales ADC thresholds).
    """

    def __init__(self, config: AvatarConfig, field: nn.Module | None, exp_dim: int, extent: float = 1.0,
                 background: tuple[float, float, float] = (1.0, 1.0, 1.0)):
        super().__init__()
        config.validate()
        self.config = config
        self.exp_dim = exp_dim
        self.extent = float(extent)
        color_dim = config.cnn_feature_dim if config.use_cnn else 3
        self.sh_degree = None if config.use_cnn else config.sh_degree
        self.gaussians = CanonicalGaussians(config.num_init_gaussians, color_dim, self.sh_degree,
                                            latent_dim=config.feature_dim)
        if config.static:
            field = None
        elif field is None:
            field = ScratchForwardField(exp_dim, config.feature_dim, config.scratch_field_hidden,
                                        config.scratch_field_layers, config.detail_pos_freqs)
        elif config.feature_dim > 0:
            field.expand_feature_input(config.feature_dim)
        self.field = field
        self.detail = (DetailNetwork(config.feature_dim, exp_dim, color_dim, config.detail_hidden,
                                     config.detail_layers, config.detail_pos_freqs)
                       if config.use_detail and not config.static else None)
        self.cnn = (ScreenCNN(color_dim, config.cnn_hidden, config.cnn_layers, background)
                    if config.use_cnn else None)
        self.register_buffer("neighbors", torch.zeros(0, config.knn_k, dtype=torch.long))

    # ---------------------------------------------------------------------------------- graph
    def rebuild_graph(self) -> None:
        """Recompute the canonical kNN graph (after init and after every densification)."""
        self.neighbors = knn_graph(self.gaussians.means, self.config.knn_k)

    # ------------------------------------------------------------------------------ per frame
    def deform(self, frame: FrameCode) -> PosedGaussians:
        """World-space Gaussians of one frame (differentiable w.r.t. everything trainable)."""
        z = frame.z_exp.to(self.gaussians.means)
        posed = deform_canonical(self.gaussians, self.field, self.detail, z, self.config.use_latents)
        return apply_rigid_pose(posed, frame.rot, frame.trans, _scale_value(frame.scale))

    def raster_colors(self, posed: PosedGaussians) -> tuple[torch.Tensor, int | None]:
        """Colour argument of rasterize and its sh_degree: SH (N, K, 3) or features (N, C)."""
        if self.sh_degree is None:
            return posed.colors, None
        if posed.sh_rest is None:
            return posed.colors[:, None, :], self.sh_degree
        return torch.cat([posed.colors[:, None, :], posed.sh_rest], dim=1), self.sh_degree

    def gaussians_for_frame(self, z_exp: torch.Tensor, rot: torch.Tensor, trans: torch.Tensor,
                            scale: Any) -> dict[str, Any]:
        """World-space rasterize inputs of one frame (see the module docstring)."""
        device = self.gaussians.means.device
        frame = FrameCode(torch.as_tensor(z_exp).reshape(-1), torch.as_tensor(rot), torch.as_tensor(trans),
                          _scale_value(scale)).to(device)
        posed = self.deform(frame)
        colors, sh_degree = self.raster_colors(posed)
        return {"means": posed.means, "quats": posed.quats, "scales": posed.scales,
                "opacities": posed.opacities, "colors": colors, "sh_degree": sh_degree}


def render_frame(avatar: NPGAAvatar, camera: Any, frame: FrameCode, background: torch.Tensor | None = None,
                 rasterizer: Callable[..., RasterOutput] | None = None) -> RenderResult:
    """Render one frame of ``avatar`` from ``camera`` (a RenderCamera or anything with viewmat,
    K, width, height) over ``background`` (3,); returns RGB (H, W, 3) + the raster output.

    CNN avatars rasterize their features over zero and run the screen CNN (see screen_cnn.py).
    """
    rasterize = rasterizer or get_rasterizer()
    means = avatar.gaussians.means
    if not isinstance(camera, RenderCamera):
        camera = RenderCamera.from_camera(camera, means.device, means.dtype)
    posed = avatar.deform(frame.to(means.device, means.dtype))
    colors, sh_degree = avatar.raster_colors(posed)
    if avatar.cnn is not None:
        raster_bg = torch.zeros(colors.shape[1], dtype=means.dtype, device=means.device)
    else:
        raster_bg = None if background is None else background.to(means)
    out = rasterize(posed.means, posed.quats, posed.scales, posed.opacities, colors, camera.viewmat,
                    camera.K, camera.width, camera.height, sh_degree=sh_degree, background=raster_bg)
    image = out.image
    if avatar.cnn is not None:
        image = avatar.cnn(image.permute(2, 0, 1)[None])[0].permute(1, 2, 0)
    return RenderResult(image=image, raster=out, posed=posed)


def load_avatar(run_dir: str | os.PathLike, device: torch.device | str = "cpu",
                checkpoint: str | os.PathLike | None = None):
    """Load a trained avatar from a run directory written by ``npga fit``.

    Returns ``(avatar, paths, (avatar_config, train_config, extra))`` where ``paths`` holds
    ``run``, ``checkpoint``, ``data`` (capture root) and ``participant`` (from config.json).
    ``checkpoint`` defaults to ``RUN/checkpoints/latest.pt``.
    """
    run_dir = Path(run_dir)
    avatar_cfg, train_cfg, extra = load_configs(run_dir)
    ckpt_path = Path(checkpoint) if checkpoint else run_dir / "checkpoints" / "latest.pt"
    state = load_checkpoint(ckpt_path, map_location=device, required_keys=("avatar", "step"))
    avatar = state["avatar"]
    if not isinstance(avatar, NPGAAvatar):
        raise ValueError(f"{ckpt_path}: 'avatar' is a {type(avatar).__name__}, not an NPGAAvatar")
    avatar = avatar.to(device)
    paths = {"run": str(run_dir), "checkpoint": str(ckpt_path), "data": extra.get("data"),
             "participant": extra.get("participant"), "step": int(state["step"])}
    return avatar, paths, (avatar_cfg, train_cfg, extra)


@torch.no_grad()
def _albedo_batched(prior: Any, points: torch.Tensor, z_geo: torch.Tensor, z_app: torch.Tensor,
                    batch: int = 16384) -> torch.Tensor:
    return torch.cat([prior.albedo(points[i:i + batch], z_geo, z_app) for i in range(0, len(points), batch)])


def create_avatar(config: AvatarConfig, prior: Any, z_geo: torch.Tensor, z_app: torch.Tensor,
                  exp_dim: int, field: nn.Module | None, background: tuple[float, float, float] = (1.0, 1.0, 1.0),
                  seed: int = 0) -> NPGAAvatar:
    """A fresh avatar whose Gaussians sit on the prior's zero level set of this identity.

    prior: a MonoNPHM (``sdf``, ``albedo`` in [0, 1], ``anchors`` which bound the search box);
    field: the
    distilled F (None -> scratch F, i.e. --no-prior). Positions are surface samples, colours
    the prior's albedo there, scales the neighbour spacing; latents small random values.
    """
    from npga_taichi.avatar.gaussians import thin_evenly
    from npga_taichi.prior.distill import canonical_box
    from npga_taichi.prior.surface import sample_level_set

    config = config.validate()
    generator = torch.Generator().manual_seed(seed)
    z_geo = torch.as_tensor(z_geo, dtype=torch.float32).reshape(-1)
    z_app = torch.as_tensor(z_app, dtype=torch.float32).reshape(-1)
    # The same canonical box (face and cranium, neck cut short) and level-set sampler F was
    # distilled on; 3x oversampling leaves room for even thinning.
    lo, hi = canonical_box(prior, z_geo)
    try:
        candidates = sample_level_set(lambda x: prior.sdf(x, z_geo), 3 * config.num_init_gaussians, lo, hi,
                                      generator=generator, tolerance=config.init_surface_band)
    except RuntimeError as err:
        raise ValueError(f"cannot initialise the Gaussians on the prior's surface: {err}") from err
    points = thin_evenly(candidates.float(), config.num_init_gaussians, generator)
    colors = _albedo_batched(prior, points, z_geo, z_app)
    extent = float((points - points.mean(0)).norm(dim=-1).max())
    avatar = NPGAAvatar(config, field, exp_dim, extent, background)
    avatar.gaussians.initialize(points, colors, config.init_opacity, config.init_scale_mult,
                                config.init_latent_std if config.use_latents else 0.0, generator, background)
    avatar.rebuild_graph()
    return avatar
