"""A synthetic *monocular* video of one procedural identity: one hand-held-like camera, one sequence.

``npga synth OUT --monocular`` writes it; the monocular benchmark (``benchmarks/monocular.py``)
and the photometric tracker's tests read it back with :func:`load_monocular`. The expression and
head-pose trajectories are those of the multi-view capture with the same :class:`CaptureConfig`
(:func:`npga_taichi.data.capture.plan_capture`), so the video of identity A's FREE shows exactly
the frames the capture's held-out cameras saw: those images are the ground truth of driving A's
avatar from the video.

Layout (``OUT`` is a folder of its own)::

    OUT/video.mp4                  H.264 (imageio-ffmpeg), what a phone would record
    OUT/frames/frame_<i:05d>.png   the same frames, lossless (8-bit RGB over the studio backdrop)
    OUT/mattes/frame_<i:05d>.png   optional: alpha matte, 8-bit single channel
    OUT/labels/frame_<i:05d>.png   label map: uint8 ids of the generator's parts
                                   (:data:`npga_taichi.data.synthetic.LABEL_NAMES`, as the multi-view
                                   capture's ``labels/cam_<serial>.png``; background 0)
    OUT/landmarks.json             true 2D landmarks per frame (see below)
    OUT/cameras.json               per-frame camera: K (3, 3) and viewmat (4, 4) world->camera, OpenCV
    OUT/groundtruth.json           for grading only: identity, expressions, head poses (see below)
    OUT/monocular.json             the MonocularConfig used (+ "complete")

Camera path (:func:`handheld_path`): a camera about ``distance`` m from the head, at a random
azimuth / elevation off the capture rig's positions, drifting smoothly (a few degrees and
centimetres over the sequence) with a small, faster shake and roll, always aimed near the head;
``static=True`` holds frame 0's camera. Intrinsics: square pixels, principal point at the image
centre, focal length from ``fov_degrees`` (vertical), or the capture rig's focal length when
``fov_degrees`` is None.

World frame and poses: the capture's (metres, +y up, the head faces +z); a frame's head pose is
``x_world = s R x_posed + t`` with the capture's R, t and s = ``synthetic.UNIT_METRES``.
A tracker that assumes a *static* camera (frame 0's, ``cameras.json["static_camera"]``) can only
see the head's pose relative to the camera; the pose that a static camera V0 would see as camera
V_t sees the true pose P_t is the *apparent* pose ``P'_t = V0⁻¹ V_t P_t``
(:func:`apparent_pose`; :func:`world_pose` maps back). ``groundtruth.json`` holds both.

Landmarks: the photometric tracker's set and definition, written once in
:mod:`npga_taichi.prior.photometric` (``LANDMARK_NAMES``; canonical points cast from the front onto
the identity's canonical surface, ``cast_landmarks``). A frame's landmark is that canonical point
carried by the expression to the posed head (:func:`posed_landmarks`: Newton's method on
``backward(x_posed, e) = x_canonical``), placed by the head pose and projected by the frame's
camera. ``landmarks.json`` (what ``npga track-video --landmarks`` reads)::

    {"names": [L], "landmarks": [T][L][2] pixels, null where hidden, "all": [T][L][2] pixels
     also where hidden, "visible": [T][L] bool, "canonical": [L][3]}

Pixels: x = column, y = row, continuous (pixel (i, j) spans [j, j+1) x [i, i+1), centres at
+0.5, as :meth:`Camera.project`). Hidden: outside the image, behind the head (the posed surface
lies between it and the camera, :func:`occluded`), or covered (a closed lid over it: no posed
point maps onto it).
``groundtruth.json`` follows the capture's ``groundtruth/groundtruth.json`` schema (identity,
``sequences[SEQ]`` with timesteps, expression, rotation, translation; scale) and adds
``apparent_rotation`` / ``apparent_translation`` and ``landmarks_world`` [T][L][3].
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from npga_taichi.cameras import Camera, look_at
from npga_taichi.checkpoint import write_text_atomic
from npga_taichi.data import synthetic as syn
from npga_taichi.data.capture import LABEL_FOLDER, CaptureConfig, _atomic_png, image_size, plan_capture
from npga_taichi.data.head_render import Lighting, render_head

OUTPUT_NAMES = ("video.mp4", "video", "frames", "mattes", "labels", "landmarks.json", "cameras.json", "groundtruth.json",
                "monocular.json")

# A landmark is hidden when the head is more than this far inside (metres) anywhere on the ray
# from it (from 4 mm on) to the camera, or when it has no posed position (see posed_landmarks).
OCCLUSION_DEPTH_M = 0.0005
# Newton's solution counts as the posed landmark when backward(x) is within this of it (units).
POSED_TOLERANCE = 0.002


@dataclass
class MonocularConfig:
    """Everything that determines a synthetic monocular video (saved as monocular.json)."""

    capture: CaptureConfig = field(default_factory=CaptureConfig)  # identity, frames, trajectories
    sequence: str = "FREE"           # which of the capture plan's sequences the video shows
    camera_seed: int = 0             # seed of the hand-held camera path
    distance: float = 1.0            # metres from the head (mean; the path drifts +-4 %)
    azimuth_range: float = 35.0      # the path's mean azimuth is drawn in +-this (degrees)
    elevation_range: tuple = (-8.0, 15.0)  # ... and its mean elevation in this range
    drift_degrees: float = 6.0       # amplitude of the slow drift around the mean (degrees)
    shake_degrees: float = 0.6       # amplitude of the fast hand shake (degrees)
    roll_degrees: float = 3.0        # amplitude of the camera roll
    fov_degrees: float | None = None  # vertical field of view; None: the capture rig's focal length
    static: bool = False             # hold frame 0's camera (a tripod) instead of the hand-held path
    mattes: bool = True              # write mattes/
    fps: float = 25.0                # of video.mp4

    def validate(self) -> None:
        self.capture.validate()
        if self.sequence not in self.capture.sequences:
            raise ValueError(f"sequence {self.sequence!r} is not among the capture plan's sequences "
                             f"{list(self.capture.sequences)}")
        if not self.distance > 0.2:
            raise ValueError(f"camera distance must be > 0.2 m, got {self.distance}")
        if self.fov_degrees is not None and not 1.0 <= self.fov_degrees <= 150.0:
            raise ValueError(f"field of view must be in [1, 150] degrees, got {self.fov_degrees}")
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> "MonocularConfig":
        data = dict(data)
        data.pop("complete", None)
        capture = dict(data.pop("capture"))
        capture.pop("complete", None)
        capture["sequences"] = tuple(capture["sequences"])
        data["elevation_range"] = tuple(data.get("elevation_range", (-8.0, 15.0)))
        return cls(capture=CaptureConfig(**capture), **data)


# --------------------------------------------------------------------------- camera path
def intrinsics(config: MonocularConfig) -> tuple[np.ndarray, int, int]:
    """(K (3, 3) float64, width, height) of the video at the capture's image size."""
    width, height = image_size(config.capture.downscale)
    if config.fov_degrees is None:
        f = config.capture.focal_length / config.capture.downscale
    else:
        f = 0.5 * height / np.tan(np.radians(config.fov_degrees) / 2.0)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]]), width, height


