"""``npga export RUN --sequence S --out seq.h5``: deformed Gaussians of every frame, to HDF5 / PLY.

The HDF5 file follows the ``npga-sequence`` format (:mod:`npga_taichi.export_hdf5`): per frame
the world-space means, wxyz quaternions, activated scales and opacities and SH coefficients (or
features), plus expression codes, head poses, cameras and, with ``--images``, the images that
``npga render`` produces. ``--ply DIR`` also writes ``DIR/frame_<i:05d>.ply`` in the graphdeco
3DGS layout (raw: log-scales, opacity logits, SH DC/rest) that standard viewers and
``npga compare --ply`` open. Outputs are written atomically and never replaced without ``--force``.
The work is :func:`npga_taichi.export_hdf5.export_sequence`; this module parses and prints.
"""
from __future__ import annotations

import json
from pathlib import Path

import click


@click.command(name="export", context_settings={"show_default": True})
@click.argument("run_dir", metavar="RUN", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--sequence", "-s", required=True, help="Tracked sequence whose frames are exported (e.g. FREE).")
@click.option("--out", "-o", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HDF5 file to write (.h5). Optional when --ply is given.")
@click.option("--ply", "ply_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write every frame as DIR/frame_<i>.ply in the 3DGS layout. DIR must be empty "
                   "or, with --force, hold an earlier export (only its frames are replaced).")
@click.option("--expressions", "-e", type=click.Path(exists=True, path_type=Path), default=None,
              help="Cross-reenactment: take expression codes from another run / tracking .npz / participant.")
@click.option("--cameras", "camera_spec", default="all",
              help="Cameras stored in the file: all, holdout, train, or comma-separated serials.")
@click.option("--images", is_flag=True, help="Also store the rendered image of every frame for every stored camera.")
@click.option("--stride", type=click.IntRange(min=1), default=1, help="Export every k-th frame.")
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Export at most N frames.")
@click.option("--device", default="cpu", help="Torch device of the avatar (cpu, cuda).")
@click.option("--force", is_flag=True, help="Overwrite an existing HDF5 file / the frames of an earlier PLY export.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON description of what was written.")
def command(run_dir, sequence, out_path, ply_dir, expressions, camera_spec, images, stride, max_frames, device,
            force, as_json):
    """Export the deformed Gaussians of RUN for every frame of a sequence.

    \b
    Examples:
      npga export runs/me --sequence FREE --out free.h5
      npga export runs/me --sequence FREE --out free.h5 --images --cameras holdout
      npga export runs/me --sequence FREE --ply free_ply/     # then: npga compare --ply free_ply/frame_00000.ply
    """
    from tqdm import tqdm

    from npga_taichi.export_hdf5 import export_sequence

    if out_path is None and ply_dir is None:
        raise click.UsageError("nothing to write: give --out FILE.h5 and/or --ply DIR")
    if out_path is not None and out_path.suffix.lower() not in (".h5", ".hdf5"):
        raise click.BadParameter(f"{out_path} must end in .h5 or .hdf5", param_hint="--out")
    bar = tqdm(desc=f"export {sequence}", unit="frame")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        info = export_sequence(run_dir, sequence, out_path, ply_dir, expressions, camera_spec, images, stride,
                               max_frames, device, force, progress)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as err:
        raise click.ClickException(str(err).strip("'\"")) from None
    finally:
        bar.close()
    if as_json:
        click.echo(json.dumps(info))
    else:
        if out_path:
            click.echo(f"hdf5: {out_path} ({info['num_frames']} frames, {len(info['cameras'])} cameras)")
        if ply_dir:
            click.echo(f"ply: {ply_dir}/frame_00000.ply ... ({info['num_frames']} files)")
