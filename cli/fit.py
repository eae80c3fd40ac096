"""``npga fit DATA --out RUN``: train an NPGA avatar on a multi-view capture.

Options come from the config dataclasses (:class:`~npga_taichi.avatar.config.AvatarConfig`,
:class:`~npga_taichi.avatar.config.TrainConfig`): every field is an option whose help is the
field's comment and whose default is the preset's value (the help shows the default
preset's). The work is :func:`npga_taichi.avatar.fitting.fit_avatar`.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from npga_taichi.avatar.config import AvatarConfig, TrainConfig
from npga_taichi.cli.options import collect, config_options
from npga_taichi.presets import PRESETS, preset_overrides


@click.command(name="fit")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", "run_dir", required=True, type=click.Path(path_type=Path),
              help="Run directory (config.json, checkpoints/, val/, log.jsonl, summary.json).")
@click.option("--participant", default=None, help="Participant id when DATA holds several.")
@click.option("--prior", default=None, help="Prior directory (MonoNPHM) [default: from the annotations].")
@click.option("--tracking", "tracking_dir", default=None, type=click.Path(path_type=Path),
              help="Folder of <SEQ>.npz tracking files [default: <pid>/annotations/tracking].")
@click.option("--field", "field_dir", default=None, type=click.Path(path_type=Path),
              help="Distilled forward field F [default: <pid>/annotations/forward_field].")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="default", show_default=True,
              help="Model size and schedule preset (npga_taichi/presets.py); options below override it.")
@click.option("--all-stages", is_flag=True, help="Run missing prior / track / distill stages first.")
@click.option("--resume", is_flag=True, help="Continue RUN from checkpoints/latest.pt (--steps may extend it).")
@click.option("--force", is_flag=True, help="Remove what an earlier fit wrote into RUN and start over.")
@click.option("--device", default="cpu", show_default=True, help="Torch device (cpu, cuda).")
@click.option("--rasterizer", type=click.Choice(["taichi", "reference"]), default="taichi",
              show_default=True, help="Rasterizer (reference: the slow PyTorch oracle).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON.")
@config_options(AvatarConfig, exclude=("exp_dim", "eye_closure_dim", "part_motion_dim"), aliases={"use_prior_field": ["--no-prior"]},
                defaults=preset_overrides("default", "avatar"))
@config_options(TrainConfig, aliases={"num_threads": ["--threads"]}, defaults=preset_overrides("default", "train"))
def command(data, run_dir, participant, prior, tracking_dir, field_dir, preset, all_stages, resume, force,
            device, rasterizer, no_progress, as_json, **options):
    """Train an NPGA avatar on the capture DATA into RUN.

    \b
    Examples:
      npga fit data/synth --out runs/a --prior runs/prior
      npga fit data/synth --out runs/a --resume          # continue where it stopped
      npga fit data/synth --out runs/static --static     # ablation (also --no-latents,
                                                         #  --no-detail, --no-laplacian, --no-prior)
    Held-out cameras and the FREE sequence are never used for training.

    \b
    Several processes (data-parallel; each takes a share of the step's views, and the steps
    are the single process's):
      npga fit data/synth --out runs/a --views-per-step 2       # on this CPU: one per core
      npga fit data/synth --out runs/a --views-per-step 2 --processes 1   # in this process
      torchrun --nproc-per-node 2 $(which npga) fit data/synth --out runs/a --views-per-step 2
                                                         # GPUs or several machines
    """
    from npga_taichi.avatar.fitting import fit_avatar

    avatar_overrides = collect(AvatarConfig, options)
    train_overrides = collect(TrainConfig, options)
    try:
        summary = fit_avatar(data, run_dir, participant, prior, tracking_dir, field_dir, preset,
                             avatar_overrides, train_overrides, all_stages=all_stages, resume=resume,
                             force=force, device=device, rasterizer=rasterizer, progress=not no_progress,
                             log=lambda m: click.echo(m, err=True))
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        raise click.ClickException(str(err)) from None
    if summary["rank"] != 0:
        return  # under torchrun only rank 0 reports
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"trained {summary['step']} steps in {summary['train_time_s']} s; "
                   f"held-out masked PSNR {summary.get('val_masked_psnr', float('nan')):.2f} dB; "
                   f"{summary['gaussians']} Gaussians; skipped steps {summary['skipped_steps']}; run: {run_dir}")