def handheld_path(config: MonocularConfig, frames: int) -> np.ndarray:
    """(frames, 4, 4) float64 world->camera viewmats of the hand-held path (module docstring).

    Smooth in time: the drift is a sum of sinusoids of 0.3-1 cycles per sequence, the shake of
    2-4 cycles; frame u in [0, 1] of the sequence. Deterministic in ``config.camera_seed``."""
    rng = np.random.default_rng([int(config.camera_seed), 1511])
    u = np.linspace(0.0, 1.0, frames)[:, None]

    def wave(amplitude, low, high, n=3):  # (frames, n) smooth random signals
        freq = rng.uniform(low, high, size=(1, n))
        phase = rng.uniform(0, 2 * np.pi, size=(1, n))
        return amplitude * np.sin(2 * np.pi * freq * u + phase) * rng.uniform(0.5, 1.0, size=(1, n))

    azimuth0 = rng.uniform(-config.azimuth_range, config.azimuth_range)
    elevation0 = rng.uniform(*config.elevation_range)
    drift = wave(config.drift_degrees, 0.3, 1.0)      # azimuth, elevation, roll drift
    shake = wave(config.shake_degrees, 2.0, 4.0)      # azimuth, elevation, roll shake
    along = wave(0.04 * config.distance, 0.3, 1.0, 1)  # distance drift
    aim = wave(0.008, 0.3, 1.5)                        # where it is aimed, metres
    if config.static:
        drift, shake, along, aim = (np.repeat(x[:1], frames, 0) for x in (drift, shake, along, aim))
    target = np.array([0.0, 0.0, -0.01]) + aim
    az = np.radians(azimuth0 + drift[:, 0] + shake[:, 0])
    el = np.radians(elevation0 + 0.5 * drift[:, 1] + shake[:, 1])
    roll = np.radians(config.roll_degrees / max(config.drift_degrees, 1e-9) * drift[:, 2] + shake[:, 2])
    dist = config.distance + along[:, 0]
    views = np.zeros((frames, 4, 4))
    for k in range(frames):
        eye = target[k] + dist[k] * np.array([np.sin(az[k]) * np.cos(el[k]), np.sin(el[k]),
                                              np.cos(az[k]) * np.cos(el[k])])
        view = look_at(eye, target[k])
        c, s = np.cos(roll[k]), np.sin(roll[k])
        spin = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])  # about the optical axis
        views[k] = spin @ view
    return views


