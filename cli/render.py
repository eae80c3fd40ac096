"""``npga render RUN``: videos and images of a trained avatar.

Modes (one per call):

* self-reenactment (default): the run's tracked codes and poses of ``--sequence`` seen from a
  dataset ``--camera``; ``--side-by-side`` puts the ground truth on the left.
* orbit (``--orbit N``): the same drive seen from N cameras circling the head, starting at
  ``--camera``.
* cross-reenactment (``--expressions SRC``): codes from another run, a tracking ``.npz`` or a
  tracked participant folder drive this avatar (its own first pose unless ``--source-pose``).
* latent expression interpolation (``--interpolate``): four codes at the corners of a square,
  blended bilinearly as in NPGA's viewer; ``--grid RxC`` writes one image, otherwise a video
  follows ``--path`` through the square.

Outputs go to ``--out`` (default ``RUN/renders/<mode>_<sequence>_<camera>``): ``video.mp4``
(imageio-ffmpeg), ``frames/frame_<i>.png`` with ``--png``, ``grid.png`` and ``render.json``.
Nothing is overwritten without ``--force``. The work is :func:`npga_taichi.render_run.render_run`;
this module parses and prints.
"""
from __future__ import annotations

from pathlib import Path

import click

from npga_taichi.cli.options import run_and_report
from npga_taichi.render_run import DEFAULT_CAMERA


@click.command(name="render", context_settings={"show_default": True})
@click.argument("run_dir", metavar="RUN", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--sequence", "-s", default=None,
              help="Sequence whose codes/poses drive the avatar [default: the held-out sequence (FREE), "
                   "else the first tracked one].")
@click.option("--camera", "-c", default=None,
              help=f"Dataset camera serial to render from (orbit: where it starts) [default: {DEFAULT_CAMERA} "
                   "if the capture has it, else the first held-out camera].")
@click.option("--orbit", type=click.IntRange(min=2), default=None, metavar="N",
              help="Render from N cameras orbiting the head instead of a fixed camera.")
@click.option("--orbit-yaw", type=float, default=30.0, help="Orbit: left-right swing amplitude in degrees.")
@click.option("--orbit-pitch", type=float, default=10.0, help="Orbit: up-down nod amplitude in degrees.")
@click.option("--full-circle", is_flag=True, help="Orbit: a full 360° turn instead of a swing.")
@click.option("--expressions", "-e", type=click.Path(exists=True, path_type=Path), default=None,
              help="Cross-reenactment: take expression codes from another run, tracking .npz or tracked "
                   "participant folder.")
@click.option("--source-pose", is_flag=True, help="Cross-reenactment: also take the source's head poses.")
@click.option("--interpolate", default=None, metavar="CODES",
              help="Latent expression interpolation between four codes: 'auto' (four distinct tracked frames, "
                   "from --sequence first) or 'SEQ:T;SEQ:T;SEQ:T;SEQ:T' (top-left, top-right, bottom-left, bottom-right).")
@click.option("--grid", "grid_text", default=None, metavar="RxC",
              help="Interpolation: write one grid image of R x C blends (e.g. 4x4) instead of a video.")
@click.option("--path", "path_text", default=None, metavar="'u,v;u,v;...'",
              help="Interpolation video: waypoints through the unit square [default: around the border].")
@click.option("--frames", "n_frames", type=click.IntRange(min=2), default=60,
              help="Interpolation video: number of frames along the path.")
@click.option("--stride", type=click.IntRange(min=1), default=1, help="Use every k-th frame of the sequence.")
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Render at most N frames.")
@click.option("--side-by-side", is_flag=True, help="Show the ground-truth image left of the render "
                                                   "(self-reenactment from a dataset camera only).")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder [default: RUN/renders/<mode>_<sequence>_<camera>].")
@click.option("--png", is_flag=True, help="Also write every frame as a PNG under OUT/frames/.")
@click.option("--no-video", is_flag=True, help="Do not write OUT/video.mp4 (implies --png for videos).")
@click.option("--fps", type=click.FloatRange(min=0.1), default=25.0, help="Video frame rate.")
@click.option("--device", default="cpu", help="Torch device of the avatar (cpu, cuda).")
@click.option("--force", is_flag=True, help="Overwrite existing outputs in OUT.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON description of what was written.")
def command(run_dir, sequence, camera, orbit, orbit_yaw, orbit_pitch, full_circle, expressions, source_pose,
            interpolate, grid_text, path_text, n_frames, stride, max_frames, side_by_side, out, png, no_video,
            fps, device, force, as_json):
    """Render a trained avatar RUN (a folder written by `npga fit`).

    \b
    Examples:
      npga render runs/me                                  # FREE sequence, frontal camera, video.mp4
      npga render runs/me --side-by-side --camera 222200040  # next to the ground truth
      npga render runs/me --orbit 90                       # orbit around the head
      npga render runs/me --expressions runs/other -s EXP-2  # cross-reenactment
      npga render runs/me --interpolate auto --grid 4x4    # expression square as one image
      npga render runs/me --interpolate auto --frames 120  # ... as a video along the border
    """
    from npga_taichi.render_run import render_run

    run_and_report(lambda: render_run(
        run_dir, out, sequence=sequence, camera=camera, orbit=orbit, orbit_yaw=orbit_yaw,
        orbit_pitch=orbit_pitch, full_circle=full_circle, expressions=expressions, source_pose=source_pose,
        interpolate=interpolate, grid=grid_text, path=path_text, frames=n_frames, stride=stride,
        max_frames=max_frames, side_by_side=side_by_side, png=png, video=not no_video, fps=fps, device=device,
        force=force), as_json)

