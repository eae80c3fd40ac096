"""Per-frame tracking of expression codes and rigid head pose against point clouds.

Model of a frame: a world point p lies on the head when SDF(B(x, z_exp), z_geo) = 0 with
x = Rᵀ (p − t) / s (world -> canonical-posed; ``s`` is one scale per track, ``R``, ``t`` per
frame). Per sequence:

1. the first frame fits the pose alone (40 % of its steps), then identity (z_geo), pose and
   expression jointly;
   identity and scale are then frozen (optionally shared across sequences),
   (the scale stays at ``init_scale`` unless ``fit_scale``: it is degenerate with head size),
2. every following frame warm-starts expression and pose from the previous frame and runs a few
   Adam steps on: robust mean |SDF| over a subsample of the frame's points (pseudo-Huber),
   code L2 regularisers and temporal smoothness to the previous frame's code and pose.

Tracking files: ``<root>/<pid>/annotations/tracking/<SEQ>.npz`` (arrays below) plus
``<SEQ>.json`` (a small summary). ``residual`` is the final robust-free mean |SDF| over the
frame's points in millimetres (world scale).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from tqdm import tqdm

from npga_taichi.checkpoint import atomic_path, write_text_atomic
from npga_taichi.prior.model import MonoNPHM

MM_PER_UNIT = 250.0


@dataclass
class TrackingConfig:
    """Settings of ``npga track``."""

    points_per_frame: int = 1500   # observed points subsampled per frame and step
    first_frame_steps: int = 400   # joint identity + scale + pose + expression steps, frame 0
    steps_per_frame: int = 25      # expression + pose steps for each later frame
    lr_geo: float = 5e-3           # identity code learning rate (first frame)
    lr_exp: float = 1e-2           # expression code learning rate
    lr_rot: float = 4e-3           # axis-angle learning rate (radians)
    lr_trans: float = 1e-3         # translation learning rate (metres)
    lr_scale: float = 2e-3         # log-scale learning rate (first frame)
    init_scale: float = 0.25       # world metres per canonical unit (MonoNPHM: FLAME x 4 -> 0.25)
    fit_scale: bool = False        # also fit the scale on the first frame (it trades off against
                                   # head size in the identity code, so it is fixed by default)
    robust_delta: float = 0.004    # pseudo-Huber width of the SDF residual (canonical units)
    w_reg_geo: float = 1e-5        # identity code L2
    w_reg_exp: float = 1e-5        # expression code L2
    w_smooth_exp: float = 1e-3     # |z_t − z_{t−1}|²
    w_smooth_pose: float = 1e-1    # |ω_t|² + |Δt_t / s|² relative to the previous frame
    seed: int = 0                  # point subsampling seed

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Tracking:
    """Tracked codes and poses of one sequence (world = scale · rot · x_posed + trans)."""

    sequence: str
    timesteps: np.ndarray          # (T,) int frame indices
    z_exp: np.ndarray              # (T, E) expression codes
    z_geo: np.ndarray              # (G,) identity geometry code
    z_app: np.ndarray              # (G,) identity appearance code
    rot: np.ndarray                # (T, 3, 3) head rotation
    trans: np.ndarray              # (T, 3) head translation (metres)
    scale: float                   # metres per canonical unit
    residual: np.ndarray           # (T,) mean |SDF| of the frame's points after fitting (mm)
    meta: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"sequence": self.sequence, "frames": int(len(self.timesteps)),
                "scale": float(self.scale),
                "residual_mm_mean": float(np.mean(self.residual)) if len(self.residual) else None,
                "residual_mm_max": float(np.max(self.residual)) if len(self.residual) else None,
                **{k: v for k, v in self.meta.items() if isinstance(v, (int, float, str))}}


def save_tracking(tracking: Tracking, path: str | os.PathLike) -> Path:
    """Write ``<path>.npz`` (arrays) and ``<path>.json`` (summary) atomically."""
    path = Path(path).with_suffix(".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        np.savez(tmp, sequence=np.array(tracking.sequence), timesteps=tracking.timesteps.astype(np.int64),
                 z_exp=tracking.z_exp.astype(np.float32), z_geo=tracking.z_geo.astype(np.float32),
                 z_app=tracking.z_app.astype(np.float32), rot=tracking.rot.astype(np.float32),
                 trans=tracking.trans.astype(np.float32), scale=np.array(tracking.scale, np.float64),
                 residual=tracking.residual.astype(np.float32), meta=np.array(json.dumps(tracking.meta)))
    write_text_atomic(json.dumps(tracking.summary(), indent=2), path.with_suffix(".json"))
    return path


def load_tracking(path: str | os.PathLike) -> Tracking:
    """Read a tracking ``.npz`` written by :func:`save_tracking`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"tracking file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as err:
        raise ValueError(f"cannot read tracking file {path}: {err}") from err
    required = ("sequence", "timesteps", "z_exp", "z_geo", "z_app", "rot", "trans", "scale", "residual")
    missing = [k for k in required if k not in arrays]
    if missing:
        raise ValueError(f"tracking file {path} lacks arrays {missing}")
    t = len(arrays["timesteps"])
    for key, shape in (("z_exp", (t, None)), ("rot", (t, 3, 3)), ("trans", (t, 3)), ("residual", (t,))):
        arr = arrays[key]
        if arr.shape[0] != t or any(s is not None and a != s for a, s in zip(arr.shape, shape)):
            raise ValueError(f"tracking file {path}: {key} has shape {arr.shape}, expected {shape}")
    meta = json.loads(str(arrays["meta"])) if "meta" in arrays else {}
    return Tracking(str(arrays["sequence"]), arrays["timesteps"], arrays["z_exp"], arrays["z_geo"],
                    arrays["z_app"], arrays["rot"], arrays["trans"], float(arrays["scale"]),
                    arrays["residual"], meta)


