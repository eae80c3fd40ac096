"""Atomic checkpoint files: write to a temporary file beside the target, then ``os.replace``.

A process killed mid-write leaves the previous checkpoint intact (``os.replace`` is atomic on
POSIX when source and target share a directory), so a resumed run never reads a torn file.
"""
from __future__ import annotations

import contextlib
import json
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


def save_module_dir(directory: str | os.PathLike, filename: str, fmt: str, module: torch.nn.Module,
                    config: Any, **fields: Any) -> Path:
    """Save a network into ``directory``: ``filename`` (weights + config + ``fields``) and a
    human-readable ``config.json``, both atomically; return the directory.

    ``directory`` may also name the weights file itself (``.../model.pt``). ``config`` is a
    :class:`npga_taichi.config_io.DictConfig`; ``fmt`` tags the file so loaders reject the
    wrong kind of checkpoint with a clear message.
    """
    out = Path(directory)
    if out.suffix == ".pt":
        out = out.parent
    payload = {"format": fmt, "config": config.to_dict(),
               "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()}, **fields}
    save_checkpoint(payload, out / filename)
    write_text_atomic(json.dumps(config.to_dict(), indent=2, sort_keys=True), out / "config.json")
    return out


def load_module_payload(path: str | os.PathLike, filename: str, fmt: str, kind: str,
                        map_location: str | torch.device = "cpu") -> tuple[dict, Path]:
    """Read what :func:`save_module_dir` wrote (``path`` = the directory or the file).

    Returns ``(payload, file)``; ValueError naming the file if it is missing, torn, or not a
    ``kind`` checkpoint.
    """
    path = Path(path)
    file = path / filename if path.is_dir() else path
    payload = load_checkpoint(file, map_location=map_location, required_keys=("format", "config", "state_dict"))
    if payload["format"] != fmt:
        raise ValueError(f"{file} is not a {kind} checkpoint (format {payload['format']!r})")
    return payload, file


def load_weights(module: torch.nn.Module, state: dict, file: str | os.PathLike) -> None:
    """``module.load_state_dict(state)`` with a ValueError naming ``file`` when they do not fit."""
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{file}: weights do not fit the saved config: {err}") from err
