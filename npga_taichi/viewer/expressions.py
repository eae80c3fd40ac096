"""What drives the viewer's avatars: tracked frames, NPGA's interpolation pad, the canonical cloud.

The primary run (the first ``RUN``) supplies the codes: its capture's tracking of every tracked
sequence. Every avatar shown receives the same expression code ``z_exp (E,)``; head poses follow
``npga render``: the primary avatar replays the tracked pose in tracked mode, every other case
holds an avatar at its *reference pose* — the first frame of its first tracked sequence
(:meth:`LoadedRun.reference_drive`), the pose ``npga render --interpolate`` and
``--expressions`` use.

Interpolation (NPGA's pad): four corner codes, top-left, top-right, bottom-left, bottom-right,
blended bilinearly at (u, v) ∈ [0, 1]² (``camera_paths.bilinear_code``; u runs left to right,
v top to bottom). By default the corners are the four most distinct tracked codes, picked as
``npga render --interpolate auto`` picks them (:func:`auto_corners`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from npga_taichi.camera_paths import bilinear_code
from npga_taichi.conventions import MM_PER_UNIT
from npga_taichi.part_motion import PART_MOTION_DIM, PART_MOTION_NAMES
from npga_taichi.reenactment import LoadedRun, normalise_gaussians, tracking_file

MODES = ("tracked", "interpolate", "canonical")


@dataclass(frozen=True)
class ViewState:
    """Everything the GUI chose that changes the Gaussians (camera and renderer excluded).

    corners: four (sequence, frame index) pairs; uv: the pad cursor; sequence/frame: tracked mode;
    closure: the eye closure (left, right; 0 open, 1 closed) the pad's expression is shown with
    (tracked mode plays the measured one; avatars fitted without a closure ignore it);
    part_motion: the brows' and mouth corners' motion (:data:`npga_taichi.part_motion.PART_MOTION_NAMES`,
    canonical units) the pad's expression is shown with, likewise.
    """

    mode: str
    sequence: str
    frame: int
    uv: tuple[float, float]
    corners: tuple[tuple[str, int], ...]
    closure: tuple[float, float] = (0.0, 0.0)
    part_motion: tuple[float, ...] = (0.0,) * PART_MOTION_DIM

    def key(self) -> tuple:
        """Equal keys <=> the same Gaussians: what the worker compares before sending splats."""
        if self.mode == "tracked":
            return ("tracked", self.sequence, self.frame)
        if self.mode == "interpolate":
            return ("interpolate", self.uv, self.corners, self.closure, self.part_motion)
        return ("canonical",)


@dataclass
class Applied:
    """What the worker last sent: the expression (None in canonical mode) and its description."""

    state: ViewState
    z_exp: np.ndarray | None
    label: str
    seconds: float            # deform + pack time of this update
    count: int                # how many expression updates were sent so far
    extra: dict = field(default_factory=dict)


def canonical_gaussians(avatar, rot, trans, scale) -> dict:
    """The avatar's undeformed canonical Gaussians (no F, no G) placed at a head pose
    ``rot (3, 3)``, ``trans (3,)`` metres, ``scale`` metres per canonical unit, as rasterize
    arrays."""
    from npga_taichi.avatar.deformation import apply_rigid_pose, deform_canonical

    with torch.no_grad():
        means = avatar.gaussians.means
        z = torch.zeros(avatar.exp_dim, dtype=means.dtype, device=means.device)
        posed = deform_canonical(avatar.gaussians, None, None, z, avatar.config.use_latents)
        posed = apply_rigid_pose(posed, torch.as_tensor(rot).to(means), torch.as_tensor(trans).to(means),
                                 float(torch.as_tensor(scale).reshape(-1)[0]))
        return normalise_gaussians(avatar.raster_inputs(posed))


class ExpressionSource:
    """Codes and poses for ``runs`` (the first supplies the codes; see the module docstring)."""

    def __init__(self, runs: list[LoadedRun]):
        self.runs = runs
        self.primary = runs[0]
        self.sequences = self.primary.tracked_sequences()
        if not self.sequences:
            raise ValueError(f"{self.primary.run_dir}: its capture has no tracked sequence to drive the avatar")
        for run in runs[1:]:
            if run.avatar.exp_dim != self.primary.avatar.exp_dim:
                raise ValueError(f"{run.run_dir} takes {run.avatar.exp_dim}-dim expression codes but "
                                 f"{self.primary.run_dir} has {self.primary.avatar.exp_dim}: they cannot share "
                                 "one expression")
        self._drives: dict[str, object] = {}
        self.reference_poses = []
        for run in runs:
            f = run.reference_drive().frame(0)
            self.reference_poses.append({k: f[k] for k in ("rot", "trans", "scale")})

    def drive(self, sequence: str):
        if sequence not in self.sequences:
            raise ValueError(f"sequence {sequence!r} is not tracked; tracked: {self.sequences}")
        if sequence not in self._drives:
            self._drives[sequence] = self.primary.drive(sequence)
        return self._drives[sequence]

    def num_frames(self, sequence: str) -> int:
        return len(self.drive(sequence))

    def default_sequence(self) -> str:
        """The held-out sequence (FREE) when tracked, else the first tracked one (as `npga render`)."""
        held = [s for s in self.primary.heldout_sequences() if s in self.sequences]
        return held[0] if held else self.sequences[0]

    def label(self, sequence: str, index: int) -> str:
        """'SEQ:TIMESTEP', the notation of `npga render --interpolate`."""
        return f"{sequence}:{int(self.drive(sequence).timesteps[index])}"

    def code(self, sequence: str, index: int) -> torch.Tensor:
        return self.drive(sequence).z_exp[index]

    def auto_corners(self) -> tuple[tuple[str, int], ...]:
        """Four mutually distant tracked codes, as ``npga render --interpolate auto`` picks them
        (:func:`npga_taichi.render_run.parse_corner_codes`), as (sequence, frame index) pairs."""
        from npga_taichi.render_run import parse_corner_codes

        _, labels = parse_corner_codes("auto", self.drive, self.default_sequence(), self.sequences)
        corners = []
        for label in labels:
            seq, t = label.rsplit(":", 1)
            corners.append((seq, int(np.nonzero(self.drive(seq).timesteps == int(t))[0][0])))
        return tuple(corners)

    def expression(self, state: ViewState) -> torch.Tensor | None:
        """(E,) code of ``state`` (None in canonical mode)."""
        if state.mode == "tracked":
            return self.code(state.sequence, state.frame)
        if state.mode == "interpolate":
            corners = torch.stack([self.code(s, i) for s, i in state.corners])
            return bilinear_code(corners, *state.uv)
        return None

    def pose(self, state: ViewState, avatar_index: int) -> dict:
        """Head pose (rot, trans, scale) of avatar ``avatar_index`` in ``state``."""
        if state.mode == "tracked" and avatar_index == 0:
            f = self.drive(state.sequence).frame(state.frame)
            return {k: f[k] for k in ("rot", "trans", "scale")}
        return self.reference_poses[avatar_index]

    def describe(self, state: ViewState) -> str:
        if state.mode == "tracked":
            return f"tracked {self.label(state.sequence, state.frame)}"
        if state.mode == "interpolate":
            closed = f" eyes closed {state.closure[0]:.2f}/{state.closure[1]:.2f}" if any(state.closure) else ""
            moved = ", ".join(f"{name} {value * MM_PER_UNIT:+.1f} mm" for name, value
                              in zip(PART_MOTION_NAMES, state.part_motion) if value)
            return f"pad u={state.uv[0]:.3f} v={state.uv[1]:.3f}{closed}" + (f" {moved}" if moved else "")
        return "canonical"

    def eye_closure(self, state: ViewState) -> torch.Tensor | None:
        """(2,) eye closure of ``state``: measured in tracked mode, the sliders' on the pad,
        None in canonical mode."""
        if state.mode == "tracked":
            return self.drive(state.sequence).frame(state.frame)["eye_closure"]
        if state.mode == "interpolate":
            return torch.tensor(state.closure, dtype=torch.float32)
        return None

    def part_motion(self, state: ViewState) -> torch.Tensor | None:
        """(8,) brows' and mouth corners' motion of ``state``: measured in tracked mode, the
        sliders' on the pad, None in canonical mode."""
        if state.mode == "tracked":
            return self.drive(state.sequence).frame(state.frame)["part_motion"]
        if state.mode == "interpolate":
            return torch.tensor(state.part_motion, dtype=torch.float32)
        return None

    def gaussians(self, state: ViewState, z_exp: torch.Tensor | None, avatar_index: int) -> dict:
        """World-space rasterize arrays of one avatar (no side-by-side offset applied)."""
        run = self.runs[avatar_index]
        pose = self.pose(state, avatar_index)
        if z_exp is None:
            return canonical_gaussians(run.avatar, pose["rot"], pose["trans"], pose["scale"])
        return run.gaussians({"z_exp": z_exp, **pose, "eye_closure": self.eye_closure(state),
                              "part_motion": self.part_motion(state)})


