"""``npga eval RUN``: PSNR / SSIM (/ LPIPS) of an avatar on held-out data, whole image and
per region (eyes, mouth), plus expression fidelity (blink, jaw, brows) on synthetic captures.

By default every frame of the held-out sequences (FREE) is rendered from the held-out cameras
and compared with the capture, masked by the ground-truth alpha as NPGA evaluates. The work is
:func:`npga_taichi.evaluation.evaluate_run`; this module parses options and prints.
"""
from __future__ import annotations

import json
from pathlib import Path

import click


@click.command(name="eval", context_settings={"show_default": True})
@click.argument("run_dir", metavar="RUN", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--sequence", "-s", "sequences", multiple=True,
              help="Sequence(s) to evaluate (repeatable) [default: the held-out sequences, i.e. FREE].")
@click.option("--cameras", "camera_spec", default="holdout",
              help="holdout, train, all, or comma-separated camera serials.")
@click.option("--stride", type=click.IntRange(min=1), default=1, help="Evaluate every k-th frame.")
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="At most N frames per sequence.")
@click.option("--no-lpips", is_flag=True, help="Skip LPIPS even if its weights are on disk.")
@click.option("--no-fidelity", is_flag=True,
              help="Skip the expression ratios of synthetic captures (they re-render the true head).")
@click.option("--worst", "n_worst", type=click.IntRange(min=0), default=4,
              help="Number of lowest-PSNR images in OUT/worst.png.")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder [default: RUN/eval].")
@click.option("--curves", "compare_runs", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Another run whose training curve to draw beside RUN's in OUT/curves.png (repeatable).")
@click.option("--device", default="cpu", help="Torch device of the avatar (cpu, cuda).")
@click.option("--force", is_flag=True, help="Overwrite existing outputs in OUT.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of a table.")
def command(run_dir, sequences, camera_spec, stride, max_frames, no_lpips, no_fidelity, n_worst, out, compare_runs,
            device, force, as_json):
    """Measure avatar RUN on held-out sequences and cameras.

    Writes OUT/metrics.csv (one row per frame and camera), OUT/summary.json, OUT/worst.png
    (ground truth | render | 4x error of the worst frames) and, for synthetic captures,
    OUT/expressions.png (truth | avatar | truth without the expression, cropped to the eyes,
    mouth and brows where each is most visible). Besides whole-image PSNR / SSIM
    (LPIPS only when its weights are already on disk), a synthetic capture (`npga synth`) also
    gets PSNR / SSIM inside the eye and mouth regions (from its label maps) and the median
    blink / jaw / brow ratios: mean|avatar - truth| / mean|avatar - truth without the
    expression| where the expression changes the image (< 1: the avatar shows it). A real
    capture gets the whole-image numbers, and the output says so. PSNR and PSNR(mask) composite
    the render with the true matte (NPGA's convention: what the avatar draws outside the matte
    is free); PSNR(all) takes the render as drawn, so silhouette spill and floaters count.

    \b
    Examples:
      npga eval runs/me                       # FREE sequence, held-out cameras -> runs/me/eval/
      npga eval runs/me --cameras all --stride 5 --json
      npga eval runs/me --curves runs/static   # also OUT/curves.png: both training curves
    """
    from npga_taichi.evaluation import evaluate_run, format_table, json_safe

    try:
        summary = evaluate_run(run_dir, out or run_dir / "eval", list(sequences), camera_spec, stride, max_frames,
                                 not no_lpips, n_worst, device, force, progress=not as_json,
                                 expression_fidelity=not no_fidelity, compare_runs=compare_runs)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        raise click.ClickException(str(err)) from None
    if as_json:
        click.echo(json.dumps(json_safe(summary)))
    else:
        click.echo(format_table(summary))
        click.echo(f"per-frame metrics: {summary['outputs']['csv']}")
        if summary["outputs"]["worst"]:
            click.echo(f"worst frames:      {summary['outputs']['worst']}")
        if summary["outputs"].get("curves"):
            click.echo(f"training curves:   {summary['outputs']['curves']}")
        if summary["outputs"]["expressions"]:
            click.echo(f"expression crops:  {summary['outputs']['expressions']} (truth | avatar | truth without)")
