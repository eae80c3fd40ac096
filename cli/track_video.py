"""``npga track-video VIDEO --prior PRIOR --out T``: expression codes and head pose of a monocular video.

The work is :func:`npga_taichi.prior.photometric.track_video_file`; this module parses and prints.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from npga_taichi.cli.options import prior_option



@click.command(name="track-video")
@click.argument("video", type=click.Path(exists=True, path_type=Path))
@prior_option
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Tracking file to write (T.npz + T.json); `npga render --expressions T.npz` and "
                   "`npga view` read it.")
@click.option("--mattes", type=click.Path(exists=True, path_type=Path), default=None,
              help="Alpha mattes of the same frames: a video or a folder of images (white = person). "
                   "Strongly recommended: the silhouette places the head.")
@click.option("--landmarks", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="2D landmarks per frame, .npy (T, L, 2) or JSON, pixel coordinates in the order of "
                   "npga_taichi.prior.photometric.LANDMARK_NAMES (NaN/null = missing).")
@click.option("--labels", "labels", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Label maps of the same frames: a folder of single-channel 8-bit PNGs of ids into "
                   "npga_taichi.data.synthetic.LABEL_NAMES (`npga synth --monocular` writes OUT/labels). "
                   "Adds the per-frame eye closure (0 open, 1 closed; the video's own open eye as reference) "
                   "and the brows' and mouth corners' motion (from the video's median frame), which "
                   "`npga drive` passes to avatars that take them.")
@click.option("--fov", type=float, default=None,
              help="Horizontal field of view of the camera in degrees (principal point at the centre).")
@click.option("--K", "K_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Camera intrinsics instead of --fov: a 3x3 matrix in pixels at the video's size "
                   "(.npy or JSON [[fx,0,cx],[0,fy,cy],[0,0,1]]).")
@click.option("--sequence", default=None, help="Sequence name stored in the track [default: the video's name].")
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Track only the first N frames.")
@click.option("--steps-first", type=click.IntRange(min=1), default=None,
              help="Steps on the first frame (identity, lighting, pose, expression) [default: 150].")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Steps for every later frame [default: 40].")
@click.option("--points", type=click.IntRange(min=100), default=None,
              help="Surfel Gaussians of the proxy head [default: 6000; 3000 with --avatar, which refines "
                   "the proxy's track].")
@click.option("--avatar", "avatar", type=click.Path(path_type=Path), default=None, metavar="RUN",
              help="An avatar of the person in the video (a folder written by `npga fit`): the track is then "
                   "refined through it, frame by frame (codes, eye / brow / mouth measurements and head pose "
                   "fitted so the avatar matches the frame; mattes recommended). The codes and poses are that "
                   "avatar's own: drive it, not another avatar, with them.")
@click.option("--avatar-steps", type=click.IntRange(min=0), default=None,
              help="--avatar: joint steps per later frame [default: 12], each frame then fits the pose alone "
                   "for 8 more.")
@click.option("--image-scale", type=click.FloatRange(min=0.05, max=1.0), default=None,
              help="Fit on frames resampled by this factor [default: 0.5].")
@click.option("--force", is_flag=True, help="Overwrite an existing tracking file.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(video: Path, prior_dir: Path, out: Path, mattes: Path | None, landmarks: Path | None,
            labels: Path | None, fov: float | None, K_path: Path | None, sequence: str | None, max_frames: int | None,
            steps_first: int | None, steps: int | None, points: int | None, avatar: Path | None,
            avatar_steps: int | None, image_scale: float | None, force: bool, as_json: bool, quiet: bool) -> None:
    """Track the expression codes and head pose of every frame of VIDEO (an mp4 or a folder of
    images) seen by one camera, by analysis by synthesis through the prior (photometric tracking).

    The camera sits at the world origin looking along +z; give its --fov or --K. Identity and
    lighting are fitted on the first frame, then each frame warm-starts from the previous one.
    With --avatar RUN (a video of the avatar's own person) the track is refined through that
    avatar, which reproduces the person far more closely than the prior's proxy.

    \b
    Examples:
      npga track-video me.mp4 --mattes me_mattes/ --prior PRIOR --fov 40 --out me_track.npz
      npga render RUN --expressions me_track.npz
      npga track-video me.mp4 --mattes me_mattes/ --prior PRIOR --fov 40 --avatar RUN --out me_own.npz
      npga drive RUN --tracking me_own.npz --video me.mp4
    """
    from npga_taichi.avatar_tracking import PROXY_POINTS, AvatarTrackingConfig
    from npga_taichi.prior.photometric import PhotometricConfig, track_video_file

    cfg = PhotometricConfig()
    avatar_cfg = AvatarTrackingConfig()
    if avatar is not None:
        cfg.num_points = PROXY_POINTS
        if avatar_steps is not None:
            avatar_cfg.steps_per_frame = avatar_steps
    for name, value in (("first_frame_steps", steps_first), ("steps_per_frame", steps), ("num_points", points),
                        ("image_scale", image_scale)):
        if value is not None:
            setattr(cfg, name, value)
    try:
        result = track_video_file(video, prior_dir, out, mattes=mattes, landmarks=landmarks, labels=labels,
                                  fov=fov, K=K_path,
                                  config=cfg, sequence=sequence, max_frames=max_frames, avatar=avatar,
                                  avatar_config=avatar_cfg, force=force, progress=not quiet)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        raise click.ClickException(str(err)) from None
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"tracked {result['frames']} frames of {video} into {result['tracking']} in "
               f"{result['seconds']:.0f} s ({result['seconds_per_frame']:.2f} s/frame); "
               f"photometric L1 {result['photometric_l1_x1000_mean']:.1f}/1000")
