"""Write rendered frames as an mp4 (imageio-ffmpeg) or as numbered PNG files.

Frames are ``(H, W, 3)`` arrays, either ``uint8`` or floats in [0, 1] (clipped, then rounded
to 8 bits). Every writer here is atomic: output goes to a temporary path beside the target and
is moved into place with :func:`os.replace` only once complete, so an interrupted render never
leaves a half-written video that looks finished.

mp4 files use H.264 (``libx264``, ``yuv420p``) so browsers and QuickTime play them; yuv420p needs
even frame sizes, so odd sizes are padded by one black row/column (never resized). When no
ffmpeg binary is available, :func:`write_video` falls back to a folder of PNG frames and says so.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

import imageio.v2 as imageio
import numpy as np

from npga_taichi.checkpoint import atomic_path, ensure_output_dir, new_file_mode, staging_dir


def to_uint8(frame) -> np.ndarray:
    """(H, W, C) float in [0, 1] or uint8 (numpy or torch) -> (H, W, 3) uint8.

    One-channel frames are repeated to RGB; alpha channels beyond the third are dropped.
    """
    if hasattr(frame, "detach"):  # torch tensor on any device
        frame = frame.detach().cpu().numpy()
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.ndim != 3:
        raise ValueError(f"a frame must be (H, W, C), got shape {frame.shape}")
    if frame.shape[2] == 1:
        frame = np.repeat(frame, 3, axis=2)
    frame = frame[:, :, :3]
    if frame.dtype == np.uint8:
        return np.ascontiguousarray(frame)
    if not np.issubdtype(frame.dtype, np.floating):
        raise ValueError(f"frames must be uint8 or float in [0, 1], got dtype {frame.dtype}")
    return np.ascontiguousarray((np.clip(np.nan_to_num(frame), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


def ffmpeg_available() -> bool:
    """True when imageio-ffmpeg can find (or ships) an ffmpeg binary."""
    try:
        import imageio_ffmpeg

        return bool(imageio_ffmpeg.get_ffmpeg_exe())
    except Exception:  # package missing or no binary for this platform
        return False


def _pad_even(frame: np.ndarray) -> np.ndarray:
    # yuv420p subsamples chroma 2x2, so H.264 needs even sizes; pad instead of resizing pixels.
    h, w = frame.shape[:2]
    ph, pw = h % 2, w % 2
    if ph or pw:
        frame = np.pad(frame, ((0, ph), (0, pw), (0, 0)))
    return frame


def write_png(path: str | os.PathLike, frame) -> Path:
    """Write one frame as an 8-bit PNG atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        imageio.imwrite(tmp, to_uint8(frame))
    return path


def write_png_frames(directory: str | os.PathLike, frames: Iterable, prefix: str = "frame_") -> list[Path]:
    """Write frames as ``<directory>/<prefix><i:05d>.png``.

    Frames are rendered into a private staging folder inside ``directory`` and moved in once all
    are written, so a killed run leaves the previous frames; stale ``<prefix>NNNNN.png`` frames of
    an earlier, longer run are removed. Nothing else in ``directory`` is touched.
    """
    directory = ensure_output_dir(directory, "frame folder")
    names = []
    with staging_dir(directory, "frames") as tmp:
        for i, frame in enumerate(frames):
            name = f"{prefix}{i:05d}.png"
            imageio.imwrite(tmp / name, to_uint8(frame))
            os.chmod(tmp / name, new_file_mode())
            names.append(name)
        pattern = re.compile(re.escape(prefix) + r"\d{5}\.png")
        for old in directory.iterdir():
            if pattern.fullmatch(old.name) and old.name not in names and old.is_file() and not old.is_symlink():
                old.unlink()
        for name in names:
            os.replace(tmp / name, directory / name)
    return [directory / n for n in names]


def write_mp4(path: str | os.PathLike, frames: Iterable, fps: float = 25.0, quality: int = 8) -> Path:
    """Encode frames as an H.264 mp4 with imageio-ffmpeg, atomically. Raises if ffmpeg is missing."""
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"video path must end in .mp4, got {path}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    count = 0
    with atomic_path(path) as tmp:
        writer = imageio.get_writer(
            tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=quality,
            pixelformat="yuv420p", macro_block_size=1, ffmpeg_log_level="error",
        )
        try:
            for frame in frames:
                writer.append_data(_pad_even(to_uint8(frame)))
                count += 1
        finally:
            writer.close()
        if count == 0:
            raise ValueError(f"no frames to write to {path}")
    return path


def write_video(path: str | os.PathLike, frames: Iterable, fps: float = 25.0) -> Path:
    """Write ``frames`` to ``path`` (.mp4); without ffmpeg, to a PNG folder ``path`` minus suffix.

    Returns the path actually written (the mp4 file or the PNG folder).
    """
    path = Path(path)
    if ffmpeg_available():
        return write_mp4(path, frames, fps)
    folder = path.with_suffix("")
    write_png_frames(folder, frames)
    return folder


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Decode an mp4 (or a PNG folder written by :func:`write_png_frames`) to (T, H, W, 3) uint8."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.png"))
        if not files:
            raise ValueError(f"no PNG frames in {path}")
        return np.stack([np.asarray(imageio.imread(f))[:, :, :3] for f in files])
    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        return np.stack([np.asarray(f) for f in reader])
    finally:
        reader.close()
