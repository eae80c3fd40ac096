"""Drive a trained avatar: load a run, pick expression codes and poses, render any camera.

This is the one place where ``npga render``, ``npga eval`` and ``npga export`` turn a run
directory into images, so all three produce bit-identical frames for the same inputs:

    run = load_run("runs/demo")                        # avatar + configs + its capture
    drive = run.drive("FREE")                          # tracked codes/poses of a sequence
    g = run.gaussians(drive.frame(0))                  # rasterize keyword arrays (world space)
    image = run.render(g, run.cameras["222200037"])    # (H, W, 3) float32

A :class:`Drive` is what moves the avatar: per frame an expression code ``z_exp (E,)`` and a head
pose (``rot (3,3)`` world<-head, ``trans (3,)``, ``scale``) as written by ``npga track``.
Cross-reenactment takes the codes from another run's or another capture's tracking
(:func:`load_drive`), expression interpolation blends four codes (:mod:`npga_taichi.camera_paths`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from npga_taichi.avatar.model import raster_background, render_gaussians
from npga_taichi.contract import RasterOutput


@dataclass
class Drive:
    """Codes and poses driving an avatar over T frames (from a tracking file, or synthesised).

    timesteps: (T,) int capture timesteps (or frame numbers for synthesised paths)
    z_exp:     (T, E) expression codes
    rot:       (T, 3, 3) head rotation, world <- head
    trans:     (T, 3) head translation (metres)
    scale:     (T,) or (T, k) head scale
    eye_closure: (T, 2) eye closure (left, right; 0 open) or None (:mod:`npga_taichi.eye_closure`)
    part_motion: (T, 8) brows' and mouth corners' motion or None (:mod:`npga_taichi.part_motion`)
    """

    sequence: str
    timesteps: np.ndarray
    z_exp: torch.Tensor
    rot: torch.Tensor
    trans: torch.Tensor
    scale: torch.Tensor
    eye_closure: torch.Tensor | None = None
    part_motion: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.timesteps)

    def frame(self, i: int) -> dict:
        """Frame ``i`` as keyword arguments of the avatar's per-frame deformation."""
        return {"z_exp": self.z_exp[i], "rot": self.rot[i], "trans": self.trans[i], "scale": self.scale[i],
                "eye_closure": None if self.eye_closure is None else self.eye_closure[i],
                "part_motion": None if self.part_motion is None else self.part_motion[i]}

    def select(self, indices) -> "Drive":
        idx = list(indices)
        rows = lambda x: None if x is None else x[idx]  # noqa: E731
        return Drive(self.sequence, self.timesteps[idx], self.z_exp[idx], self.rot[idx],
                     self.trans[idx], self.scale[idx], rows(self.eye_closure), rows(self.part_motion))

    def with_codes(self, z_exp: torch.Tensor, timesteps=None, sequence: str | None = None,
                   eye_closure: torch.Tensor | None = None, part_motion: torch.Tensor | None = None) -> "Drive":
        """This drive's first pose held fixed while ``z_exp (T, E)`` (and ``eye_closure (T, 2)``,
        ``part_motion (T, 8)``: open eyes, parts at rest when None) changes (cross-reenactment /
        interpolation)."""
        t = len(z_exp)
        rep = lambda x: x[:1].expand(t, *x.shape[1:]).clone()  # noqa: E731
        like = lambda x: None if x is None else x.to(self.z_exp)  # noqa: E731
        return Drive(sequence or self.sequence,
                     np.arange(t) if timesteps is None else np.asarray(timesteps),
                     z_exp.to(self.z_exp), rep(self.rot), rep(self.trans), rep(self.scale),
                     like(eye_closure), like(part_motion))


def _tensor(x, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float32, device=device)


