"""Ctrl-C as a terminal sends it: SIGINT to a command's whole process group (test helper)."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) process ids whose process group is ``pgid`` (Linux /proc)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def interrupt_when(cmd: list[str], ready: Callable[[int], bool], settle_s: float = 0.0,
                   start_timeout_s: float = 240) -> tuple[int, str, float]:
    """Start ``cmd`` in its own process group (SIGINT at its default), wait until ``ready(pgid)``
    and then ``settle_s`` more, send SIGINT to the group. Returns (exit code, output, seconds
    from the signal to the exit); asserts the command was still running when interrupted and
    that nothing of its group outlives it by more than 20 s."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: (signal.signal(signal.SIGINT, signal.SIG_DFL), os.setsid()))
    try:
        deadline = time.time() + start_timeout_s
        while not ready(proc.pid) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        time.sleep(settle_s)
        assert proc.poll() is None, proc.communicate()[0]
        os.killpg(proc.pid, signal.SIGINT)
        start = time.time()
        output, _ = proc.communicate(timeout=60)
        stopped_after = time.time() - start
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.time() + 20  # multiprocessing's resource tracker leaves once the parent is gone
    while group_members(proc.pid) and time.time() < deadline:
        time.sleep(0.5)
    assert group_members(proc.pid) == [], "processes outlived Ctrl-C"
    return proc.returncode, output, stopped_after
