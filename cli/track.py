"""``npga track``: per-frame expression codes and head pose of a capture, fitted with the prior.

The work is :func:`npga_taichi.prior.tracking.track_capture`; this module parses and prints.
"""
from __future__ import annotations

import json
from pathlib import Path

import click


@click.command(name="track")
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--prior", "prior_dir", type=click.Path(exists=True, path_type=Path), default=None,
              help="Prior directory from `npga prior fit` / `npga prior import`.")
@click.option("--participant", default=None,
              help="Participant id when DATA is the capture root [default: DATA is the participant "
                   "folder, or the only participant in it].")
@click.option("--sequences", default=None,
              help="Comma-separated sequences to track [default: all].")
@click.option("--per-sequence-identity", is_flag=True,
              help="Fit identity and scale on the first frame of every sequence instead of once "
                   "(first sequence) for the whole capture.")
@click.option("--steps-first", type=click.IntRange(min=1), default=None,
              help="Steps for the first frame [default: 400].")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Steps for every later frame [default: 25].")
@click.option("--points", type=click.IntRange(min=1), default=None,
              help="Points subsampled per frame [default: 1500].")
@click.option("--import-mononphm", "import_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Instead of fitting, import MonoNPHM's tracking output folder (per "
              "frame z_exp.npy, rot.npy, trans.npy, scale.npy) as sequence --sequences.")
@click.option("--evaluate", is_flag=True,
              help="Synthetic captures only: grade the tracks against groundtruth/ (Chamfer, pose).")
@click.option("--force", is_flag=True, help="Re-track sequences that already have tracking files.")
@click.option("--json", "as_json", is_flag=True, help="Print the per-sequence summary as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def command(data: Path, prior_dir: Path | None, participant: str | None, sequences: str | None,
            per_sequence_identity: bool, steps_first: int | None, steps: int | None,
            points: int | None, import_dir: Path | None, evaluate: bool, force: bool,
            as_json: bool, quiet: bool) -> None:
    """Track every frame of the capture DATA against its point clouds.

    Writes DATA/<pid>/annotations/tracking/<SEQ>.npz (+ .json summary) with expression codes,
    identity codes, rotation, translation, scale and the fit residual per frame. Sequences whose
    file exists are skipped (resume) unless --force. Point rows with NaN/Inf are dropped (and
    counted); anything in sequences/ that is not a sequence folder is reported as skipped.
    """
    from npga_taichi.prior.tracking import track_capture

    def report(seq: str, summary: dict) -> None:
        if not quiet and not as_json:
            click.echo(_line(seq, summary), err=True)

    try:
        result = track_capture(data, prior_dir, participant, sequences.split(",") if sequences else None,
                               per_sequence_identity, steps_first, steps, points, import_dir, evaluate, force,
                               progress=not quiet, on_sequence=report)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        raise click.ClickException(str(err)) from None
    if as_json:
        click.echo(json.dumps(result if import_dir is None else result["sequences"], indent=2))
        return
    for note in result["warnings"]:
        click.echo(f"warning: {note}", err=True)
    if import_dir is not None:
        click.echo(f"imported {import_dir} -> {result['tracking_dir']}")
        return
    res = [s["residual_mm_mean"] for s in result["sequences"].values() if s.get("residual_mm_mean") is not None]
    mean = f"{sum(res) / len(res):.3f} mm" if res else "n/a"
    click.echo(f"tracked {len(result['sequences'])} sequence(s) into {result['tracking_dir']} in "
               f"{result['seconds']:.0f} s; mean residual {mean}")


def _line(seq: str, s: dict) -> str:
    residual = "n/a" if s.get("residual_mm_mean") is None else f"{s['residual_mm_mean']:.3f} mm"
    text = f"{seq}: {s['frames']} frames, residual {residual}"
    if s.get("nonfinite_points_dropped"):
        text += f"; dropped {s['nonfinite_points_dropped']} points with NaN/Inf"
    ev = s.get("evaluation")
    if ev:
        text += (f"; Chamfer {ev['chamfer_mm_mean']:.2f} mm, rotation {ev['rotation_deg_mean']:.2f} deg, "
                 f"translation {ev['translation_mm_mean']:.2f} mm")
    return text