# --------------------------------------------------------------------------- poses
def _rigid_inverse(view: np.ndarray) -> np.ndarray:
    inv = np.eye(4)
    inv[:3, :3] = view[:3, :3].T
    inv[:3, 3] = -view[:3, :3].T @ view[:3, 3]
    return inv


def apparent_pose(rot, trans, view_t, view_0) -> tuple[np.ndarray, np.ndarray]:
    """The head pose a static camera ``view_0`` sees as ``view_t`` sees the pose (rot, trans):
    ``P' = V0⁻¹ V_t P`` (scale unchanged). rot (..., 3, 3), trans (..., 3), views (..., 4, 4)."""
    m = _rigid_inverse_batched(np.asarray(view_0, np.float64)) @ np.asarray(view_t, np.float64)
    rot = np.asarray(rot, np.float64)
    trans = np.asarray(trans, np.float64)
    return m[..., :3, :3] @ rot, np.einsum("...ij,...j->...i", m[..., :3, :3], trans) + m[..., :3, 3]


def world_pose(rot, trans, view_t, view_0) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`apparent_pose`: ``P = V_t⁻¹ V0 P'``."""
    return apparent_pose(rot, trans, view_0, view_t)


def _rigid_inverse_batched(view: np.ndarray) -> np.ndarray:
    if view.ndim == 2:
        return _rigid_inverse(view)
    return np.stack([_rigid_inverse(v) for v in view.reshape(-1, 4, 4)]).reshape(view.shape)


# --------------------------------------------------------------------------- landmarks
def canonical_landmarks(head: "syn.SyntheticHead") -> np.ndarray:
    """(L, 3) float64 the identity's canonical landmarks, by the photometric tracker's definition
    (:func:`npga_taichi.prior.photometric.cast_landmarks` on the head's canonical SDF)."""
    from npga_taichi.prior.photometric import cast_landmarks

    return cast_landmarks(lambda x: head.sdf(x.contiguous())).double().numpy()


