"""Write a synthetic multi-view capture of one procedural identity in the NeRSemble v1 layout.

Layout written (``pid`` = participant id, 3 digits)::

    OUT/<pid>/calibration/camera_params.json    {"world_2_cam": {serial: 4x4}, "intrinsics": 3x3,
                                                 "resolution": [2200, 3208]}  (full resolution)
    OUT/<pid>/sequences/<SEQ>/timesteps/frame_<t:05d>/images-<k>x/cam_<serial>.png
                                                .../alpha_map/cam_<serial>.png   (same size)
                                                .../labels/cam_<serial>.png      (uint8 ids)
                                                .../colmap/pointclouds/pointcloud_16.pcd
    OUT/<pid>/groundtruth/groundtruth.json      identity, per-frame expression and rigid pose
    OUT/<pid>/synthetic_capture.json            the CaptureConfig used (for resuming)

The rig imitates NeRSemble: 16 cameras in two rows of eight (serials and row order as in
DESIGN.md; "left to right" is as seen from behind the cameras, i.e. from the subject's right
(-x) to the subject's left (+x)), about 1 m from the head, all looking at it, portrait
2200 x 3208 at full resolution with one shared intrinsic matrix. Images are rendered directly at
``1 / downscale`` of that (intrinsics scaled per axis to the integer image size).

World frame: metres, +y up, the head faces +z. Frame pose: ``x_world = s R x_posed + t`` with
s = 0.25 m per canonical unit and a small smooth rigid motion (a few degrees, a few cm).

Point clouds: the world positions where the cameras' rays hit the head (visible surface, like
COLMAP's), subsampled and perturbed by Gaussian noise (default 1 mm), with world normals.

Label maps (``labels/cam_<serial>.png``, single-channel uint8, same size as the images): what
each pixel shows, the id into :data:`LABEL_NAMES` (0 background, 1 skin, 2 hair, 3 brows,
4 eyelids, 5 lips, 6 eyes, 7 teeth, 8 mouth_interior) of the part most of the pixel's
antialiasing samples hit, written by the same render as the image (``LABEL_NAMES`` is also stored
in ``groundtruth/groundtruth.json``). Like ``groundtruth/`` they are for grading (region-aware
evaluation, :mod:`npga_taichi.fidelity`), not for fitting.

Nothing a method may use contains the ground truth; ``groundtruth/`` exists only for grading.
"""
from __future__ import annotations

import json
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from npga_taichi.cameras import Camera, look_at
from npga_taichi.checkpoint import atomic_path, write_text_atomic
from npga_taichi.data import synthetic as syn
from npga_taichi.data.head_render import Lighting, render_head
from npga_taichi.data.nersemble import FULL_RESOLUTION, LOWER_ROW, UPPER_ROW
from npga_taichi.data.pcd import write_pcd

# Expression groups (indices into EXPRESSION_NAMES) used to build the sequences.
_E = {name: i for i, name in enumerate(syn.EXPRESSION_NAMES)}

# name -> (groups of expression parameters that move together, description). Training sequences
# only ever combine parameters within these sets; FREE mixes across them (held-out combinations).
SEQUENCE_CATALOGUE: dict[str, tuple[tuple[str, ...], str]] = {
    "EXP-1": (("jaw_open",), "jaw open / close"),
    "EXP-2": (("smile_left", "smile_right", "mouth_stretch"), "smiles and mouth stretch"),
    "EXP-3": (("brow_raise_left", "brow_raise_right", "frown_left", "frown_right"), "brows"),
    "EXP-4": (("blink_left", "blink_right"), "blinks"),
    "EXP-5": (("pucker", "cheek_puff"), "pucker and cheek puff"),
    "EXP-6": (("jaw_open", "mouth_stretch"), "wide mouth"),
    "EMO-1": (("smile_left", "smile_right", "cheek_puff"), "happy"),
    "EMO-2": (("brow_raise_left", "brow_raise_right", "jaw_open"), "surprise"),
    "EMO-3": (("frown_left", "frown_right", "pucker"), "anger"),
    "EMO-4": (("blink_left", "blink_right", "frown_left", "frown_right"), "squint"),
    "FREE": (tuple(syn.EXPRESSION_NAMES), "free: combinations across groups, never in training"),
}
DEFAULT_SEQUENCES = ("EXP-1", "EXP-2", "EXP-3", "EXP-4", "EXP-5", "EXP-6", "EMO-1", "EMO-2", "EMO-3", "FREE")
TINY_SEQUENCES = ("EXP-1", "EMO-1", "FREE")
POINTCLOUD_NAME = "pointcloud_16.pcd"
LABEL_FOLDER = "labels"
LABEL_NAMES = syn.LABEL_NAMES


