"""``npga prior``: train the MonoNPHM head prior on synthetic identities, or import an official one."""
from __future__ import annotations

import json
from pathlib import Path

import click


@click.group(name="prior")
def command() -> None:
    """Train (`fit`), copy the shipped one (`pretrained`) or convert (`import`) the MonoNPHM head prior.

    A prior directory holds config.json, checkpoint.pt and metrics.json; `npga track` and
    `npga distill` take it with --prior.
    """


@command.command(name="fit")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output prior directory (config.json, checkpoint.pt, metrics.json).")
@click.option("--preset", type=click.Choice(["small", "mononphm", "tiny"]), default="small",
              show_default=True, help="Network sizes: 'small' trains on a 2-core CPU; 'mononphm' "
              "is the published architecture.")
@click.option("--steps", type=int, default=None, help="Optimisation steps [default: 3000].")
@click.option("--identities", type=int, default=None, help="Synthetic training identities [default: 8].")
@click.option("--expressions", type=int, default=None,
              help="Random expressions per identity (plus neutral) [default: 24].")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--force", is_flag=True, help="Overwrite a finished or different run in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def fit(out: Path, preset: str, steps: int | None, identities: int | None, expressions: int | None,
        seed: int, force: bool, as_json: bool, quiet: bool) -> None:
    """Train the prior as an auto-decoder on synthetic identities x random expressions.

    Supervision: analytic SDF near the surface (+ eikonal), albedo on the surface and the
    analytic backward offsets. Reports SDF and deformation errors (mm) on a held-out identity
    with held-out expressions. An interrupted run resumes from its last checkpoint.
    """
    from npga_taichi.prior.config import PriorTrainConfig
    from npga_taichi.prior.training import fit_prior

    overrides = {"preset": preset, "seed": seed}
    for key, value in (("steps", steps), ("n_identities", identities), ("n_expressions", expressions)):
        if value is not None:
            if value < 1:
                raise click.BadParameter(f"must be >= 1, got {value}", param_hint=key)
            overrides[key] = value
    cfg = PriorTrainConfig(**overrides)
    try:
        metrics = fit_prior(out, cfg, force=force, progress=not quiet,
                            log=lambda m: click.echo(m, err=True))
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    _report(metrics, as_json, lambda m: (
        f"prior written to {out}\n"
        f"held-out identity: SDF MAE {m['heldout']['sdf_mae_mm']:.2f} mm, surface |SDF| "
        f"{m['heldout']['surface_sdf_mae_mm']:.2f} mm, deformation MAE "
        f"{m['heldout']['deform_mae_mm']:.2f} mm (p95 {m['heldout']['deform_p95_mm']:.2f})\n"
        f"training shapes: SDF MAE {m['train']['sdf_mae_mm']:.2f} mm, deformation MAE "
        f"{m['train']['deform_mae_mm']:.2f} mm; {m['seconds']:.0f} s"))


@command.command(name="pretrained")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output prior directory.")
@click.option("--force", is_flag=True, help="Overwrite an existing prior in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print its metrics and training settings as JSON.")
def pretrained(out: Path, force: bool, as_json: bool) -> None:
    """Copy the prior that ships with npga-taichi into --out.

    It is `npga prior fit --preset small` with the default settings (synthetic training
    identities, none of them a capture's person), trained once; `npga demo` uses it for the
    presets whose prior has those settings. Prints its held-out accuracy.
    """
    from npga_taichi.prior.pretrained import install_shipped_prior, shipped_training_settings

    try:
        metrics = install_shipped_prior(out, force=force)
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from err
    summary = {"out": str(out), "metrics": metrics, "training": shipped_training_settings()}
    _report(summary, as_json, lambda s: (
        f"prior copied to {s['out']} (npga prior fit --preset small, {s['training']['steps']} steps, "
        f"{s['training']['n_identities']} synthetic identities)\n"
        f"held-out identity: SDF MAE {s['metrics']['heldout']['sdf_mae_mm']:.2f} mm, deformation MAE "
        f"{s['metrics']['heldout']['deform_mae_mm']:.2f} mm"))


@command.command(name="import")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output prior directory.")
@click.option("--anchors", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="MonoNPHM's assets/anchors_<N>.npy [default: DIRECTORY/anchors_<N>.npy].")
@click.option("--epoch", type=int, default=None, help="Checkpoint epoch [default: the latest].")
@click.option("--force", is_flag=True, help="Overwrite an existing prior in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print a summary as JSON.")
def import_(directory: Path, out: Path, anchors: Path | None, epoch: int | None, force: bool,
            as_json: bool) -> None:
    """Convert an official MonoNPHM experiment DIRECTORY (configs.yaml +
    checkpoints/checkpoint_epoch_<N>.tar) into an npga prior directory."""
    from npga_taichi.checkpoint import write_text_atomic
    from npga_taichi.prior.importer import import_official
    from npga_taichi.prior.model import save_prior

    if (out / "checkpoint.pt").exists() and not force:
        raise click.ClickException(f"{out} already holds a prior; use --force to overwrite")
    try:
        model = import_official(directory, anchors, epoch)
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    save_prior(model, out)
    summary = {"out": str(out), "source": model.meta.get("checkpoint"),
               "parameters": sum(p.numel() for p in model.parameters()),
               "identities": model.codes_geo.num_embeddings,
               "expressions": model.codes_exp.num_embeddings}
    write_text_atomic(json.dumps({"imported": summary}, indent=2), out / "metrics.json")
    _report(summary, as_json, lambda s: f"imported {s['source']} -> {s['out']} "
                                        f"({s['parameters']} parameters)")


def _report(data: dict, as_json: bool, text) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else text(data))
