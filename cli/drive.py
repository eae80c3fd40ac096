"""``npga drive RUN --tracking T``: an avatar driven by the codes and head poses tracked from a video.

The work is :func:`npga_taichi.driving.drive_run`; this module parses and prints.
"""
from __future__ import annotations

from pathlib import Path

import click

from npga_taichi.cli.options import run_and_report
from npga_taichi.render_run import DEFAULT_CAMERA


@click.command(name="drive", context_settings={"show_default": True})
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--tracking", "-t", "tracking", required=True, type=click.Path(path_type=Path),
              help="Tracking .npz whose codes and poses drive the avatar (`npga track-video`, `npga track`).")
@click.option("--relative", is_flag=True,
              help="Transfer expression changes: z_t - z_0 + z_neutral (z_0: the driver's first code, z_neutral: "
                   "the avatar's neutral code, see --neutral). The usual remedy when the driver is another "
                   "person whose identity leaks into the codes.")
@click.option("--neutral", default=None, metavar="SEQ:T",
              help="--relative: the avatar's tracked frame that is its neutral face [default: the first frame "
                   "of its first tracked sequence].")
@click.option("--pose", type=click.Choice(["relative", "tracked", "fixed"]), default="relative",
              help="Head pose: the driver's motion since its first frame applied to the avatar's own pose "
                   "(any video), the tracked pose as is (the tracking's camera is in the avatar capture's world, "
                   "e.g. a synthetic video tracked with its true camera), or the avatar's pose held fixed.")
@click.option("--video", "-v", type=click.Path(path_type=Path), default=None,
              help="The driving video (mp4, PNG folder, or an `npga synth --monocular` folder), shown left of "
                   "the avatar.")
@click.option("--video-camera", type=click.Path(path_type=Path), default=None,
              help="JSON camera of the video ({K, viewmat, width, height} or a monocular folder's cameras.json) "
                   "[default: the camera the tracking records (`npga track-video`), else the monocular "
                   "folder's].")
@click.option("--camera", "-c", default=None,
              help=f"Capture camera of the third panel [default: {DEFAULT_CAMERA} if the capture has it, "
                   "else the first held-out camera].")
@click.option("--orbit", is_flag=True, help="Third panel: an orbit around the head instead of a capture camera.")
@click.option("--stride", type=click.IntRange(min=1), default=1, help="Use every k-th tracked frame.")
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Render at most N frames.")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Output folder [default: RUN/renders/drive_<tracking name>].")
@click.option("--png", is_flag=True, help="Also write every frame as a PNG under OUT/frames/.")
@click.option("--fps", type=click.FloatRange(min=0.1), default=25.0, help="Video frame rate.")
@click.option("--device", default="cpu", help="Torch device of the avatar (cpu, cuda).")
@click.option("--force", is_flag=True, help="Overwrite existing outputs in OUT.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON description of what was written.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(run_dir, tracking, relative, neutral, pose, video, video_camera, camera, orbit, stride, max_frames, out,
            png, fps, device, force, as_json, quiet):
    """Render the avatar RUN (a folder written by `npga fit`) driven by a tracked video.

    Writes OUT/video.mp4 (driver | avatar from the driving camera | avatar from a capture camera
    or an orbit), OUT/still.png (those panels for up to four frames) and OUT/drive.json.

    \b
    Examples:
      npga synth vid --monocular --identity 7            # a synthetic monocular video
      npga track-video vid --prior PRIOR --out vid.npz   # its codes and poses
      npga drive runs/me --tracking vid.npz --video vid --relative
      npga drive runs/me --tracking vid.npz --orbit --pose fixed
    """
    from npga_taichi.driving import drive_run

    run_and_report(lambda: drive_run(
        run_dir, tracking, out, relative=relative, neutral=neutral, pose=pose, video=video,
        video_camera=video_camera, camera=camera, orbit=orbit, stride=stride, max_frames=max_frames,
        png=png, fps=fps, device=device, force=force, progress=not quiet and not as_json), as_json)