@dataclass
class CaptureConfig:
    """Everything that determines a synthetic capture (saved as synthetic_capture.json)."""

    identity_seed: int = 0                 # seed of the random identity (SyntheticHead.from_seed)
    participant: int = 0                   # participant id, the 3-digit folder name
    downscale: int = 8                     # images are written at full resolution / downscale
    frames_per_sequence: int = 20          # timesteps per sequence
    sequences: tuple = DEFAULT_SEQUENCES   # sequence names (keys of SEQUENCE_CATALOGUE)
    samples_per_side: int = 2              # n -> n*n antialiasing samples per pixel
    camera_distance: float = 1.0           # metres from the head centre
    focal_length: float = 6600.0           # pixels at full resolution (fx = fy)
    points_per_frame: int = 10000          # point cloud size per frame
    point_noise: float = 0.001             # std of the point cloud noise, metres
    rotation_degrees: float = 4.0          # amplitude of the rigid head rotation
    translation_metres: float = 0.015      # amplitude of the rigid head translation
    lighting: dict = field(default_factory=lambda: asdict(Lighting()))  # fixed studio lighting

    @classmethod
    def preset(cls, name: str, **overrides) -> "CaptureConfig":
        """``default``: 10 sequences x 20 frames at 8x; ``tiny``: 3 sequences x 4 frames at 16x."""
        if name == "default":
            base = cls()
        elif name == "tiny":
            base = cls(downscale=16, frames_per_sequence=4, sequences=TINY_SEQUENCES, points_per_frame=4000)
        else:
            raise ValueError(f"unknown preset {name!r} (use 'default' or 'tiny')")
        for k, v in overrides.items():
            if v is not None:
                setattr(base, k, v)
        base.sequences = tuple(base.sequences)
        base.validate()
        return base

    def validate(self) -> None:
        if not 0 <= self.participant <= 999:
            raise ValueError(f"participant must be in 0..999, got {self.participant}")
        if self.downscale < 1:
            raise ValueError(f"downscale must be >= 1, got {self.downscale}")
        if self.frames_per_sequence < 1:
            raise ValueError(f"frames per sequence must be >= 1, got {self.frames_per_sequence}")
        unknown = [s for s in self.sequences if s not in SEQUENCE_CATALOGUE]
        if unknown or not self.sequences:
            raise ValueError(f"unknown sequence(s) {unknown}; choose from {sorted(SEQUENCE_CATALOGUE)}")


# --------------------------------------------------------------------------- rig
def nersemble_rig(distance: float = 1.0, focal_length: float = 6600.0,
                  target=(0.0, 0.0, -0.01)) -> dict[str, Camera]:
    """The 16 full-resolution cameras, ordered upper row then lower row, left to right.

    Rows span azimuths -70..70 degrees in 20-degree steps; the upper row looks down from 18
    degrees of elevation, the lower row up from -10.
    """
    width, height = FULL_RESOLUTION
    K = np.array([[focal_length, 0.0, width / 2.0], [0.0, focal_length, height / 2.0], [0.0, 0.0, 1.0]])
    target = np.asarray(target, np.float64)
    cams = {}
    for row, elevation in ((UPPER_ROW, 18.0), (LOWER_ROW, -10.0)):
        for serial, azimuth in zip(row, np.linspace(-70.0, 70.0, len(row))):
            a, el = np.radians(azimuth), np.radians(elevation)
            eye = target + distance * np.array([np.sin(a) * np.cos(el), np.sin(el), np.cos(a) * np.cos(el)])
            cams[serial] = Camera(serial, look_at(eye, target), K, width, height)
    return cams


def image_size(downscale: int) -> tuple[int, int]:
    """(width, height) of images written at `downscale` (rounded down, as NeRSemble's)."""
    return FULL_RESOLUTION[0] // downscale, FULL_RESOLUTION[1] // downscale


