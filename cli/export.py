"""``npga export RUN --sequence S --out seq.h5``: deformed Gaussians of every frame, to HDF5 / PLY.

The HDF5 file follows the ``npga-sequence`` format (:mod:`npga_taichi.export_hdf5`): per frame
the world-space means, wxyz quaternions, activated scales and opacities and SH coefficients (or
features), plus expression codes, head poses, cameras and, with ``--images``, the images that
``npga render`` produces. ``--ply DIR`` also writes ``DIR/frame_<i:05d>.ply`` in the graphdeco
3DGS layout (raw: log-scales, opacity logits, SH DC/rest) that standard viewers and
``npga compare --ply`` open. Outputs are written atomically and never replaced without ``--force``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import click
import torch

SH_C0 = 0.28209479177387814  # Y_0^0: colour = 0.5 + SH_C0 * f_dc in the 3DGS layout


def raw_ply_arrays(gaussians: dict) -> dict:
    """Activated rasterize arrays -> the raw parameters the 3DGS PLY layout stores.

    log_scales = log(scales); opacity_logits = logit(opacities) computed in float64 with the
    opacity clamped to [1e-7, 1 - 1e-7] so fully opaque Gaussians stay finite (sigmoid of the
    stored logit is within 1e-7 of the original); RGB features (N, 3) become SH degree 0 with
    f_dc = (rgb - 0.5) / SH_C0.
    """
    colors = gaussians["colors"]
    if gaussians.get("sh_degree") is None:
        if colors.shape[1] != 3:
            raise ValueError(f"PLY export needs RGB colours or SH, the avatar renders {colors.shape[1]} "
                             "feature channels (screen-space CNN); export HDF5 only")
        sh = ((colors - 0.5) / SH_C0)[:, None, :]
    else:
        sh = colors
    op = gaussians["opacities"].double().clamp(1e-7, 1 - 1e-7)
    return {
        "means": gaussians["means"],
        "quats": gaussians["quats"],
        "log_scales": gaussians["scales"].log(),
        "opacity_logits": torch.log(op / (1 - op)).float(),
        "sh": sh,
    }


def write_frame_ply(path: Path, gaussians: dict) -> None:
    from npga_taichi.gaussians import write_ply

    write_ply(path, **raw_ply_arrays(gaussians))


def _camera_set(run, spec: str) -> dict:
    cams = run.cameras
    if spec == "all":
        return dict(cams)
    if spec == "holdout":
        return {s: cams[s] for s in run.heldout_cameras()}
    serials = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [s for s in serials if s not in cams]
    if unknown:
        raise click.BadParameter(f"unknown camera(s) {unknown}; the capture has {sorted(cams)}", param_hint="--cameras")
    return {s: cams[s] for s in serials}


@click.command(name="export", context_settings={"show_default": True})
@click.argument("run_dir", metavar="RUN", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--sequence", "-s", required=True, help="Tracked sequence whose frames are exported (e.g. FREE).")
@click.option("--out", "-o", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HDF5 file to write (.h5). Optional when --ply is given.")
@click.option("--ply", "ply_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write every frame as DIR/frame_<i>.ply in the 3DGS layout.")
@click.option("--expressions", "-e", type=click.Path(exists=True, path_type=Path), default=None,
              help="Cross-reenactment: take expression codes from another run / tracking .npz / participant.")
@click.option("--cameras", "camera_spec", default="all",
              help="Cameras stored in the file: all, holdout, or comma-separated serials.")
@click.option("--images", is_flag=True, help="Also store the rendered image of every frame for every stored camera.")
@click.option("--stride", type=click.IntRange(min=1), default=1, help="Export every k-th frame.")
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Export at most N frames.")
@click.option("--device", default="cpu", help="Torch device of the avatar (cpu, cuda).")
@click.option("--force", is_flag=True, help="Overwrite an existing HDF5 file / PLY folder.")
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

    from npga_taichi.export_hdf5 import SequenceWriter
    from npga_taichi.reenactment import LoadedRun, describe_run

    if out_path is None and ply_dir is None:
        raise click.UsageError("nothing to write: give --out FILE.h5 and/or --ply DIR")
    if out_path is not None and out_path.suffix.lower() not in (".h5", ".hdf5"):
        raise click.BadParameter(f"{out_path} must end in .h5 or .hdf5", param_hint="--out")
    if out_path is not None and out_path.exists() and not force:
        raise click.ClickException(f"{out_path} already exists; pass --force to overwrite it")
    if ply_dir is not None and ply_dir.exists() and any(ply_dir.iterdir()) and not force:
        raise click.ClickException(f"{ply_dir} is not empty; pass --force to overwrite it")

    try:
        run = LoadedRun(run_dir, device=device)
        drive = run.drive(sequence, expressions)
        cameras = _camera_set(run, camera_spec)
    except (ValueError, KeyError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
    indices = list(range(0, len(drive), stride))[:max_frames]
    drive = drive.select(indices)

    ply_tmp = None
    if ply_dir is not None:
        ply_tmp = ply_dir.with_name(f".{ply_dir.name}.tmp")
        shutil.rmtree(ply_tmp, ignore_errors=True)
        ply_tmp.mkdir(parents=True)
    writer = None
    try:
        for i in tqdm(range(len(drive)), desc=f"export {sequence}", unit="frame"):
            g = run.gaussians(drive.frame(i))
            if writer is None and out_path is not None:
                meta = describe_run(run)
                writer = SequenceWriter(out_path, sh_degree=g["sh_degree"], background=run.raster_background(g),
                                        force=force, attrs={"run": meta["run"], "sequence": drive.sequence,
                                                            "capture": meta["capture"],
                                                            "participant": meta["participant"],
                                                            "expressions": str(expressions or "self")})
                writer.write_cameras(cameras)
            if writer is not None:
                rendered = None
                if images:
                    rendered = {s: run.render(g, cam) for s, cam in cameras.items()}
                arrays = dict(g)
                if g["sh_degree"] is not None:
                    arrays["sh"] = arrays.pop("colors")
                writer.add_frame(int(drive.timesteps[i]), arrays, rendered)
            if ply_tmp is not None:
                write_frame_ply(ply_tmp / f"frame_{i:05d}.ply", g)
        if writer is not None:
            writer.write_tracks(drive.timesteps, drive.z_exp, drive.rot, drive.trans, drive.scale)
            writer.close()
        if ply_tmp is not None:
            if ply_dir.exists():
                shutil.rmtree(ply_dir)
            ply_tmp.replace(ply_dir)
    except BaseException as err:
        if writer is not None and writer.file.id.valid:
            writer.abort()
        if ply_tmp is not None:
            shutil.rmtree(ply_tmp, ignore_errors=True)
        if isinstance(err, (ValueError, KeyError, FileNotFoundError, FileExistsError)):
            raise click.ClickException(str(err)) from None
        raise

    info = {"run": str(run_dir), "sequence": drive.sequence, "num_frames": len(drive),
            "hdf5": str(out_path) if out_path else None, "ply_dir": str(ply_dir) if ply_dir else None,
            "cameras": sorted(cameras), "images": images,
            "timesteps": [int(t) for t in drive.timesteps]}
    if as_json:
        click.echo(json.dumps(info))
    else:
        if out_path:
            click.echo(f"hdf5: {out_path} ({len(drive)} frames, {len(cameras)} cameras)")
        if ply_dir:
            click.echo(f"ply: {ply_dir}/frame_00000.ply ... ({len(drive)} files)")

