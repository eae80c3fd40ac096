"""NPGAAvatar: the canonical Gaussians, their latents, F, G and the optional screen CNN.

Public API used by ``npga render / eval / export``:

* :func:`load_avatar` ``(run_dir, device) -> (avatar, paths, (avatar_config, train_config, extra))``
* :meth:`NPGAAvatar.gaussians_for_frame` ``(z_exp, rot, trans, scale) -> dict`` of world-space
  rasterize inputs: ``means (N,3)``, ``quats (N,4)`` wxyz, ``scales (N,3)``, ``opacities (N,)``,
  ``colors`` = SH ``(N,K,3)`` with ``sh_degree`` = d, or features ``(N,C)`` with ``sh_degree``
  None (CNN avatars: rasterize over a zero background, then ``avatar.cnn`` (B,C,H,W)->(B,3,H,W)).
* :func:`render_frame` ``(avatar, camera, frame, background) -> RenderResult`` (RGB image +
  the raw RasterOutput); it and :func:`render_posed` (the training step, which times the
  deformation apart) both end in :func:`render_gaussians`, the one render path.
* :func:`avatar_state` / :func:`avatar_from_state`: an avatar as configs + state dict, the only
  form in which avatars are saved (checkpoints are loaded with ``weights_only=True``).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from npga_taichi.avatar.config import AvatarConfig, load_configs
from npga_taichi.avatar.deformation import (FrameCode, PosedGaussians, ScratchForwardField,
                                            apply_rigid_pose, deform_canonical)
from npga_taichi.avatar.detail_network import DetailNetwork
from npga_taichi.avatar.gaussians import CanonicalGaussians
from npga_taichi.avatar.laplacian import KnnLaplacian, knn_graph
from npga_taichi.avatar.screen_cnn import ScreenCNN
from npga_taichi.cameras import Camera
from npga_taichi.checkpoint import load_checkpoint, load_weights
from npga_taichi.contract import RasterOutput
from npga_taichi.part_motion import DISPLACED_PARTS, PART_MOTION_SCALE
from npga_taichi.prior.forward_field import ForwardDeformationField, ForwardFieldConfig

RASTERIZERS = ("taichi", "reference")


def get_rasterizer(name: str | None = None) -> Callable[..., RasterOutput]:
    """The rasterize function: ``taichi`` (ours, default) or ``reference`` (the slow PyTorch
    oracle); env ``NPGA_RASTERIZER`` picks when ``name`` is None."""
    name = name or os.environ.get("NPGA_RASTERIZER", "taichi")
    if name not in RASTERIZERS:
        raise ValueError(f"rasterizer must be one of {RASTERIZERS}, got {name!r}")
    if name == "taichi":
        from npga_taichi.render import rasterize
        return rasterize
    from npga_taichi import reference
    return reference.rasterize


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
        self.background = tuple(float(x) for x in background)
        color_dim = config.cnn_feature_dim if config.use_cnn else 3
        self.sh_degree = None if config.use_cnn else config.sh_degree
        self.gaussians = CanonicalGaussians(config.num_init_gaussians, color_dim, self.sh_degree,
                                            latent_dim=config.feature_dim,
                                            closure_shapes=config.eye_closure_dim > 0 and not config.static)
        if config.static:
            field = None
        elif field is None:
            field = ScratchForwardField(exp_dim, config.feature_dim, config.scratch_field_hidden,
                                        config.scratch_field_layers, config.detail_pos_freqs)
        elif config.feature_dim > 0:
            field.expand_feature_input(config.feature_dim)
        self.field = field
        self.eye_closure_dim = int(config.eye_closure_dim)
        self.part_motion_dim = int(config.part_motion_dim)
        by_code = config.detail_conditioning == "code"
        self.detail = (DetailNetwork(config.feature_dim,
                                     (exp_dim if by_code else 0) + self.eye_closure_dim + self.part_motion_dim,
                                     color_dim, config.detail_hidden, config.detail_layers,
                                     config.detail_pos_freqs, deformation_input=not by_code,
                                     relative_to_rest=config.detail_relative_to_rest)
                       if config.use_detail and not config.static else None)
        self.cnn = (ScreenCNN(color_dim, config.cnn_hidden, config.cnn_layers, background)
                    if config.use_cnn else None)
        self.register_buffer("neighbors", torch.zeros(0, config.knn_k, dtype=torch.long))

    # ---------------------------------------------------------------------------------- graph
    def rebuild_graph(self) -> None:
        """Recompute the canonical kNN graph (after init and after every densification)."""
        self.neighbors = knn_graph(self.gaussians.means, self.config.knn_k)

    @property
    def graph_laplacian(self) -> KnnLaplacian:
        """The Laplacian of ``neighbors`` as sparse matrices, rebuilt when the graph (or its
        device) changes."""
        cached = self.__dict__.get("_graph_laplacian")
        if cached is None or cached.neighbors is not self.neighbors:
            cached = KnnLaplacian(self.neighbors)
            self.__dict__["_graph_laplacian"] = cached
        return cached

    # ------------------------------------------------------------------------------ per frame
    def detail_code(self, z_exp: torch.Tensor, eye_closure: torch.Tensor | None,
                    part_motion: torch.Tensor | None = None) -> torch.Tensor | None:
        """G's per-frame code: z_exp (E,) when G is conditioned on the code, then the eye closure
        (2,) and the part motion (8,) x :data:`~npga_taichi.part_motion.PART_MOTION_SCALE` when this
        avatar takes them (None: open eyes / parts at rest, e.g. codes from a video without label
        maps or the viewer's pad); None when G takes none of them."""
        parts = [z_exp] if self.config.detail_conditioning == "code" else []
        for dim, value, gain in ((self.eye_closure_dim, eye_closure, 1.0),
                                 (self.part_motion_dim, part_motion, PART_MOTION_SCALE)):
            if dim > 0:
                parts.append(z_exp.new_zeros(dim) if value is None else value.to(z_exp).reshape(-1) * gain)
        return torch.cat(parts) if parts else None

    @property
    def detail_sees_code(self) -> bool:
        """Whether G takes the expression code z_exp (``detail_conditioning`` "code")."""
        return self.detail is not None and self.config.detail_conditioning == "code"

    def deform(self, frame: FrameCode, detail_code_noise: torch.Tensor | None = None) -> PosedGaussians:
        """World-space Gaussians of one frame (differentiable w.r.t. everything trainable).

        ``detail_code_noise`` (E,): added to the z_exp that G sees, not F (the trainer's
        augmentation, :attr:`TrainConfig.detail_code_noise`)."""
        return apply_rigid_pose(self.deform_head(frame, detail_code_noise), frame.rot, frame.trans,
                                _scale_value(frame.scale))

    def deform_head(self, frame: FrameCode, detail_code_noise: torch.Tensor | None = None) -> PosedGaussians:
        """:meth:`deform` before the rigid head pose: the frame's Gaussians in the head's frame
        (canonical units; ``frame.rot``, ``trans`` and ``scale`` are not read)."""
        z = frame.z_exp.to(self.gaussians.means)
        z_detail = z if detail_code_noise is None else z + detail_code_noise.to(z)
        return deform_canonical(self.gaussians, self.field, self.detail, z, self.config.use_latents,
                                self.detail_code(z_detail, frame.eye_closure, frame.part_motion), frame.eye_closure,
                                frame.part_motion if self.part_motion_dim > 0 else None,
                                DISPLACED_PARTS[self.config.part_displacement])

    def raster_colors(self, posed: PosedGaussians) -> tuple[torch.Tensor, int | None]:
        """Colour argument of rasterize and its sh_degree: SH (N, K, 3) or features (N, C)."""
        if self.sh_degree is None:
            return posed.colors, None
        if posed.sh_rest is None:
            return posed.colors[:, None, :], self.sh_degree
        return torch.cat([posed.colors[:, None, :], posed.sh_rest], dim=1), self.sh_degree

    def raster_inputs(self, posed: PosedGaussians) -> dict[str, Any]:
        """Posed Gaussians as the rasterize keyword dict of the module docstring."""
        colors, sh_degree = self.raster_colors(posed)
        return {"means": posed.means, "quats": posed.quats, "scales": posed.scales,
                "opacities": posed.opacities, "colors": colors, "sh_degree": sh_degree}

    def gaussians_for_frame(self, z_exp: torch.Tensor, rot: torch.Tensor, trans: torch.Tensor,
                            scale: Any, eye_closure: torch.Tensor | None = None,
                            part_motion: torch.Tensor | None = None) -> dict[str, Any]:
        """World-space rasterize inputs of one frame (see the module docstring)."""
        device = self.gaussians.means.device
        flat = lambda x: None if x is None else torch.as_tensor(x).reshape(-1)  # noqa: E731
        frame = FrameCode(torch.as_tensor(z_exp).reshape(-1), torch.as_tensor(rot), torch.as_tensor(trans),
                          _scale_value(scale), flat(eye_closure), flat(part_motion)).to(device)
        return self.raster_inputs(self.deform(frame))


def raster_background(avatar: NPGAAvatar, background: torch.Tensor | None, channels: int,
                      like: torch.Tensor) -> torch.Tensor | None:
    """What the Gaussians are composited over: ``background`` (3,), or zero features for
    screen-CNN avatars, whose CNN adds the background itself (see screen_cnn.py)."""
    if avatar.cnn is not None:
        return torch.zeros(channels, dtype=like.dtype, device=like.device)
    return None if background is None else background.to(like)


def render_gaussians(avatar: NPGAAvatar, gaussians: dict[str, Any], camera: Camera,
                     background: torch.Tensor | None = None,
                     rasterizer: Callable[..., RasterOutput] | None = None) -> tuple[torch.Tensor, RasterOutput]:
    """The one render path of an avatar's world-space Gaussians: rasterize, then the screen CNN.

    gaussians: the dict of :meth:`NPGAAvatar.gaussians_for_frame` (means, quats, scales,
    opacities, colors, sh_degree), e.g. read back from an HDF5 export; camera: a
    :class:`~npga_taichi.cameras.Camera` (moved to the Gaussians' device and dtype here).
    Returns (RGB image (H, W, 3), the raw RasterOutput — features for CNN avatars).
    """
    rasterize = rasterizer or get_rasterizer()
    means, colors = gaussians["means"], gaussians["colors"]
    camera = camera.to(means.device, means.dtype)
    out = rasterize(means, gaussians["quats"], gaussians["scales"], gaussians["opacities"], colors,
                    camera.viewmat, camera.K, camera.width, camera.height, sh_degree=gaussians["sh_degree"],
                    background=raster_background(avatar, background, colors.shape[-1], means))
    image = out.image
    if avatar.cnn is not None:
        image = avatar.cnn(image.permute(2, 0, 1)[None])[0].permute(1, 2, 0)
    return image, out


def render_posed(avatar: NPGAAvatar, posed: PosedGaussians, camera: Camera,
                 background: torch.Tensor | None = None,
                 rasterizer: Callable[..., RasterOutput] | None = None) -> RenderResult:
    """Render already deformed Gaussians (``avatar.deform(frame)``) through :func:`render_gaussians`."""
    image, out = render_gaussians(avatar, avatar.raster_inputs(posed), camera, background, rasterizer)
    return RenderResult(image=image, raster=out, posed=posed)


def render_frame(avatar: NPGAAvatar, camera: Camera, frame: FrameCode, background: torch.Tensor | None = None,
                 rasterizer: Callable[..., RasterOutput] | None = None) -> RenderResult:
    """Deform ``avatar`` to ``frame`` and render it from ``camera`` over ``background`` (3,):
    what training, validation, ``npga render``, ``eval`` and the viewer all call."""
    means = avatar.gaussians.means
    posed = avatar.deform(frame.to(means.device, means.dtype))
    return render_posed(avatar, posed, camera, background, rasterizer)


# -------------------------------------------------------------------------- saving / loading
AVATAR_FORMAT = "npga-avatar-v2"


def avatar_state(avatar: NPGAAvatar) -> dict[str, Any]:
    """Everything that rebuilds ``avatar`` as plain values and tensors (no pickled modules):
    configs as dicts, the Gaussian count, and the state dict. See :func:`avatar_from_state`."""
    field = avatar.field
    field_config = field.config.to_dict() if isinstance(field, ForwardDeformationField) else None
    return {
        "format": AVATAR_FORMAT,
        "config": avatar.config.to_dict(),
        "exp_dim": int(avatar.exp_dim),
        "extent": float(avatar.extent),
        "background": [float(x) for x in avatar.background],
        "field_config": field_config,
        "num_gaussians": len(avatar.gaussians),
        "state_dict": {k: v.detach() for k, v in avatar.state_dict().items()},
    }


def avatar_from_state(state: dict[str, Any], source: str | os.PathLike,
                      device: torch.device | str = "cpu") -> NPGAAvatar:
    """Rebuild an avatar from :func:`avatar_state`; ValueError naming ``source`` if it does not fit."""
    if not isinstance(state, dict) or state.get("format") != AVATAR_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{source}: not an npga avatar (format {found!r}, expected {AVATAR_FORMAT!r})")
    try:
        config = AvatarConfig.from_dict(state["config"], str(source))
        field = None
        if state["field_config"] is not None:
            field_config = ForwardFieldConfig.from_dict(state["field_config"], str(source))
            # NPGAAvatar grows F's input by the latent size itself: build F as distilled.
            grown = config.feature_dim if not config.static else 0
            field = ForwardDeformationField(dataclasses.replace(
                field_config, feature_dim=field_config.feature_dim - grown))
        avatar = NPGAAvatar(config, field, int(state["exp_dim"]), float(state["extent"]),
                            tuple(float(x) for x in state["background"]))
        avatar.gaussians.resize(int(state["num_gaussians"]))
        avatar.neighbors = torch.zeros(tuple(state["state_dict"]["neighbors"].shape), dtype=torch.long)
        load_weights(avatar, state["state_dict"], source)
    except (KeyError, TypeError) as err:
        raise ValueError(f"{source}: avatar state is incomplete or malformed ({type(err).__name__}: {err})") from None
    return avatar.to(device)


def load_avatar(run_dir: str | os.PathLike, device: torch.device | str = "cpu",
                checkpoint: str | os.PathLike | None = None):
    """Load a trained avatar from a run directory written by ``npga fit`` (no code runs from it).

    Returns ``(avatar, paths, (avatar_config, train_config, extra))`` where ``paths`` holds
    ``run``, ``checkpoint``, ``data`` (capture root) and ``participant`` (from config.json).
    ``checkpoint`` defaults to ``RUN/checkpoints/latest.pt``.
    """
    run_dir = Path(run_dir)
    avatar_cfg, train_cfg, extra = load_configs(run_dir)
    ckpt_path = Path(checkpoint) if checkpoint else run_dir / "checkpoints" / "latest.pt"
    state = load_checkpoint(ckpt_path, map_location=device, required_keys=("avatar", "step"))
    avatar = avatar_from_state(state["avatar"], ckpt_path, device)
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
    # The canonical box and level-set sampler F was distilled on, its floor lowered down the
    # neck: the cameras see the neck below F's box, and densification alone left the back of it
    # bare in profile views. 3x oversampling leaves room for even thinning.
    lo, hi = canonical_box(prior, z_geo)
    lo = lo - lo.new_tensor([0.0, config.init_neck_extension, 0.0])
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