# --------------------------------------------------------------------------- trajectories
def expression_trajectory(name: str, frames: int, rng: np.random.Generator) -> np.ndarray:
    """(frames, E) smooth expression parameters for sequence `name`, starting near neutral.

    Training sequences move one catalogue group: each active parameter follows raised-cosine
    bumps (values in [0, amplitude]). FREE activates several parameters from *different* groups at
    once (e.g. one-sided smile with the opposite frown while blinking one eye and opening the jaw),
    which no training sequence shows.
    """
    groups, _ = SEQUENCE_CATALOGUE[name]
    u = np.linspace(0.0, 1.0, frames)
    traj = np.zeros((frames, syn.NUM_EXPRESSION_PARAMS), np.float32)
    if name == "FREE":
        combos = [("smile_left", "frown_right", "blink_left"), ("jaw_open", "blink_right", "brow_raise_left"),
                  ("pucker", "brow_raise_right", "blink_left"), ("cheek_puff", "frown_left", "smile_right"),
                  ("mouth_stretch", "blink_left", "blink_right", "brow_raise_left")]
        chosen = [combos[i] for i in rng.permutation(len(combos))[:3]]
        for slot, combo in enumerate(chosen):
            centre = (slot + 0.5) / len(chosen)
            bump = np.clip(1.0 - np.abs(u - centre) / (0.6 / len(chosen) + 1e-6), 0.0, 1.0)
            bump = 0.5 - 0.5 * np.cos(np.pi * bump)  # C1 raised cosine
            for pname in combo:
                traj[:, _E[pname]] += rng.uniform(0.6, 1.0) * bump
        # a low-amplitude background drift of everything else
        for k in range(syn.NUM_EXPRESSION_PARAMS):
            traj[:, k] += 0.1 * (0.5 - 0.5 * np.cos(2 * np.pi * (u * rng.uniform(0.5, 1.5) + rng.uniform())))
        return np.clip(traj, 0.0, 1.0)
    for pname in groups:
        cycles = rng.choice([1.0, 1.5, 2.0])
        amp = rng.uniform(0.6, 1.0)
        phase = rng.uniform(0.0, 0.3)
        traj[:, _E[pname]] = amp * (0.5 - 0.5 * np.cos(2 * np.pi * (cycles * np.clip(u - phase, 0, None))))
    return traj


def rigid_trajectory(frames: int, rng: np.random.Generator, degrees: float, metres: float):
    """Smooth small head motion: ((frames, 3, 3) rotations, (frames, 3) translations in metres)."""
    u = np.linspace(0.0, 1.0, frames)[:, None]
    freq = rng.uniform(0.4, 1.2, size=(1, 3))
    phase = rng.uniform(0, 2 * np.pi, size=(1, 3))
    angles = degrees * np.sin(2 * np.pi * freq * u + phase) * rng.uniform(0.5, 1.0, size=(1, 3))
    freq_t = rng.uniform(0.4, 1.2, size=(1, 3))
    phase_t = rng.uniform(0, 2 * np.pi, size=(1, 3))
    trans = metres * np.sin(2 * np.pi * freq_t * u + phase_t) * rng.uniform(0.5, 1.0, size=(1, 3))
    rots = Rotation.from_euler("yxz", angles, degrees=True).as_matrix()
    return rots.astype(np.float32), trans.astype(np.float32)


# --------------------------------------------------------------------------- writing
def _atomic_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, array, extension=".png", compress_level=1)


def _atomic_json(path: Path, obj) -> None:
    write_text_atomic(json.dumps(obj, indent=1), path)


def _in_all_images(points: np.ndarray, viewmats: np.ndarray, Ks: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N,) bool: the world point projects inside every camera's image (in front of it)."""
    keep = np.ones(len(points), bool)
    for vm, K in zip(viewmats, Ks):
        pc = points @ vm[:3, :3].T + vm[:3, 3]
        z = np.maximum(pc[:, 2], 1e-9)
        u = K[0, 0] * pc[:, 0] / z + K[0, 2]
        v = K[1, 1] * pc[:, 1] / z + K[1, 2]
        keep &= (pc[:, 2] > 0) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    return keep