def drive_from_tracking(tracking, device="cpu") -> Drive:
    """Convert a :func:`npga_taichi.prior.tracking.load_tracking` result into a :class:`Drive`.

    A per-sequence (not per-frame) scale is repeated for every frame.
    """
    t = len(tracking.timesteps)
    scale = np.asarray(tracking.scale, dtype=np.float32)
    if scale.ndim == 0 or scale.shape[0] != t:
        scale = np.broadcast_to(scale, (t,) + scale.shape).copy()
    return Drive(
        sequence=str(tracking.sequence),
        timesteps=np.asarray(tracking.timesteps).astype(np.int64),
        z_exp=_tensor(tracking.z_exp, device),
        rot=_tensor(tracking.rot, device),
        trans=_tensor(tracking.trans, device),
        scale=_tensor(scale, device),
        eye_closure=None if tracking.eye_closure is None else _tensor(tracking.eye_closure, device),
        part_motion=None if tracking.part_motion is None else _tensor(tracking.part_motion, device),
    )


def tracking_file(capture_root: str | os.PathLike, participant: str, sequence: str) -> Path:
    """Where ``npga track`` writes a sequence's tracking: <root>/<pid>/annotations/tracking/<SEQ>.npz."""
    return Path(capture_root) / str(participant) / "annotations" / "tracking" / f"{sequence}.npz"


def load_drive(source: str | os.PathLike, sequence: str | None, device="cpu") -> Drive:
    """Codes and poses from ``source``: a tracking ``.npz`` file, or a run directory (its capture's
    tracking of ``sequence``), or a capture participant folder (``<root>/<pid>``)."""
    from npga_taichi.prior.tracking import load_tracking, tracking_files

    source = Path(source)
    if source.is_file():
        return drive_from_tracking(load_tracking(source), device)
    if (source / "config.json").is_file():  # a run directory
        _, _, extra = _configs(source)
        root, pid = _capture_location(extra, source)
        if sequence is None:
            raise ValueError(f"pass --sequence to choose which tracked sequence of {source} to use")
        path = tracking_file(root, pid, sequence)
    elif (source / "annotations" / "tracking").is_dir():
        if sequence is None:
            raise ValueError(f"pass --sequence to choose which tracked sequence of {source} to use")
        path = source / "annotations" / "tracking" / f"{sequence}.npz"
    else:
        raise ValueError(f"{source} is neither a tracking .npz, a run directory nor a tracked capture "
                         "participant folder (<root>/<pid> with annotations/tracking/)")
    if not path.is_file():
        have = sorted(tracking_files(path.parent))
        raise ValueError(f"no tracking for sequence {sequence!r} at {path}; tracked sequences: {have}")
    return drive_from_tracking(load_tracking(path), device)


def _configs(run_dir: Path):
    from npga_taichi.avatar.config import load_configs

    return load_configs(run_dir)


def _capture_location(extra: Mapping, run_dir: Path) -> tuple[Path, str]:
    """(capture root, participant id) a run was trained on, from config.json's ``extra``."""
    root, pid = extra.get("data"), extra.get("participant")
    if root is None or pid is None:
        raise ValueError(f"{run_dir}/config.json does not name the capture it was trained on "
                         "('extra.data' and 'extra.participant')")
    root = Path(root)
    if not root.is_absolute() and not root.exists():
        root = (run_dir / root).resolve()
    return root, str(pid)


