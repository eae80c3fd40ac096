"""``npga demo OUT``: the whole pipeline on the embedded synthetic capture, one command.

synth -> prior fit -> track -> distill -> fit -> eval -> render, each stage skipped when its
output already exists. The work is :func:`npga_taichi.pipeline.run_pipeline`; this module parses
and prints: a metrics table and the path of the video.
"""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import click

from npga_taichi.presets import PRESETS


@click.command(name="demo", context_settings={"show_default": True})
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--preset", type=click.Choice(list(PRESETS)), default="default",
              help="On 2 CPU cores: tiny ~1 min, a blurry avatar, for CI; quick < 5 min, a recognisable "
                   "avatar at 220x320; default 11-22 min (by machine), the full capture at 275x401 (its "
                   "fit in one process per core); long ~45 min, the 6000-step schedule of the README's "
                   "older tables.")
@click.option("--identity", type=click.IntRange(min=0), default=0, metavar="SEED",
              help="Seed of the synthetic person to capture.")
@click.option("--render-frames", type=click.IntRange(min=1), default=None,
              help="Frames in the final video [default: the whole held-out sequence].")
@click.option("--device", default="cpu", help="Torch device for the avatar stages (cpu, cuda).")
@click.option("--force", is_flag=True, help="Rerun every stage even if its output exists.")
@click.option("--train-prior", is_flag=True,
              help="Train the prior here even where the prior shipped with npga-taichi was trained "
                   "with the preset's settings (quick, default, long): ~8 min on 2 cores.")
@click.option("--json", "as_json", is_flag=True, help="Print the final metrics summary as JSON.")
def command(out, preset, identity, render_frames, device, force, train_prior, as_json):
    """Build a trained avatar, its metrics and a video in OUT from nothing.

    \b
    Stages (folders in OUT): capture, prior, track (capture/<pid>/annotations/tracking),
    distill, run, eval, render.  Rerunning resumes: finished stages are skipped.
    The prior is a copy of the shipped one (`npga prior pretrained`) where that was trained
    with the preset's settings; --train-prior trains it.
    \b
    Examples:
      npga demo demo/ --preset quick     # the README's main job (< 5 min)
      npga demo demo/                    # the default schedule (11-22 min)
      npga demo demo_tiny/ --preset tiny # a few minutes
    """
    from npga_taichi.evaluation import format_table, json_safe
    from npga_taichi.pipeline import DemoConfig, run_pipeline

    cfg = DemoConfig(out=str(out), preset=preset, identity=identity, render_frames=render_frames,
                     force=force, device=device, train_prior=train_prior)
    echo = (lambda msg: click.echo(msg, err=True)) if as_json else click.echo
    # With --json, stdout carries only the final summary: the stages' own messages go to stderr.
    quiet_stdout = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    try:
        with quiet_stdout:
            record = run_pipeline(cfg, echo=echo)
    except (RuntimeError, ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
    if as_json:
        click.echo(json.dumps(json_safe({**record["metrics"], "video": record["video"],
                                         "stages": record["stages"]})))
        return
    click.echo("")
    click.echo(format_table(record["metrics"]))
    click.echo(f"avatar: {out / 'run'}")
    click.echo(f"video:  {record['video']}")
