"""Where one ablation arm beats another, frame by frame: held-out PSNR differences per frame.

Each arm is a list of evaluated runs (``npga eval RUN`` writes ``RUN/eval/metrics.csv``, one row
per held-out (sequence, timestep, camera)), usually the seeds of one setting. For every held-out
frame, the arm's mean PSNR over its seeds and the held-out cameras minus the reference arm's, in
dB, for the whole image, the matte, the eyes and the mouth; a whole-image mean hides whether an
arm loses everywhere a little (a static error) or on a few expressions a lot (a dynamic one).

    python benchmarks/ablation_frames.py --arm "G, no noise" A0 A1 A2 --arm "G, code noise" B0 B1 B2 \
        --reference "no detail" C0 C1 C2 --out F.json --figure F.png

The figure draws each arm's difference against the held-out frame, one panel per metric.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METRICS = ("psnr", "psnr_masked", "psnr_eyes", "psnr_mouth")


def read_metrics(run: str | Path) -> dict[tuple[str, int, str], dict[str, float]]:
    """(sequence, timestep, camera) -> the row's metrics, from ``RUN/eval/metrics.csv`` (or a CSV
    path); ValueError naming the file when it is missing or has none of :data:`METRICS`."""
    from npga_taichi.evaluation import read_csv

    path = Path(run)
    path = path if path.suffix == ".csv" else path / "eval" / "metrics.csv"
    if not path.is_file():
        raise ValueError(f"{path}: no metrics (run `npga eval` on the run first)")
    rows = {}
    for row in read_csv(path):
        if any(row.get(k) is None for k in METRICS):
            raise ValueError(f"{path}: expected values in the columns {METRICS} of `npga eval`'s metrics.csv")
        rows[(row["sequence"], row["timestep"], row["camera"])] = {k: row[k] for k in METRICS}
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def arm_means(runs: list[str | Path]) -> dict[tuple[str, int], dict[str, float]]:
    """(sequence, timestep) -> each metric's mean over the runs and held-out cameras. Every run
    must cover the same views (ValueError otherwise)."""
    tables = [read_metrics(r) for r in runs]
    keys = set(tables[0])
    for run, table in zip(runs[1:], tables[1:]):
        if set(table) != keys:
            raise ValueError(f"{run}: its held-out views differ from {runs[0]}'s")
    frames: dict[tuple[str, int], dict[str, list[float]]] = {}
    for table in tables:
        for (seq, t, _), values in table.items():
            slot = frames.setdefault((seq, t), {k: [] for k in METRICS})
            for k in METRICS:
                slot[k].append(values[k])
    return {key: {k: float(np.mean(v)) for k, v in slot.items()} for key, slot in sorted(frames.items())}


def frame_differences(arm: dict, reference: dict) -> dict[str, list]:
    """Per frame (in ``reference``'s order): ``frames`` labels and each metric's arm − reference."""
    if set(arm) != set(reference):
        raise ValueError("the arm and the reference were evaluated on different held-out frames")
    keys = list(reference)
    out: dict[str, list] = {"frames": [f"{s}/{t}" for s, t in keys]}
    for k in METRICS:
        out[k] = [arm[key][k] - reference[key][k] for key in keys]
    return out


def plot(result: dict, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.4), sharex=True)
    for ax, metric in zip(axes, METRICS):
        for name, diff in result["arms"].items():
            ax.plot(range(len(diff["frames"])), diff[metric], marker="o", ms=3,
                    label=f"{name} (mean {np.mean(diff[metric]):+.2f})")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_title(f"{metric} − {result['reference']['name']} (dB)")
        ax.set_xlabel("held-out frame")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arm", nargs="+", action="append", required=True, metavar=("NAME", "RUN"),
                    help="an arm's name, then its evaluated runs (repeat for several arms)")
    ap.add_argument("--reference", nargs="+", required=True, metavar=("NAME", "RUN"),
                    help="the arm the others are compared with: its name, then its runs")
    ap.add_argument("--out", required=True, help="JSON with every frame's differences")
    ap.add_argument("--figure", help="PNG of the differences against the held-out frame")
    args = ap.parse_args(argv)
    for spec in args.arm + [args.reference]:
        if len(spec) < 2:
            ap.error(f"{spec[0]!r}: give a name, then at least one run")
    try:
        reference = arm_means(args.reference[1:])
        result = {"reference": {"name": args.reference[0], "runs": args.reference[1:]},
                  "arms": {}, "runs": {}}
        for name, *runs in args.arm:
            result["arms"][name] = frame_differences(arm_means(runs), reference)
            result["runs"][name] = runs
    except ValueError as err:
        ap.exit(2, f"error: {err}\n")
    Path(args.out).write_text(json.dumps(result, indent=2))
    if args.figure:
        plot(result, args.figure)
    for name, diff in result["arms"].items():
        means = ", ".join(f"{k} {np.mean(diff[k]):+.2f}" for k in METRICS)
        worst = int(np.argmin(diff["psnr"]))
        print(f"{name} − {args.reference[0]}: {means}; worst frame {diff['frames'][worst]} "
              f"{diff['psnr'][worst]:+.2f} dB")
    return result


if __name__ == "__main__":
    main()
