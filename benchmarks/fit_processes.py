"""Avatar-fit speed: one process against data-parallel processes on this machine.

Continues a finished ``npga fit`` run (its Gaussians, networks and optimiser state: a step costs
what it costs late in a fit, at the run's full Gaussian count) for ``--steps`` steps in each
variant, one after the other in the same invocation, on throwaway copies of the run, without
densification, validation or checkpoints:

    one process, 1 view per step     (torch's default threads: the baseline)
    one process, 2 views per step    (2 frames, one deformation each)
    2 processes x 1 thread, 2 views  (one view each: the same steps as the previous variant)

Reports seconds per step, views per second and CPU use (all processes).

    python benchmarks/fit_processes.py --run RUN --steps 40 --out benchmarks/results/fit_processes.json

Run it alone on the machine: another job on the same cores changes every variant's figures.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from npga_taichi.avatar.config import load_configs
from npga_taichi.avatar.distributed import free_local_port, init_from_env, shutdown, torchrun_environment
from npga_taichi.avatar.fitting import prepare_training
from npga_taichi.prior.tracking import load_trackings
from npga_taichi.processes import available_cores, worker_pool

NEVER = 10 ** 9


def time_steps(run: Path, views: int, steps: int, warmup: int) -> dict:
    """Continue ``run`` (a copy) with ``views`` views per step; time ``steps`` steps after
    ``warmup`` untimed ones. Under torchrun's environment this process is one rank."""
    avatar_cfg, train_cfg, extra = load_configs(run)
    train_cfg = dataclasses.replace(train_cfg, steps=NEVER, views_per_step=views, cameras_per_frame=1,
                                    densify_from=NEVER, opacity_reset_interval=0, val_interval=NEVER,
                                    checkpoint_interval=NEVER, log_interval=NEVER)
    ctx = init_from_env("cpu")
    try:
        trainer = prepare_training(run, extra["data"], extra["participant"], load_trackings(extra["tracking"]),
                                   avatar_cfg, train_cfg, extra, resume=True, progress=False, dist=ctx)
        for _ in range(warmup):
            trainer.train_step()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            trainer.train_step()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return {"wall_s": wall, "cpu_s": cpu, "gaussians": len(trainer.avatar.gaussians),
                "threads": torch.get_num_threads(), "breakdown_ms_per_step": {
                    k: round(1000 * v / (steps + warmup), 1) for k, v in trainer.timings.items()}}
    finally:
        shutdown(ctx)


def _rank(rank: int, world: int, port: int, run: str, views: int, steps: int, warmup: int) -> dict:
    os.environ.update(torchrun_environment(rank, world, port))
    return time_steps(Path(run), views, steps, warmup)


def variant(run: Path, views: int, processes: int, steps: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="fit_processes_") as tmp:
        copy = Path(tmp) / "run"
        shutil.copytree(run, copy)
        if processes == 1:
            result = time_steps(copy, views, steps, warmup)
            cpu = result["cpu_s"]
        else:
            port = free_local_port()
            with worker_pool(processes) as pool:
                ranks = [job.get() for job in [pool.apply_async(_rank, (r, processes, port, str(copy), views,
                                                                          steps, warmup)) for r in range(processes)]]
            result, cpu = ranks[0], sum(r["cpu_s"] for r in ranks)
    wall = result["wall_s"]
    return {"processes": processes, "views_per_step": views, "steps": steps, "gaussians": result["gaussians"],
            "s_per_step": wall / steps, "steps_per_s": steps / wall, "views_per_s": views * steps / wall,
            "cpu_percent": 100 * cpu / wall, "threads_per_process": result["threads"],
            "breakdown_ms_per_step_rank0": result["breakdown_ms_per_step"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished `npga fit` run folder")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--processes", type=int, default=0, help="processes of the last variant (0: one per core)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    if not (args.run / "checkpoints" / "latest.pt").is_file():
        parser.error(f"--run {args.run}: no checkpoints/latest.pt (a finished `npga fit` run is needed)")
    world = args.processes or available_cores()
    rows = [variant(args.run, 1, 1, args.steps, args.warmup),
            variant(args.run, world, 1, args.steps, args.warmup),
            variant(args.run, world, world, args.steps, args.warmup)]
    base = rows[0]["views_per_s"]
    for row in rows:
        row["views_per_s_vs_baseline"] = row["views_per_s"] / base
        print(f"{row['processes']} process(es) x {row['threads_per_process']} thread(s), {row['views_per_step']} "
              f"view(s)/step: {row['s_per_step']:.3f} s/step, {row['views_per_s']:.2f} views/s "
              f"({row['views_per_s_vs_baseline']:.2f}x), CPU {row['cpu_percent']:.0f} %")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"run": str(args.run), "gaussians": rows[0]["gaussians"],
                                        "machine": {"platform": platform.platform(), "cores_available": available_cores()},
                                        "variants": rows}, indent=2))


if __name__ == "__main__":
    main()
