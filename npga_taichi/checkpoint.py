"""Atomic checkpoint files: write to a temporary file beside the target, then ``os.replace``.

A process killed mid-write leaves the previous checkpoint intact (``os.replace`` is atomic on
POSIX when source and target share a directory), so a resumed run never reads a torn file.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, fsync it and rename it
    over ``path``, otherwise remove it.

    Every file npga writes (checkpoints, PLY, PCD, PNG, mp4, npz, JSON) goes through here, so a
    process killed mid-write leaves the previous file intact and no half-written file appears.
    The temporary keeps ``path``'s suffix, so writers that pick a format by extension
    (imageio, numpy's savez) behave as they would on ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Never leave half-written temporaries behind (KeyboardInterrupt included).
        tmp.unlink(missing_ok=True)
        raise


def save_checkpoint(obj: Any, path: str | os.PathLike) -> Path:
    """Serialise ``obj`` with ``torch.save`` to ``path`` atomically; return the path."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    """Write a small text file (JSON config, summary) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    required_keys: tuple[str, ...] = ()) -> Any:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Raises ValueError naming the file when it is missing, unreadable, or lacks one of
    ``required_keys`` (for dict checkpoints).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises many types for corrupt/truncated files
        raise ValueError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err
    if required_keys:
        if not isinstance(obj, dict):
            raise ValueError(f"checkpoint {path} is not a dict (got {type(obj).__name__})")
        missing = [k for k in required_keys if k not in obj]
        if missing:
            raise ValueError(f"checkpoint {path} lacks keys {missing}; is it from another tool?")
    return obj
