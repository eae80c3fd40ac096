"""Atomic checkpoint files: write to a temporary file beside the target, then ``os.replace``.

A process killed mid-write leaves the previous checkpoint intact (``os.replace`` is atomic on
POSIX when source and target share a directory), so a resumed run never reads a torn file.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(obj: Any, path: str | os.PathLike) -> Path:
    """Serialise ``obj`` with ``torch.save`` to ``path`` atomically; return the path.

    The data goes to a uniquely named temporary file in the same directory, is flushed and
    fsync'ed, and only then renamed over ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # Never leave half-written temporaries behind (KeyboardInterrupt included).
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return path


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    """Write a small text file (JSON config, summary) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return path


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
