"""``npga drive``'s work: an avatar driven by the codes and head poses tracked from a video.

A tracking file (``npga track-video``, ``npga track`` or any :func:`~npga_taichi.prior.tracking.save_tracking`
output) holds per frame an expression code ``z_t (E,)`` and a head pose ``P_t = (s, R_t, t_t)``
(``x_world = s R_t x_posed + t_t``) in the world frame of the camera it was tracked with.
:func:`driven_drive` turns it into the :class:`~npga_taichi.reenactment.Drive` an avatar run
renders (the one render path of ``npga render`` / ``eval`` / ``export``):

Expressions
    absolute (default): ``z'_t = z_t``.
    relative (``relative=True``): ``z'_t = z_t − z_0 + z_n``, where ``z_0`` is the driver's first
    tracked code and ``z_n`` the avatar's neutral code — by default the first frame of the
    avatar's first tracked sequence (its capture starts every training sequence at the neutral
    face), or the tracked frame ``neutral="SEQ:T"``. Only the *change* of the driver's
    expression is transferred, so what the driver's first code carries of the driver's own
    face (identity leaking into expression codes across people) cancels. With the avatar's own
    video and ``z_0 = z_n`` it equals the absolute transfer.

Head pose (``pose=``)
    ``"relative"`` (default): ``P'_t = P_ref ∘ P_0⁻¹ ∘ P_t`` — the driver's head motion since its
        first frame, applied to the avatar's reference pose (its first tracked pose): right for
        any video (``npga track-video`` puts its camera at the world origin, far from the
        avatar's capture cameras).
    ``"tracked"``: ``P'_t = P_t`` — right when the tracking's camera lives in the avatar
        capture's world frame (a synthetic video tracked with its true camera, the avatar's rig).
    ``"fixed"``: ``P'_t = P_ref``, the avatar holds still.

Views
    The *driving camera* (the video's camera: ``video_camera``, else the camera the tracking
    records in its meta, see :func:`tracking_camera`, else a monocular folder's) sees the avatar
    as the video saw the driver: when the avatar's pose is not the tracked one, the camera is moved
    with it, ``V'_t = V ∘ P_t ∘ P'_t⁻¹`` (a similarity; its scale only changes depths, never the
    image). The *other view* is a capture camera
    (``camera=SERIAL``, default the frontal 222200037) or an orbit around the head (``orbit``).

Outputs in ``out`` (default ``RUN/renders/drive_<tracking name>``): ``video.mp4`` (per frame:
driver | avatar from the driving camera | avatar from the other view; the driver column only with
a driving video, the driving-camera column only with a driving camera), ``still.png`` (the same
panels for up to four evenly spaced frames, one row each, for a README), ``frames/`` with
``png=True``, and ``drive.json``. Nothing is overwritten without ``force``.

A driving video is an mp4, a folder of PNG frames, or a monocular video folder written by
``npga synth --monocular`` (its lossless frames and, as the driving camera, its static camera).
A camera file is a JSON object ``{"K": 3x3, "viewmat": 4x4, "width": W, "height": H}`` or such a
folder's ``cameras.json`` (its ``static_camera``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from npga_taichi.render_run import DEFAULT_CAMERA, OptionError, frame_indices

POSE_MODES = ("tracked", "relative", "fixed")
OUTPUT_NAMES = ("video.mp4", "video", "still.png", "frames", "drive.json")


# ------------------------------------------------------------------------ similarity transforms
def _similarity(scale, rot, trans) -> tuple[float, np.ndarray, np.ndarray]:
    return float(np.asarray(scale, np.float64).reshape(-1)[0]), np.asarray(rot, np.float64), \
        np.asarray(trans, np.float64)


def compose(a, b):
    """(s, R, t) of ``a ∘ b`` for similarities ``x -> s R x + t``."""
    sa, ra, ta = a
    sb, rb, tb = b
    return sa * sb, ra @ rb, sa * ra @ tb + ta


def invert(a):
    """(s, R, t) of ``a⁻¹``."""
    s, r, t = a
    return 1.0 / s, r.T, -(r.T @ t) / s


def moved_viewmat(viewmat, transform) -> np.ndarray:
    """The world->camera (4, 4) that sees the world moved by the similarity ``transform`` as
    ``viewmat`` sees it unmoved: ``V ∘ W`` with W's scale divided out of the translation (scaling
    the world about the camera centre leaves the image unchanged)."""
    v = np.asarray(viewmat, np.float64)
    k, rw, tw = transform
    out = np.eye(4)
    out[:3, :3] = v[:3, :3] @ rw
    out[:3, 3] = (v[:3, :3] @ tw + v[:3, 3]) / k
    return out


# ------------------------------------------------------------------------ inputs
def load_driving_tracking(path: str | os.PathLike):
    """:func:`~npga_taichi.prior.tracking.load_tracking` with errors that name the option."""
    from npga_taichi.prior.tracking import load_tracking

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--tracking: {path} is not a file; write one with `npga track-video`")
    return load_tracking(path)


def read_camera_file(path: str | os.PathLike):
    """A :class:`~npga_taichi.cameras.Camera` from a camera JSON or a monocular folder's cameras.json."""
    from npga_taichi.cameras import Camera

    path = Path(path)
    if path.is_dir():
        path = path / "cameras.json"
    try:
        data = json.loads(path.read_text())
        if "static_camera" in data:
            data = {**data["static_camera"], "width": data["width"], "height": data["height"]}
        return Camera("video", np.asarray(data["viewmat"], np.float64), np.asarray(data["K"], np.float64),
                      int(data["width"]), int(data["height"]))
    except FileNotFoundError:
        raise FileNotFoundError(f"camera file {path} does not exist") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"cannot read camera file {path}: {type(err).__name__}: {err} (expected "
                         '{"K": 3x3, "viewmat": 4x4, "width": W, "height": H})') from None


