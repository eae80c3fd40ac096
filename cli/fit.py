"""``npga fit DATA --out RUN``: train an NPGA avatar on a multi-view capture.

DATA is a capture root holding one participant folder ``<pid>/`` (or the participant folder
itself). The prior (``--prior``), per-sequence tracking (``--tracking``, default
``<pid>/annotations/tracking``) and the distilled forward field F (``--field``, default
``<pid>/annotations/forward_field``) are found from DATA's annotations or the flags;
``--all-stages`` runs whichever of prior fit / track / distill is missing first.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import click

ABLATIONS = ("no_latents", "no_detail", "no_laplacian", "no_prior", "static", "cnn")


def resolve_participant(data: Path, participant: str | None) -> tuple[Path, str]:
    """(capture root, participant id) from DATA = root or participant folder."""
    from npga_taichi.data.nersemble import resolve_participant as resolve

    try:
        return resolve(data, participant)
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None


def _find_prior(pdir: Path, prior: str | None, trackings: dict) -> Path | None:
    if prior:
        return Path(prior)
    for tr in trackings.values():  # a tracking file may record the prior it was fitted with
        path = getattr(tr, "prior", None) or (getattr(tr, "meta", None) or {}).get("prior")
        if path and Path(path).exists():
            return Path(path)
    cand = pdir / "annotations" / "prior"
    return cand if cand.exists() else None


def _load_trackings(tracking_dir: Path) -> dict:
    from npga_taichi.prior.tracking import load_tracking

    if not tracking_dir.is_dir():
        return {}
    return {f.stem: load_tracking(f) for f in sorted(tracking_dir.glob("*.npz"))}


def _run_stage(argv: list[str], preset: str) -> None:
    """Run ``npga <argv>`` in this process, adding ``--preset`` where that command has one."""
    from npga_taichi.cli.main import cli
    from npga_taichi.pipeline import run_cli

    names = argv[:2] if argv[0] == "prior" else argv[:1]
    cmd = cli
    with click.Context(cli) as ctx:
        for name in names:
            cmd = cmd.get_command(ctx, name)
    if any(p.name == "preset" for p in getattr(cmd, "params", [])):
        argv = argv + ["--preset", preset]
    click.echo(f"[fit --all-stages] npga {' '.join(argv)}", err=True)
    try:
        run_cli(argv)
    except RuntimeError as err:
        raise click.ClickException(str(err)) from err


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
@click.option("--preset", type=click.Choice(["tiny", "default"]), default="default", show_default=True,
              help="Model size and schedule preset.")
@click.option("--steps", type=int, default=None, help="Override the preset's number of steps.")
@click.option("--views-per-step", type=int, default=None, help="(camera, frame) pairs per step.")
@click.option("--image-scale", type=float, default=None, help="Extra image downscale in (0, 1].")
@click.option("--max-gaussians", type=int, default=None, help="Cap on the Gaussian count.")
@click.option("--sh-degree", type=click.IntRange(0, 3), default=None, help="SH degree of the colour.")
@click.option("--latent-dim", type=int, default=None, help="Size of the per-Gaussian latent feature.")
@click.option("--seed", type=int, default=None, help="Random seed.")
@click.option("--no-latents", is_flag=True, help="Ablation: no per-Gaussian latent features.")
@click.option("--no-detail", is_flag=True, help="Ablation: no detail network G.")
@click.option("--no-laplacian", is_flag=True, help="Ablation: no Laplacian regularisers.")
@click.option("--no-prior", is_flag=True, help="Ablation: learn F from scratch instead of the distilled one.")
@click.option("--static", is_flag=True, help="Ablation: no dynamics (only the rigid head pose moves).")
@click.option("--cnn", is_flag=True, help="Render features and decode them with a screen-space CNN.")
@click.option("--all-stages", is_flag=True, help="Run missing prior / track / distill stages first.")
@click.option("--resume", is_flag=True, help="Continue RUN from checkpoints/latest.pt.")
@click.option("--force", is_flag=True, help="Discard an existing RUN and start over.")
@click.option("--device", default="cpu", show_default=True, help="Torch device (cpu, cuda).")
@click.option("--rasterizer", type=click.Choice(["taichi", "reference", "tiled"]), default="taichi",
              show_default=True, help="Rasterizer (reference/tiled are slow PyTorch versions).")
@click.option("--threads", type=int, default=None, help="Torch CPU threads [default: torch's choice].")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON.")
def command(data, run_dir, participant, prior, tracking_dir, field_dir, preset, steps, views_per_step,
            image_scale, max_gaussians, sh_degree, latent_dim, seed, no_latents, no_detail, no_laplacian,
            no_prior, static, cnn, all_stages, resume, force, device, rasterizer, threads, no_progress,
            as_json):
    """Train an NPGA avatar on the capture DATA into RUN.

    \b
    Examples:
      npga fit data/synth --out runs/a --prior runs/prior
      npga fit data/synth --out runs/a --resume          # continue where it stopped
      npga fit data/synth --out runs/static --static     # ablation
    Held-out cameras and the FREE sequence are never used for training.
    """
    from npga_taichi.avatar.config import load_configs, preset as get_preset
    from npga_taichi.avatar.fitting import prepare_training

    root, pid = resolve_participant(data, participant)
    pdir = root / pid
    latest = run_dir / "checkpoints" / "latest.pt"
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        if not force:
            raise click.ClickException(f"{run_dir} already exists; use --resume to continue or --force "
                                       "to start over")
        for name in ("checkpoints", "val"):
            shutil.rmtree(run_dir / name, ignore_errors=True)
        for name in ("config.json", "log.jsonl", "summary.json"):
            (run_dir / name).unlink(missing_ok=True)
    resuming = resume and latest.is_file()

    if resuming:
        avatar_cfg, train_cfg, extra = load_configs(run_dir)
        if steps is not None:
            train_cfg = dataclasses.replace(train_cfg, steps=steps)
    else:
        avatar_cfg, train_cfg = get_preset(preset)
        a_over = {k: v for k, v in dict(max_gaussians=max_gaussians, sh_degree=sh_degree,
                                         latent_dim=latent_dim).items() if v is not None}
        if max_gaussians is not None and max_gaussians < avatar_cfg.num_init_gaussians:
            a_over["num_init_gaussians"] = max_gaussians
        a_over.update({k: False for k, flag in (("use_latents", no_latents), ("use_detail", no_detail),
                                                 ("use_prior_field", no_prior)) if flag})
        if static:
            a_over["static"] = True
        if cnn:
            a_over["use_cnn"] = True
        t_over = {k: v for k, v in dict(steps=steps, views_per_step=views_per_step, image_scale=image_scale,
                                         seed=seed, num_threads=threads).items() if v is not None}
        if no_laplacian:
            t_over["use_laplacian"] = False
        try:
            avatar_cfg = dataclasses.replace(avatar_cfg, **a_over).validate()
            train_cfg = dataclasses.replace(train_cfg, **t_over).validate()
        except ValueError as err:
            raise click.ClickException(str(err)) from err
        extra = {}

    tracking_dir = Path(tracking_dir) if tracking_dir else pdir / "annotations" / "tracking"
    field_dir = Path(field_dir) if field_dir else pdir / "annotations" / "forward_field"
    trackings = _load_trackings(tracking_dir)
    prior_dir = _find_prior(pdir, prior or extra.get("prior"), trackings)
    if all_stages and not resuming:
        if prior_dir is None or not prior_dir.exists():
            prior_dir = run_dir / "stages" / "prior"
            _run_stage(["prior", "fit", "--out", str(prior_dir)], preset)
        if not trackings:
            _run_stage(["track", str(pdir), "--prior", str(prior_dir)], preset)
            trackings = _load_trackings(tracking_dir)
        if avatar_cfg.use_prior_field and not avatar_cfg.static and not field_dir.exists():
            _run_stage(["distill", "--prior", str(prior_dir), "--tracking", str(tracking_dir),
                        "--out", str(field_dir)], preset)
    if not trackings:
        raise click.ClickException(f"no tracking files (*.npz) in {tracking_dir}; run `npga track` first, "
                                   "pass --tracking, or use --all-stages")
    if not resuming and prior_dir is None:
        raise click.ClickException(f"no prior found for {pdir}; pass --prior or use --all-stages")
    if not resuming and avatar_cfg.use_prior_field and not avatar_cfg.static and not field_dir.exists():
        raise click.ClickException(f"no forward field at {field_dir}; pass --field, run `npga distill`, "
                                   "use --all-stages, or train F from scratch with --no-prior")
    extra = {**extra, "data": str(root.resolve()), "participant": pid,
             "prior": str(Path(prior_dir).resolve()) if prior_dir else extra.get("prior"),
             "tracking": str(tracking_dir.resolve()), "field": str(field_dir.resolve()),
             "preset": extra.get("preset", preset), "rasterizer": rasterizer}
    try:
        trainer = prepare_training(run_dir, root, pid, trackings, avatar_cfg, train_cfg, extra,
                                   prior_dir=prior_dir, field_dir=field_dir, device=device,
                                   resume=resuming, rasterizer=rasterizer, progress=not no_progress)
        summary = trainer.train()
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"trained {summary['step']} steps in {summary['train_time_s']} s; "
                   f"held-out masked PSNR {summary.get('val_masked_psnr', float('nan')):.2f} dB; "
                   f"{summary['gaussians']} Gaussians; skipped steps {summary['skipped_steps']}; run: {run_dir}")
