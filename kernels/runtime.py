"""Taichi runtime: picks the arch, initialises Taichi exactly once, keeps the offline cache.

Every module that launches a Taichi kernel calls :func:`ensure_initialized` (cheap after the
first call) and :func:`check_device` on the tensors it hands to a kernel, so a CUDA tensor is
never passed to a CPU-initialised Taichi (or the reverse) without a clear error.

The arch is chosen, in order, by the ``arch`` argument of the first :func:`init` call, the
``NPGA_ARCH`` environment variable, or ``auto``: CUDA when torch sees a GPU, else CPU.
The offline cache lives in ``NPGA_TAICHI_CACHE`` (default ``~/.cache/npga_taichi/ticache``) so
cold ``.grad`` kernel compiles are paid once per machine, not once per process.
"""
from __future__ import annotations

import atexit
import contextlib
import io
import os
import threading

import taichi as ti

ARCHES = ("auto", "cpu", "cuda")

_lock = threading.Lock()
_arch: str | None = None  # "cpu" or "cuda" once initialised


def default_cache_dir() -> str:
    """Directory of Taichi's offline kernel cache (created on demand)."""
    path = os.environ.get("NPGA_TAICHI_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "npga_taichi", "ticache"
    )
    os.makedirs(path, exist_ok=True)
    return path


def _resolve(arch: str) -> str:
    if arch not in ARCHES:
        raise ValueError(f"arch must be one of {ARCHES}, got {arch!r}")
    if arch != "auto":
        return arch
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:  # torch missing or broken CUDA: the CPU always works
        return "cpu"


def init(arch: str | None = None) -> str:
    """Initialise Taichi once and return the arch in use ("cpu" or "cuda").

    A second call asking for a different explicit arch raises: Taichi's arch is process-global
    and re-initialising would invalidate every kernel and field already built.
    """
    global _arch
    with _lock:
        wanted = arch or os.environ.get("NPGA_ARCH", "auto")
        if _arch is not None:
            if wanted not in ("auto", _arch):
                raise ValueError(
                    f"Taichi is already initialised on {_arch!r}; cannot switch to {wanted!r} "
                    "in the same process"
                )
            return _arch
        resolved = _resolve(wanted)
        # ti.init prints "[Taichi] Starting on arch=..." on stdout, which would corrupt `--json`
        # output; current_arch() reports the arch instead.
        with contextlib.redirect_stdout(io.StringIO()):
            ti.init(
                arch=ti.cuda if resolved == "cuda" else ti.cpu,
                offline_cache=True,
                offline_cache_file_path=default_cache_dir(),
                log_level=ti.WARN,
            )
        _arch = resolved
        atexit.register(_write_kernel_cache)
        return _arch


def _write_kernel_cache() -> None:
    """Tear Taichi down at exit so it writes the offline cache. Taichi writes it only when its
    program object is destroyed, which interpreter shutdown does not guarantee: `npga fit`
    exited without writing it (every run then recompiled ~15 s of kernels) while a short script
    doing the same renders wrote it."""
    if _arch is not None:
        with contextlib.suppress(Exception):  # never turn a clean exit into a traceback
            ti.reset()


# Taichi's CPU backend runs a parallel loop of fewer than ~1024 iterations on one thread
# (measured on 2 cores: 256 iterations of equal work take as long with 2 threads as with 1,
# whatever the loop's block_dim; 1024 run on both). Loops over few, large work items (tiles,
# radix-sort blocks) therefore run over ``items * spread`` slots of which every ``spread``-th
# does the work.
PARALLEL_MIN_ITERATIONS = 1024


def parallel_spread(n_items: int, on_cpu: bool) -> int:
    """Slots per work item that make a loop over ``n_items`` parallel on the CPU (1 on a GPU,
    where every item is already a thread)."""
    return max(1, -(-PARALLEL_MIN_ITERATIONS // max(n_items, 1))) if on_cpu else 1


def ensure_initialized() -> str:
    """Initialise with the default arch if nobody has yet; return the arch in use."""
    return _arch if _arch is not None else init()


def current_arch() -> str | None:
    """The arch Taichi was initialised with, or None before :func:`init`."""
    return _arch


def check_device(name: str, tensor) -> None:
    """Raise a ValueError naming ``name`` if ``tensor`` lives where Taichi cannot read it."""
    arch = ensure_initialized()
    dev = tensor.device.type
    if arch == "cpu" and dev != "cpu":
        raise ValueError(f"{name} is on {tensor.device} but Taichi runs on the CPU (set NPGA_ARCH=cuda)")
    if arch == "cuda" and dev != "cuda":
        raise ValueError(f"{name} is on {tensor.device} but Taichi runs on CUDA; move inputs to the GPU")
