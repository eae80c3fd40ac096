"""Local worker processes on one machine: how many cores we may use, one torch thread per
worker, and a pool that Ctrl-C stops at once.

Used where work splits into independent pieces too small to share between threads (tracking:
one sequence per worker) or where data-parallel ranks beat threads (the avatar fit: one rank per
core, see :mod:`npga_taichi.avatar.distributed`).
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from typing import Iterator

import torch
from tqdm import tqdm


def available_cores() -> int:
    """CPU cores this process may run on (its affinity where the OS reports one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the block on one torch thread (and restore the count after it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _init_worker() -> None:
    """A worker: one torch thread; Ctrl-C is the parent's to handle (it stops the pool).
    tqdm gets a thread lock: its default inter-process lock is a semaphore that a stopped worker
    would leave behind (a "leaked semaphore" warning at exit)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    tqdm.set_lock(threading.RLock())


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[multiprocessing.pool.Pool]:
    """A pool of ``workers`` spawned processes (not forked: the parent may hold torch's and
    Taichi's thread pools), one torch thread each, ignoring SIGINT. Leaving the block normally
    waits for the workers; an exception (Ctrl-C, a failed job) terminates them at once."""
    pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker)
    try:
        yield pool
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
