"""``npga compare``: our Taichi rasterizer against a reference on one scene.

Parses the options into a :class:`npga_taichi.compare.CompareConfig`, runs
:func:`npga_taichi.compare.run_comparison` and prints its report (a table, or JSON); ``--strict``
exits with status 1 when the image or a gradient error exceeds its tolerance.
"""
from __future__ import annotations

import json

import click

from npga_taichi.compare import CompareConfig, format_report, run_comparison


@click.command(name="compare", context_settings={"show_default": True})
@click.option("--reference", type=click.Choice(["torch", "gsplat"]), default="torch",
              help="torch: our PyTorch oracle (exact contract). gsplat: gsplat's projection + SH with "
                   "the oracle's compositing (CPU), or gsplat.rasterization on CUDA.")
@click.option("--seed", type=int, default=0, help="Seed of the random scene, subsampling and upstream gradient.")
@click.option("--n", "n", type=click.IntRange(min=0), default=2000,
              help="Gaussians in the random scene; with --ply the most taken (random subset, 0 = all).")
@click.option("--width", type=click.IntRange(min=1), default=128, help="Image width in pixels.")
@click.option("--height", type=click.IntRange(min=1), default=128, help="Image height in pixels.")
@click.option("--channels", type=click.IntRange(min=1), default=3,
              help="Colour channels of the random scene (ignored with --sh-degree).")
@click.option("--sh-degree", type=click.IntRange(0, 3), default=None,
              help="Render SH colours of this degree (random scene), or at most the file's degree (--ply; "
                   "default: the file's).")
@click.option("--ply", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Render the Gaussians of a 3DGS PLY (graphdeco layout) instead of a random scene.")
@click.option("--camera-distance", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Camera distance to the scene centre (default: 3 for the random scene, framing the "
                   "cloud for --ply). The camera looks along +z at the centre.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32",
              help="Floating point type of both renderers.")
@click.option("--arch", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              help="Taichi arch (tensors are created there too); auto = CUDA if available.")
@click.option("--image-tol", type=float, default=None,
              help="Image max-abs tolerance for --strict [default: 5e-3 float32, 1e-8 float64].")
@click.option("--grad-tol", type=float, default=None,
              help="Gradient relative-L2 tolerance for --strict [default: 2e-2 float32, 1e-6 float64].")
@click.option("--strict", is_flag=True, help="Exit with status 1 if an error exceeds its tolerance.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def command(reference, seed, n, width, height, channels, sh_degree, ply, camera_distance, dtype, arch,
            image_tol, grad_tol, strict, as_json):
    """Compare our Taichi rasterizer with a reference on one scene: image and gradient errors,
    forward/backward times.

    \b
    Examples:
      npga compare                                  # random scene vs the PyTorch oracle
      npga compare --reference gsplat --sh-degree 3
      npga compare --ply point_cloud.ply --n 5000 --json
    """
    cfg = CompareConfig(reference=reference, seed=seed, n=n, width=width, height=height, channels=channels,
                        sh_degree=sh_degree, dtype=dtype, arch=arch, ply=ply, camera_distance=camera_distance,
                        image_tol=image_tol, grad_tol=grad_tol)
    try:
        report = run_comparison(cfg)
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
    if strict and not report["passed"]:
        click.get_current_context().exit(1)
