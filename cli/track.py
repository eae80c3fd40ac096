"""``npga track``: per-frame expression codes and head pose of a capture, fitted with the prior."""
from __future__ import annotations

import json
import time
from pathlib import Path

import click


def tracking_dir(capture_pdir: Path) -> Path:
    """``<root>/<pid>/annotations/tracking``."""
    return capture_pdir / "annotations" / "tracking"


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
@click.option("--steps-first", type=int, default=None, help="Steps for the first frame [default: 400].")
@click.option("--steps", type=int, default=None, help="Steps for every later frame [default: 25].")
@click.option("--points", type=int, default=None, help="Points subsampled per frame [default: 1500].")
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
    file exists are skipped (resume) unless --force.
    """
    import numpy as np
    import torch

    from npga_taichi.data.nersemble import CaptureError, NersembleCapture
    from npga_taichi.prior.tracking import (Tracking, TrackingConfig, evaluate_against_groundtruth,
                                            import_mononphm_tracking, load_tracking, save_tracking,
                                            track_sequence)

    try:
        capture = NersembleCapture(data, _participant(data, participant))
    except CaptureError as err:
        raise click.ClickException(str(err)) from err
    out_dir = tracking_dir(capture.pdir)
    available = capture.sequences()
    chosen = available if sequences is None else [s.strip() for s in sequences.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in available and import_dir is None]
    if unknown:
        raise click.BadParameter(f"unknown sequence(s) {unknown}; capture has {available}",
                                 param_hint="--sequences")

    if import_dir is not None:
        if len(chosen) != 1:
            raise click.BadParameter("name exactly one sequence for --import-mononphm",
                                     param_hint="--sequences")
        path = out_dir / f"{chosen[0]}.npz"
        if path.exists() and not force:
            raise click.ClickException(f"{path} exists; use --force to overwrite")
        try:
            tracking = import_mononphm_tracking(import_dir, chosen[0])
        except ValueError as err:
            raise click.ClickException(str(err)) from err
        save_tracking(tracking, path)
        summary = {chosen[0]: tracking.summary()}
        click.echo(json.dumps(summary, indent=2) if as_json else f"imported {import_dir} -> {path}")
        return

    if prior_dir is None:
        raise click.BadParameter("required unless --import-mononphm is given", param_hint="--prior")
    from npga_taichi.prior.model import load_prior

    try:
        prior = load_prior(prior_dir)
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    cfg = TrackingConfig()
    for name, value in (("first_frame_steps", steps_first), ("steps_per_frame", steps),
                        ("points_per_frame", points)):
        if value is not None:
            if value < 1:
                raise click.BadParameter(f"must be >= 1, got {value}")
            setattr(cfg, name, value)
    # Track FREE (the held-out sequence) last so the identity comes from a training sequence.
    chosen = sorted(chosen, key=lambda s: (s == "FREE", available.index(s) if s in available else 0))
    identity = None
    summary: dict[str, dict] = {}
    t0 = time.time()
    for seq in chosen:
        path = out_dir / f"{seq}.npz"
        if path.exists() and not force:
            tracking: Tracking = load_tracking(path)
            if tracking.z_geo.shape[0] != prior.config.lat_dim_geo:
                raise click.ClickException(f"{path} was tracked with another prior; use --force")
            summary[seq] = {**tracking.summary(), "skipped": "exists"}
        else:
            t_seq = time.time()
            tracking = track_sequence(prior, seq, capture.timesteps(seq),
                                      lambda t, s=seq: capture.load_pointcloud(s, t), cfg,
                                      identity=None if per_sequence_identity else identity,
                                      progress=not quiet)
            tracking.meta["seconds"] = time.time() - t_seq
            tracking.meta["prior"] = str(prior_dir)
            save_tracking(tracking, path)
            summary[seq] = tracking.summary()
        if identity is None and not per_sequence_identity:
            identity = (torch.as_tensor(tracking.z_geo), torch.as_tensor(tracking.z_app), tracking.scale)
        if evaluate:
            gt_path = capture.pdir / "groundtruth" / "groundtruth.json"
            if not gt_path.is_file():
                raise click.ClickException(f"--evaluate needs {gt_path} (synthetic captures only)")
            gt = json.loads(gt_path.read_text())
            summary[seq]["evaluation"] = evaluate_against_groundtruth(prior, tracking, gt)
        if not quiet and not as_json:
            click.echo(_line(seq, summary[seq]), err=True)
    result = {"tracking_dir": str(out_dir), "seconds": time.time() - t0, "sequences": summary}
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        res = [s["residual_mm_mean"] for s in summary.values() if s.get("residual_mm_mean") is not None]
        click.echo(f"tracked {len(summary)} sequence(s) into {out_dir} in {result['seconds']:.0f} s; "
                   f"mean residual {np.mean(res):.3f} mm")


def _participant(data: Path, participant: str | None) -> str | None:
    """DATA is a participant folder (has calibration/) or a root with one participant."""
    if participant is not None or (data / "calibration").is_dir():
        return participant
    candidates = [p.name for p in data.iterdir() if (p / "calibration").is_dir()]
    if len(candidates) == 1:
        return candidates[0]
    raise click.BadParameter(f"{data} holds participants {sorted(candidates)}; pick one with "
                             "--participant", param_hint="--participant")


def _line(seq: str, s: dict) -> str:
    text = f"{seq}: {s['frames']} frames, residual {s['residual_mm_mean']:.3f} mm"
    ev = s.get("evaluation")
    if ev:
        text += (f"; Chamfer {ev['chamfer_mm_mean']:.2f} mm, rotation {ev['rotation_deg_mean']:.2f} deg, "
                 f"translation {ev['translation_mm_mean']:.2f} mm")
    return text
