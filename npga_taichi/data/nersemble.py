"""The NeRSemble data layer: read a capture (real NeRSemble v1 / v2 or our synthetic one).

Layouts (``pdir = root/<participant:03d>``)::

    v1: pdir/calibration/camera_params.json   {"world_2_cam": {serial: 4x4}, "intrinsics": 3x3}
        pdir/sequences/<SEQ>/timesteps/frame_<t:05d>/<images | images-2x | images-4x ...>/cam_<serial>.(png|jpg)
                                                    .../alpha_map/cam_<serial>.(png|jpg)     (optional)
                                                    .../colmap/pointclouds/pointcloud_16.pcd (optional)
    v2: pdir/sequences/<SEQ>/images/cam_<serial>.mp4  (one video per camera; no alpha maps)
        pdir/calibration/color_calibration.json      (optional, per-camera 3x3 or 3x4 colour affine)

Conventions: ``world_2_cam`` is world -> camera in OpenCV axes; ``intrinsics`` is one shared
matrix at the *full* resolution (``FULL_RESOLUTION`` = 2200 x 3208 portrait, or the optional
``"resolution": [w, h]`` entry of camera_params.json). Cameras returned here are scaled per axis
to the resolution of the images actually loaded (see :class:`npga_taichi.cameras.Camera`).
Images are float32 (H, W, 3) in [0, 1]; alpha (H, W, 1) in [0, 1].

Every problem with the data raises :class:`CaptureError` (a ValueError) naming the file.
"""
from __future__ import annotations

import json
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Sequence

import imageio.v3 as iio
import numpy as np
import torch

from npga_taichi.cameras import Camera
from npga_taichi.data.pcd import read_points

# The 16 NeRSemble serials (DESIGN.md order) and the two rows of eight, left to right.
SERIALS: tuple[str, ...] = (
    "222200042", "222200044", "222200046", "222200040", "222200036", "222200048", "220700191", "222200041",
    "222200037", "222200038", "222200047", "222200043", "222200049", "222200039", "222200045", "221501007",
)
UPPER_ROW: tuple[str, ...] = ("222200042", "222200046", "222200036", "220700191", "222200037", "222200047",
                              "222200049", "221501007")
LOWER_ROW: tuple[str, ...] = ("222200044", "222200040", "222200048", "222200041", "222200038", "222200043",
                              "222200039", "222200045")
# Held-out cameras: the NeRSemble paper's and the 2025 benchmark's.
HOLDOUT_CAMERAS = {
    "nersemble": ("222200040", "220700191", "222200043", "221501007"),
    "benchmark2025": ("222200046", "222200037", "222200039"),
}
FULL_RESOLUTION = (2200, 3208)  # (width, height) of NeRSemble's full-resolution images
_IMAGE_DIR_RE = re.compile(r"^images(?:-(\d+)x)?$")
_IMAGE_EXTS = (".png", ".jpg", ".jpeg")


class CaptureError(ValueError):
    """Bad or missing capture data; the message names the offending file."""


# --------------------------------------------------------------------------- splits
def split_cameras(serials: Sequence[str], holdout="nersemble") -> tuple[list[str], list[str]]:
    """(train, held-out) serials. holdout: 'nersemble', 'benchmark2025' or an explicit list."""
    if isinstance(holdout, str):
        if holdout not in HOLDOUT_CAMERAS:
            raise ValueError(f"unknown camera holdout {holdout!r}; use {sorted(HOLDOUT_CAMERAS)} or a list")
        held = set(HOLDOUT_CAMERAS[holdout])
    else:
        held = {str(s) for s in holdout}
        unknown = held - set(serials)
        if unknown:
            raise ValueError(f"held-out camera(s) {sorted(unknown)} are not among the capture's cameras")
    return [s for s in serials if s not in held], [s for s in serials if s in held]


def split_sequences(names: Sequence[str], holdout=("FREE",)) -> tuple[list[str], list[str]]:
    """(train, held-out) sequence names; NPGA holds out FREE."""
    held = set(holdout)
    return [n for n in names if n not in held], [n for n in names if n in held]