def tracking_camera(tracking, size: tuple[int, int] | None = None):
    """The camera a tracking was made with, or None: ``meta["camera"]`` (same keys as a camera
    file), else ``meta["K"]`` (``npga track-video``: a JSON 3x3, the camera at the world origin
    with OpenCV axes) at ``size`` (width, height; default twice the principal point)."""
    from npga_taichi.cameras import Camera

    meta = tracking.meta if isinstance(tracking.meta, dict) else {}
    try:
        cam = meta.get("camera")
        if isinstance(cam, dict):
            return Camera("video", np.asarray(cam["viewmat"], np.float64), np.asarray(cam["K"], np.float64),
                          int(cam["width"]), int(cam["height"]))
        if "K" in meta:
            K = np.asarray(json.loads(meta["K"]) if isinstance(meta["K"], str) else meta["K"], np.float64)
            width, height = size or (round(2 * K[0, 2]), round(2 * K[1, 2]))
            return Camera("video", np.eye(4), K, int(width), int(height))
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return None


def read_driving_video(path: str | os.PathLike) -> tuple[np.ndarray, object]:
    """(frames (T, H, W, 3) uint8, camera or None) of an mp4, a PNG folder or a monocular folder."""
    from npga_taichi.video import read_video

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--video: {path} does not exist")
    if path.is_dir() and (path / "monocular.json").is_file():
        return read_video(path / "frames"), read_camera_file(path / "cameras.json")
    try:
        frames = read_video(path)
    except ValueError:
        raise
    except Exception as err:  # imageio / ffmpeg raise many types for broken files
        raise ValueError(f"--video: cannot read {path}: {type(err).__name__}: {err}") from None
    if frames.ndim != 4 or len(frames) == 0:
        raise ValueError(f"--video: {path} holds no frames")
    return frames, None


def parse_neutral(run, neutral: str | None) -> torch.Tensor:
    """The avatar's neutral code ``z_n`` (E,): its tracked frame ``"SEQ:T"``, by default the first
    frame of its first tracked sequence."""
    if neutral is None:
        return run.reference_drive().z_exp[0]
    seq, _, t = neutral.rpartition(":")
    try:
        t = int(t)
    except ValueError:
        raise OptionError("--neutral", f"expected SEQ:TIMESTEP like EXP-1:0, got {neutral!r}") from None
    drive = run.drive(seq)
    hits = np.nonzero(drive.timesteps == t)[0]
    if len(hits) == 0:
        raise OptionError("--neutral", f"sequence {seq} has no tracked timestep {t}")
    return drive.z_exp[int(hits[0])]


def relative_codes(z_exp: torch.Tensor, z_neutral: torch.Tensor) -> torch.Tensor:
    """``z_t − z_0 + z_n`` for codes (T, E) and the avatar's neutral code (E,)."""
    return z_exp - z_exp[:1] + z_neutral.to(z_exp).reshape(1, -1)