# ------------------------------------------------------------------------------------ geometry
def axis_angle_to_matrix(omega: torch.Tensor) -> torch.Tensor:
    """Rodrigues: (3,) axis-angle -> (3, 3) rotation (differentiable, safe at 0)."""
    theta2 = omega.square().sum()
    theta = torch.sqrt(theta2 + 1e-12)
    k = torch.zeros(3, 3, dtype=omega.dtype, device=omega.device)
    k = k.index_put((torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([1, 2, 0, 2, 0, 1])),
                    torch.stack([-omega[2], omega[1], omega[2], -omega[0], -omega[1], omega[0]]))
    a = torch.sin(theta) / theta
    b = (1 - torch.cos(theta)) / (theta2 + 1e-12)
    return torch.eye(3, dtype=omega.dtype, device=omega.device) + a * k + b * (k @ k)


def world_to_posed(points: torch.Tensor, rot: torch.Tensor, trans: torch.Tensor,
                   scale: torch.Tensor | float) -> torch.Tensor:
    """p_c = Rᵀ (p_w − t) / s for points (N, 3)."""
    return ((points - trans) @ rot) / scale


def posed_to_world(points: torch.Tensor, rot: torch.Tensor, trans: torch.Tensor,
                   scale: torch.Tensor | float) -> torch.Tensor:
    """p_w = s R p_c + t for points (N, 3)."""
    return scale * points @ rot.T + trans


def pseudo_huber(r: torch.Tensor, delta: float) -> torch.Tensor:
    """δ (√(1 + (r/δ)²) − 1): quadratic near 0, linear (slope 1) far away."""
    return delta * (torch.sqrt(1.0 + (r / delta).square()) - 1.0)


