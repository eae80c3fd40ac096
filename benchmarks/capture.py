"""`npga synth` speed: the synthetic capture (render + PNG/point-cloud writing), old code vs new.

Each variant runs ``npga synth`` in its own process (``PYTHONPATH`` = the variant's code, so a
copy of older code can be timed against this checkout) and is measured by wall time and by CPU
time of the process and its children (the frame writer is a child process). On a busy machine
(other jobs on the 2 cores) wall time mostly measures the competition: compare variants run
alternately in the same minutes (``--repeats``), and read the CPU times too. The first run of
each variant also pays the Taichi kernel compile if the offline cache is cold, so run once to
warm it (``--warmup``).

With ``--compare`` the captures the variants wrote in their last repeat are compared file by file
(bytes) and, where PNGs differ, pixel by pixel (max / mean absolute difference).

    python benchmarks/capture.py --out /tmp/capture.json -- --sequences EXP-1,EMO-4 --frames 5
    python benchmarks/capture.py --variant old=/tmp/base/pkg --variant new=. --repeats 2 --compare \\
        --out /tmp/capture_ab.json -- --sequences EXP-1,EMO-4 --frames 5
    python benchmarks/capture.py --out /tmp/capture_full.json            # default preset, this checkout

Arguments after ``--`` go to ``npga synth`` (``--identity`` defaults to 7).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def run_synth(code: Path, out: Path, synth_args: list[str]) -> dict:
    """One ``npga synth`` run of the code at ``code``; wall and CPU seconds (with children)."""
    env = dict(os.environ, PYTHONPATH=str(code))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", "from npga_taichi.cli.main import cli; cli()", "synth", str(out),
                           "--json", *synth_args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"npga synth ({code}) failed:\n{proc.stderr[-2000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"wall_s": round(wall, 2), "synth_seconds": summary["seconds"],
            "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2),
            "frames": summary["frames_written"], "cameras": summary["cameras"], "image_size": summary["image_size"]}


def compare_captures(a: Path, b: Path) -> dict:
    """File-by-file comparison of two capture folders: identical files, differing files, and for
    differing PNGs the max / mean absolute pixel difference (0..255)."""
    import imageio.v3 as iio

    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    if files_a != files_b:
        return {"same_file_list": False, "only_a": [str(p) for p in set(files_a) - set(files_b)][:20],
                "only_b": [str(p) for p in set(files_b) - set(files_a)][:20]}
    identical, differing, max_diff, sum_diff, n_px = 0, [], 0, 0.0, 0
    for rel in files_a:
        if (a / rel).read_bytes() == (b / rel).read_bytes():
            identical += 1
            continue
        differing.append(str(rel))
        if rel.suffix == ".png":
            d = np.abs(iio.imread(a / rel).astype(np.int16) - iio.imread(b / rel).astype(np.int16))
            max_diff = max(max_diff, int(d.max()))
            sum_diff += float(d.sum())
            n_px += d.size
    return {"same_file_list": True, "files": len(files_a), "identical": identical, "differing": len(differing),
            "differing_examples": differing[:10], "png_max_abs_diff": max_diff,
            "png_mean_abs_diff_over_differing": sum_diff / n_px if n_px else 0.0}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", action="append", default=None, metavar="NAME=PATH",
                        help="code to time (a folder holding the npga_taichi package); repeatable "
                             "[default: this checkout as 'new']")
    parser.add_argument("--repeats", type=int, default=1, help="alternating rounds over the variants")
    parser.add_argument("--warmup", action="store_true", help="one untimed tiny capture per variant first")
    parser.add_argument("--compare", action="store_true", help="compare the last round's captures file by file")
    parser.add_argument("--keep", type=Path, default=None, help="write captures here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON result here")
    parser.add_argument("synth_args", nargs="*", help="arguments for npga synth (after --)")
    args = parser.parse_args(argv)
    variants = {}
    for item in args.variant or [f"new={REPO}"]:
        name, _, path = item.partition("=")
        if not path or not (Path(path) / "npga_taichi").is_dir():
            parser.error(f"--variant {item!r}: expected NAME=PATH with PATH/npga_taichi")
        variants[name] = Path(path).resolve()
    synth_args = list(args.synth_args)
    if "--identity" not in synth_args:
        synth_args += ["--identity", "7"]
    root = args.keep or Path(tempfile.mkdtemp(prefix="npga_capture_bench_"))
    root.mkdir(parents=True, exist_ok=True)
    if args.warmup:
        for name, code in variants.items():
            run_synth(code, root / f"warmup_{name}", ["--preset", "tiny", "--frames", "1", "--sequences", "EXP-1",
                                                      "--force"])
    runs = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, code in variants.items():
            out = root / name
            shutil.rmtree(out, ignore_errors=True)
            runs[name].append(run_synth(code, out, synth_args))
            print(name, runs[name][-1], flush=True)
    result = {
        "benchmark": "capture", "synth_args": synth_args, "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg(),
        "variants": {name: str(code) for name, code in variants.items()}, "runs": runs,
        "median_wall_s": {n: float(np.median([r["wall_s"] for r in rs])) for n, rs in runs.items()},
        "median_cpu_s": {n: float(np.median([r["cpu_s"] for r in rs])) for n, rs in runs.items()},
    }
    if args.compare and len(variants) >= 2:
        names = list(variants)
        result["comparison"] = {f"{names[0]} vs {n}": compare_captures(root / names[0], root / n) for n in names[1:]}
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text)
    print(text)
    return result


if __name__ == "__main__":
    main()