def posed_landmarks(head: "syn.SyntheticHead", canonical: np.ndarray, expr, iters: int = 12,
                    step: float = 1e-4, device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """Carry canonical points (L, 3) to the posed head of expression ``expr`` (E,).

    Solves ``backward(x, expr) = canonical`` by Newton's method with a central-difference
    Jacobian, from two starts (the canonical point and its first-order forward image
    ``2 c - backward(c)``), keeping the better. Where a closed lid covers a canonical point no
    posed point maps onto it: the residual stays large there (> :data:`POSED_TOLERANCE`) and
    the landmark is reported hidden. Returns (posed (L, 3) float64, residual (L,) canonical units)."""
    target = np.asarray(canonical, np.float64)
    offsets = np.concatenate([np.zeros((1, 3)), step * np.eye(3), -step * np.eye(3)])  # (7, 3)

    def backward(points):
        pts = torch.as_tensor(points.reshape(-1, 3), dtype=torch.float32, device=device)
        return head.backward(pts, expr).double().cpu().numpy().reshape(points.shape)

    best_x, best_r = None, None
    for x in (target.copy(), 2.0 * target - backward(target)):
        for _ in range(iters):
            values = backward(x[:, None, :] + offsets[None])  # (L, 7, 3)
            residual = values[:, 0] - target
            jac = (values[:, 1:4] - values[:, 4:7]).transpose(0, 2, 1) / (2 * step)  # d out / d in
            delta = np.linalg.solve(jac + 1e-9 * np.eye(3), residual[..., None])[..., 0]
            x = x - np.clip(delta, -0.05, 0.05)
        r = np.linalg.norm(backward(x) - target, axis=1)
        if best_x is None:
            best_x, best_r = x, r
        else:
            better = r < best_r
            best_x[better], best_r[better] = x[better], r[better]
    return best_x, best_r


def occluded(head: "syn.SyntheticHead", expr, world: np.ndarray, camera_centre: np.ndarray, rot: np.ndarray,
             trans: np.ndarray, scale: float, step_m: float = 0.001, reach_m: float = 0.45) -> np.ndarray:
    """(L,) bool: the posed head lies between world points (L, 3) and the camera (more than
    :data:`OCCLUSION_DEPTH_M` inside, sampled every ``step_m`` from 4 mm off the point up to
    ``reach_m`` towards the camera)."""
    world = np.asarray(world, np.float64)
    direction = camera_centre[None] - world
    length = np.linalg.norm(direction, axis=1, keepdims=True)
    direction = direction / length
    s = np.arange(0.004, reach_m, step_m)
    q = world[:, None, :] + direction[:, None, :] * np.minimum(s[None, :, None], length[:, :, None] - 0.01)
    posed = ((q.reshape(-1, 3) - trans) @ rot) / scale  # world -> head frame
    sdf = head.posed_sdf(torch.as_tensor(posed, dtype=torch.float32), expr).double().numpy()
    return (sdf.reshape(len(world), -1) * scale < -OCCLUSION_DEPTH_M).any(axis=1)


def landmark_names() -> tuple[str, ...]:
    """The landmark set (the photometric tracker's ``LANDMARK_NAMES``)."""
    from npga_taichi.prior.photometric import LANDMARK_NAMES

    return LANDMARK_NAMES


# --------------------------------------------------------------------------- writing
def _prepare(out: Path, force: bool) -> None:
    """Refuse to overwrite what a user made; with ``force`` remove only this writer's outputs."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir():
        ours = [n for n in OUTPUT_NAMES if (out / n).exists()]
        if ours and not force:
            raise FileExistsError(f"{out} already holds {', '.join(ours)}; use --force to overwrite")
        for name in ours:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def write_monocular(out, config: MonocularConfig, force: bool = False, progress: bool = True) -> dict:
    """Render and write the monocular video described by ``config`` into folder ``out``.

    Returns a JSON-able summary (paths, frame count, image size, seconds-free). Raises
    FileExistsError when ``out`` holds an earlier video (and not ``force``), ValueError for a bad
    configuration. Nothing outside this module's output names is touched in ``out``."""
    from tqdm import tqdm

    from npga_taichi.video import write_png_frames, write_video

    config.validate()
    out = Path(out)
    _prepare(out, force)
    write_text_atomic(json.dumps({**config.to_dict(), "complete": False}, indent=1), out / "monocular.json")
    head = syn.SyntheticHead.from_seed(config.capture.identity_seed)
    plan = plan_capture(config.capture)
    seq = plan["sequences"][config.sequence]
    frames = len(seq["timesteps"])
    K, width, height = intrinsics(config)
    views = handheld_path(config, frames)
    lighting = Lighting(**config.capture.lighting)
    canonical = canonical_landmarks(head)
    rot = np.asarray(seq["rotation"], np.float64)
    trans = np.asarray(seq["translation"], np.float64)
    scale = float(plan["scale"])
    images, mattes, labels, points, visible, world_lm, residuals = [], [], [], [], [], [], []
    for t in tqdm(range(frames), desc=f"synth monocular {config.sequence}", unit="frame", disable=not progress):
        expr = np.asarray(seq["expression"][t], np.float32)
        rgba, _, label = render_head(head, expr, torch.tensor(views[t:t + 1], dtype=torch.float32),
                                     torch.tensor(K[None], dtype=torch.float32), width, height,
                                     rotation=rot[t], translation=trans[t], scale=scale,
                                     samples_per_side=config.capture.samples_per_side, lighting=lighting, seed=t)
        rgba = rgba[0].clamp(0, 1).cpu().numpy()
        labels.append(label[0].to(torch.uint8).cpu().numpy())  # ids < NUM_LABELS: exact
        images.append(rgba[..., :3])
        mattes.append(rgba[..., 3])
        posed, res = posed_landmarks(head, canonical, expr)
        residuals.append(res)
        lw = scale * posed @ rot[t].T + trans[t]
        world_lm.append(lw)
        cam = Camera("video", views[t], K, width, height)
        uv, z = cam.project(torch.as_tensor(lw))
        uv, z = uv.numpy(), z.numpy()
        points.append(uv)
        hidden = occluded(head, expr, lw, cam.center().numpy(), rot[t], trans[t], scale)
        inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
        visible.append(inside & ~hidden & (res < POSED_TOLERANCE))
    written = {"frames": str(out / "frames")}
    write_png_frames(out / "frames", images)
    written["video"] = str(write_video(out / "video.mp4", images, config.fps))
    if config.mattes:
        (out / "mattes").mkdir(exist_ok=True)
        for t, matte in enumerate(mattes):
            _atomic_png(out / "mattes" / f"frame_{t:05d}.png", (matte * 255.0 + 0.5).astype(np.uint8))
        written["mattes"] = str(out / "mattes")
    (out / LABEL_FOLDER).mkdir(exist_ok=True)
    for t, label in enumerate(labels):
        _atomic_png(out / LABEL_FOLDER / f"frame_{t:05d}.png", label)
    written["labels"] = str(out / LABEL_FOLDER)
    landmarks = {
        "names": list(landmark_names()),
        "convention": "pixels, x = column, y = row, continuous (pixel (i, j) spans [j, j+1) x [i, i+1)); "
                      "landmarks: null where hidden (outside the image, behind the head or under a closed lid)",
        "landmarks": [[list(map(float, p)) if v else None for p, v in zip(pts, vis)]
                      for pts, vis in zip(points, visible)],
        "all": np.asarray(points).tolist(), "visible": np.asarray(visible).tolist(),
        "canonical": canonical.tolist(),
    }
    write_text_atomic(json.dumps(landmarks), out / "landmarks.json")
    cameras = {
        "convention": "viewmat world->camera OpenCV (x right, y down, z forward), K pixels at width x height",
        "width": width, "height": height, "K": [K.tolist()] * frames, "viewmats": views.tolist(),
        "static_camera": {"K": K.tolist(), "viewmat": views[0].tolist()},
        "static": config.static, "fps": config.fps,
    }
    write_text_atomic(json.dumps(cameras), out / "cameras.json")
    app_rot, app_trans = apparent_pose(rot, trans, views, views[0])
    gt = {key: plan[key] for key in ("identity_seed", "identity", "identity_names", "expression_names",
                                     "label_names", "scale", "convention")}
    gt["sequences"] = {config.sequence: {**seq, "apparent_rotation": app_rot.tolist(),
                                         "apparent_translation": app_trans.tolist()}}
    gt["apparent_convention"] = "the pose a static camera (frame 0's) sees: P' = V0^-1 V_t P"
    gt["landmarks_world"] = np.asarray(world_lm).tolist()
    gt["landmark_residual"] = np.asarray(residuals).tolist()  # canonical units, see posed_landmarks
    gt["capture_config"] = config.to_dict()["capture"]
    write_text_atomic(json.dumps(gt), out / "groundtruth.json")
    write_text_atomic(json.dumps({**config.to_dict(), "complete": True}, indent=1), out / "monocular.json")
    return {"out": str(out), "sequence": config.sequence, "identity_seed": config.capture.identity_seed,
            "frames": frames, "image_size": [width, height], "outputs": written,
            "landmarks": len(canonical), "landmarks_visible": int(np.sum(visible)), "static": config.static}


# --------------------------------------------------------------------------- reading
@dataclass
class MonocularVideo:
    """A monocular video folder read back (:func:`load_monocular`).

    frames (T, H, W, 3) float32 in [0, 1] (the lossless PNGs); mattes (T, H, W) float32 or None;
    labels (T, H, W) uint8 label ids or None (videos written before label maps existed);
    landmarks (T, L, 2) float32 pixels (also where hidden), visible (T, L) bool; cameras: T Cameras (per frame);
    static_camera: frame 0's camera; groundtruth: the groundtruth.json dict (grading only);
    config: the MonocularConfig."""

    path: Path
    sequence: str
    frames: np.ndarray
    mattes: np.ndarray | None
    labels: np.ndarray | None
    landmarks: np.ndarray
    visible: np.ndarray
    landmark_names: list
    cameras: list
    static_camera: Camera
    groundtruth: dict
    config: MonocularConfig


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (write the video with `npga synth OUT --monocular`)")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {path}: {err}") from None


