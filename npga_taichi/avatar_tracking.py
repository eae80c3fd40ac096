"""Tracking through the avatar itself: a video's codes and head poses refined so that the avatar,
seen by the video's camera, matches the video (self-reenactment from one camera).

The photometric tracker (:mod:`npga_taichi.prior.photometric`) fits the video through a proxy built
from the *prior*: the prior's surface and appearance of the fitted identity, not the person's own
look, and a head frame that sits a few degrees / millimetres off the one the avatar learnt from its
multi-view tracking. When the video shows the avatar's own person, the avatar is a far closer
model of every pixel. :func:`track_through_avatar` starts from a proxy track and, frame by frame,
minimises over

* the expression code ``z_exp`` (E,),
* the label measurements the avatar takes (``eye_closure`` (2,), ``part_motion`` (8,); started
  from the track's values, or open / at rest),
* a rotation ``R(ω)`` (axis-angle) applied on the left of the head rotation (about the head's origin) and
  a translation step along the camera's axes (so Adam's per-coordinate steps do not move poorly
  seen depth as fast as the image plane),

L1 + D-SSIM between the avatar's render and the frame, composited over one background (with
mattes: the frame matted onto the avatar's training background; without: the avatar over the
frame's border colour), plus a silhouette L1 of the avatar's alpha against the matte, and
``w_code |z − z_track|²`` keeping the code near the proxy's (one view leaves directions of z
that only other views see unconstrained). Pixels are compared at the frames' resolution: the
avatar's small Gaussians look different when rendered smaller than it was trained (at half size
the fit drifted 7 mm in depth on the monocular benchmark).

Each frame runs joint steps of all variables (``first_frame_steps`` on frame 0,
``steps_per_frame`` later), then ``pose_steps_per_frame`` of the pose alone on the frame's
Gaussians deformed once (F and G are most of a step's cost), all at constant rates (cosine decay
to 10 % over a frame lost 1 dB held out on the monocular benchmark: the warm start is a few
steps' motion away from the answer).

Warm start: frame t starts from the proxy's pose composed with the previous frame's correction in
the head frame, ``P_t ∘ (P_{t−1}⁻¹ ∘ P'_{t−1})`` — the offset between the proxy's head frame and the
avatar's is nearly constant, so it is found once and carried — from the proxy's code and part
motion plus the previous frame's corrections of them (a video measures the brows and mouth
corners from its own median frame, the avatar learnt them from its capture's: another constant
offset), and from the measured eye closure (a carried closure correction drifts where the one
view sees an eye poorly: 0.5 closed on an open eye). One view sees depth poorly until the head
has turned a little, so after the last frame the first ``refit_first_frames`` are fitted again,
backwards, each from its successor's correction. Frames past the end of the start track start
from the previous frame's result moved on by its own head motion (constant velocity; without a
proxy track to start from, the fit drifted 24 mm in depth within 20 frames).

Output: a :class:`~npga_taichi.prior.tracking.Tracking` in the video camera's world (as the input
track), so ``npga drive`` and ``npga render --expressions`` read it like any other; its ``meta``
names the run (``"tracked_through"``) and lists each frame's final objective (``"objective"``: the
image terms above, without ``w_code``), the residual is each frame's final L1 x 1000. The codes and
poses are the avatar's own: another avatar should be driven by the proxy track instead.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
import numpy as np
import torch
from tqdm import tqdm

from npga_taichi.cameras import Camera
from npga_taichi.config_io import DictConfig
from npga_taichi.metrics import ssim
from npga_taichi.part_motion import PART_MOTION_SCALE
from npga_taichi.prior.tracking import axis_angle_to_matrix
from npga_taichi.reenactment import unit_float


# Surfels of the prior's proxy when the avatar refines its track (``npga track-video --avatar``):
# the proxy only starts each frame there, and half its default surfels did as well (monocular
# benchmark, identity 4242: 33.95 dB held out against 33.80 with 6000) in two thirds of the time.
PROXY_POINTS = 3000


@dataclass
class AvatarTrackingConfig(DictConfig):
    """Settings of :func:`track_through_avatar` (``npga track-video --avatar``)."""

    first_frame_steps: int = 40     # joint steps on frame 0 (finds the proxy-to-avatar head offset)
    steps_per_frame: int = 12       # joint steps (code, parts, pose) on every later frame
    pose_steps_per_frame: int = 8   # then steps of the pose alone on every frame (the frame's
                                    # Gaussians deformed once: about a third of a joint step's cost)
    refit_first_frames: int = 3     # after the last frame, fit the first ones again, backwards
    lr_exp: float = 2e-2            # expression code learning rate
    lr_parts: float = 1e-2          # eye closure learning rate; the part motion's is this /
                                    # PART_MOTION_SCALE (its full range is 0.03; 0: keep the track's)
    lr_rot: float = 2e-3            # rotation correction learning rate (radians)
    lr_trans: float = 6e-4          # translation correction learning rate (metres, camera axes)
    depth_lr_scale: float = 0.3     # the translation's step along the camera axis, times lr_trans
    w_l1: float = 1.0               # L1 between render and frame
    w_dssim: float = 0.2            # D-SSIM between render and frame
    w_silhouette: float = 0.5       # L1 between the avatar's alpha and the matte (with mattes)
    w_code: float = 1e-2            # |z - z_start|^2: stay near the start track's code

    def validate(self) -> "AvatarTrackingConfig":
        for name in ("first_frame_steps", "steps_per_frame", "pose_steps_per_frame", "refit_first_frames"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr_exp", "lr_parts", "lr_rot", "lr_trans", "depth_lr_scale", "w_l1", "w_dssim",
                     "w_silhouette", "w_code"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        return self


@dataclass
class _FrameStart:
    """Where one frame's fit starts: pose (rot (3, 3), trans (3,)), code (E,), the code's
    regulariser target (E,) and the label measurements the avatar takes (name -> (D,))."""

    rot: torch.Tensor
    trans: torch.Tensor
    z: torch.Tensor
    z_prior: torch.Tensor
    parts: dict


@dataclass
class _FrameResult:
    rot: torch.Tensor
    trans: torch.Tensor
    z: torch.Tensor
    parts: dict
    residual: float    # final L1 x 1000
    objective: float   # final image loss (L1, D-SSIM, silhouette as weighted in the fit)


def border_colour(frame: torch.Tensor, width: int = 4) -> torch.Tensor:
    """(3,) median colour of a frame's ``width``-pixel border: the backdrop of a video without
    mattes (the head is framed inside it)."""
    border = torch.cat([frame[:width].reshape(-1, 3), frame[-width:].reshape(-1, 3),
                        frame[:, :width].reshape(-1, 3), frame[:, -width:].reshape(-1, 3)])
    return border.median(dim=0).values


def track_through_avatar(run, frames, camera: Camera, start, mattes=None, config: AvatarTrackingConfig | None = None,
                         progress: bool = True):
    """The track ``start`` refined through ``run``'s avatar (module docstring).

    run: a :class:`~npga_taichi.reenactment.LoadedRun`; frames: (T, H, W, 3) float in [0, 1] or
    uint8; camera: the video camera (H x W) in whose world ``start`` (a
    :class:`~npga_taichi.prior.tracking.Tracking`, e.g. of
    :func:`~npga_taichi.prior.photometric.track_video`; at least frame 0) places the head; mattes:
    (T, H, W) or (T, H, W, 1) in [0, 1] or uint8, or None. Returns a new Tracking of the T frames
    (the start's timesteps when it has T frames, else 0..T-1; its scale and identity codes;
    ``meta["tracked_through"]`` the run folder, ``meta["avatar_tracking"]`` the config,
    ``meta["avatar_seconds_per_frame"]``, ``meta["objective"]`` each frame's final image loss;
    residual: the final L1 x 1000)."""
    cfg = (config or AvatarTrackingConfig()).validate()
    avatar, device = run.avatar, run.device
    if avatar.cnn is not None:
        raise ValueError(f"{run.run_dir}: tracking through an avatar with a screen CNN is not supported "
                         "(its image cannot be composited over the video's background)")
    frames = _tensor(frames, "frames")  # converted frame by frame: a long video stays 8-bit
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) < 1:
        raise ValueError(f"frames must be (T >= 1, H, W, 3), got {tuple(frames.shape)}")
    T, H, W = frames.shape[:3]
    if len(start.timesteps) < 1:
        raise ValueError("the start track has no frame")
    if (camera.width, camera.height) != (W, H):
        raise ValueError(f"the camera is {camera.width}x{camera.height}, the frames {W}x{H}")
    if mattes is not None:
        mattes = _tensor(mattes, "mattes")
        mattes = mattes[..., None] if mattes.ndim == 3 else mattes
        if mattes.shape != (T, H, W, 1):
            raise ValueError(f"mattes are {tuple(mattes.shape[:3])}, the frames {(T, H, W)}")
    cam = camera.to(device, torch.float32)
    as_t = lambda x: torch.as_tensor(np.asarray(x, np.float32), device=device)  # noqa: E731
    given = min(len(start.timesteps), T)   # frames the start track places; later ones are predicted
    z_start, rot_start, trans_start = as_t(start.z_exp[:given]), as_t(start.rot[:given]), as_t(start.trans[:given])
    scale = float(np.asarray(start.scale, np.float64).reshape(-1)[0])
    parts_start = {}
    for name, dim in (("eye_closure", avatar.eye_closure_dim), ("part_motion", avatar.part_motion_dim)):
        if dim:
            values = getattr(start, name)
            parts_start[name] = as_t(values)[:given] if values is not None else torch.zeros(given, dim, device=device)
    results: list[_FrameResult] = []

    def carried(t: int, u: int) -> _FrameStart:
        """Frame t's start from the start track and frame u's result: the proxy's pose composed with
        frame u's correction in the head frame, the proxy's code plus frame u's code correction."""
        r = results[u]
        corr_rot = rot_start[u].T @ r.rot
        corr_trans = rot_start[u].T @ (r.trans - trans_start[u]) / scale
        return _FrameStart(rot_start[t] @ corr_rot, trans_start[t] + scale * rot_start[t] @ corr_trans,
                           z_start[t] + (r.z - z_start[u]), z_start[t],
                           {k: v[t] + (r.parts[k] - v[u]) if k == "part_motion" else v[t] for k, v in parts_start.items()})

    def fit(t: int, init: _FrameStart, steps: int) -> _FrameResult:
        matte = None if mattes is None else unit_float(mattes[t]).to(device)
        return _fit_frame(run, cam, unit_float(frames[t]).to(device), matte, init, scale, steps, cfg)

    clock = time.perf_counter()
    requires = [p.requires_grad for p in avatar.parameters()]
    for p in avatar.parameters():  # only the frame's variables are fitted
        p.requires_grad_(False)
    try:
        for t in tqdm(range(T), desc="tracking through the avatar", disable=not progress):
            if t == 0:
                init = _FrameStart(rot_start[0], trans_start[0], z_start[0], z_start[0],
                                   {k: v[0] for k, v in parts_start.items()})
            elif t < given:
                init = carried(t, t - 1)
            else:  # the previous frame moved on by its own head motion (constant velocity)
                last = results[-1]
                rot0, trans0 = last.rot, last.trans
                if t >= 2:
                    rot0 = last.rot @ results[-2].rot.T @ last.rot
                    trans0 = 2 * last.trans - results[-2].trans
                init = _FrameStart(rot0, trans0, last.z, last.z, last.parts)
            results.append(fit(t, init, cfg.first_frame_steps if t == 0 else cfg.steps_per_frame))
        # the first frames again, backwards, each from its successor's correction: one view sees
        # depth poorly until the head has turned a little (frame 0 alone ended 6.5 mm off)
        for t in reversed(range(min(cfg.refit_first_frames, given - 1, T - 1))):
            results[t] = fit(t, carried(t, t + 1), cfg.steps_per_frame)
    finally:
        for p, r in zip(avatar.parameters(), requires):
            p.requires_grad_(r)
    seconds = time.perf_counter() - clock
    stack = lambda xs: torch.stack(xs).cpu().numpy().astype(np.float32)  # noqa: E731
    meta = {**start.meta, "tracked_through": str(run.run_dir), "avatar_tracking": cfg.to_dict(),
            "avatar_seconds_per_frame": seconds / T, "residual": "photometric L1 x 1000",
            "objective": [r.objective for r in results]}
    timesteps = np.asarray(start.timesteps)[:T] if given == T else np.arange(T)
    return replace(start, timesteps=timesteps, z_exp=stack([r.z for r in results]),
                   rot=stack([r.rot for r in results]), trans=stack([r.trans for r in results]),
                   residual=np.asarray([r.residual for r in results], np.float32), meta=meta,
                   **{name: stack([r.parts[name] for r in results]) for name in parts_start})


