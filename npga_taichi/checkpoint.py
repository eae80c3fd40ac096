"""Atomic checkpoint files: write to a temporary file beside the target, then ``os.replace``.

A process killed mid-write leaves the previous checkpoint intact (``os.replace`` is atomic on
POSIX when source and target share a directory), so a resumed run never reads a torn file.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import pickletools
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch


class AtomicFile:
    """A private temporary file beside ``path`` that replaces ``path`` on :meth:`commit`.

    The temporary is created by :func:`tempfile.mkstemp` (``O_CREAT | O_EXCL``, an unpredictable
    name in ``path``'s folder), so a symlink planted at any name we could pick is never followed.
    :meth:`commit` fsyncs it, gives it the mode a plain ``open(path, "w")`` would (``0o666`` minus
    the umask; mkstemp makes ``0o600``), checks it is still a regular file and renames it over
    ``path`` — ``path`` ends as a regular file even when it was a symlink (the link is replaced,
    the file it pointed to is untouched). :meth:`discard` removes it. Writers with an open/close
    life cycle (HDF5) hold one of these; everything else uses :func:`atomic_path`.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(f"{self.path} is a folder; cannot write a file there")
        ensure_output_dir(self.path.parent)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp" + self.path.suffix,
                                        dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp_name)

    def commit(self) -> Path:
        try:
            if not stat.S_ISREG(os.lstat(self.tmp).st_mode):
                raise ValueError(f"{self.tmp} was replaced by something other than a regular file while "
                                 f"writing {self.path}; nothing was written")
            with open(self.tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.chmod(self.tmp, new_file_mode())
            os.replace(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise
        return self.path

    def discard(self) -> None:
        try:
            if os.path.lexists(self.tmp):
                os.unlink(self.tmp)
        except OSError:
            pass


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, fsync it and rename it
    over ``path``, otherwise remove it (see :class:`AtomicFile` for names, symlinks and modes).

    Every file npga writes (checkpoints, PLY, PCD, PNG, mp4, npz, JSON, HDF5) goes through here,
    so a process killed mid-write leaves the previous file intact and no half-written file
    appears. The temporary keeps ``path``'s suffix, so writers that pick a format by extension
    (imageio, numpy's savez) behave as they would on ``path``.
    """
    target = AtomicFile(path)
    try:
        yield target.tmp
    except BaseException:
        # Never leave half-written temporaries behind (KeyboardInterrupt included).
        target.discard()
        raise
    target.commit()


def new_file_mode() -> int:
    """The permission bits ``open(path, "w")`` gives a new file: ``0o666`` minus the umask."""
    try:  # Linux >= 4.7 reports the umask without changing it (no race with other threads)
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def ensure_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create folder ``path`` (and its parents) if needed and return it.

    Raises ValueError naming ``path`` when it, or one of its parents, exists but is not a folder
    (``npga fit --out FILE``, a tracking folder replaced by a file), or cannot be created.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        raise ValueError(f"{what} {path} cannot be created: a part of the path is a file ({err.filename})") from None
    except OSError as err:
        raise ValueError(f"{what} {path} cannot be created: {err.strerror}") from None
    return path


@contextlib.contextmanager
def staging_dir(parent: str | os.PathLike, name: str) -> Iterator[Path]:
    """A private folder (``mkdtemp``: mode 0700, unpredictable name ``.<name>.*.tmp``) in
    ``parent`` for writers that produce several files; it is removed with its contents on exit.
    Move finished files out of it with ``os.replace`` (same file system, atomic per file)."""
    parent = ensure_output_dir(parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class CommitOnExit:
    """Mixin for writers with ``close()`` (commit) and ``abort()`` (discard): a ``with`` block
    commits when it succeeds and discards on any exception."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


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


def _pickle_calls_code(path: Path) -> bool:
    """Whether ``path`` is a plain pickle that imports or calls something (read with
    ``pickletools``, which parses opcodes and executes nothing)."""
    calling = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD"}
    try:
        with open(path, "rb") as handle:
            return any(op.name in calling for op, _, _ in pickletools.genops(handle))
    except Exception:  # not a pickle at all: garbage or a torn file
        return False


class UnsafeCheckpointError(ValueError):
    """A checkpoint that holds pickled Python objects, refused because loading would run code."""


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    required_keys: tuple[str, ...] = (), allow_globals: tuple = ()) -> Any:
    """Load a checkpoint written by :func:`save_checkpoint` without executing code from it.

    ``torch.load(..., weights_only=True)``: only tensors, numbers, strings and containers of
    them are rebuilt, so a file from a stranger cannot run code on load. Raises
    :class:`UnsafeCheckpointError` (a ValueError) naming the file when it holds other Python
    objects, and ValueError naming the file when it is missing, unreadable, or lacks one of
    ``required_keys`` (for dict checkpoints). ``allow_globals``: further plain classes or
    functions the unpickler may call (data constructors only, e.g. numpy's scalar type for
    checkpoints of other tools; never anything that can run arbitrary code).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(list(allow_globals)):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only refusals say "Weights only load failed" and name the global, e.g.
        # "Unsupported global: GLOBAL posix.system"; other unpickling errors mean a torn file.
        refused = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(err), re.IGNORECASE)
        if refused is None and not _pickle_calls_code(path):
            raise ValueError(f"cannot read checkpoint {path}: not a torch checkpoint or truncated") from None
        what = f" ({refused.group(1)})" if refused else ""
        raise UnsafeCheckpointError(
            f"refused to load {path}: it stores pickled Python objects{what}, and unpickling them "
            "could run arbitrary code. npga checkpoints hold only tensors and plain values; an "
            "avatar checkpoint of npga-taichi 0.1 (pickled avatar) that you made yourself can be "
            f"converted with `npga upgrade {path} --trust`.") from None
    except Exception as err:  # torch raises many types for corrupt/truncated files
        raise ValueError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from None
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