def driven_drive(run, tracking, relative: bool = False, neutral: str | None = None, pose: str = "relative",
                 source: str = "tracking"):
    """The :class:`~npga_taichi.reenactment.Drive` of avatar ``run`` (a LoadedRun) under
    ``tracking`` (module docstring: expressions and pose). Raises ValueError naming ``source``
    when the codes do not fit the avatar."""
    from npga_taichi.reenactment import Drive, drive_from_tracking

    if pose not in POSE_MODES:
        raise OptionError("--pose", f"expected one of {', '.join(POSE_MODES)}, got {pose!r}")
    drive = drive_from_tracking(tracking, run.device)
    if drive.z_exp.shape[1] != run.avatar.exp_dim:
        raise ValueError(f"{source} has {drive.z_exp.shape[1]}-dim expression codes but the avatar "
                         f"{run.run_dir} expects {run.avatar.exp_dim} (track with the prior the avatar was built on)")
    z = relative_codes(drive.z_exp, parse_neutral(run, neutral)) if relative else drive.z_exp
    rot, trans, scale = drive.rot, drive.trans, drive.scale
    if pose != "tracked":
        ref = run.reference_drive()
        p_ref = _similarity(ref.scale[0].cpu(), ref.rot[0].cpu(), ref.trans[0].cpu())
        poses = []
        for i in range(len(drive)):
            if pose == "fixed":
                poses.append(p_ref)
            else:
                p0 = _similarity(drive.scale[0].cpu(), drive.rot[0].cpu(), drive.trans[0].cpu())
                pt = _similarity(drive.scale[i].cpu(), drive.rot[i].cpu(), drive.trans[i].cpu())
                poses.append(compose(p_ref, compose(invert(p0), pt)))
        as_t = lambda x: torch.as_tensor(np.stack(x), dtype=torch.float32, device=run.device)  # noqa: E731
        rot, trans = as_t([p[1] for p in poses]), as_t([p[2] for p in poses])
        scale = torch.full((len(drive),), 1.0, device=run.device) * torch.tensor(
            [p[0] for p in poses], dtype=torch.float32, device=run.device)
    # the eye closure and the part motion are already relative (0 = that person's open eye, their
    # parts at rest), so they pass as measured
    return Drive(f"drive:{drive.sequence}", drive.timesteps, z, rot, trans, scale, drive.eye_closure,
                 drive.part_motion), drive


def driving_view(camera, tracked_drive, drive, i: int):
    """The driving camera of frame ``i`` moved with the avatar (``V ∘ P_t ∘ P'_t⁻¹``)."""
    from npga_taichi.cameras import Camera

    if all(torch.equal(getattr(tracked_drive, k)[i], getattr(drive, k)[i]) for k in ("rot", "trans", "scale")):
        return camera  # the tracked pose: exactly the driving camera (V ∘ P ∘ P⁻¹ would round)
    p_t = _similarity(tracked_drive.scale[i].cpu(), tracked_drive.rot[i].cpu(), tracked_drive.trans[i].cpu())
    p_used = _similarity(drive.scale[i].cpu(), drive.rot[i].cpu(), drive.trans[i].cpu())
    view = moved_viewmat(camera.viewmat.double().cpu().numpy(), compose(p_t, invert(p_used)))
    return Camera(camera.serial, view, camera.K.double().cpu().numpy(), camera.width, camera.height)


def _fit_height(image: torch.Tensor, height: int) -> torch.Tensor:
    """(H, W, 3) resized (bilinear, aspect kept) to ``height`` rows."""
    if image.shape[0] == height:
        return image
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    return torch.nn.functional.interpolate(image.permute(2, 0, 1)[None].float(), size=(height, width),
                                           mode="bilinear", align_corners=False, antialias=True)[0].permute(1, 2, 0)


def side_by_side(panels: list[torch.Tensor], gap: int = 2) -> torch.Tensor:
    """Panels (H_k, W_k, 3) floats in [0, 1] scaled to the first one's height, side by side with
    a white gap."""
    height = panels[0].shape[0]
    out = []
    for k, p in enumerate(panels):
        if k:
            out.append(torch.ones(height, gap, 3))
        out.append(_fit_height(p.float().cpu(), height))
    return torch.cat(out, dim=1)


