"""``npga distill``: the forward deformation field F, distilled from the prior's backward field."""
from __future__ import annotations

import json
from pathlib import Path

import click

from npga_taichi.cli.options import prior_option


@click.command(name="distill")
@prior_option
@click.option("--tracking", "tracking_paths", required=True, multiple=True,
              type=click.Path(exists=True, path_type=Path),
              help="Tracking .npz file(s) or the folder <root>/<pid>/annotations/tracking "
                   "(repeatable).")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory [default: <root>/<pid>/annotations/forward_field].")
@click.option("--steps", type=int, default=None, help="Optimisation steps [default: 1500].")
@click.option("--hidden", type=int, default=None, help="F's MLP width [default: 128].")
@click.option("--layers", type=int, default=None, help="F's hidden layers [default: 4].")
@click.option("--heldout-sequence", default=None,
              help="Tracked sequence whose codes are held out for evaluation [default: FREE].")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--force", is_flag=True, help="Overwrite a finished or different run in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(prior_dir: Path, tracking_paths: tuple[Path, ...], out: Path | None, steps: int | None,
            hidden: int | None, layers: int | None, heldout_sequence: str | None, seed: int,
            force: bool, as_json: bool, quiet: bool) -> None:
    """Train F(x_canonical, z_exp) -> x_posed with the cycle loss |B(F(x, z), z) - x| on points
    on and near the prior's zero level set, over the tracked codes plus jitter.

    Reports the cycle error on held-out codes (median / 95th percentile, mm) and F's error
    against B inverted by Newton root finding. Saves config.json, forward_field.pt, metrics.json.
    """
    from npga_taichi.prior.distill import DistillConfig, distill
    from npga_taichi.prior.model import load_prior
    from npga_taichi.prior.tracking import load_tracking, tracking_files

    files: list[Path] = []
    for p in tracking_paths:
        if p.is_dir():
            found = list(tracking_files(p).values())
            if not found:
                raise click.BadParameter(f"no .npz tracking files in {p}", param_hint="--tracking")
            files.extend(found)
        else:
            files.append(p)
    try:
        trackings = [load_tracking(f) for f in files]
        prior = load_prior(prior_dir)
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    if out is None:
        out = files[0].parent.parent / "forward_field"
    cfg = DistillConfig(seed=seed)
    for name, value in (("steps", steps), ("hidden_dim", hidden), ("n_layers", layers)):
        if value is not None:
            if value < 1:
                raise click.BadParameter(f"must be >= 1, got {value}")
            setattr(cfg, name, value)
    if heldout_sequence is not None:
        cfg.heldout_sequence = heldout_sequence
    try:
        metrics = distill(prior, trackings, out, cfg, force=force, progress=not quiet,
                          log=lambda m: click.echo(m, err=True))
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    metrics["out"] = str(out)
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
    else:
        click.echo(
            f"forward field written to {out}\n"
            f"cycle error on held-out codes ({metrics['heldout_codes']}): median "
            f"{metrics['cycle_heldout_median_mm']:.3f} mm, p95 {metrics['cycle_heldout_p95_mm']:.3f} mm\n"
            f"F vs Newton inverse of B: median {metrics['f_vs_root_median_mm']:.3f} mm, p95 "
            f"{metrics['f_vs_root_p95_mm']:.3f} mm ({metrics['root_converged_fraction']:.0%} converged); "
            f"{metrics['seconds']:.0f} s")
