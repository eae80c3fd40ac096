"""`npga track` speed: one process (the baseline) against the sequences spread over processes.

Both variants track the same capture with the same prior and settings into throwaway copies
(symlinks to the capture's files, without its tracks: those are never touched), in the same
run, one after the other: wall time, CPU time (this process and its workers) and the steps per
second. The tracks of the two are compared (largest difference of codes and poses): spreading
the work must not change the result. With ``--evaluate`` both are graded against the synthetic
capture's ground truth (Chamfer, rotation, translation); the grading then counts in the times.

    python benchmarks/tracking.py --capture CAP/242 --steps 50 --out benchmarks/results/tracking.json
    python benchmarks/tracking.py --capture CAP/242 --sequences EXP-1,EXP-2,EMO-1,FREE --steps 25

Run it alone on the machine: another job on the same cores changes both variants' figures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from npga_taichi.prior.pretrained import SHIPPED_PRIOR
from npga_taichi.prior.tracking import load_trackings, track_capture
from npga_taichi.processes import available_cores

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.tracking
    from photometric_multiview import link_copy
except ImportError:  # pragma: no cover
    from benchmarks.photometric_multiview import link_copy


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the worker processes)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_variant(pdir: Path, root: Path, workers: int, args) -> tuple[dict, dict]:
    copy = link_copy(pdir, root / f"workers{workers}", point_clouds=True)
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    result = track_capture(copy, args.prior, sequences=args.sequences, steps_first=args.steps_first,
                           steps=args.steps, evaluate=args.evaluate, force=True, progress=False, workers=workers)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    steps = sum(s.get("steps", 0) for s in result["sequences"].values())
    row = {"workers": workers, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "steps": steps,
           "steps_per_s": round(steps / wall, 1), "frames": sum(s["frames"] for s in result["sequences"].values())}
    if args.evaluate:
        ev = [s["evaluation"] for s in result["sequences"].values()]
        row["evaluation_mean"] = {k: round(float(np.mean([e[k] for e in ev])), 4)
                                  for k in ("chamfer_mm_mean", "rotation_deg_mean", "translation_mm_mean")}
    return row, load_trackings(result["tracking_dir"])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--capture", type=Path, required=True, help="participant folder of a capture")
    parser.add_argument("--prior", type=Path, default=SHIPPED_PRIOR, help="prior folder [default: the shipped one]")
    parser.add_argument("--sequences", default=None, help="comma-separated sequences [default: all]")
    parser.add_argument("--steps", type=int, default=None, help="steps per later frame [default: npga track's]")
    parser.add_argument("--steps-first", type=int, default=None, help="steps of first frames [default: npga track's]")
    parser.add_argument("--workers", type=int, default=None, help="processes of the parallel variant "
                        "[default: one per core]")
    parser.add_argument("--evaluate", action="store_true", help="grade both against the ground truth (the "
                        "grading runs in the parent and counts in the times: time without it)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON result here")
    args = parser.parse_args(argv)
    if args.sequences:
        args.sequences = args.sequences.split(",")
    workers = args.workers or available_cores()
    if workers < 2:
        parser.error("the parallel variant needs 2 or more workers (this machine offers one core)")
    root = Path(tempfile.mkdtemp(prefix="npga_tracking_bench_"))
    try:
        one, tracks_one = run_variant(args.capture, root, 1, args)
        print("one process", one, flush=True)
        many, tracks_many = run_variant(args.capture, root, workers, args)
        print(f"{workers} processes", many, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    diff = {name: float(max(np.abs(getattr(tracks_one[s], name) - getattr(tracks_many[s], name)).max()
                            for s in tracks_one)) for name in ("z_exp", "z_geo", "rot", "trans")}
    result = {
        "benchmark": "tracking", "capture": str(args.capture), "prior": str(args.prior),
        "steps": args.steps, "steps_first": args.steps_first, "sequences": args.sequences,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "cores_available": available_cores(),
                    "torch_threads": torch.get_num_threads(), "load_average_at_end": os.getloadavg()},
        "one_process": one, "parallel": many, "speedup_wall": round(one["wall_s"] / many["wall_s"], 2),
        "max_abs_difference": diff,
    }
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text)
    print(text)
    return result


if __name__ == "__main__":
    main()