def _write_frame(fdir: Path, image_folder: str, serials: list, rgba8: np.ndarray, hits: np.ndarray,
                 labels: np.ndarray, rng: np.random.Generator, n_points: int, noise: float,
                 viewmats: np.ndarray, Ks: np.ndarray) -> None:
    """Write one frame's images, alpha maps, label maps and (last, marking the frame done) point cloud.

    rgba8 (C, H, W, 4) uint8; hits (C, H, W, 6) or its rows flattened to (N, 6), NaN rows = miss
    (only finite rows are used, in order); labels (C, H, W) ids; rng draws the subset and noise.

    The cloud keeps visible-surface hits that every camera sees inside its image (the common
    capture volume: the neck leaves the lower cameras' frames), subsampled, plus noise."""
    for folder in (image_folder, "alpha_map", LABEL_FOLDER, "colmap/pointclouds"):
        (fdir / folder).mkdir(parents=True, exist_ok=True)
    for c, serial in enumerate(serials):
        _atomic_png(fdir / image_folder / f"cam_{serial}.png", rgba8[c, :, :, :3])
        _atomic_png(fdir / "alpha_map" / f"cam_{serial}.png", rgba8[c, :, :, 3])
        _atomic_png(fdir / LABEL_FOLDER / f"cam_{serial}.png", labels[c].astype(np.uint8))
    pts = hits.reshape(-1, 6)
    pts = pts[np.isfinite(pts[:, 0])]
    # A uniform random subset of the points inside every image: test the hits in a random order,
    # in growing chunks, until n_points pass (testing all ~500k hits in 16 cameras would cost
    # more CPU than the PNGs).
    order = rng.permutation(len(pts))
    chosen, have, start, chunk = [], 0, 0, n_points + n_points // 4 + 16
    while start < len(order) and have < n_points:
        cand = order[start:start + chunk]
        cand = cand[_in_all_images(pts[cand, :3], viewmats, Ks, rgba8.shape[2], rgba8.shape[1])]
        chosen.append(cand)
        have += len(cand)
        start += chunk
        chunk *= 2
    pts = pts[np.concatenate(chosen)[:n_points]] if chosen else pts[:0]
    xyz = pts[:, :3] + rng.normal(0.0, noise, size=(len(pts), 3)).astype(np.float32)
    write_pcd(fdir / "colmap" / "pointclouds" / POINTCLOUD_NAME,
              {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2],
               "normal_x": pts[:, 3], "normal_y": pts[:, 4], "normal_z": pts[:, 5]})


def frame_dir(participant_dir: Path, sequence: str, timestep: int) -> Path:
    return participant_dir / "sequences" / sequence / "timesteps" / f"frame_{timestep:05d}"


def plan_capture(config: CaptureConfig) -> dict:
    """Ground truth of the capture: identity, and per sequence the per-frame expression and pose."""
    head = syn.SyntheticHead.from_seed(config.identity_seed)
    plan = {
        "identity_seed": config.identity_seed,
        "identity": head.identity.tolist(),
        "identity_names": list(syn.IDENTITY_NAMES),
        "expression_names": list(syn.EXPRESSION_NAMES),
        "label_names": list(syn.LABEL_NAMES),
        "scale": syn.UNIT_METRES,
        "convention": "x_world = scale * R @ x_posed + t (metres); x_canonical = backward(x_posed, expression)",
        "sequences": {},
    }
    for index, name in enumerate(config.sequences):
        rng = np.random.default_rng([config.identity_seed, index, 7])
        expr = expression_trajectory(name, config.frames_per_sequence, rng)
        rots, trans = rigid_trajectory(config.frames_per_sequence, rng, config.rotation_degrees,
                                       config.translation_metres)
        plan["sequences"][name] = {
            "timesteps": list(range(config.frames_per_sequence)),
            "expression": expr.tolist(),
            "rotation": rots.tolist(),
            "translation": trans.tolist(),
        }
    return plan


def _prepare_output(pdir: Path, config: CaptureConfig, force: bool) -> None:
    cfg_path = pdir / "synthetic_capture.json"
    if pdir.exists() and any(pdir.iterdir()):
        if force:
            shutil.rmtree(pdir)
        elif not cfg_path.exists():
            raise FileExistsError(f"{pdir} exists and is not a synthetic capture; use --force to overwrite")
        else:
            old = json.loads(cfg_path.read_text())
            if old.get("complete"):
                raise FileExistsError(f"{pdir} already holds a complete capture; use --force to overwrite")
            old.pop("complete", None)
            if old != json.loads(json.dumps(asdict(config))):
                raise FileExistsError(f"{pdir} holds a partial capture with a different configuration; "
                                      "use --force to overwrite")
    pdir.mkdir(parents=True, exist_ok=True)
    _atomic_json(cfg_path, {**asdict(config), "complete": False})


