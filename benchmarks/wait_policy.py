"""Wall time of one ``npga`` command under torch's OpenMP wait settings, alternated in one run.

``npga_taichi`` sets a short spin (``GOMP_SPINCOUNT=30000``) before torch loads libgomp unless the
user set ``OMP_WAIT_POLICY`` (see ``npga_taichi/__init__.py``). This runs the same command as a
fresh process under that default, under ``OMP_WAIT_POLICY=PASSIVE`` (the earlier default, the
baseline) and under libgomp's own default (a long spin), round-robin ``--repeats`` times so that
a busy or throttled moment of the machine hits every setting alike, and reports each run's wall
seconds and, when the command prints ``--json`` with ``seconds_per_frame``, that figure:

    python benchmarks/wait_policy.py --out benchmarks/results/wait_policy.json --repeats 2 -- \\
        track-video V/frames --prior P --mattes V/mattes --labels V/labels --landmarks L.json \\
        --K K.json --avatar RUN

The command's ``--out`` is added (a temporary file per run), with ``--json --quiet --force``.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

SETTINGS = {  # name -> environment changes; "" leaves libgomp at its own default
    "short spin (default)": {},
    "passive (baseline)": {"OMP_WAIT_POLICY": "PASSIVE"},
    "libgomp default spin": {"OMP_WAIT_POLICY": ""},
}


def run_once(args: list[str], env_changes: dict, out: Path) -> dict:
    """One fresh ``npga`` process; returns wall seconds and its printed JSON (or None)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(env_changes)
    cmd = [sys.executable, "-m", "npga_taichi.cli.main", *args, "--out", str(out), "--json", "--quiet", "--force"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise click.ClickException(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    try:
        printed = json.loads(proc.stdout)
    except json.JSONDecodeError:
        printed = None
    return {"wall_s": wall, "seconds_per_frame": (printed or {}).get("seconds_per_frame")}


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--repeats", type=click.IntRange(min=1), default=2, show_default=True,
              help="Runs per setting, round-robin over the settings.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None, help="Also write the JSON here.")
@click.argument("args", nargs=-1, type=click.UNPROCESSED, required=True)
def main(repeats, out_path, args):
    """Time the npga command ARGS (after --) under each OpenMP wait setting."""
    runs = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for name, changes in SETTINGS.items():
                result = run_once(list(args), changes, Path(tmp) / f"out_{r}.npz")
                runs[name].append(result)
                click.echo(f"{name:24s} run {r + 1}: {result['wall_s']:.1f} s wall, "
                           f"{result['seconds_per_frame']} s / frame", err=True)
    summary = {name: {"wall_s_median": statistics.median(x["wall_s"] for x in rs),
                      "seconds_per_frame_median": (statistics.median(x["seconds_per_frame"] for x in rs)
                                                   if all(x["seconds_per_frame"] is not None for x in rs) else None),
                      "runs": rs} for name, rs in runs.items()}
    result = {"command": ["npga", *args], "repeats": repeats, "cpus": os.cpu_count(),
              "settings": SETTINGS, "results": summary}
    if out_path:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_text(json.dumps(result, indent=2))
    click.echo(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
