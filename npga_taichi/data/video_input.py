"""Reading a monocular driving video for ``npga track-video``: frames, mattes, landmarks, camera.

* Frames: an mp4 (or any video ffmpeg decodes; via imageio-ffmpeg) or a folder of images
  (``.png``/``.jpg``/``.jpeg``, sorted by the number in their name, then by name) ->
  float32 (T, H, W, 3) in [0, 1].
* Mattes: the same kinds of source, one channel (the first / the grey value) -> float32
  (T, H, W) in [0, 1]; they must match the frames in count and size.
* Label maps (for the eye closure, :mod:`npga_taichi.eye_closure`): a folder of single-channel
  uint8 PNGs, one per frame (named and sorted as frame folders are), of ids into
  :data:`npga_taichi.data.synthetic.LABEL_NAMES` (``npga synth --monocular`` writes ``labels/``;
  any face parser's eye class saved so serves). Read exactly (never a lossy video), same count
  and size as the frames.
* Landmarks: ``.npy`` (T, L, 2) or JSON ``{"landmarks": [[[x, y], ...], ...]}`` (or the bare
  list) of pixel coordinates (x = column, y = row, pixel centres at +0.5; NaN/null = missing) in
  :data:`npga_taichi.prior.photometric.LANDMARK_NAMES` order.
* Camera: a pinhole at the world origin looking along +z (OpenCV axes: x right, y down), from a
  horizontal field of view (degrees; principal point at the image centre) or a 3x3 K matrix
  (``.npy`` or JSON ``[[...], [...], [...]]`` / ``{"K": ...}``) in pixels at the video's size.

Every problem raises ValueError / FileNotFoundError naming the file.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from npga_taichi.cameras import Camera

IMAGE_EXTS = (".png", ".jpg", ".jpeg")


def _image_files(folder: Path) -> list[Path]:
    def key(p: Path):
        digits = re.findall(r"\d+", p.stem)
        return (int(digits[-1]) if digits else -1, p.name)

    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")),
                  key=key)


def _decode_video(path: Path) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of a video file."""
    try:
        import imageio_ffmpeg

        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        w, h = meta["size"]
        frames = [np.frombuffer(buf, np.uint8).reshape(h, w, 3) for buf in reader]
    except Exception as err:  # ffmpeg's errors come as RuntimeError / OSError / StopIteration
        raise ValueError(f"cannot decode video {path}: {type(err).__name__}: {err}".strip()) from None
    if not frames:
        raise ValueError(f"video {path} has no frames")
    return np.stack(frames)


def _read_image(path: Path) -> np.ndarray:
    try:
        return np.asarray(iio.imread(path))
    except Exception as err:
        raise ValueError(f"cannot read image {path}: {type(err).__name__}: {err}") from None


def _to_float(img: np.ndarray, path: Path) -> np.ndarray:
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    if img.dtype.kind == "f":
        return img.astype(np.float32)
    raise ValueError(f"{path}: unsupported pixel type {img.dtype}")


def _image_folder(path: str | Path, what: str) -> list[Path]:
    """The sorted image files of folder ``path``; errors name it (missing, empty)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    files = _image_files(path) if path.is_dir() else []
    if path.is_dir() and not files:
        raise ValueError(f"{what} folder {path} holds no .png/.jpg images (zero frames)")
    return files


def _read_stack(path: str | Path, what: str) -> list[np.ndarray]:
    """Raw frames of a video file or image folder (list of (H, W[, C]) arrays)."""
    path = Path(path)
    files = _image_folder(path, what)
    if path.is_dir():
        frames = []
        for f in files:
            img = _read_image(f)
            if frames and img.shape[:2] != frames[0].shape[:2]:
                raise ValueError(f"{f}: size {img.shape[1]}x{img.shape[0]} differs from the first frame's "
                                 f"{frames[0].shape[1]}x{frames[0].shape[0]}")
            frames.append(_to_float(img, f))
        return frames
    return [f.astype(np.float32) / 255.0 for f in _decode_video(path)]


def read_frames(path: str | Path) -> np.ndarray:
    """(T, H, W, 3) float32 RGB in [0, 1] of a video file or image folder."""
    frames = _read_stack(path, "video")
    out = []
    for f in frames:
        if f.ndim == 2:
            f = f[:, :, None]
        if f.shape[2] < 3:
            f = np.repeat(f[:, :, :1], 3, axis=2)
        out.append(f[:, :, :3])
    return np.stack(out).clip(0.0, 1.0)


def read_mattes(path: str | Path, count: int, height: int, width: int) -> np.ndarray:
    """(T, H, W) float32 mattes in [0, 1]; ValueError naming the file when their number or size
    differs from the video's (``count`` frames of ``width`` x ``height``)."""
    frames = _read_stack(path, "mattes")
    if len(frames) != count:
        raise ValueError(f"mattes {path}: {len(frames)} frames, the video has {count}")
    shape = frames[0].shape[:2]
    if shape != (height, width):
        raise ValueError(f"mattes {path}: size {shape[1]}x{shape[0]}, the video is {width}x{height}")
    return np.stack([f if f.ndim == 2 else f[:, :, 0] for f in frames]).astype(np.float32).clip(0.0, 1.0)