def _fit_frame(run, cam: Camera, frame: torch.Tensor, matte: torch.Tensor | None, init: _FrameStart, scale: float,
               steps: int, cfg: AvatarTrackingConfig) -> _FrameResult:
    """One frame's fit (module docstring): ``steps`` joint steps, then ``cfg.pose_steps_per_frame``
    of the pose alone."""
    device = frame.device
    bg = run.background.to(device) if matte is not None else border_colour(frame)
    target = frame * matte + bg * (1.0 - matte) if matte is not None else frame
    z = init.z.clone().requires_grad_(True)
    omega = torch.zeros(3, device=device, requires_grad=True)
    shift = torch.zeros(3, device=device, requires_grad=True)  # metres along the camera's axes
    parts = {k: v.clone().requires_grad_(True) for k, v in init.parts.items()}
    groups = [{"params": [z], "lr": cfg.lr_exp}, {"params": [omega], "lr": cfg.lr_rot},
              {"params": [shift], "lr": cfg.lr_trans}]
    if cfg.lr_parts > 0:
        # one rate in the units G reads: a full brow raise is 0.03 in part motion, 1 in eye closure
        groups += [{"params": [value], "lr": cfg.lr_parts / (PART_MOTION_SCALE if name == "part_motion" else 1.0)}
                   for name, value in parts.items()]
    optim = torch.optim.Adam(groups)
    to_world = cam.viewmat[:3, :3].T * torch.tensor([1.0, 1.0, cfg.depth_lr_scale], device=device)

    def pose():
        return axis_angle_to_matrix(omega) @ init.rot, init.trans + to_world @ shift

    def image_loss(image, alpha):
        loss = cfg.w_l1 * (image - target).abs().mean()
        if cfg.w_dssim > 0:
            loss = loss + cfg.w_dssim * (1.0 - ssim(image, target))
        if matte is not None and cfg.w_silhouette > 0:
            loss = loss + cfg.w_silhouette * (alpha - matte).abs().mean()
        return loss

    for step in range(steps + cfg.pose_steps_per_frame):
        joint = step < steps
        if joint:
            head = _head(run, z, parts)
        elif step == steps:  # the pose alone from here: the frame's Gaussians, deformed once
            with torch.no_grad():
                head = _head(run, z, parts)
        image, alpha = _render(run, cam, head, *pose(), scale, bg)
        loss = image_loss(image, alpha)
        if joint:
            loss = loss + cfg.w_code * (z - init.z_prior).square().sum()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        if "eye_closure" in parts:
            with torch.no_grad():
                parts["eye_closure"].clamp_(0.0, 1.0)
    with torch.no_grad():
        if cfg.pose_steps_per_frame == 0:  # else `head` is the final code's, deformed for the pose steps
            head = _head(run, z, parts)
        rot, trans = pose()
        image, alpha = _render(run, cam, head, rot, trans, scale, bg)
        return _FrameResult(rot, trans, z.detach().clone(), {k: v.detach().clone() for k, v in parts.items()},
                            float((image - target).abs().mean()) * 1000.0, float(image_loss(image, alpha)))


