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
Nothing is overwritten without ``--force``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import click
import numpy as np
import torch

DEFAULT_CAMERA = "222200037"  # upper-row, frontal NeRSemble camera


def _parse_grid(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", text)
    if not m:
        raise click.BadParameter(f"expected ROWSxCOLS like 4x4, got {text!r}", param_hint="--grid")
    rows, cols = int(m.group(1)), int(m.group(2))
    if rows < 2 or cols < 2:
        raise click.BadParameter(f"a grid needs at least 2x2 cells, got {text!r}", param_hint="--grid")
    return rows, cols


def _parse_corner_codes(text: str, drive_for, default_sequence: str,
                        other_sequences: list[str]) -> tuple[torch.Tensor, list[str]]:
    """'auto' or 'SEQ:T;SEQ:T;SEQ:T;SEQ:T' -> (4, E) codes and their labels."""
    from npga_taichi.reenactment import farthest_codes

    if text.strip().lower() == "auto":
        # Four mutually distant codes of --sequence, topped up with the other tracked sequences
        # when it has fewer than four frames.
        codes, labels = [], []
        for seq in [default_sequence] + [s for s in other_sequences if s != default_sequence]:
            drive = drive_for(seq)
            codes.append(drive.z_exp)
            labels += [f"{drive.sequence}:{int(t)}" for t in drive.timesteps]
            if len(labels) >= 4:
                break
        pool = torch.cat(codes)
        idx = farthest_codes(pool, 4)
        return pool[idx], [labels[i] for i in idx]
    parts = [p.strip() for p in text.split(";") if p.strip()]
    if len(parts) != 4:
        raise click.BadParameter(f"expected 'auto' or four SEQ:TIMESTEP separated by ';', got {text!r}",
                                 param_hint="--interpolate")
    codes, labels = [], []
    for part in parts:
        if ":" not in part:
            raise click.BadParameter(f"{part!r} is not SEQ:TIMESTEP", param_hint="--interpolate")
        seq, t = part.rsplit(":", 1)
        try:
            t = int(t)
        except ValueError:
            raise click.BadParameter(f"timestep of {part!r} is not an integer", param_hint="--interpolate") from None
        drive = drive_for(seq)
        hits = np.nonzero(drive.timesteps == t)[0]
        if len(hits) == 0:
            raise click.BadParameter(f"sequence {seq} has no tracked timestep {t} "
                                     f"(tracked: {drive.timesteps[0]}..{drive.timesteps[-1]})",
                                     param_hint="--interpolate")
        codes.append(drive.z_exp[int(hits[0])])
        labels.append(part)
    return torch.stack(codes), labels


def _frame_indices(n: int, stride: int, max_frames: int | None) -> list[int]:
    idx = list(range(0, n, stride))
    return idx[:max_frames] if max_frames else idx


def _check_out(out: Path, names: list[str], force: bool) -> None:
    existing = [n for n in names if (out / n).exists()]
    if existing and not force:
        raise click.ClickException(f"{out} already holds {', '.join(existing)}; pass --force to overwrite")


def _tile_grid(images: list[np.ndarray], rows: int, cols: int) -> np.ndarray:
    h, w, c = images[0].shape
    grid = np.zeros((rows * h, cols * w, c), dtype=images[0].dtype)
    for k, img in enumerate(images):
        i, j = divmod(k, cols)
        grid[i * h:(i + 1) * h, j * w:(j + 1) * w] = img
    return grid


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
    from npga_taichi.camera_paths import (DEFAULT_SQUARE_WAYPOINTS, bilinear_code, orbit_cameras, parse_waypoints,
                                          square_grid, square_path)
    from npga_taichi.reenactment import LoadedRun, dumps, ground_truth
    from npga_taichi.video import to_uint8, write_png, write_png_frames, write_video

    if side_by_side and (orbit or expressions or interpolate):
        raise click.UsageError("--side-by-side needs self-reenactment from a dataset camera "
                               "(no --orbit, --expressions or --interpolate)")
    if (grid_text or path_text) and not interpolate:
        raise click.UsageError("--grid and --path belong to --interpolate")
    if grid_text and path_text:
        raise click.UsageError("choose --grid (one image) or --path (a video), not both")
    if source_pose and not expressions:
        raise click.UsageError("--source-pose needs --expressions")
    grid = _parse_grid(grid_text) if grid_text else None
    try:
        waypoints = parse_waypoints(path_text) if path_text else DEFAULT_SQUARE_WAYPOINTS
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--path") from None

    try:
        run = LoadedRun(run_dir, device=device)
        cams = run.cameras
        if camera is None:
            camera = DEFAULT_CAMERA if DEFAULT_CAMERA in cams else (run.heldout_cameras() or sorted(cams))[0]
        ref_cam = run.camera(camera)
        if sequence is None:
            held = [s for s in run.heldout_sequences() if _tracked(run, s)]
            sequence = held[0] if held else run.reference_drive().sequence
        mode = "interp" if interpolate else "cross" if expressions else "orbit" if orbit else "self"

        # ---------------------------------------------------------------- the drive
        if interpolate:
            def drive_for(seq):
                return run.drive(seq, expressions, source_pose=False)
            tracked = [] if expressions else [s for s in run.capture.sequences() if _tracked(run, s)]
            corners, corner_labels = _parse_corner_codes(interpolate, drive_for, sequence, tracked)
            uv = square_grid(*grid) if grid else square_path(n_frames, waypoints)
            codes = torch.stack([bilinear_code(corners, u, v) for u, v in uv])
            drive = run.reference_drive().with_codes(codes, sequence=f"interp:{sequence}")
            indices = list(range(len(drive)))
        else:
            drive = run.drive(sequence, expressions, source_pose=source_pose)
            indices = _frame_indices(len(drive), stride, max_frames)
        if not indices:
            raise click.ClickException("no frames selected")
        if orbit:
            path_cams = orbit_cameras(ref_cam, orbit, center=_head_center(run, drive), yaw_degrees=orbit_yaw,
                                      pitch_degrees=orbit_pitch, full_circle=full_circle)
            # the orbit sets the number of frames; the drive loops if it is shorter
            frame_plan = [(indices[k % len(indices)], path_cams[k]) for k in range(orbit)]
        else:
            frame_plan = [(i, ref_cam) for i in indices]
    except (ValueError, KeyError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None

    out = out or run_dir / "renders" / f"{mode}_{drive.sequence.replace(':', '-')}_{camera}"
    names = ["grid.png"] if grid else (["video.mp4"] if not no_video else []) + (["frames"] if png or no_video else [])
    _check_out(out, names + ["render.json"], force)
    out.mkdir(parents=True, exist_ok=True)

    def frames():
        from tqdm import tqdm

        for i, cam in tqdm(frame_plan, desc=f"render {mode}", unit="frame"):
            image = run.render(run.gaussians(drive.frame(i)), cam)
            if side_by_side:
                gt, alpha = ground_truth(run, drive.sequence, int(drive.timesteps[i]), cam.serial)
                gt = alpha * gt + (1 - alpha) * run.background.view(1, 1, -1)
                image = torch.cat([gt.to(image), image], dim=1)
            yield to_uint8(image)

    written: dict[str, str] = {}
    try:
        if grid:
            written["grid"] = str(write_png(out / "grid.png", _tile_grid(list(frames()), *grid)))
        else:
            if png or no_video:
                images = list(frames())
                written["frames"] = str(out / "frames")
                write_png_frames(out / "frames", images)
                if not no_video:
                    written["video"] = str(write_video(out / "video.mp4", images, fps))
            else:
                written["video"] = str(write_video(out / "video.mp4", frames(), fps))
    except (ValueError, KeyError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None

    info = {
        "mode": mode, "run": str(run_dir), "sequence": drive.sequence, "camera": camera,
        "num_frames": len(frame_plan), "fps": fps, "outputs": written,
        "timesteps": [int(drive.timesteps[i]) for i, _ in frame_plan],
        "expressions": str(expressions) if expressions else None,
        "orbit": orbit, "side_by_side": side_by_side,
    }
    if interpolate:
        info["corners"] = corner_labels
        info["uv"] = [list(p) for p in uv]
    (out / "render.json").write_text(dumps(info) + "\n")
    if as_json:
        click.echo(json.dumps(info))
    else:
        for kind, path in written.items():
            click.echo(f"{kind}: {path}")


def _tracked(run, sequence: str) -> bool:
    from npga_taichi.reenactment import tracking_file

    return tracking_file(run.capture_root, run.participant, sequence).is_file()


def _head_center(run, drive) -> np.ndarray:
    """Orbit centre: the mean of the first frame's deformed Gaussians (the head, not the origin)."""
    g = run.gaussians(drive.frame(0))
    weights = g["opacities"].double()
    return ((g["means"].double() * weights[:, None]).sum(0) / weights.sum().clamp_min(1e-12)).cpu().numpy()
