"""Training curves as a picture: held-out PSNR against wall time and against step.

Read from a run's ``log.jsonl`` (one record per log interval; validation records carry
``val_psnr`` / ``val_masked_psnr`` and every record ``elapsed``, the training seconds so far).
``npga fit`` redraws ``RUN/curve.png`` after every validation; :func:`plot_runs` draws several
runs in one figure (``npga eval RUN --curves RUN2 ...``, ``benchmarks/train.py --curve``), so
"is it still improving, and is this run better than that one?" is answered by looking.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def read_curve(run_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """Arrays of one run: ``step``, ``elapsed`` (s), ``val_psnr``, ``val_masked_psnr`` at the
    validation records, and ``train_step`` / ``train_psnr`` at every logged step. Torn or
    foreign lines are skipped; ValueError naming the file if it has no log at all."""
    log = Path(run_dir) / "log.jsonl"
    if not log.is_file():
        raise ValueError(f"no training log at {log}")
    val, train = [], []
    for line in log.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict) or "step" not in rec:
            continue
        if "val_psnr" in rec:
            val.append((rec["step"], rec.get("elapsed", np.nan), rec["val_psnr"],
                        rec.get("val_masked_psnr", np.nan)))
        if "psnr" in rec:
            train.append((rec["step"], rec["psnr"]))
    v = np.asarray(val, dtype=np.float64).reshape(-1, 4)
    t = np.asarray(train, dtype=np.float64).reshape(-1, 2)
    return {"step": v[:, 0], "elapsed": v[:, 1], "val_psnr": v[:, 2], "val_masked_psnr": v[:, 3],
            "train_step": t[:, 0], "train_psnr": t[:, 1]}


def plot_runs(runs: dict[str, str | os.PathLike], out: str | os.PathLike, title: str | None = None) -> Path:
    """Draw held-out masked PSNR vs wall time (left) and vs step (right) of ``runs``
    (label -> run folder) into PNG ``out`` (written atomically); returns the path."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; also safe inside servers and worker threads
    import matplotlib.pyplot as plt

    from npga_taichi.checkpoint import atomic_path

    fig, (ax_time, ax_step) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=110)
    for i, (label, run) in enumerate(runs.items()):
        c = read_curve(run)
        colour = f"C{i}"
        y = np.where(np.isfinite(c["val_masked_psnr"]), c["val_masked_psnr"], c["val_psnr"])
        ax_time.plot(c["elapsed"] / 60.0, y, "o-", color=colour, label=label, ms=3)
        ax_step.plot(c["step"], y, "o-", color=colour, label=f"{label} (held out)", ms=3)
        if len(c["train_step"]) > 1:
            k = max(1, len(c["train_psnr"]) // 50)
            smooth = np.convolve(c["train_psnr"], np.ones(k) / k, mode="valid")
            ax_step.plot(c["train_step"][k - 1:], smooth, color=colour, alpha=0.3, lw=1,
                         label=f"{label} (training views)")
    ax_time.set_xlabel("training wall time (min)")
    ax_step.set_xlabel("step")
    for ax in (ax_time, ax_step):
        ax.set_ylabel("PSNR (dB)")
        ax.grid(alpha=0.3)
    ax_step.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(out)