def read_labels(path: str | Path, count: int, height: int, width: int) -> np.ndarray:
    """(T, H, W) uint8 label ids from a folder of PNGs (module docstring); ValueError /
    FileNotFoundError naming the folder or file when it is not a folder, a map is not
    single-channel 8-bit, holds an id outside ``LABEL_NAMES``, or their number or size differs
    from the video's (``count`` frames of ``width`` x ``height``)."""
    from npga_taichi.data.synthetic import LABEL_NAMES

    path = Path(path)
    files = _image_folder(path, "labels")
    if not path.is_dir():
        raise ValueError(f"labels {path}: expected a folder of PNG label maps (a video would blur the ids)")
    if len(files) != count:
        raise ValueError(f"labels {path}: {len(files)} label maps, the video has {count} frames")
    out = np.empty((count, height, width), np.uint8)
    for i, f in enumerate(files):
        img = _read_image(f)
        if img.ndim == 3 and img.shape[2] > 1 and (img[..., 1:] != img[..., :1]).any():
            raise ValueError(f"labels {f}: expected a single-channel map of ids, got {img.shape[2]} channels")
        img = img if img.ndim == 2 else img[..., 0]
        if img.dtype != np.uint8:
            raise ValueError(f"labels {f}: expected 8-bit ids, got pixel type {img.dtype}")
        if img.shape != (height, width):
            raise ValueError(f"labels {f}: size {img.shape[1]}x{img.shape[0]}, the video is {width}x{height}")
        if int(img.max()) >= len(LABEL_NAMES):
            raise ValueError(f"labels {f}: id {int(img.max())} is not one of the {len(LABEL_NAMES)} label ids "
                             f"(npga_taichi.data.synthetic.LABEL_NAMES)")
        out[i] = img
    return out


def _read_array(path: str | Path, what: str, keys: tuple[str, ...]) -> np.ndarray:
    """A numeric array from ``.npy`` (no pickles) or JSON (a nested list, or a dict holding it
    under one of ``keys``; null -> NaN); ValueError / FileNotFoundError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    if path.suffix.lower() == ".npy":
        from npga_taichi.prior.tracking import load_npy

        arr = load_npy(path)
    else:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as err:
            raise ValueError(f"cannot read {what} {path}: {err}") from None
        if isinstance(data, dict):
            data = next((data[k] for k in keys if k in data), None)

        def nan_for_null(x):
            if x is None:
                return np.nan
            if not isinstance(x, list):
                return x
            items = [nan_for_null(v) for v in x]
            # a null standing for a whole entry (a hidden landmark's [x, y], as landmarks.json of
            # `npga synth --monocular` writes it) becomes NaNs of its siblings' shape
            like = next((v for v in items if isinstance(v, list)), None)
            return items if like is None else [np.full(np.shape(like), np.nan).tolist() if v is None or (
                isinstance(v, float) and np.isnan(v)) else v for v in items]

        try:
            arr = np.asarray(nan_for_null(data), dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{what} {path}: not an array of numbers ({err})") from None
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{what} {path}: not numeric ({arr.dtype})")
    return arr.astype(np.float64)


def read_landmarks(path: str | Path, count: int, n_landmarks: int) -> np.ndarray:
    """(T, L, 2) float32 landmark pixels (NaN = missing); ValueError naming the file."""
    arr = _read_array(path, "landmarks", ("landmarks",))
    if arr.shape != (count, n_landmarks, 2):
        raise ValueError(f"landmarks {path}: shape {arr.shape}, expected ({count}, {n_landmarks}, 2) "
                         f"(frames, landmarks, xy)")
    if np.isinf(arr).any():
        raise ValueError(f"landmarks {path}: holds Inf (use NaN for missing points)")
    return arr.astype(np.float32)


def read_intrinsics(path: str | Path) -> np.ndarray:
    """3x3 K (pixels) from ``.npy`` or JSON; ValueError naming the file unless it is finite, of the
    form [[fx, s, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0."""
    K = _read_array(path, "K", ("K", "intrinsics"))
    if K.shape != (3, 3):
        raise ValueError(f"K {path}: expected a 3x3 matrix, got shape {K.shape}")
    if not np.isfinite(K).all():
        raise ValueError(f"K {path}: holds NaN/Inf")
    if not (K[0, 0] > 0 and K[1, 1] > 0) or K[1, 0] != 0 or not np.allclose(K[2], [0, 0, 1]):
        raise ValueError(f"K {path}: expected [[fx, s, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0, got {K.tolist()}")
    return K


def camera_from_fov(fov_degrees: float, width: int, height: int) -> np.ndarray:
    """3x3 K of a pinhole with horizontal field of view ``fov_degrees``, square pixels, principal
    point at the image centre."""
    if not (math.isfinite(fov_degrees) and 0 < fov_degrees < 180):
        raise ValueError(f"--fov must lie in (0, 180) degrees, got {fov_degrees}")
    f = 0.5 * width / math.tan(math.radians(fov_degrees) / 2)
    return np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], np.float64)


def video_camera(K: np.ndarray, width: int, height: int, serial: str = "video") -> Camera:
    """The video's camera: at the world origin, OpenCV axes (identity world -> camera)."""
    return Camera(serial, torch.eye(4), torch.as_tensor(K, dtype=torch.float32), width, height)
