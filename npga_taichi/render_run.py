"""``npga render``'s work: videos and images of a trained avatar, written to one folder.

Modes (one per call of :func:`render_run`):

* self-reenactment (default): the run's tracked codes and poses of ``sequence`` seen from a
  dataset ``camera``; ``side_by_side`` puts the masked ground truth on the left.
* orbit (``orbit=N``): the same drive seen from N cameras circling the head (the mean of the
  first frame's Gaussians), starting at ``camera``; the drive loops when it is shorter.
* cross-reenactment (``expressions=SRC``): codes from another run, a tracking ``.npz`` or a
  tracked participant folder drive this avatar (its own first pose unless ``source_pose``).
* latent expression interpolation (``interpolate``): four codes at the corners of a square,
  blended bilinearly as in NPGA's viewer; ``grid="RxC"`` writes one image, otherwise a video
  follows ``path`` through the square.

Every frame goes through :class:`npga_taichi.reenactment.LoadedRun` (``gaussians`` then
``render``), the one render path that ``npga eval`` and ``npga export`` share. Outputs go to
``out`` (default ``RUN/renders/<mode>_<sequence>_<camera>``): ``video.mp4`` (imageio-ffmpeg),
``frames/frame_<i>.png``, ``grid.png`` and ``render.json``. Nothing is overwritten without
``force``.

Errors name the ``npga render`` option at fault: :class:`OptionError` (a ValueError) for a bad
value or combination of options, plain ValueError / FileNotFoundError for inputs that do not
fit the run (unknown camera, untracked sequence), FileExistsError for outputs in the way.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

DEFAULT_CAMERA = "222200037"  # upper-row, frontal NeRSemble camera


class OptionError(ValueError):
    """A bad option value (``option`` names it, e.g. ``"--grid"``) or a bad combination of options
    (``option`` is None; ``message`` names them all). ``str()`` is ``"--grid: <message>"``."""

    def __init__(self, option: str | None, message: str) -> None:
        self.option = option
        self.message = message
        super().__init__(f"{option}: {message}" if option else message)


def parse_grid(grid: str | Sequence[int]) -> tuple[int, int]:
    """``"RxC"`` (or ``"R,C"``, or a pair) -> (rows, cols), both at least 2."""
    if isinstance(grid, str):
        m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", grid)
        if not m:
            raise OptionError("--grid", f"expected ROWSxCOLS like 4x4, got {grid!r}")
        rows, cols = int(m.group(1)), int(m.group(2))
    else:
        rows, cols = (int(x) for x in grid)
    if rows < 2 or cols < 2:
        raise OptionError("--grid", f"a grid needs at least 2x2 cells, got {grid!r}")
    return rows, cols


def parse_corner_codes(text: str, drive_for: Callable, default_sequence: str,
                       other_sequences: list[str]) -> tuple[torch.Tensor, list[str]]:
    """``'auto'`` or ``'SEQ:T;SEQ:T;SEQ:T;SEQ:T'`` -> ((4, E) codes, their ``SEQ:T`` labels).

    Corners are ordered top-left, top-right, bottom-left, bottom-right
    (:data:`npga_taichi.camera_paths.SQUARE_CORNERS`). ``drive_for(seq)`` returns the
    :class:`~npga_taichi.reenactment.Drive` whose codes a label refers to.
    """
    from npga_taichi.reenactment import farthest_codes

    if text.strip().lower() == "auto":
        # Four mutually distant codes of the default sequence, topped up with the other tracked
        # sequences when it has fewer than four frames.
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
        raise OptionError("--interpolate", f"expected 'auto' or four SEQ:TIMESTEP separated by ';', got {text!r}")
    codes, labels = [], []
    for part in parts:
        if ":" not in part:
            raise OptionError("--interpolate", f"{part!r} is not SEQ:TIMESTEP")
        seq, t = part.rsplit(":", 1)
        try:
            t = int(t)
        except ValueError:
            raise OptionError("--interpolate", f"timestep of {part!r} is not an integer") from None
        drive = drive_for(seq)
        hits = np.nonzero(drive.timesteps == t)[0]
        if len(hits) == 0:
            raise OptionError("--interpolate", f"sequence {seq} has no tracked timestep {t} "
                                               f"(tracked: {drive.timesteps[0]}..{drive.timesteps[-1]})")
        codes.append(drive.z_exp[int(hits[0])])
        labels.append(part)
    return torch.stack(codes), labels


def frame_indices(n: int, stride: int = 1, max_frames: int | None = None) -> list[int]:
    """Every ``stride``-th of ``n`` frames, at most ``max_frames`` of them."""
    idx = list(range(0, n, stride))
    return idx[:max_frames] if max_frames else idx


def tile_grid(images: list[np.ndarray], rows: int, cols: int) -> np.ndarray:
    """Equal-sized (H, W, C) images, row-major, as one (rows*H, cols*W, C) image."""
    h, w, c = images[0].shape
    grid = np.zeros((rows * h, cols * w, c), dtype=images[0].dtype)
    for k, img in enumerate(images):
        i, j = divmod(k, cols)
        grid[i * h:(i + 1) * h, j * w:(j + 1) * w] = img
    return grid


def head_center(run, drive) -> np.ndarray:
    """Orbit centre (3,) float64: the opacity-weighted mean of the first frame's deformed
    Gaussians (the head, not the world origin)."""
    g = run.gaussians(drive.frame(0))
    weights = g["opacities"].double()
    return ((g["means"].double() * weights[:, None]).sum(0) / weights.sum().clamp_min(1e-12)).cpu().numpy()


def _check_options(orbit, expressions, source_pose, interpolate, grid, path, frames, stride, max_frames,
                   side_by_side, fps) -> None:
    """Refuse bad values and combinations before anything is loaded."""
    if side_by_side and (orbit or expressions or interpolate):
        raise OptionError(None, "--side-by-side needs self-reenactment from a dataset camera "
                                "(no --orbit, --expressions or --interpolate)")
    if (grid or path) and not interpolate:
        raise OptionError(None, "--grid and --path belong to --interpolate")
    if grid and path:
        raise OptionError(None, "choose --grid (one image) or --path (a video), not both")
    if source_pose and not expressions:
        raise OptionError(None, "--source-pose needs --expressions")
    for option, value, low in (("--orbit", orbit, 2), ("--frames", frames, 2), ("--stride", stride, 1),
                               ("--max-frames", max_frames, 1)):
        if value is not None and int(value) < low:
            raise OptionError(option, f"{value} is smaller than the minimum {low}")
    if not fps >= 0.1:
        raise OptionError("--fps", f"{fps} is smaller than the minimum 0.1")


def render_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
               sequence: str | None = None, camera: str | None = None, orbit: int | None = None,
               orbit_yaw: float = 30.0, orbit_pitch: float = 10.0, full_circle: bool = False,
               expressions: str | os.PathLike | None = None, source_pose: bool = False,
               interpolate: str | None = None, grid: str | Sequence[int] | None = None,
               path: str | Sequence[tuple[float, float]] | None = None, frames: int = 60, stride: int = 1,
               max_frames: int | None = None, side_by_side: bool = False, png: bool = False,
               video: bool = True, fps: float = 25.0, device: str = "cpu", force: bool = False,
               progress: bool = True) -> dict:
    """``npga render RUN``: render the trained avatar in ``run_dir`` and write the outputs to ``out``.

    The keyword arguments are ``npga render``'s options (``video=False`` is ``--no-video``, which
    writes PNG frames instead; ``grid`` may be ``"RxC"`` or a pair; ``path`` waypoints ``"u,v;u,v"``
    or a list of pairs in the unit square). Defaults: ``camera`` the frontal
    :data:`DEFAULT_CAMERA` if the capture has it, else the first held-out camera; ``sequence``
    the first tracked held-out sequence (FREE), else the first tracked one.

    Returns the JSON-able description also written to ``out/render.json``: ``mode`` (self, orbit,
    cross, interp), ``run``, ``sequence``, ``camera``, ``num_frames``, ``fps``, ``outputs``
    ({"video"|"frames"|"grid": path}), ``timesteps``, ``expressions``, ``orbit``,
    ``side_by_side`` and, when interpolating, ``corners`` (SEQ:T labels) and ``uv``.
    Raises :class:`OptionError` / ValueError / FileNotFoundError / FileExistsError (see the
    module docstring); nothing is written before the inputs are checked.
    """
    from npga_taichi.camera_paths import (DEFAULT_SQUARE_WAYPOINTS, bilinear_code, orbit_cameras, parse_waypoints,
                                          square_grid, square_path)
    from npga_taichi.checkpoint import write_text_atomic
    from npga_taichi.reenactment import LoadedRun, dumps, ground_truth
    from npga_taichi.video import to_uint8, write_png, write_png_frames, write_video

    _check_options(orbit, expressions, source_pose, interpolate, grid, path, frames, stride, max_frames,
                   side_by_side, fps)
    grid = parse_grid(grid) if grid else None
    if isinstance(path, str):
        try:
            waypoints = parse_waypoints(path)
        except ValueError as err:
            raise OptionError("--path", str(err)) from None
    else:
        waypoints = [tuple(map(float, p)) for p in path] if path else DEFAULT_SQUARE_WAYPOINTS
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"RUN {run_dir} is not a folder; train one with `npga fit`")

    try:
        run = LoadedRun(run_dir, device=device)
        cams = run.cameras
        if camera is None:
            camera = DEFAULT_CAMERA if DEFAULT_CAMERA in cams else (run.heldout_cameras() or sorted(cams))[0]
        ref_cam = run.camera(camera)
        if sequence is None:
            held = [s for s in run.heldout_sequences() if s in run.tracked_sequences()]
            sequence = held[0] if held else run.reference_drive().sequence
        mode = "interp" if interpolate else "cross" if expressions else "orbit" if orbit else "self"

        if interpolate:
            def drive_for(seq):
                return run.drive(seq, expressions, source_pose=False)
            tracked = [] if expressions else run.tracked_sequences()
            corners, corner_labels = parse_corner_codes(interpolate, drive_for, sequence, tracked)
            uv = square_grid(*grid) if grid else square_path(frames, waypoints)
            codes = torch.stack([bilinear_code(corners, u, v) for u, v in uv])
            drive = run.reference_drive().with_codes(codes, sequence=f"interp:{sequence}")
            indices = list(range(len(drive)))
        else:
            drive = run.drive(sequence, expressions, source_pose=source_pose)
            indices = frame_indices(len(drive), stride, max_frames)
        if not indices:
            raise ValueError("no frames selected")
        if orbit:
            path_cams = orbit_cameras(ref_cam, orbit, center=head_center(run, drive), yaw_degrees=orbit_yaw,
                                      pitch_degrees=orbit_pitch, full_circle=full_circle)
            # the orbit sets the number of frames; the drive loops if it is shorter
            frame_plan = [(indices[k % len(indices)], path_cams[k]) for k in range(orbit)]
        else:
            frame_plan = [(i, ref_cam) for i in indices]
    except KeyError as err:  # a lookup in the capture or run files that has no entry
        raise ValueError(f"{run_dir}: missing entry {err}") from None

    out = Path(out) if out is not None else run_dir / "renders" / f"{mode}_{drive.sequence.replace(':', '-')}_{camera}"
    names = ["grid.png"] if grid else (["video.mp4"] if video else []) + (["frames"] if png or not video else [])
    existing = [n for n in names + ["render.json"] if (out / n).exists()]
    if existing and not force:
        raise FileExistsError(f"{out} already holds {', '.join(existing)}; pass --force to overwrite")
    out.mkdir(parents=True, exist_ok=True)

    def images():
        from tqdm import tqdm

        for i, cam in tqdm(frame_plan, desc=f"render {mode}", unit="frame", disable=not progress):
            image = run.render(run.gaussians(drive.frame(i)), cam)
            if side_by_side:
                gt, alpha = ground_truth(run, drive.sequence, int(drive.timesteps[i]), cam.serial)
                gt = alpha * gt + (1 - alpha) * run.background.view(1, 1, -1)
                image = torch.cat([gt.to(image), image], dim=1)
            yield to_uint8(image)

    written: dict[str, str] = {}
    try:
        if grid:
            written["grid"] = str(write_png(out / "grid.png", tile_grid(list(images()), *grid)))
        elif png or not video:
            frames_list = list(images())
            written["frames"] = str(out / "frames")
            write_png_frames(out / "frames", frames_list)
            if video:
                written["video"] = str(write_video(out / "video.mp4", frames_list, fps))
        else:
            written["video"] = str(write_video(out / "video.mp4", images(), fps))
    except KeyError as err:
        raise ValueError(f"{run_dir}: missing entry {err}") from None

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
    write_text_atomic(dumps(info) + "\n", out / "render.json")
    return info