def _head(run, z: torch.Tensor, parts: dict):
    """The avatar's Gaussians of one frame in the head's frame (differentiable in z and the parts)."""
    from npga_taichi.avatar.deformation import FrameCode

    identity = torch.eye(3, device=z.device)
    return run.avatar.deform_head(FrameCode(z, identity, identity[0], 1.0, parts.get("eye_closure"),
                                            parts.get("part_motion")))


def _render(run, cam: Camera, head, rot, trans, scale: float, background: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(image (H, W, 3) over ``background``, alpha (H, W, 1)) of head-frame Gaussians ``head``
    placed by the pose ``x_world = scale rot x + trans``, differentiable in both."""
    from npga_taichi.avatar.deformation import apply_rigid_pose
    from npga_taichi.avatar.model import render_gaussians

    inputs = run.avatar.raster_inputs(apply_rigid_pose(head, rot, trans, scale))
    # over black, then the background: one formula with and without mattes
    _, out = render_gaussians(run.avatar, inputs, cam, None, run.rasterize)
    return out.image + (1.0 - out.alpha) * background, out.alpha


def _tensor(x, name: str) -> torch.Tensor:
    """An array or tensor of uint8 or floats in [0, 1] as a tensor (ValueError naming ``name``)."""
    x = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise ValueError(f"{name} must be uint8 or float, got {x.dtype}")
    return x
