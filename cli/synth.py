"""``npga synth OUT``: write a synthetic multi-view head capture in the NeRSemble v1 layout."""
from __future__ import annotations

import json
import time

import click

from npga_taichi.data.capture import SEQUENCE_CATALOGUE


@click.command(name="synth")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--identity", "identity_seed", type=int, default=0, show_default=True,
              help="Seed of the random identity (head shape, skin, hair).")
@click.option("--participant", type=click.IntRange(0, 999), default=None,
              help="Participant id: the capture goes to OUT/<participant:03d>. [default: identity seed mod 1000]")
@click.option("--preset", type=click.Choice(["default", "tiny"]), default="default", show_default=True,
              help="default: 10 sequences x 20 frames at 8x downscale (275x401); "
                   "tiny: EXP-1, EMO-1, FREE x 4 frames at 16x (137x200).")
@click.option("--downscale", type=click.IntRange(1, 64), default=None,
              help="Write images-<k>x at full resolution (2200x3208) / k. [default: from the preset]")
@click.option("--frames", type=click.IntRange(1, 10000), default=None,
              help="Frames per sequence. [default: from the preset]")
@click.option("--sequences", default=None,
              help="Comma-separated sequence names, e.g. EXP-1,EMO-2,FREE. Known: "
                   + ", ".join(SEQUENCE_CATALOGUE) + ". [default: from the preset]")
@click.option("--samples", type=click.IntRange(1, 8), default=None,
              help="Antialiasing: n -> n*n samples per pixel. [default: 2, i.e. 4 spp]")
@click.option("--monocular", is_flag=True,
              help="Instead of the 16-camera capture, write a monocular video of one sequence into OUT "
                   "(see below): one hand-held-like camera, the capture plan's expressions and head poses.")
@click.option("--sequence", "mono_sequence", default="FREE", show_default=True,
              help="--monocular: the sequence the video shows (added to the plan if --sequences lacks it).")
@click.option("--camera-seed", type=int, default=0, show_default=True,
              help="--monocular: seed of the hand-held camera path (its mean direction, drift and shake).")
@click.option("--distance", type=click.FloatRange(0.2, 10.0, min_open=True), default=1.0, show_default=True,
              help="--monocular: mean camera distance from the head in metres.")
@click.option("--fov", type=click.FloatRange(1.0, 150.0), default=None,
              help="--monocular: vertical field of view in degrees. [default: the capture rig's focal length]")
@click.option("--static-camera", is_flag=True, help="--monocular: hold the first frame's camera (a tripod).")
@click.option("--no-mattes", is_flag=True, help="--monocular: do not write OUT/mattes/.")
@click.option("--fps", type=click.FloatRange(0.1, 240.0), default=25.0, show_default=True,
              help="--monocular: frame rate of OUT/video.mp4.")
@click.option("--force", is_flag=True, help="Overwrite an existing capture in OUT/<participant> "
                                            "(--monocular: the video files in OUT).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(out, identity_seed, participant, preset, downscale, frames, sequences, samples, monocular, mono_sequence,
            camera_seed, distance, fov, static_camera, no_mattes, fps, force, as_json, quiet):
    """Render one procedural identity from 16 NeRSemble-like cameras into OUT/<pid>/.

    Per frame: images-<k>x/cam_<serial>.png, alpha_map/cam_<serial>.png,
    colmap/pointclouds/pointcloud_16.pcd (noisy visible-surface points, world metres) and
    labels/cam_<serial>.png (what each pixel shows, uint8: 0 background, 1 skin, 2 hair,
    3 brows, 4 eyelids, 5 lips, 6 eyes, 7 teeth, 8 mouth interior; for grading by `npga eval`).
    calibration/camera_params.json holds world->camera OpenCV extrinsics and the shared
    full-resolution intrinsics; groundtruth/groundtruth.json holds the identity, per-frame
    expression and rigid pose (for grading only). An interrupted run resumes when re-run
    with the same options.

    \b
    --monocular writes one sequence seen by one moving camera into OUT itself:
      video.mp4, frames/frame_<i>.png (lossless), mattes/frame_<i>.png (8-bit alpha),
      labels/frame_<i>.png (uint8 part ids: `npga track-video --labels` reads the eye closure
      and the brows' and mouth corners' motion from them),
      landmarks.json (true 2D landmarks: named canonical surface points of the head, projected;
      with a visibility flag), cameras.json (per-frame K and world->camera viewmat, OpenCV),
      groundtruth.json (expressions, head poses, also as a static camera would see them; for
      grading only) and monocular.json (the settings).
    The expressions and poses are the capture plan's for the same --identity / --preset /
    --frames / --sequences, so `npga synth OUT --monocular --preset tiny --identity 11` shows the
    very frames the capture `npga synth CAP --preset tiny --identity 11` holds for FREE.
    """
    from npga_taichi.data.capture import CaptureConfig, write_capture

    seq_list = None
    if sequences is not None:
        seq_list = tuple(s.strip() for s in sequences.split(",") if s.strip())
    try:
        config = CaptureConfig.preset(
            preset, identity_seed=identity_seed,
            participant=participant if participant is not None else identity_seed % 1000,
            downscale=downscale, frames_per_sequence=frames, sequences=seq_list, samples_per_side=samples)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    start = time.perf_counter()
    try:
        if monocular:
            from npga_taichi.data.monocular import MonocularConfig, write_monocular

            if mono_sequence not in config.sequences:
                config.sequences = tuple(config.sequences) + (mono_sequence,)
            mono = MonocularConfig(capture=config, sequence=mono_sequence, camera_seed=camera_seed,
                                   distance=distance, fov_degrees=fov, static=static_camera, mattes=not no_mattes,
                                   fps=fps)
            summary = write_monocular(out, mono, force=force, progress=not quiet and not as_json)
        else:
            summary = write_capture(out, config, force=force, progress=not quiet and not as_json)
    except (FileExistsError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    summary["seconds"] = round(time.perf_counter() - start, 2)
    size = f"{summary['image_size'][0]}x{summary['image_size'][1]}"
    if as_json:
        click.echo(json.dumps(summary))
    elif monocular:
        click.echo(f"wrote {summary['frames']} frames of {summary['sequence']} ({size}, identity "
                   f"{summary['identity_seed']}, {summary['landmarks_visible']} visible landmarks) to {out} "
                   f"in {summary['seconds']} s")
    else:
        click.echo(f"wrote {summary['frames_written']} of {summary['frames']} frames x {summary['cameras']} cameras "
                   f"({size}) to {summary['participant_dir']} in {summary['seconds']} s")