def select_cameras(serials: Sequence[str], spec: str, heldout: Sequence[str]) -> list[str]:
    """The ``--cameras`` option of every command: ``holdout`` | ``train`` | ``all`` | comma-separated
    serials -> a list of ``serials`` (held-out ones from ``heldout``). Raises ValueError naming
    unknown serials or an empty selection."""
    serials = [str(s) for s in serials]
    held = [str(s) for s in heldout]
    if spec == "holdout":
        chosen = [s for s in serials if s in held]
    elif spec == "train":
        chosen = [s for s in serials if s not in held]
    elif spec == "all":
        chosen = list(serials)
    else:
        chosen = [s.strip() for s in str(spec).split(",") if s.strip()]
        unknown = [s for s in chosen if s not in serials]
        if unknown or not chosen:
            raise ValueError(f"--cameras: unknown camera(s) {unknown or spec!r}; use holdout, train, all or "
                             f"serials from {serials}")
    if not chosen:
        raise ValueError(f"--cameras {spec} selects no camera of {serials}")
    return chosen


def resolve_participant(data, participant: str | None = None) -> tuple[Path, str]:
    """(capture root, participant folder name) from DATA = a capture root or a participant folder.

    DATA is a participant folder when it has ``calibration/``; otherwise ``participant`` names
    one of its sub-folders, or DATA must hold exactly one participant. Raises ValueError /
    FileNotFoundError naming DATA.
    """
    data = Path(data)
    if not data.is_dir():
        raise FileNotFoundError(f"DATA {data} is not a folder")
    if (data / "calibration").is_dir():
        if participant and str(participant) not in (data.name, data.name.lstrip("0") or "0"):
            raise ValueError(f"DATA {data} is participant {data.name}, not {participant}")
        return data.parent, data.name
    if participant:
        for name in (str(participant), f"{int(participant):03d}" if str(participant).isdigit() else None):
            if name and (data / name / "calibration").is_dir():
                return data, name
        raise ValueError(f"no participant {participant!r} with calibration/ under {data}")
    found = sorted(p.name for p in data.iterdir() if (p / "calibration").is_dir())
    if len(found) != 1:
        raise ValueError(f"{data} holds participants {found}; pick one with --participant" if found else
                         f"{data} holds no participant folder (<pid>/calibration/camera_params.json)")
    return data, found[0]


# --------------------------------------------------------------------------- io helpers
def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CaptureError(f"missing file {path}")
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CaptureError(f"cannot parse {path}: {err}") from None
    if not isinstance(data, dict):
        raise CaptureError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _check_calibration(path: Path, viewmats: dict[str, np.ndarray], K: np.ndarray) -> None:
    """Every number finite, focal lengths positive, every world->camera rotation invertible;
    errors name the camera and the file (a NaN would otherwise surface far away, in a render)."""
    if not np.isfinite(K).all() or not (K[0, 0] > 0 and K[1, 1] > 0):
        raise CaptureError(f"{path}: intrinsics must be finite with positive focal lengths, got {K.tolist()}")
    for serial, m in viewmats.items():
        if not np.isfinite(m).all():
            raise CaptureError(f"{path}: world_2_cam of camera {serial} contains NaN or Inf")
        if not abs(np.linalg.det(m[:3, :3])) > 1e-9:
            raise CaptureError(f"{path}: world_2_cam of camera {serial} has a singular rotation block")


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image from its header, after a structural check (PNG chunk CRCs)
    that finds truncated or corrupt files without decoding them."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()
    except Exception as err:  # PIL raises many types for corrupt files
        raise CaptureError(f"cannot read image {path}: {err}") from None
    return size


def _read_image(path: Path) -> np.ndarray:
    # The structural check first: a corrupt PNG chunk length would otherwise make the decoder
    # allocate up to 4 GB before finding the file short.
    _image_size(path)
    try:
        img = iio.imread(path)
    except Exception as err:  # imageio raises many types for corrupt files
        raise CaptureError(f"cannot read image {path}: {err}") from None
    if img.ndim not in (2, 3):
        raise CaptureError(f"{path}: unexpected image shape {img.shape}")
    return img