class LoadedRun:
    """A trained avatar with its configs, capture and background, ready to render frames.

    Images are rendered at the run's training resolution (``train.image_scale`` times the stored
    capture images) unless ``image_scale`` is given; ``cameras`` are already scaled accordingly.
    """

    def __init__(self, run_dir: str | os.PathLike, device="cpu", checkpoint: str | None = None,
                 image_scale: float | None = None) -> None:
        from npga_taichi.avatar.model import get_rasterizer, load_avatar

        self.run_dir = Path(run_dir)
        if not (self.run_dir / "config.json").is_file():
            raise ValueError(f"{self.run_dir} is not a run directory (no config.json); train one with `npga fit`")
        self.device = torch.device(device)
        self.avatar, self.paths, (self.avatar_config, self.train_config, self.extra) = load_avatar(
            self.run_dir, self.device, checkpoint)
        self.avatar.eval()
        self.rasterize = get_rasterizer()
        self.image_scale = float(self.train_config.image_scale if image_scale is None else image_scale)
        if not 0 < self.image_scale <= 1:
            raise ValueError(f"image scale must be in (0, 1], got {self.image_scale}")
        self.background = torch.as_tensor(self.train_config.background, dtype=torch.float32, device=self.device)
        self.capture_root, self.participant = _capture_location(self.extra, self.run_dir)
        self._capture = None
        self._cameras = None

    # ------------------------------------------------------------------ data
    @property
    def capture(self):
        """The capture the run was trained on (NeRSemble layout loader)."""
        if self._capture is None:
            from npga_taichi.data.nersemble import NersembleCapture

            if not (self.capture_root / self.participant).is_dir():
                raise ValueError(f"the capture of {self.run_dir} is gone: {self.capture_root / self.participant}")
            self._capture = NersembleCapture(self.capture_root, self.participant)
        return self._capture

    @property
    def cameras(self) -> dict:
        """serial -> Camera at the rendering resolution (see the class docstring)."""
        if self._cameras is None:
            self._cameras = {s: c.scaled(self.image_scale) for s, c in self.capture.cameras.items()}
        return self._cameras

    def camera(self, serial: str):
        cams = self.cameras
        if serial not in cams:
            raise ValueError(f"unknown camera {serial!r}; the capture has {sorted(cams)}")
        return cams[serial]

    def heldout_cameras(self) -> list[str]:
        from npga_taichi.data.nersemble import split_cameras

        _, held = split_cameras(sorted(self.cameras), holdout=self.train_config.camera_holdout)
        return list(held)

    def heldout_sequences(self) -> list[str]:
        from npga_taichi.data.nersemble import split_sequences

        _, held = split_sequences(self.capture.sequences(), holdout=tuple(self.train_config.holdout_sequences))
        return list(held)

    def drive(self, sequence: str, expressions: str | os.PathLike | None = None,
              source_pose: bool = False) -> Drive:
        """Drive for ``sequence``: self-reenactment from this run's tracking, or cross-reenactment
        with the codes of ``expressions`` (a run, tracking file or participant folder). Cross
        drives keep this avatar's first tracked pose unless ``source_pose``."""
        if expressions is None:
            return load_drive(self.run_dir, sequence, self.device)
        other = load_drive(expressions, sequence, self.device)
        if other.z_exp.shape[1] != self.avatar.exp_dim:
            raise ValueError(f"{expressions} has {other.z_exp.shape[1]}-dim expression codes but this "
                             f"avatar expects {self.avatar.exp_dim}")
        if source_pose:
            return other
        own = self.reference_drive()
        return own.with_codes(other.z_exp, other.timesteps, other.sequence, other.eye_closure, other.part_motion)

    def tracked_sequences(self) -> list[str]:
        """The capture's sequences (in capture order) that have a tracking file."""
        return [seq for seq in self.capture.sequences()
                if tracking_file(self.capture_root, self.participant, seq).is_file()]

    def reference_drive(self) -> Drive:
        """The first tracked sequence: its first pose anchors cross-reenactment and interpolation."""
        tracked = self.tracked_sequences()
        if tracked:
            return load_drive(self.run_dir, tracked[0], self.device)
        raise ValueError(f"no tracked sequence under {self.capture_root}/{self.participant}/annotations/tracking")

    # ------------------------------------------------------------------ rendering
    @torch.no_grad()
    def gaussians(self, frame: Mapping[str, torch.Tensor]) -> dict:
        """Deformed world-space Gaussians of one frame as rasterize keyword arrays (float32)."""
        out = self.avatar.gaussians_for_frame(frame["z_exp"], frame["rot"], frame["trans"], frame["scale"],
                                              frame.get("eye_closure"), frame.get("part_motion"))
        return normalise_gaussians(out)

    def raster_background(self, gaussians: Mapping[str, object]) -> torch.Tensor | None:
        """What ``gaussians`` are composited over (zero features for screen-CNN avatars)."""
        return raster_background(self.avatar, self.background, gaussians["colors"].shape[-1], self.background)

    @torch.no_grad()
    def rasterize_frame(self, gaussians: Mapping[str, object], camera) -> RasterOutput:
        """The raw rasterization (features for CNN avatars) that an HDF5 re-render reproduces."""
        return render_gaussians(self.avatar, dict(gaussians), camera, self.background, self.rasterize)[1]

    @torch.no_grad()
    def render(self, gaussians: Mapping[str, object], camera) -> torch.Tensor:
        """(H, W, 3) float32 image of ``gaussians`` seen by ``camera`` over the run's background."""
        return render_gaussians(self.avatar, dict(gaussians), camera, self.background, self.rasterize)[0]