def save_expression(path: str | os.PathLike, run: LoadedRun, z_exp, pose: dict, meta: dict,
                    eye_closure=None, part_motion=None) -> Path:
    """Write one expression code and head pose (and ``eye_closure`` (2,), ``part_motion`` (8,),
    when given) as a one-frame tracking ``.npz`` (+ ``.json``), the format ``npga render
    --expressions FILE`` reads (``prior.tracking.save_tracking``); the identity codes are copied from the run's
    reference tracking. Refuses to overwrite."""
    from npga_taichi.prior.tracking import Tracking, load_tracking, save_tracking

    path = Path(path).with_suffix(".npz")
    if path.exists():
        raise ValueError(f"{path} exists; not overwriting it")
    ref = run.reference_drive().sequence
    source = load_tracking(tracking_file(run.capture_root, run.participant, ref))
    as_np = lambda x: torch.as_tensor(x).detach().cpu().double().numpy()  # noqa: E731
    tracking = Tracking(sequence="viewer", timesteps=np.zeros(1, np.int64),
                        z_exp=as_np(z_exp).reshape(1, -1), z_geo=source.z_geo, z_app=source.z_app,
                        rot=as_np(pose["rot"]).reshape(1, 3, 3), trans=as_np(pose["trans"]).reshape(1, 3),
                        scale=float(as_np(pose["scale"]).reshape(-1)[0]), residual=np.zeros(1),
                        meta={"source": "npga view", **json.loads(json.dumps(meta, default=str))},
                        eye_closure=None if eye_closure is None else as_np(eye_closure).reshape(1, 2),
                        part_motion=None if part_motion is None else as_np(part_motion).reshape(1, -1))
    return save_tracking(tracking, path)