# ------------------------------------------------------------------------ the command
def drive_run(run_dir: str | os.PathLike, tracking_path: str | os.PathLike, out: str | os.PathLike | None = None, *,
              relative: bool = False, neutral: str | None = None, pose: str = "relative",
              video: str | os.PathLike | None = None, video_camera: str | os.PathLike | None = None,
              camera: str | None = None, orbit: bool = False, stride: int = 1, max_frames: int | None = None,
              png: bool = False, fps: float = 25.0, device: str = "cpu", force: bool = False,
              progress: bool = True) -> dict:
    """``npga drive RUN --tracking T``: render avatar ``run_dir`` driven by ``tracking_path``.

    See the module docstring for the options and outputs. Returns the JSON-able description
    written to ``out/drive.json``: run, tracking, relative (and the formula), pose, neutral,
    camera, orbit, num_frames, timesteps, outputs ({"video", "still", "frames"}). Raises
    FileNotFoundError (run, tracking, video, camera file missing), ValueError naming the file
    (unreadable tracking, codes of another size, unreadable video), OptionError (bad option),
    FileExistsError (outputs in the way without ``force``).
    """
    from npga_taichi.camera_paths import orbit_cameras
    from npga_taichi.checkpoint import write_text_atomic
    from npga_taichi.reenactment import LoadedRun, dumps
    from npga_taichi.render_run import head_center
    from npga_taichi.video import write_png, write_png_frames, write_video

    if stride < 1:
        raise OptionError("--stride", f"{stride} is smaller than the minimum 1")
    if max_frames is not None and max_frames < 1:
        raise OptionError("--max-frames", f"{max_frames} is smaller than the minimum 1")
    if not fps >= 0.1:
        raise OptionError("--fps", f"{fps} is smaller than the minimum 0.1")
    if orbit and camera is not None:
        raise OptionError(None, "choose --camera (a capture camera) or --orbit, not both")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"RUN {run_dir} is not a folder; train one with `npga fit`")
    tracking = load_driving_tracking(tracking_path)
    frames_in, cam_from_video = read_driving_video(video) if video is not None else (None, None)
    size = None if frames_in is None else (frames_in.shape[2], frames_in.shape[1])
    # the tracked poses are in the world of the camera they were tracked with: that camera, when the
    # tracking records one, before a monocular folder's own (`npga track-video` puts its camera at
    # the origin, the folder's static camera sits in the capture's world: the head fell outside it)
    drive_cam = read_camera_file(video_camera) if video_camera is not None else (tracking_camera(tracking, size)
                                                                                 or cam_from_video)
    try:
        run = LoadedRun(run_dir, device=device)
        drive, tracked = driven_drive(run, tracking, relative, neutral, pose, source=f"tracking file {tracking_path}")
        cams = run.cameras
        if camera is None:
            camera = DEFAULT_CAMERA if DEFAULT_CAMERA in cams else (run.heldout_cameras() or sorted(cams))[0]
        other = run.camera(camera)
    except KeyError as err:
        raise ValueError(f"{run_dir}: missing entry {err}") from None
    if frames_in is not None and len(frames_in) < len(drive):
        raise ValueError(f"--video: {video} has {len(frames_in)} frames, the tracking {tracking_path} {len(drive)}")
    indices = frame_indices(len(drive), stride, max_frames)
    other_views = (orbit_cameras(other, len(indices), center=head_center(run, drive)) if orbit
                   else [other] * len(indices))

    out = Path(out) if out is not None else run_dir / "renders" / f"drive_{Path(tracking_path).stem}"
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out: {out} exists and is not a folder")
    existing = [n for n in OUTPUT_NAMES if (out / n).exists()]
    if existing and not force:
        raise FileExistsError(f"{out} already holds {', '.join(existing)}; pass --force to overwrite")
    out.mkdir(parents=True, exist_ok=True)

    def panels():
        from tqdm import tqdm

        for k, i in enumerate(tqdm(indices, desc="drive", unit="frame", disable=not progress)):
            g = run.gaussians(drive.frame(i))
            row = []
            if frames_in is not None:
                row.append(torch.from_numpy(frames_in[i].astype(np.float32) / 255.0))
            if drive_cam is not None:
                row.append(run.render(g, driving_view(drive_cam, tracked, drive, i)))
            row.append(run.render(g, other_views[k]))
            yield side_by_side(row)

    written: dict[str, str] = {}
    all_frames = [p.numpy() for p in panels()]
    written["video"] = str(write_video(out / "video.mp4", all_frames, fps))
    if png:
        written["frames"] = str(out / "frames")
        write_png_frames(out / "frames", all_frames)
    picks = sorted(set(np.linspace(0, len(all_frames) - 1, min(4, len(all_frames))).round().astype(int).tolist()))
    still = np.concatenate([np.pad(all_frames[k], ((0, 2), (0, 0), (0, 0)), constant_values=1.0) for k in picks])
    written["still"] = str(write_png(out / "still.png", still))
    info = {
        "run": str(run_dir), "tracking": str(tracking_path), "sequence": tracked.sequence,
        "relative": relative, "formula": "z_t - z_0 + z_neutral" if relative else "z_t",
        "neutral": (neutral or f"{run.reference_drive().sequence}:{int(run.reference_drive().timesteps[0])}")
        if relative else None,
        "pose": pose, "camera": None if orbit else camera, "orbit": bool(orbit),
        "video": str(video) if video is not None else None,
        "driving_camera": drive_cam is not None,
        "panels": (["driver"] if frames_in is not None else []) + (["avatar (driving camera)"] if drive_cam is not None
                                                                  else []) + ["avatar (orbit)" if orbit else
                                                                              f"avatar ({camera})"],
        "num_frames": len(indices), "timesteps": [int(drive.timesteps[i]) for i in indices],
        "still_frames": [int(drive.timesteps[indices[k]]) for k in picks], "fps": fps, "outputs": written,
    }
    write_text_atomic(dumps(info) + "\n", out / "drive.json")
    return info