def normalise_gaussians(out: Mapping[str, object]) -> dict:
    """An avatar's per-frame output as detached, contiguous float32 rasterize arrays."""
    return {
        "means": out["means"].detach().float().contiguous(),
        "quats": out["quats"].detach().float().contiguous(),
        "scales": out["scales"].detach().float().contiguous(),
        "opacities": out["opacities"].detach().float().reshape(-1).contiguous(),
        "colors": out["colors"].detach().float().contiguous(),
        "sh_degree": out["sh_degree"],
    }


def describe_run(run: LoadedRun) -> dict:
    """Small JSON-able description of a run for output metadata."""
    return {
        "run": str(run.run_dir),
        "capture": str(run.capture_root),
        "participant": run.participant,
        "checkpoint": run.paths.get("checkpoint"),
        "step": run.paths.get("step"),
        "image_scale": run.image_scale,
        "background": [float(x) for x in run.background],
    }


def dumps(obj) -> str:
    from npga_taichi.evaluation import json_safe

    return json.dumps(json_safe(obj), indent=2, default=str)


def ground_truth(run: LoadedRun, sequence: str, timestep: int, serial: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(image (H,W,3), alpha (H,W,1)) float32 of the capture at the run's rendering resolution.

    Images are area-averaged down to ``run.cameras[serial]``'s size when the run renders smaller
    than the stored images; alpha is all ones when the capture has no mattes (NeRSemble v2).
    """
    cap = run.capture
    image = unit_float(cap.load_image(sequence, int(timestep), serial))[..., :3]
    try:
        alpha = unit_float(cap.load_alpha(sequence, int(timestep), serial))
        alpha = (alpha[..., None] if alpha.dim() == 2 else alpha)[..., :1]
    except FileNotFoundError:
        alpha = torch.ones(image.shape[:2] + (1,))
    cam = run.camera(serial)
    size = (int(cam.height), int(cam.width))
    if tuple(image.shape[:2]) != size:
        resize = lambda x: torch.nn.functional.interpolate(  # noqa: E731
            x.permute(2, 0, 1)[None], size=size, mode="area")[0].permute(1, 2, 0)
        image, alpha = resize(image), resize(alpha)
    return image.to(run.device), alpha.to(run.device)


def unit_float(array) -> torch.Tensor:
    """Integer (uint8, uint16) or float image -> float32 tensor in [0, 1]."""
    if isinstance(array, torch.Tensor):
        return array.float() / 255.0 if array.dtype == torch.uint8 else array.float()
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.integer):
        return torch.from_numpy(array.astype(np.float32) / np.iinfo(array.dtype).max)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def farthest_codes(z_exp: torch.Tensor, count: int = 4) -> list[int]:
    """Indices of ``count`` mutually distant codes (farthest-point sampling from the code most
    unlike the mean): four distinct expressions for the interpolation square."""
    if len(z_exp) < count:
        raise ValueError(f"need at least {count} tracked frames to pick {count} expressions, got {len(z_exp)}")
    z = z_exp.double()
    chosen = [int((z - z.mean(0)).norm(dim=1).argmax())]
    dist = (z - z[chosen[0]]).norm(dim=1)
    while len(chosen) < count:
        nxt = int(dist.argmax())
        chosen.append(nxt)
        dist = torch.minimum(dist, (z - z[nxt]).norm(dim=1))
    return chosen