# ------------------------------------------------------------------------------------ fitting
class FrameFitter:
    """Fits codes and pose of consecutive frames of one sequence (see module docstring)."""

    def __init__(self, prior: MonoNPHM, cfg: TrackingConfig, z_geo: torch.Tensor | None = None,
                 z_app: torch.Tensor | None = None, scale: float | None = None):
        self.prior = prior
        self.cfg = cfg
        for p in prior.parameters():
            p.requires_grad_(False)
        mean_geo, mean_app = prior.mean_codes()
        self.identity_fixed = z_geo is not None
        self.z_geo = (z_geo if z_geo is not None else mean_geo).clone().float()
        self.z_app = (z_app if z_app is not None else mean_app).clone().float()
        self.log_scale = torch.tensor(math.log(scale if scale is not None else cfg.init_scale))
        self.z_exp = prior.codes_exp.weight.mean(0).detach().clone()
        self.rot = torch.eye(3)
        self.trans: torch.Tensor | None = None
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def _subsample(self, cloud: torch.Tensor) -> torch.Tensor:
        n = self.cfg.points_per_frame
        if cloud.shape[0] <= n:
            return cloud
        return cloud[torch.randint(cloud.shape[0], (n,), generator=self.gen)]

    def _initial_translation(self, cloud: torch.Tensor) -> torch.Tensor:
        """Align the cloud's centroid with the prior's visible-surface centroid."""
        with torch.no_grad():
            anchors = self.prior.anchors(self.z_geo)
        # Observed points come mostly from the face side: use the frontal anchors' centroid.
        front = anchors[anchors[:, 2] > anchors[:, 2].median()]
        return cloud.mean(0) - math.exp(float(self.log_scale)) * (self.rot @ front.mean(0))

    def fit_frame(self, cloud: torch.Tensor, first: bool) -> float:
        """Fit one frame (cloud: (M, 3) world). Returns the residual mean |SDF| in mm."""
        cfg = self.cfg
        cloud = cloud.float()
        if self.trans is None:
            self.trans = self._initial_translation(cloud)
        prev_exp = self.z_exp.clone()
        prev_rot, prev_trans = self.rot.clone(), self.trans.clone()
        z_exp = self.z_exp.clone().requires_grad_(True)
        omega = torch.zeros(3, requires_grad=True)
        d_trans = torch.zeros(3, requires_grad=True)
        groups = [{"params": [z_exp], "lr": cfg.lr_exp}, {"params": [omega], "lr": cfg.lr_rot},
                  {"params": [d_trans], "lr": cfg.lr_trans}]
        fit_identity = first and not self.identity_fixed
        z_geo = self.z_geo.clone().requires_grad_(fit_identity)
        log_scale = self.log_scale.clone().requires_grad_(fit_identity and cfg.fit_scale)
        if fit_identity:
            groups.append({"params": [z_geo], "lr": cfg.lr_geo})
            if cfg.fit_scale:
                groups.append({"params": [log_scale], "lr": cfg.lr_scale})
        opt = torch.optim.Adam(groups)
        steps = cfg.first_frame_steps if first else cfg.steps_per_frame
        base_lrs = [g["lr"] for g in opt.param_groups]
        pose_only_steps = int(0.4 * steps) if fit_identity else 0
        for step in range(steps):
            if first:  # cosine decay over the long first-frame fit
                f = 0.5 * (1 + math.cos(math.pi * step / steps))
                for g, lr in zip(opt.param_groups, base_lrs):
                    g["lr"] = lr * (0.1 + 0.9 * f)
                # Align rigidly first so the identity code does not absorb the misalignment.
                if step < pose_only_steps:
                    opt.param_groups[0]["lr"] = 0.0
                    for g in opt.param_groups[3:]:
                        g["lr"] = 0.0
            pts = self._subsample(cloud)
            rot = axis_angle_to_matrix(omega) @ prev_rot
            trans = prev_trans + d_trans
            x = world_to_posed(pts, rot, trans, log_scale.exp())
            sdf = self.prior.posed_sdf(x, z_exp, z_geo)
            loss = pseudo_huber(sdf, cfg.robust_delta).mean() / cfg.robust_delta
            loss = loss + cfg.w_reg_exp * z_exp.square().sum()
            if fit_identity:
                loss = loss + cfg.w_reg_geo * z_geo.square().sum()
            else:
                loss = loss + cfg.w_smooth_exp * (z_exp - prev_exp).square().sum()
                loss = loss + cfg.w_smooth_pose * (omega.square().sum()
                                                   + (d_trans / log_scale.exp()).square().sum())
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            self.z_exp = z_exp.detach()
            self.rot = axis_angle_to_matrix(omega.detach()) @ prev_rot
            self.trans = prev_trans + d_trans.detach()
            if fit_identity:
                self.z_geo = z_geo.detach()
                self.log_scale = log_scale.detach()
                self.identity_fixed = True
            return self.residual_mm(cloud)

    @torch.no_grad()
    def residual_mm(self, cloud: torch.Tensor, max_points: int = 20000) -> float:
        """Mean |SDF| of the frame's points in millimetres (world scale)."""
        pts = cloud if cloud.shape[0] <= max_points else cloud[:: cloud.shape[0] // max_points + 1]
        s = float(self.log_scale.exp())
        x = world_to_posed(pts, self.rot, self.trans, s)
        sdf = self.prior.posed_sdf(x, self.z_exp, self.z_geo)
        return float(sdf.abs().mean()) * s * 1000.0

    @property
    def scale(self) -> float:
        return float(self.log_scale.exp())


def track_sequence(prior: MonoNPHM, sequence: str, timesteps: Iterable[int],
                   load_cloud: Callable[[int], torch.Tensor], cfg: TrackingConfig,
                   identity: tuple[torch.Tensor, torch.Tensor, float] | None = None,
                   progress: bool = True) -> Tracking:
    """Track one sequence. ``load_cloud(t)`` -> (M, 3) world points of frame t.

    ``identity``: (z_geo, z_app, scale) to reuse (frozen) — otherwise fitted on the first frame.
    """
    timesteps = list(timesteps)
    if not timesteps:
        raise ValueError(f"sequence {sequence} has no frames")
    if identity is not None:
        fitter = FrameFitter(prior, cfg, identity[0], identity[1], identity[2])
    else:
        fitter = FrameFitter(prior, cfg)
    z_exp, rots, transs, residuals = [], [], [], []
    for i, t in enumerate(tqdm(timesteps, desc=f"track {sequence}", disable=not progress, leave=False)):
        cloud = torch.as_tensor(np.asarray(load_cloud(t)), dtype=torch.float32)
        if cloud.ndim != 2 or cloud.shape[1] != 3 or cloud.shape[0] < 10:
            raise ValueError(f"{sequence} frame {t}: point cloud must be (M>=10, 3), got {tuple(cloud.shape)}")
        residuals.append(fitter.fit_frame(cloud, first=(i == 0)))
        z_exp.append(fitter.z_exp.numpy().copy())
        rots.append(fitter.rot.numpy().copy())
        transs.append(fitter.trans.numpy().copy())
    return Tracking(sequence, np.asarray(timesteps, np.int64), np.stack(z_exp), fitter.z_geo.numpy(),
                    fitter.z_app.numpy(), np.stack(rots), np.stack(transs), fitter.scale,
                    np.asarray(residuals, np.float32), {"source": "npga track"})


# ------------------------------------------------------------------------------------ import
def import_mononphm_tracking(directory: str | os.PathLike, sequence: str) -> Tracking:
    """Read MonoNPHM's tracking output: one folder per frame (sorted by the number in its name)
    with ``z_exp.npy`` [1, E], ``rot.npy`` (3, 3) or axis-angle (3,), ``trans.npy`` (3,),
    ``scale.npy`` (1,), and optionally ``z_geo.npy``/``z_app.npy`` (per frame or at the top).

    The pose is read as world = scale · rot · x + trans (our convention).
    """
    directory = Path(directory)
    frames = []
    for sub in sorted(p for p in directory.iterdir() if p.is_dir() and (p / "z_exp.npy").is_file()):
        digits = "".join(ch for ch in sub.name if ch.isdigit())
        if digits:
            frames.append((int(digits), sub))
    if not frames:
        raise ValueError(f"{directory}: no per-frame folders with z_exp.npy")
    frames.sort()

    def read(path: Path, name: str) -> np.ndarray:
        file = path / name
        if not file.is_file():
            raise ValueError(f"missing {file}")
        return np.asarray(np.load(file), dtype=np.float64)

    z_exp, rots, transs, scales = [], [], [], []
    for _, sub in frames:
        z_exp.append(read(sub, "z_exp.npy").reshape(-1))
        r = read(sub, "rot.npy")
        if r.size == 3:
            r = axis_angle_to_matrix(torch.as_tensor(r.reshape(3))).numpy()
        if r.size != 9:
            raise ValueError(f"{sub / 'rot.npy'}: expected (3, 3) or (3,), got {r.shape}")
        rots.append(r.reshape(3, 3))
        transs.append(read(sub, "trans.npy").reshape(3))
        scales.append(float(read(sub, "scale.npy").reshape(-1)[0]))
    first = frames[0][1]

    def identity_code(name: str) -> np.ndarray:
        for place in (first, directory):
            if (place / name).is_file():
                return np.asarray(np.load(place / name), np.float32).reshape(-1)
        raise ValueError(f"{directory}: no {name} (per frame or at the top level)")

    return Tracking(sequence, np.array([f for f, _ in frames], np.int64), np.stack(z_exp).astype(np.float32),
                    identity_code("z_geo.npy"), identity_code("z_app.npy"),
                    np.stack(rots).astype(np.float32), np.stack(transs).astype(np.float32),
                    float(np.median(scales)), np.full(len(frames), np.nan, np.float32),
                    {"source": f"MonoNPHM tracking {directory}"})


# ------------------------------------------------------------------------------------ grading
def evaluate_against_groundtruth(prior: MonoNPHM, tracking: Tracking, groundtruth: dict,
                                 n_points: int = 4000, frames: Iterable[int] | None = None,
                                 seed: int = 0) -> dict:
    """Accuracy of a synthetic-capture track (grading only; the fit never sees this data).

    ``groundtruth``: the capture's ``groundtruth/groundtruth.json`` dict. Per evaluated frame:

    * Chamfer (mm, world): the symmetric mean point-to-surface distance — points sampled on the
      tracked prior's posed zero level set, measured by the true posed SDF, and points sampled on
      the true posed surface, measured by the tracked prior's SDF; each distance is |SDF| in
      canonical units times the respective scale. Using the SDFs instead of nearest sampled
      points avoids the sampling floor of point-to-point Chamfer (mean spacing of a few
      thousand points on a head is several mm). Both samples are limited to the same posed box
      (:data:`npga_taichi.data.synthetic.BOUNDS_MIN`/``MAX`` with the neck cut at y = −0.9).
    * rotation error (degrees) and translation error (mm) of the tracked pose.
    """
    from npga_taichi.data.synthetic import BOUNDS_MAX, BOUNDS_MIN, SyntheticHead
    from npga_taichi.prior.surface import sample_level_set

    seq = groundtruth["sequences"].get(tracking.sequence)
    if seq is None:
        raise ValueError(f"ground truth has no sequence {tracking.sequence}")
    head = SyntheticHead(np.asarray(groundtruth["identity"], np.float32))
    gt_scale = float(groundtruth["scale"])
    gt_index = {int(t): i for i, t in enumerate(seq["timesteps"])}
    lo = torch.tensor(BOUNDS_MIN, dtype=torch.float32)
    hi = torch.tensor(BOUNDS_MAX, dtype=torch.float32)
    lo[1] = -0.9
    z_geo = torch.as_tensor(tracking.z_geo)
    gen = torch.Generator().manual_seed(seed)
    rows = list(range(len(tracking.timesteps))) if frames is None else list(frames)
    chamfer, rot_err, trans_err = [], [], []
    for row in rows:
        t = int(tracking.timesteps[row])
        if t not in gt_index:
            raise ValueError(f"ground truth of {tracking.sequence} lacks frame {t}")
        g = gt_index[t]
        expr = np.asarray(seq["expression"][g], np.float32)
        r_gt = torch.tensor(seq["rotation"][g], dtype=torch.float32)
        t_gt = torch.tensor(seq["translation"][g], dtype=torch.float32)
        rot = torch.as_tensor(tracking.rot[row])
        trans = torch.as_tensor(tracking.trans[row])
        z_exp = torch.as_tensor(tracking.z_exp[row])
        gt_pts = head.sample_surface(n_points, expr=expr, seed=seed + row, device="cpu")
        posed = sample_level_set(lambda x: prior.posed_sdf(x, z_exp, z_geo), n_points, lo, hi, gen,
                                 tolerance=2e-4)
        with torch.no_grad():
            # tracked surface -> world -> true head frame, measured by the true SDF
            in_gt = world_to_posed(posed_to_world(posed, rot, trans, tracking.scale), r_gt, t_gt, gt_scale)
            d_tracked = head.posed_sdf(in_gt.contiguous(), expr).abs() * gt_scale
            # true surface -> world -> tracked head frame, measured by the tracked prior's SDF
            in_tr = world_to_posed(posed_to_world(gt_pts, r_gt, t_gt, gt_scale), rot, trans, tracking.scale)
            d_true = prior.posed_sdf(in_tr, z_exp, z_geo).abs() * tracking.scale
        chamfer.append(500.0 * (float(d_tracked.mean()) + float(d_true.mean())))  # mm
        cos = (float(torch.trace(r_gt.T @ rot)) - 1.0) / 2.0
        rot_err.append(float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))))
        trans_err.append(float((trans - t_gt).norm()) * 1000.0)
    return {"sequence": tracking.sequence, "frames": len(rows),
            "chamfer_mm_mean": float(np.mean(chamfer)), "chamfer_mm_max": float(np.max(chamfer)),
            "rotation_deg_mean": float(np.mean(rot_err)), "rotation_deg_max": float(np.max(rot_err)),
            "translation_mm_mean": float(np.mean(trans_err)),
            "translation_mm_max": float(np.max(trans_err)),
            "scale": tracking.scale, "scale_gt": gt_scale}
