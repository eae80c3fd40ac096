"""``npga eval RUN``: PSNR / SSIM (/ LPIPS) of an avatar on held-out data.

By default every frame of the held-out sequences (FREE) is rendered from the held-out cameras
and compared with the capture, masked by the ground-truth alpha as NPGA evaluates (see
:mod:`npga_taichi.evaluation`). Writes ``OUT/metrics.csv`` (one row per frame and camera),
``OUT/summary.json`` and ``OUT/worst.png`` (ground truth | render | 4x error of the worst frames).
LPIPS is reported only when its weights are already on disk; otherwise it is "n/a" / null.
"""
from __future__ import annotations

import json
from pathlib import Path

import click


def select_cameras(run, spec: str) -> list[str]:
    """'holdout' | 'train' | 'all' | comma-separated serials -> serials (clear error if unknown)."""
    from npga_taichi.data.nersemble import select_cameras as parse

    try:
        return parse(sorted(run.cameras), spec, run.heldout_cameras())
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--cameras") from None


def eval_items(run, sequences: list[str], serials: list[str], stride: int, max_frames: int | None):
    """Yield :class:`EvalItem` per (frame, camera); each frame's Gaussians are built once."""
    from npga_taichi.evaluation import EvalItem
    from npga_taichi.reenactment import ground_truth

    for seq in sequences:
        drive = run.drive(seq)
        for i in list(range(0, len(drive), stride))[:max_frames]:
            g = run.gaussians(drive.frame(i))
            t = int(drive.timesteps[i])
            for serial in serials:
                gt, alpha = ground_truth(run, seq, t, serial)
                yield EvalItem(seq, t, serial, run.render(g, run.camera(serial)), gt, alpha)


def run_evaluation(run_dir: Path, out: Path, sequences=None, camera_spec="holdout", stride=1, max_frames=None,
                   use_lpips=True, n_worst=4, device="cpu", force=False, progress=True) -> dict:
    """Evaluate ``run_dir`` and write metrics.csv, summary.json, worst.png into ``out``; return the summary."""
    from npga_taichi.evaluation import evaluate, write_csv, write_summary, write_worst_image
    from npga_taichi.reenactment import LoadedRun

    names = ("metrics.csv", "summary.json", "worst.png")
    existing = [n for n in names if (out / n).exists()]
    if existing and not force:
        raise click.ClickException(f"{out} already holds {', '.join(existing)}; pass --force to overwrite")
    try:
        run = LoadedRun(run_dir, device=device)
        serials = select_cameras(run, camera_spec)
        if not serials:
            raise click.ClickException(f"no cameras selected by --cameras {camera_spec}")
        if not sequences:
            sequences = run.heldout_sequences()
            if not sequences:
                raise click.ClickException("the capture has no held-out sequence; pass --sequence")
        total_frames = 0
        for seq in sequences:
            total_frames += len(list(range(0, len(run.drive(seq)), stride))[:max_frames])
        result = evaluate(eval_items(run, list(sequences), serials, stride, max_frames),
                          background=run.background.tolist(), use_lpips=use_lpips, n_worst=n_worst,
                          progress=progress, total=total_frames * len(serials))
    except (ValueError, KeyError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary()
    summary["run"] = str(run_dir)
    summary["stride"] = stride
    write_csv(result, out / "metrics.csv")
    worst = write_worst_image(result, out / "worst.png")
    summary["outputs"] = {"csv": str(out / "metrics.csv"), "summary": str(out / "summary.json"),
                          "worst": str(worst) if worst else None}
    summary["worst_frames"] = [{"sequence": s.sequence, "timestep": s.timestep, "camera": s.camera,
                                "psnr": s.psnr} for s, _ in result.worst]
    write_summary(summary, out / "summary.json")
    return summary


@click.command(name="eval", context_settings={"show_default": True})
@click.argument("run_dir", metavar="RUN", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--sequence", "-s", "sequences", multiple=True,
              help="Sequence(s) to evaluate (repeatable) [default: the held-out sequences, i.e. FREE].")
@click.option("--cameras", "camera_spec", default="holdout",
              help="holdout, train, all, or comma-separated camera serials.")
@click.option("--stride", type=click.IntRange(min=1), default=1, help="Evaluate every k-th frame.")
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="At most N frames per sequence.")
@click.option("--no-lpips", is_flag=True, help="Skip LPIPS even if its weights are on disk.")
@click.option("--worst", "n_worst", type=click.IntRange(min=0), default=4,
              help="Number of lowest-PSNR images in OUT/worst.png.")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder [default: RUN/eval].")
@click.option("--device", default="cpu", help="Torch device of the avatar (cpu, cuda).")
@click.option("--force", is_flag=True, help="Overwrite existing outputs in OUT.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of a table.")
def command(run_dir, sequences, camera_spec, stride, max_frames, no_lpips, n_worst, out, device, force, as_json):
    """Measure PSNR / SSIM (/ LPIPS) of avatar RUN on held-out sequences and cameras.

    \b
    Examples:
      npga eval runs/me                       # FREE sequence, held-out cameras -> runs/me/eval/
      npga eval runs/me --cameras all --stride 5 --json
    """
    from npga_taichi.evaluation import format_table, json_safe

    summary = run_evaluation(run_dir, out or run_dir / "eval", list(sequences), camera_spec, stride, max_frames,
                             not no_lpips, n_worst, device, force, progress=not as_json)
    if as_json:
        click.echo(json.dumps(json_safe(summary)))
    else:
        click.echo(format_table(summary))
        click.echo(f"per-frame metrics: {summary['outputs']['csv']}")
        if summary["outputs"]["worst"]:
            click.echo(f"worst frames:      {summary['outputs']['worst']}")
