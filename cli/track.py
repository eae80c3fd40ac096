"""``npga track``: per-frame expression codes and head pose of a capture, fitted with the prior.

The work is :func:`npga_taichi.prior.tracking.track_capture`; this module parses and prints.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from npga_taichi.cli.options import prior_option


@click.command(name="track")
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@prior_option
@click.option("--participant", default=None,
              help="Participant id when DATA is the capture root [default: DATA is the participant "
                   "folder, or the only participant in it].")
@click.option("--sequences", default=None,
              help="Comma-separated sequences to track [default: all].")
@click.option("--per-sequence-identity", is_flag=True,
              help="Fit identity and scale on the first frame of every sequence instead of once "
                   "(first sequence) for the whole capture.")
@click.option("--steps-first", type=click.IntRange(min=1), default=None,
              help="Steps for the first frame [default: 400; --photometric: 150].")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Steps for every later frame [default: 35; --photometric: 40].")
@click.option("--points", type=click.IntRange(min=1), default=None,
              help="Points subsampled per frame [default: 1500].")
@click.option("--import-mononphm", "import_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Instead of fitting, import MonoNPHM's tracking output folder (per "
              "frame z_exp.npy, rot.npy, trans.npy, scale.npy) as sequence --sequences.")
@click.option("--photometric", is_flag=True,
              help="Fit the images (and alpha mattes where the capture has them) instead of point clouds: "
                   "for captures without point clouds, e.g. NeRSemble v2 (one mp4 per camera). Same output files.")
@click.option("--views", type=click.IntRange(min=1), default=None,
              help="--photometric: cameras used, spread evenly over the calibration [default: all].")
@click.option("--evaluate", is_flag=True,
              help="Synthetic captures only: grade the tracks against groundtruth/ (Chamfer, pose).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes tracking sequences at once, one thread each, once the first frame has "
                   "fixed the identity (not with --photometric) [default: one per CPU core].")
@click.option("--force", is_flag=True, help="Re-track sequences that already have tracking files.")
@click.option("--json", "as_json", is_flag=True, help="Print the per-sequence summary as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def command(data: Path, prior_dir: Path | None, participant: str | None, sequences: str | None,
            per_sequence_identity: bool, steps_first: int | None, steps: int | None,
            points: int | None, import_dir: Path | None, photometric: bool, views: int | None, evaluate: bool,
            workers: int | None, force: bool, as_json: bool, quiet: bool) -> None:
    """Track every frame of the capture DATA against its point clouds (or, with --photometric,
    its images).

    Writes DATA/<pid>/annotations/tracking/<SEQ>.npz (+ .json summary) with expression codes,
    identity codes, rotation, translation, scale and the fit residual per frame. Sequences whose
    file exists are skipped (resume) unless --force. Point rows with NaN/Inf are dropped (and
    counted); anything in sequences/ that is not a sequence folder is reported as skipped.
    Where the capture has label maps (<frame>/labels/cam_<serial>.png), every track also gets
    each frame's eye closure and the brows' and mouth corners' motion measured from them: what
    the codes miss, which the avatar reads beside them.
    """
    from npga_taichi.prior.tracking import track_capture

    def report(seq: str, summary: dict) -> None:
        if not quiet and not as_json:
            click.echo(_line(seq, summary), err=True)

    if photometric and import_dir is not None:
        raise click.UsageError("--photometric and --import-mononphm exclude each other")
    if views is not None and not photometric:
        raise click.UsageError("--views needs --photometric")
    if workers is not None and photometric:
        raise click.UsageError("--workers applies to point-cloud tracking, not --photometric")
    try:
        if photometric:
            result = _track_photometric(data, prior_dir, participant, sequences, per_sequence_identity, steps_first,
                                        steps, points, views, evaluate, force, quiet, report)
        else:
            result = track_capture(data, prior_dir, participant, sequences.split(",") if sequences else None,
                                   per_sequence_identity, steps_first, steps, points, import_dir, evaluate, force,
                                   progress=not quiet, on_sequence=report, workers=workers)
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
    key, unit = ("photometric_l1_x1000_mean", "/1000 (photometric L1)") if photometric else ("residual_mm_mean", " mm")
    res = [s[key] for s in result["sequences"].values() if s.get(key) is not None]
    mean = f"{sum(res) / len(res):.3f}{unit}" if res else "n/a"
    click.echo(f"tracked {len(result['sequences'])} sequence(s) into {result['tracking_dir']} in "
               f"{result['seconds']:.0f} s; mean residual {mean}")


def _track_photometric(data, prior_dir, participant, sequences, per_sequence_identity, steps_first, steps, points,
                       views, evaluate, force, quiet, report) -> dict:
    from npga_taichi.prior.photometric import PhotometricConfig, track_capture_photometric

    cfg = PhotometricConfig()
    for name, value in (("first_frame_steps", steps_first), ("steps_per_frame", steps), ("num_points", points)):
        if value is not None:
            setattr(cfg, name, value)
    return track_capture_photometric(data, prior_dir, participant, sequences.split(",") if sequences else None,
                                     per_sequence_identity, cfg, views, evaluate, force, progress=not quiet,
                                     on_sequence=report)


def _line(seq: str, s: dict) -> str:
    if s.get("photometric_l1_x1000_mean") is not None:
        residual = f"photometric L1 {s['photometric_l1_x1000_mean']:.1f}/1000"
    else:
        residual = "n/a" if s.get("residual_mm_mean") is None else f"{s['residual_mm_mean']:.3f} mm"
    text = f"{seq}: {s['frames']} frames, residual {residual}"
    if s.get("nonfinite_points_dropped"):
        text += f"; dropped {s['nonfinite_points_dropped']} points with NaN/Inf"
    ev = s.get("evaluation")
    if ev:
        text += (f"; Chamfer {ev['chamfer_mm_mean']:.2f} mm, rotation {ev['rotation_deg_mean']:.2f} deg, "
                 f"translation {ev['translation_mm_mean']:.2f} mm")
    return text