def _read_pngs(folder: Path, frames: int, channels: int | None, ids: bool = False) -> np.ndarray:
    """(T, H, W[, channels]) float32 in [0, 1]; ``ids``: (T, H, W) uint8 as stored (label maps)."""
    files = [folder / f"frame_{t:05d}.png" for t in range(frames)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: missing {missing[0]} (and {len(missing) - 1} more)")
    out = []
    for f in files:
        try:
            img = np.asarray(iio.imread(f))
        except Exception as err:  # imageio raises many types for broken files
            raise ValueError(f"cannot read {f}: {type(err).__name__}: {err}") from None
        out.append(img[..., :channels] if channels else (img if img.ndim == 2 else img[..., 0]))
    if ids:
        return np.stack(out).astype(np.uint8)
    return np.stack(out).astype(np.float32) / 255.0


def load_monocular(path) -> MonocularVideo:
    """Read a folder written by :func:`write_monocular`; errors name the file at fault."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a monocular video folder")
    meta = _read_json(path / "monocular.json")
    if not meta.get("complete"):
        raise ValueError(f"{path / 'monocular.json'}: the video was not written completely; write it again")
    try:
        config = MonocularConfig.from_dict(meta)
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path / 'monocular.json'}: malformed ({type(err).__name__}: {err})") from None
    cams = _read_json(path / "cameras.json")
    lms = _read_json(path / "landmarks.json")
    gt = _read_json(path / "groundtruth.json")
    try:
        views = np.asarray(cams["viewmats"], np.float64)
        Ks = np.asarray(cams["K"], np.float64)
        width, height = int(cams["width"]), int(cams["height"])
        cameras = [Camera(f"video:{t}", views[t], Ks[t], width, height) for t in range(len(views))]
        static = Camera("video", np.asarray(cams["static_camera"]["viewmat"]), np.asarray(cams["static_camera"]["K"]),
                        width, height)
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise ValueError(f"{path / 'cameras.json'}: malformed ({type(err).__name__}: {err})") from None
    frames = _read_pngs(path / "frames", len(cameras), 3)
    mattes = _read_pngs(path / "mattes", len(cameras), None) if (path / "mattes").is_dir() else None
    labels = (_read_pngs(path / LABEL_FOLDER, len(cameras), None, ids=True) if (path / LABEL_FOLDER).is_dir()
              else None)
    try:
        landmarks = np.asarray(lms["all"], np.float32)
        visible = np.asarray(lms["visible"], bool)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path / 'landmarks.json'}: malformed ({type(err).__name__}: {err})") from None
    count = len(landmark_names())
    if landmarks.shape != (len(cameras), count, 2) or visible.shape != landmarks.shape[:2]:
        raise ValueError(f"{path / 'landmarks.json'}: points {landmarks.shape} / visible {visible.shape} do not "
                         f"match {len(cameras)} frames x {count} landmarks")
    if frames.shape[1:3] != (height, width):
        raise ValueError(f"{path / 'frames'}: frames are {frames.shape[2]}x{frames.shape[1]}, cameras.json says "
                         f"{width}x{height}")
    for name, maps in (("mattes", mattes), (LABEL_FOLDER, labels)):
        if maps is not None and maps.shape[1:3] != (height, width):
            raise ValueError(f"{path / name}: maps are {maps.shape[2]}x{maps.shape[1]}, cameras.json says "
                             f"{width}x{height}")
    return MonocularVideo(path, config.sequence, frames, mattes, labels, landmarks, visible, list(lms["names"]), cameras,
                          static, gt, config)