def write_capture(out_root, config: CaptureConfig, force: bool = False, progress: bool = True) -> dict:
    """Render and write the capture; returns a summary dict. Resumes a partial capture.

    A frame counts as written once its point cloud exists (written last), so an interrupted
    run continues where it stopped when called again with the same configuration.
    """
    config.validate()
    out_root = Path(out_root)
    pdir = out_root / f"{config.participant:03d}"
    _prepare_output(pdir, config, force)
    head = syn.SyntheticHead.from_seed(config.identity_seed)
    plan = plan_capture(config)
    full_cams = nersemble_rig(config.camera_distance, config.focal_length)
    width, height = image_size(config.downscale)
    cams = {s: c.resized(width, height) for s, c in full_cams.items()}
    serials = list(cams)
    calib = {
        "world_2_cam": {s: c.viewmat.double().numpy().tolist() for s, c in full_cams.items()},
        "intrinsics": next(iter(full_cams.values())).K.double().numpy().tolist(),
        "resolution": list(FULL_RESOLUTION),
    }
    (pdir / "calibration").mkdir(exist_ok=True)
    _atomic_json(pdir / "calibration" / "camera_params.json", calib)
    (pdir / "groundtruth").mkdir(exist_ok=True)
    _atomic_json(pdir / "groundtruth" / "groundtruth.json", plan)
    viewmats = torch.stack([cams[s].viewmat for s in serials])
    Ks = torch.stack([cams[s].K for s in serials])
    lighting = Lighting(**config.lighting)
    image_folder = "images" if config.downscale == 1 else f"images-{config.downscale}x"
    jobs = [(name, t) for name in config.sequences for t in range(config.frames_per_sequence)]
    todo = [(name, t) for name, t in jobs
            if not (frame_dir(pdir, name, t) / "colmap" / "pointclouds" / POINTCLOUD_NAME).exists()]
    written = 0
    # A writer *process* encodes frame k's PNGs and point cloud while frame k + 1 renders: the
    # Taichi kernel holds the GIL for its whole run, so a writer thread only ran between
    # kernels (the writes were serial with the render). Spawned, not forked: the parent runs
    # Taichi's and torch's thread pools. At most one frame is in flight.
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = None
        for name, t in tqdm(todo, desc=f"synth {pdir.name}", unit="frame", disable=not progress):
            seq = plan["sequences"][name]
            rgba, hits, labels = render_head(head, np.asarray(seq["expression"][t], np.float32), viewmats, Ks,
                                             width, height, rotation=seq["rotation"][t],
                                             translation=seq["translation"][t], scale=syn.UNIT_METRES,
                                             samples_per_side=config.samples_per_side, lighting=lighting, seed=t)
            rgba8 = (rgba.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
            labels8 = labels.to(torch.uint8).cpu().numpy()  # ids < NUM_LABELS: exact
            hits = hits.cpu().numpy().reshape(-1, 6)
            hits = hits[np.isfinite(hits[:, 0])]  # what _write_frame keeps anyway: a third to send
            rng = np.random.default_rng([config.identity_seed, config.sequences.index(name), t, 11])
            if pending is not None:
                pending.result()  # surface write errors
            pending = pool.submit(_write_frame, frame_dir(pdir, name, t), image_folder, serials, rgba8, hits,
                                  labels8, rng, config.points_per_frame, config.point_noise,
                                  viewmats.numpy(), Ks.numpy())
            written += 1
        if pending is not None:
            pending.result()
    _atomic_json(pdir / "synthetic_capture.json", {**asdict(config), "complete": True})
    return {
        "participant_dir": str(pdir),
        "participant": config.participant,
        "identity_seed": config.identity_seed,
        "sequences": list(config.sequences),
        "frames": len(jobs),
        "frames_written": written,
        "cameras": len(serials),
        "image_size": [width, height],
        "image_folder": image_folder,
    }