def _to_float(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    return np.clip(img.astype(np.float32), 0.0, 1.0)


def _downsample(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area-resample an (H, W, C) float image to (height, width)."""
    if img.shape[:2] == (height, width):
        return img
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]
    t = torch.nn.functional.interpolate(t, size=(height, width), mode="area")
    return t[0].permute(1, 2, 0).numpy()


class _VideoCache:
    """Decoded frames of the most recently used videos (v2 layout), to avoid re-decoding."""

    def __init__(self, max_videos: int = 2):
        self.max_videos = max_videos
        self._videos: OrderedDict[Path, np.ndarray] = OrderedDict()

    def frames(self, path: Path) -> np.ndarray:
        if path in self._videos:
            self._videos.move_to_end(path)
            return self._videos[path]
        if not path.is_file():
            raise CaptureError(f"missing video {path}")
        try:
            import imageio_ffmpeg

            reader = imageio_ffmpeg.read_frames(str(path))
            meta = next(reader)
            w, h = meta["size"]
            frames = [np.frombuffer(buf, np.uint8).reshape(h, w, 3) for buf in reader]
        except CaptureError:
            raise
        except Exception as err:
            raise CaptureError(f"cannot decode video {path}: {err}") from None
        if not frames:
            raise CaptureError(f"video {path} has no frames")
        data = np.stack(frames)
        self._videos[path] = data
        while len(self._videos) > self.max_videos:
            self._videos.popitem(last=False)
        return data


# --------------------------------------------------------------------------- capture
class NersembleCapture:
    """One participant's capture.

    Args:
        root: folder holding ``<participant:03d>/`` (or the participant folder itself when
            participant is None).
        participant: participant id (int or 3-digit string).
        downscale: load ``images-<k>x`` (1 = ``images``); None picks the smallest resolution
            present (v1) or the videos' own resolution (v2). For v2, k > 1 area-resamples frames.
        image_folder: explicit v1 image folder name (overrides downscale).
        color_correction: None = apply ``color_calibration.json`` if present; True = require it;
            False = never.
        full_resolution: (width, height) the intrinsics refer to; default camera_params.json's
            ``resolution`` entry or FULL_RESOLUTION.

    Attributes:
        cameras: {serial: Camera} at the loaded resolution, in calibration order.
        width, height: loaded image size.
    """

    def __init__(self, root, participant=None, downscale: int | None = None, image_folder: str | None = None,
                 color_correction: bool | None = None, full_resolution: tuple[int, int] | None = None):
        root = Path(root)
        if participant is None or (root / str(participant)).is_dir():  # an existing folder name as is
            self.pdir = root if participant is None else root / str(participant)
        else:
            self.pdir = root / (f"{int(participant):03d}" if str(participant).isdigit() else str(participant))
        if not self.pdir.is_dir():
            raise CaptureError(f"participant folder {self.pdir} does not exist")
        self.calibration_path = self.pdir / "calibration" / "camera_params.json"
        calib = _read_json(self.calibration_path)
        try:
            w2c = calib["world_2_cam"]
            K_full = np.asarray(calib["intrinsics"], np.float64)
            self.full_resolution = tuple(int(v) for v in (full_resolution or calib.get("resolution") or FULL_RESOLUTION))
            viewmats = {str(s): np.asarray(m, np.float64) for s, m in w2c.items()}
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as err:
            raise CaptureError(f"{self.calibration_path}: malformed calibration ({type(err).__name__}: {err})") from None
        if len(self.full_resolution) != 2 or min(self.full_resolution) < 1:
            raise CaptureError(f"{self.calibration_path}: resolution must be [width, height] > 0, "
                               f"got {list(self.full_resolution)}")
        if K_full.shape != (3, 3) or any(m.shape != (4, 4) for m in viewmats.values()) or not viewmats:
            raise CaptureError(f"{self.calibration_path}: intrinsics must be 3x3 and every world_2_cam 4x4")
        _check_calibration(self.calibration_path, viewmats, K_full)
        self._viewmats = viewmats
        self._K_full = K_full
        self._video_cache = _VideoCache()
        self._color = self._load_color_calibration(color_correction)
        seq_dir = self.pdir / "sequences"
        if not seq_dir.is_dir():
            raise CaptureError(f"missing folder {seq_dir}")
        entries = sorted(seq_dir.iterdir())
        self._sequences = [p.name for p in entries if p.is_dir()]
        # Anything else there is said, not silently dropped (hidden files such as .DS_Store aside).
        self.skipped = [f"{p}: not a sequence folder; skipped" for p in entries
                        if not p.is_dir() and not p.name.startswith(".")]
        for message in self.skipped:
            warnings.warn(message, stacklevel=2)
        if not self._sequences:
            raise CaptureError(f"{seq_dir} holds no sequence folders" +
                               (f" ({'; '.join(self.skipped)})" if self.skipped else ""))
        self._timesteps: dict[str, list[int]] = {}
        self.downscale = downscale
        self.image_folder = image_folder or self._pick_image_folder(downscale)
        self.width, self.height = self._probe_size()
        self.cameras = {s: Camera(s, torch.as_tensor(m, dtype=torch.float32), torch.as_tensor(K_full, dtype=torch.float32),
                                  *self.full_resolution).resized(self.width, self.height)
                        for s, m in viewmats.items()}

    # ---- discovery
    def sequences(self) -> list[str]:
        return list(self._sequences)

    def is_video(self, sequence: str) -> bool:
        """True for the v2 layout (one mp4 per camera)."""
        return not (self._seq(sequence) / "timesteps").is_dir() and (self._seq(sequence) / "images").is_dir()

    def _seq(self, sequence: str) -> Path:
        if sequence not in self._sequences:
            path = self.pdir / "sequences" / str(sequence)
            if path.exists() or path.is_symlink():
                raise CaptureError(f"sequence {sequence!r}: {path} is not a folder")
            raise CaptureError(f"sequence {sequence!r} not found in {self.pdir / 'sequences'}")
        return self.pdir / "sequences" / sequence

    def timesteps(self, sequence: str) -> list[int]:
        """Sorted frame indices of a sequence."""
        if sequence not in self._timesteps:
            sdir = self._seq(sequence)
            if self.is_video(sequence):
                videos = sorted((sdir / "images").glob("cam_*.mp4"))
                if not videos:
                    raise CaptureError(f"no cam_*.mp4 videos in {sdir / 'images'}")
                n = len(self._video_cache.frames(videos[0]))
                self._timesteps[sequence] = list(range(n))
            else:
                if not (sdir / "timesteps").is_dir():
                    raise CaptureError(f"sequence {sequence!r}: {sdir} has neither timesteps/frame_* folders (v1) "
                                       "nor images/cam_*.mp4 videos (v2)")
                steps = []
                for p in (sdir / "timesteps").iterdir():
                    m = re.fullmatch(r"frame_(\d+)", p.name)
                    if m and p.is_dir():
                        steps.append(int(m.group(1)))
                if not steps:
                    raise CaptureError(f"no frame_* folders in {sdir / 'timesteps'}")
                self._timesteps[sequence] = sorted(steps)
        return list(self._timesteps[sequence])

    def frame_dir(self, sequence: str, timestep: int) -> Path:
        return self._seq(sequence) / "timesteps" / f"frame_{int(timestep):05d}"

    def _pick_image_folder(self, downscale: int | None) -> str | None:
        """v1 image folder for `downscale` (None: the most downscaled one present)."""
        v1 = [s for s in self._sequences if not self.is_video(s)]
        if downscale is not None:
            if downscale < 1:
                raise CaptureError(f"downscale must be >= 1, got {downscale}")
            return "images" if downscale == 1 else f"images-{downscale}x"
        if not v1:
            return None
        first = self.frame_dir(v1[0], self.timesteps(v1[0])[0])
        found = []
        for p in first.iterdir():
            m = _IMAGE_DIR_RE.match(p.name)
            if m and p.is_dir():
                found.append((int(m.group(1) or 1), p.name))
        if not found:
            raise CaptureError(f"no images / images-<k>x folder in {first}")
        return max(found)[1]

    def _image_path(self, sequence: str, timestep: int, serial: str) -> Path:
        folder = self.frame_dir(sequence, timestep) / self.image_folder
        for ext in _IMAGE_EXTS:
            p = folder / f"cam_{serial}{ext}"
            if p.is_file():
                return p
        raise CaptureError(f"missing image {folder / ('cam_' + serial + '.png')} (png or jpg)")

    def _video_path(self, sequence: str, serial: str) -> Path:
        return self._seq(sequence) / "images" / f"cam_{serial}.mp4"

    def _probe_size(self) -> tuple[int, int]:
        seq = self._sequences[0]
        serial = next(iter(self._viewmats))
        if self.is_video(seq):
            videos = sorted((self._seq(seq) / "images").glob("cam_*.mp4"))
            if not videos:
                raise CaptureError(f"no cam_*.mp4 videos in {self._seq(seq) / 'images'}")
            h, w = self._video_cache.frames(videos[0]).shape[1:3]
            k = self.downscale or 1
            return w // k, h // k
        t = self.timesteps(seq)[0]
        folder = self.frame_dir(seq, t) / self.image_folder
        if not folder.is_dir():
            raise CaptureError(f"missing image folder {folder}")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_EXTS)
        if not files:
            raise CaptureError(f"no images in {folder}")
        path = folder / f"cam_{serial}.png" if (folder / f"cam_{serial}.png").is_file() else files[0]
        img = _read_image(path)
        return img.shape[1], img.shape[0]

    def available_serials(self, sequence: str, timestep: int | None = None) -> list[str]:
        """Serials with an image (v1) or video (v2); raises if one is absent from the calibration."""
        if self.is_video(sequence):
            files = sorted((self._seq(sequence) / "images").glob("cam_*.mp4"))
        else:
            t = self.timesteps(sequence)[0] if timestep is None else timestep
            folder = self.frame_dir(sequence, t) / self.image_folder
            files = sorted(p for p in folder.glob("cam_*") if p.suffix.lower() in _IMAGE_EXTS)
        serials = [p.stem[len("cam_"):] for p in files]
        for s, p in zip(serials, files):
            if s not in self._viewmats:
                raise CaptureError(f"{p}: camera {s} is absent from the calibration {self.calibration_path}")
        return serials

    # ---- loading
    def _check_serial(self, serial: str) -> None:
        if serial not in self._viewmats:
            raise CaptureError(f"camera {serial} is absent from the calibration {self.calibration_path}")

    def _check_size(self, img: np.ndarray, path: Path) -> None:
        if img.shape[:2] != (self.height, self.width):
            raise CaptureError(f"{path}: size {img.shape[1]}x{img.shape[0]} disagrees with the capture's "
                               f"{self.width}x{self.height}")

    def load_image(self, sequence: str, timestep: int, serial: str) -> np.ndarray:
        """(H, W, 3) float32 RGB in [0, 1], colour-corrected if enabled."""
        self._check_serial(serial)
        if self.is_video(sequence):
            path = self._video_path(sequence, serial)
            frames = self._video_cache.frames(path)
            if not 0 <= timestep < len(frames):
                raise CaptureError(f"{path}: frame {timestep} out of range (0..{len(frames) - 1})")
            img = _downsample(_to_float(frames[timestep]), self.width, self.height)
        else:
            path = self._image_path(sequence, timestep, serial)
            img = _read_image(path)
            self._check_size(img, path)
            if img.ndim == 2:
                img = img[:, :, None]
            if img.shape[2] < 3:  # grey or grey + alpha
                img = np.repeat(img[:, :, :1], 3, axis=2)
            img = _to_float(img[:, :, :3])
        if self._color is not None:
            if serial not in self._color:
                raise CaptureError(f"camera {serial} is absent from the colour calibration "
                                   f"{self.pdir / 'calibration' / 'color_calibration.json'}")
            A = self._color[serial]
            img = np.clip(img @ A[:, :3].T + A[:, 3], 0.0, 1.0).astype(np.float32)
        return img

    def _alpha_path(self, sequence: str, timestep: int, serial: str) -> Path | None:
        """The matte of a view; None when the frame has no alpha_map folder (v2-like captures)."""
        folder = self.frame_dir(sequence, timestep) / "alpha_map"
        path = next((folder / f"cam_{serial}{e}" for e in _IMAGE_EXTS if (folder / f"cam_{serial}{e}").is_file()), None)
        if path is None and folder.is_dir():
            raise CaptureError(f"missing alpha map {folder / ('cam_' + serial + '.png')}")
        return path

    def load_alpha(self, sequence: str, timestep: int, serial: str) -> np.ndarray | None:
        """(H, W, 1) float32 alpha in [0, 1], or None when the capture has no alpha maps (v2)."""
        self._check_serial(serial)
        if self.is_video(sequence):
            return None
        path = self._alpha_path(sequence, timestep, serial)
        if path is None:
            return None
        img = _read_image(path)
        self._check_size(img, path)
        if img.ndim == 3:
            img = img[:, :, 0]
        return _to_float(img)[:, :, None]

    def pointcloud_path(self, sequence: str, timestep: int) -> Path:
        """``.../frame_<t>/colmap/pointclouds/pointcloud_16.pcd``."""
        return self.frame_dir(sequence, timestep) / "colmap" / "pointclouds" / "pointcloud_16.pcd"

    def load_pointcloud(self, sequence: str, timestep: int) -> np.ndarray:
        """(M, 3) float32 world points of colmap/pointclouds/pointcloud_16.pcd, as stored
        (rows may be non-finite: :func:`npga_taichi.data.pcd.finite_points` gates them)."""
        path = self.pointcloud_path(sequence, timestep)
        if not path.is_file():
            raise CaptureError(f"missing point cloud {path}")
        try:
            return read_points(path)
        except CaptureError:
            raise
        except ValueError as err:
            raise CaptureError(str(err)) from None

    def _load_color_calibration(self, mode: bool | None) -> dict[str, np.ndarray] | None:
        path = self.pdir / "calibration" / "color_calibration.json"
        if mode is False or (mode is None and not path.is_file()):
            return None
        data = _read_json(path)
        out = {}
        for serial, m in data.items():
            A = np.asarray(m, np.float32)
            if A.shape == (3, 3):
                A = np.concatenate([A, np.zeros((3, 1), np.float32)], 1)
            if A.shape != (3, 4):
                raise CaptureError(f"{path}: camera {serial} needs a 3x3 or 3x4 matrix, got {A.shape}")
            out[str(serial)] = A
        return out


# --------------------------------------------------------------------------- validation
def validate_capture(capture: NersembleCapture, views: Iterable, mattes: bool = True) -> dict:
    """Check, before training starts, every file the given views will read.

    ``views``: objects with ``.sequence``, ``.timestep``, ``.serial`` (the trainer's ``View``)
    or ``(sequence, timestep, serial)`` tuples. Checks that each camera is calibrated (and
    colour-calibrated when colour correction is on), that no frame folder holds images of a
    camera absent from the calibration (it would be ignored silently otherwise), and that each
    image — and alpha matte, when the frame has an ``alpha_map`` folder and ``mattes`` — exists,
    is readable and has the capture's size (headers only: fast). v2 captures: each camera's video
    exists. Raises :class:`CaptureError` naming the first bad file; returns counts
    ``{"views", "frames", "images", "mattes"}``.
    """
    frames_seen: set[tuple[str, int]] = set()
    images = mattes_checked = n_views = 0
    videos_seen: set[Path] = set()
    for view in views:
        seq, t, serial = ((view.sequence, view.timestep, view.serial) if hasattr(view, "sequence")
                          else tuple(view))
        t, serial = int(t), str(serial)
        n_views += 1
        capture._check_serial(serial)
        if capture._color is not None and serial not in capture._color:
            raise CaptureError(f"camera {serial} is absent from the colour calibration "
                               f"{capture.pdir / 'calibration' / 'color_calibration.json'}")
        if capture.is_video(seq):
            path = capture._video_path(seq, serial)
            if path not in videos_seen:
                if not path.is_file():
                    raise CaptureError(f"missing video {path}")
                videos_seen.add(path)
            continue
        if (seq, t) not in frames_seen:
            if t not in set(capture.timesteps(seq)):
                raise CaptureError(f"missing frame folder {capture.frame_dir(seq, t)}")
            capture.available_serials(seq, t)  # raises for images of uncalibrated cameras
            frames_seen.add((seq, t))
        for path in ([capture._image_path(seq, t, serial)] +
                     ([capture._alpha_path(seq, t, serial)] if mattes else [])):
            if path is None:
                continue
            width, height = _image_size(path)
            if (width, height) != (capture.width, capture.height):
                raise CaptureError(f"{path}: size {width}x{height} disagrees with the capture's "
                                   f"{capture.width}x{capture.height}")
            if "alpha_map" in path.parts:
                mattes_checked += 1
            else:
                images += 1
    return {"views": n_views, "frames": len(frames_seen), "images": images, "mattes": mattes_checked}


# --------------------------------------------------------------------------- dataset
class CaptureDataset(torch.utils.data.Dataset):
    """(sequence, timestep, serial) samples of a capture.

    Each item: {"image": (H, W, 3) float32 composited onto `background`, "alpha": (H, W, 1),
    "camera": Camera, "sequence": str, "timestep": int, "serial": str}, tensors on `device`.
    Compositing: image * alpha + background * (1 - alpha) (images are stored over the studio
    backdrop, as real captures are). Without alpha maps (v2), alpha is all ones and the image is
    used as is (a warning says so once).
    """

    def __init__(self, capture: NersembleCapture, sequences: Sequence[str] | None = None,
                 serials: Sequence[str] | None = None, frame_stride: int = 1, background=(1.0, 1.0, 1.0),
                 device="cpu"):
        if frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
        self.capture = capture
        self.sequences = list(sequences) if sequences is not None else capture.sequences()
        self.serials = [str(s) for s in serials] if serials is not None else list(capture.cameras)
        for s in self.serials:
            if s not in capture.cameras:
                raise CaptureError(f"camera {s} is absent from the calibration {capture.calibration_path}")
        self.background = torch.as_tensor(background, dtype=torch.float32).reshape(3)
        self.device = torch.device(device)
        self.items = [(seq, t, s) for seq in self.sequences for t in capture.timesteps(seq)[::frame_stride]
                      for s in self.serials]
        self._warned = False

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        seq, t, serial = self.items[index]
        image = torch.from_numpy(self.capture.load_image(seq, t, serial))
        alpha_np = self.capture.load_alpha(seq, t, serial)
        if alpha_np is None:
            if not self._warned:
                warnings.warn(f"{self.capture.pdir}: no alpha maps; using alpha = 1 and the raw images")
                self._warned = True
            alpha = torch.ones(image.shape[0], image.shape[1], 1)
        else:
            alpha = torch.from_numpy(alpha_np)
            image = image * alpha + self.background * (1.0 - alpha)
        return {
            "image": image.to(self.device),
            "alpha": alpha.to(self.device),
            "camera": self.capture.cameras[serial].to(self.device),
            "sequence": seq,
            "timestep": int(t),
            "serial": serial,
        }


def collate_single(batch: list[dict]) -> dict:
    """DataLoader collate for batch_size=1 (cameras are not stackable): returns the item."""
    if len(batch) != 1:
        raise ValueError("collate_single supports batch_size=1 only")
    return batch[0]
