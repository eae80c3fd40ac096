"""The synthetic monocular benchmark (issue 15, item 3): drive an avatar from one camera's video.

Protocol (person A: the avatar RUN's capture; person B: ``--driver``, another synthetic capture):

* **self-driving** — A's held-out FREE, seen by one hand-held camera (``npga synth --monocular``
  with A's capture plan, so the video shows exactly the capture's FREE frames), is tracked
  photometrically (:func:`npga_taichi.prior.photometric.track_video`, with A's prior, assuming a
  static camera: frame 0's); the tracked (apparent) head poses are mapped back to the capture's
  world with the video's camera path (:func:`npga_taichi.data.monocular.world_pose`; the tracker
  never sees it); A's avatar, driven by those codes and poses, is compared with the capture's
  images from the run's held-out cameras — PSNR / masked PSNR / SSIM computed by
  :func:`npga_taichi.evaluation.evaluate` exactly as ``npga eval`` does. Twice: with the prior's
  proxy alone (``npga track-video``), and refined through A's avatar (``npga track-video
  --avatar``, :func:`npga_taichi.avatar_tracking.track_through_avatar`; rows "through the
  avatar"; its seconds per frame include the proxy's). Both measure the eye closure and the
  brows' and mouth corners' motion from the video's label maps, as ``--labels`` does, and the
  avatar gets them.
* **cross-identity** — B's FREE video, tracked with A's prior, drives A; the truth is A rendered
  by the synthetic head (:func:`npga_taichi.data.head_render.render_head`, A's identity, B's true
  expressions and head poses, the held-out cameras at the run's resolution; the synthetic
  expression space is shared by every identity). Transfer absolute (``z_t``) and relative
  (``z_t − z_0 + z_neutral``, :func:`npga_taichi.driving.relative_codes`).
* each is reported as the **share of the gap closed** between a floor (the zero code — the
  prior's neutral — with the monocular-tracked pose) and a ceiling (multi-view point-cloud-tracked
  codes and poses: the run's own FREE tracking for self-driving; B's capture tracked with A's prior
  for cross-identity, transferred the same way): ``(mono − floor) / (ceiling − floor)`` in PSNR.
  Mono and floor use the monocular poses **aligned to the ceiling's pose frame** by the first
  frame's similarity, ``P'_t = P_ceil,0 ∘ P_0⁻¹ ∘ P_t`` (what ``npga drive --pose relative``
  does with the avatar's reference pose; :func:`align_to_first`): the avatar learnt the
  multi-view tracker's head frame, which sits a few degrees / millimetres off the monocular
  tracker's (and the truth's), and at unaligned poses that constant offset, not the codes,
  decides the score. The unaligned (world) scores stay in the JSON as ``world_pose``;
* both also score the codes *at the ceiling's poses* (``at_ceiling_pose``: tracked codes, with
  the measured eye closure and part motion as the mono rows, vs the zero code, both with the
  multi-view poses; :func:`at_poses`) and self-driving the
  tracked poses' difference from those (``pose_vs_ceiling``): the avatar lives in the multi-view
  tracker's frame, so a tracked pose that is close to the truth but not to that tracker's pose
  leaves the gap open however good the codes are;
* plus the tracked head's rotation error (degrees) and translation error (mm; in the image plane
  of the video's camera and along its axis), the Chamfer distance of the tracked geometry to the
  true surface (:func:`npga_taichi.prior.tracking.evaluate_against_groundtruth`), expression
  jitter (mean ‖z_{t+1} − 2 z_t + z_{t−1}‖, beside the multi-view codes'), seconds per frame
  (wall and CPU: the CPU time of this process is what the table shows, as other jobs on a shared
  machine stretch the wall time); the eye closure measured from the video's label maps
  (``npga track-video --labels``: correlation with the true blink parameters; passed to the
  avatar, which uses it only if it was trained with one); with and without the true 2D landmarks.

Usage (tiny, CI-sized; the real measurement uses default-preset runs)::

    npga demo /tmp/a --preset tiny --identity 11 && npga demo /tmp/b --preset tiny --identity 12
    python benchmarks/monocular.py --run /tmp/a/run --driver /tmp/b/capture/012 --quick \\
        --work /tmp/mono_work --out benchmarks/results/monocular_tiny.json --markdown /tmp/mono.md
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from npga_taichi import evaluation
from npga_taichi.data.capture import CaptureConfig
from npga_taichi.data.monocular import MonocularConfig, apparent_pose, load_monocular, world_pose, write_monocular

# Few steps per frame: Adam moves a parameter by about its learning rate per step, so the pose's
# rates are raised until 6 steps can follow ~5° / 15 mm of head motion between frames.
QUICK_PHOTOMETRIC = {"num_points": 1500, "first_frame_steps": 30, "steps_per_frame": 6, "views_per_step": 1,
                     "lr_rot": 1.5e-2, "lr_trans": 3e-3}
QUICK_POINTCLOUD = {"first_frame_steps": 40, "steps_per_frame": 5, "points_per_frame": 400}
QUICK_AVATAR = {"first_frame_steps": 10, "steps_per_frame": 3, "pose_steps_per_frame": 2}


# ----------------------------------------------------------------------------- inputs
def capture_config(pdir: Path) -> CaptureConfig:
    """The CaptureConfig a synthetic capture was written with (its synthetic_capture.json)."""
    path = pdir / "synthetic_capture.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: --run / --driver must be synthetic captures (npga synth)")
    data = json.loads(path.read_text())
    data.pop("complete", None)
    data["sequences"] = tuple(data["sequences"])
    return CaptureConfig(**data)


def video_for(pdir: Path, work: Path, camera_seed: int, static: bool) -> Path:
    """The monocular FREE video of a capture's plan under ``work`` (written once, then reused)."""
    cfg = MonocularConfig(capture=capture_config(pdir), sequence="FREE", camera_seed=camera_seed, static=static)
    out = work / f"video_{pdir.name}_seed{camera_seed}{'_static' if static else ''}"
    meta = out / "monocular.json"
    if meta.is_file():
        old = json.loads(meta.read_text())
        if old.get("complete") and MonocularConfig.from_dict(old) == cfg:
            return out
    write_monocular(out, cfg, force=True, progress=False)
    return out


# ----------------------------------------------------------------------------- tracking
def video_mattes(video) -> torch.Tensor | None:
    """(T, H, W) the video's mattes as a tensor, or None."""
    return None if video.mattes is None else torch.from_numpy(video.mattes)


def _camera_path(video) -> tuple[np.ndarray, np.ndarray]:
    """(the hand-held camera's views (T, 4, 4), the static camera's view (4, 4)), float64."""
    return (np.stack([c.viewmat.double().numpy() for c in video.cameras]),
            video.static_camera.viewmat.double().numpy())


def capture_world_pose(rot, trans, video) -> tuple[np.ndarray, np.ndarray]:
    """Head poses (T, 3, 3), (T, 3) a tracker placed in the static video camera's world, moved to
    the capture's world with the video's (hand-held) camera path, which the tracker never sees."""
    return world_pose(rot, trans, *_camera_path(video))


def static_camera_pose(rot, trans, video) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`capture_world_pose`: capture-world head poses as the static video
    camera sees them (what a tracker of the video would place)."""
    return apparent_pose(np.asarray(rot, np.float64), np.asarray(trans, np.float64), *_camera_path(video))


def run_prior(run):
    """(folder, loaded prior) of the prior a :class:`~npga_taichi.reenactment.LoadedRun` was
    trained with; ValueError when its config names none."""
    from npga_taichi.prior.model import load_prior

    prior_dir = run.extra.get("prior")
    if not prior_dir:
        raise ValueError(f"{run.run_dir}/config.json names no prior (extra.prior)")
    return prior_dir, load_prior(prior_dir)


def track_proxy(video, prior, landmarks: bool, quick: bool, for_avatar: bool = False):
    """The prior proxy's track of ``video`` as ``npga track-video --labels`` makes it (poses in the
    static video camera's world; the label measurements added), with
    :data:`~npga_taichi.avatar_tracking.PROXY_POINTS` surfels when ``for_avatar`` (the start of
    ``--avatar``)."""
    from npga_taichi.avatar_tracking import PROXY_POINTS
    from npga_taichi.prior.photometric import PhotometricConfig, add_video_labels, track_video

    settings = dict(QUICK_PHOTOMETRIC if quick else {})
    if for_avatar:
        settings["num_points"] = min(settings.get("num_points", PROXY_POINTS), PROXY_POINTS)
    lmk = None
    if landmarks:
        lmk = torch.from_numpy(np.where(video.visible[..., None], video.landmarks, np.nan).astype(np.float32))[:, None]
    mattes = video_mattes(video)
    tracking = track_video(torch.from_numpy(video.frames)[:, None], [video.static_camera], prior,
                           mattes=None if mattes is None else mattes[:, None], landmarks=lmk,
                           config=PhotometricConfig(**settings), sequence=video.sequence, progress=False)
    if video.labels is not None:  # what npga track-video --labels measures (static camera's poses)
        add_video_labels(tracking, video.labels, video.static_camera, source=f"{video.path}/labels")
    return tracking


def track_monocular(video, prior, landmarks: bool, quick: bool, save=None, run=None) -> tuple[object, float]:
    """(Tracking with poses mapped to the capture's world, seconds per frame), as ``npga
    track-video --labels [--avatar RUN]`` tracks: the prior's proxy, the label measurements, and
    with ``run`` (the video's own person's avatar) the track refined through it, the proxy with
    :data:`~npga_taichi.avatar_tracking.PROXY_POINTS` surfels; ``save``: also write the track as
    tracked (apparent poses: the static camera's world) there, for ``npga drive`` or a later look."""
    from npga_taichi.avatar_tracking import AvatarTrackingConfig, track_through_avatar

    start, cpu_start = time.perf_counter(), time.process_time()
    tracking = track_proxy(video, prior, landmarks, quick, for_avatar=run is not None)
    if run is not None:
        tracking = track_through_avatar(run, torch.from_numpy(video.frames), video.static_camera, tracking,
                                        video_mattes(video), AvatarTrackingConfig(**(QUICK_AVATAR if quick else {})),
                                        progress=False)
    seconds = (time.perf_counter() - start) / len(video.frames)
    # CPU seconds of this process: what one core would take, unaffected by other jobs on the machine
    cpu_seconds = (time.process_time() - cpu_start) / len(video.frames)
    if save is not None:
        from npga_taichi.prior.tracking import save_tracking

        save_tracking(tracking, save)
    rot, trans = capture_world_pose(tracking.rot, tracking.trans, video)
    apparent = (np.asarray(tracking.rot), np.asarray(tracking.trans))
    tracking = replace(tracking, rot=rot.astype(np.float32), trans=trans.astype(np.float32),
                       meta={**tracking.meta, "apparent": apparent, "cpu_seconds_per_frame": cpu_seconds})
    return tracking, seconds


def track_pointclouds(pdir: Path, prior, quick: bool):
    """B's FREE tracked against its point clouds with A's prior (the cross-identity ceiling)."""
    from npga_taichi.data.nersemble import NersembleCapture
    from npga_taichi.prior.tracking import TrackingConfig, track_sequence

    capture = NersembleCapture(pdir.parent, pdir.name)
    cfg = TrackingConfig(**(QUICK_POINTCLOUD if quick else {}))
    return track_sequence(prior, "FREE", capture.timesteps("FREE"), lambda t: capture.load_pointcloud("FREE", t), cfg,
                          progress=False)


# ----------------------------------------------------------------------------- grading
def pose_errors(tracking, video) -> dict:
    """Rotation (deg) and translation (mm: in the video camera's image plane and along its axis)
    errors of the apparent (static-camera) pose against the truth."""
    seq = video.groundtruth["sequences"][video.sequence]
    r_est, t_est = tracking.meta["apparent"]
    return pose_difference(r_est, t_est, seq["apparent_rotation"], seq["apparent_translation"], video)


def pose_difference(r_est, t_est, r_true, t_true, video) -> dict:
    """:func:`pose_errors` between any two pose sequences (T, 3, 3), (T, 3) of one frame (world
    or apparent), translations in the static video camera's axes."""
    r_true, t_true = np.asarray(r_true, np.float64), np.asarray(t_true, np.float64)
    t_est = np.asarray(t_est, np.float64)
    # ||R1 - R2||_F = 2 sqrt(2) sin(angle / 2): exact near zero, where arccos of the trace is not
    chord = np.linalg.norm(np.asarray(r_est, np.float64) - r_true, axis=(1, 2)) / (2.0 * np.sqrt(2.0))
    rot = np.degrees(2.0 * np.arcsin(np.clip(chord, 0.0, 1.0)))
    err_cam = (t_est - t_true) @ video.static_camera.viewmat.double().numpy()[:3, :3].T * 1000.0
    plane, depth = np.linalg.norm(err_cam[:, :2], axis=1), np.abs(err_cam[:, 2])
    return {"rotation_deg_mean": float(rot.mean()), "rotation_deg_max": float(rot.max()),
            "translation_inplane_mm_mean": float(plane.mean()), "translation_inplane_mm_max": float(plane.max()),
            "translation_depth_mm_mean": float(depth.mean()), "translation_depth_mm_max": float(depth.max())}


def closure_correlation(tracking, video) -> list | None:
    """Pearson correlation of the measured eye closure (left, right) with the true blink
    parameters of the video (None per eye where either is constant, or without label maps)."""
    from npga_taichi.data.synthetic import EXPRESSION_NAMES

    if tracking.eye_closure is None:
        return None
    expr = np.asarray(video.groundtruth["sequences"][video.sequence]["expression"], np.float64)
    out = []
    for k, name in enumerate(("blink_left", "blink_right")):
        a, b = np.asarray(tracking.eye_closure, np.float64)[:, k], expr[:, EXPRESSION_NAMES.index(name)]
        out.append(None if a.std() < 1e-9 or b.std() < 1e-9 else float(np.corrcoef(a, b)[0, 1]))
    return out


def jitter(z_exp) -> float:
    """Mean ‖z_{t+1} − 2 z_t + z_{t−1}‖ (0 for fewer than 3 frames)."""
    z = np.asarray(z_exp, np.float64)
    return float(np.linalg.norm(z[2:] - 2 * z[1:-1] + z[:-2], axis=1).mean()) if len(z) >= 3 else 0.0


def align_to_first(rot, trans, scale, ref) -> tuple[np.ndarray, np.ndarray, float]:
    """Tracked poses moved into another tracker's pose frame by their first frames' similarity:
    ``P'_t = P_ref ∘ P_0⁻¹ ∘ P_t`` (what ``npga drive --pose relative`` does, with ``ref = (rot
    (3, 3), trans (3,), scale)`` the ceiling's first pose). Returns rot (T, 3, 3), trans (T, 3),
    scale. Why: the avatar learnt the multi-view tracker's poses, whose head frame differs from
    the monocular tracker's (a constant offset of several degrees / mm on the synthetic captures);
    scoring codes at unaligned poses measures that offset, not the codes."""
    from npga_taichi.driving import compose, invert

    s = float(np.asarray(scale, np.float64).reshape(-1)[0])
    rot, trans = np.asarray(rot, np.float64), np.asarray(trans, np.float64)
    p_ref = (float(np.asarray(ref[2]).reshape(-1)[0]), np.asarray(ref[0], np.float64), np.asarray(ref[1], np.float64))
    moved = [compose(p_ref, compose(invert((s, rot[0], trans[0])), (s, r, t))) for r, t in zip(rot, trans)]
    return np.stack([m[1] for m in moved]), np.stack([m[2] for m in moved]), moved[0][0]


def make_drive(run, timesteps, z_exp, rot, trans, scale, eye_closure=None, part_motion=None):
    from npga_taichi.reenactment import Drive

    as_t = lambda x: torch.tensor(np.array(x, np.float32), device=run.device)  # noqa: E731 (a copy: writable)
    t = len(timesteps)
    return Drive("FREE", np.asarray(timesteps, np.int64), as_t(z_exp), as_t(rot), as_t(trans),
                 as_t(np.broadcast_to(np.asarray(scale, np.float32).reshape(-1)[:1], (t,))),
                 None if eye_closure is None else as_t(eye_closure), None if part_motion is None else as_t(part_motion))


def score(run, drive, truth, serials) -> dict:
    """npga eval's numbers (its masking, PSNR and SSIM) of ``drive`` against ``truth(t, serial)``
    -> (image, alpha) over the run's held-out cameras."""
    def items():
        for i in range(len(drive)):
            g = run.gaussians(drive.frame(i))
            t = int(drive.timesteps[i])
            for serial in serials:
                gt, alpha = truth(t, serial)
                yield evaluation.EvalItem("FREE", t, serial, run.render(g, run.camera(serial)), gt, alpha)

    result = evaluation.evaluate(items(), background=run.background.tolist(), use_lpips=False, n_worst=0,
                                 progress=False)
    summary = result.summary()
    return {k: summary[k] for k in ("psnr", "psnr_masked", "ssim", "num_images")}


def at_poses(run, tracking, pose, truth, serials) -> dict:
    """The tracked codes with the measured eye closure and part motion (as the mono rows drive
    the avatar: ``mono_codes``) and the zero code without them (as the floor: ``zero_codes``),
    both at other poses ``pose`` (rot, trans, scale), e.g. the ceiling's: the mono row minus
    ``mono_codes`` is what the tracked poses cost."""
    t = tracking.timesteps
    zeros = np.zeros_like(np.asarray(tracking.z_exp))
    return {"mono_codes": score(run, make_drive(run, t, tracking.z_exp, *pose, tracking.eye_closure,
                                                tracking.part_motion), truth, serials),
            "zero_codes": score(run, make_drive(run, t, zeros, *pose), truth, serials)}


def gap_closed(mono: dict, floor: dict, ceiling: dict, key: str = "psnr", min_span: float = 1e-9) -> float | None:
    """(mono − floor) / (ceiling − floor); None when the ceiling is not above the floor by
    ``min_span`` (no gap to close: the ratio would be noise)."""
    span = ceiling[key] - floor[key]
    return None if span < min_span else (mono[key] - floor[key]) / span


def synthetic_truth(run, pdir_a: Path, groundtruth_b: dict):
    """truth(t, serial) -> (image, alpha) of A with B's true expression and pose of FREE frame t,
    rendered by the synthetic head at the run's resolution (cached per frame)."""
    from npga_taichi.data import synthetic as syn
    from npga_taichi.data.head_render import Lighting, render_head

    cfg = capture_config(pdir_a)
    head = syn.SyntheticHead.from_seed(cfg.identity_seed)
    seq = groundtruth_b["sequences"]["FREE"]
    index = {int(t): i for i, t in enumerate(seq["timesteps"])}
    serials = run.heldout_cameras()
    cache: dict[int, dict] = {}

    def truth(t: int, serial: str):
        if t not in cache:
            cams = [run.camera(s) for s in serials]
            i = index[t]
            rgba, _, _ = render_head(head, np.asarray(seq["expression"][i], np.float32),
                                     torch.stack([c.viewmat.float() for c in cams]), torch.stack([c.K.float() for c in cams]),
                                     cams[0].width, cams[0].height, rotation=seq["rotation"][i],
                                     translation=seq["translation"][i], samples_per_side=cfg.samples_per_side,
                                     lighting=Lighting(**cfg.lighting), seed=t)
            cache[t] = {s: (rgba[k, ..., :3].to(run.device), rgba[k, ..., 3:].to(run.device))
                        for k, s in enumerate(serials)}
        return cache[t][serial]

    return truth


# ----------------------------------------------------------------------------- the benchmark
def run_benchmark(run_dir, driver: Path | None, work: Path, quick: bool = False, camera_seed: int = 0,
                  static: bool = False, landmark_modes=(True, False), log=print, checkpoint=lambda r: None) -> dict:
    """The benchmark's results (module docstring); ``checkpoint(results)`` is called with the
    results so far after each tracked video (partial JSON for long runs)."""
    from npga_taichi.prior.tracking import evaluate_against_groundtruth
    from npga_taichi.reenactment import LoadedRun, ground_truth

    run = LoadedRun(run_dir)
    pdir_a = run.capture_root / run.participant
    prior_dir, prior = run_prior(run)
    serials = run.heldout_cameras()
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"run": str(run_dir), "capture": str(pdir_a), "driver": str(driver) if driver else None,
                     "prior": str(prior_dir), "cameras": serials, "quick": quick, "camera_seed": camera_seed,
                     "static_camera": static, "torch_threads": torch.get_num_threads()}
    zero = np.zeros(run.avatar.exp_dim, np.float32)

    # ---- self-driving
    video_a = load_monocular(video_for(pdir_a, work, camera_seed, static))
    own = run.drive("FREE")
    truth_a = lambda t, s: ground_truth(run, "FREE", t, s)  # noqa: E731
    ceiling = score(run, own, truth_a, serials)
    results["self"] = {"frames": len(video_a.frames), "ceiling": ceiling, "ceiling_jitter": jitter(own.z_exp.cpu())}
    log(f"self ceiling (multi-view tracked): {ceiling}")
    checkpoint(results)
    own_pose = (own.rot.cpu().numpy(), own.trans.cpu().numpy(), float(own.scale.reshape(-1)[0]))
    own_first = (own_pose[0][0], own_pose[1][0], own_pose[2])
    for lm, through_avatar in itertools.product(landmark_modes, (False, True)):
        # through the avatar: npga track-video --avatar, the proxy's track refined through A's avatar
        tag = ("with_landmarks" if lm else "without_landmarks") + ("_through_avatar" if through_avatar else "")
        tracking, spf = track_monocular(video_a, prior, lm, quick, work / f"track_self_{tag}.npz",
                                        run if through_avatar else None)
        t = tracking.timesteps
        zeros = np.broadcast_to(zero, tracking.z_exp.shape)
        aligned = align_to_first(tracking.rot, tracking.trans, tracking.scale, own_first)
        world = (tracking.rot, tracking.trans, tracking.scale)
        by_frame = {}
        for frame_name, pose in (("aligned", aligned), ("world", world)):
            mono = score(run, make_drive(run, t, tracking.z_exp, *pose, tracking.eye_closure, tracking.part_motion),
                         truth_a, serials)
            floor = score(run, make_drive(run, t, zeros, *pose), truth_a, serials)
            by_frame[frame_name] = {"mono": mono, "floor": floor, "gap_closed": gap_closed(mono, floor, ceiling),
                                    "gap_closed_ssim": gap_closed(mono, floor, ceiling, "ssim"),
                                    "pose_vs_ceiling": pose_difference(pose[0], pose[1], own_pose[0], own_pose[1],
                                                                       video_a)}
        geometry = evaluate_against_groundtruth(prior, replace(tracking, meta={}), video_a.groundtruth)
        # Where the gap lies: the avatar learnt the multi-view tracker's poses, so the same scores
        # at the ceiling's poses isolate what the codes close from what the poses leave open.
        at_pose = at_poses(run, tracking, own_pose, truth_a, serials)
        results["self"][tag] = {
            **by_frame["aligned"], "world_pose": by_frame["world"],
            "at_ceiling_pose": {**at_pose, "codes_gap_closed": gap_closed(at_pose["mono_codes"],
                                                                          at_pose["zero_codes"], ceiling,
                                                                          min_span=0.1)},
            "pose": pose_errors(tracking, video_a), "chamfer_mm_mean": geometry["chamfer_mm_mean"],
            "chamfer_mm_max": geometry["chamfer_mm_max"], "jitter": jitter(tracking.z_exp),
            "eye_closure_corr": closure_correlation(tracking, video_a),
            "avatar_takes_eye_closure": bool(run.avatar.eye_closure_dim), "seconds_per_frame": spf,
            "cpu_seconds_per_frame": tracking.meta["cpu_seconds_per_frame"]}
        log(f"self {tag}: {json.dumps(evaluation.json_safe(results['self'][tag]))}")
        checkpoint(results)

    # ---- cross-identity
    if driver is not None:
        video_b = load_monocular(video_for(driver, work, camera_seed + 1, static))
        truth_b = synthetic_truth(run, pdir_a, video_b.groundtruth)
        multi = track_pointclouds(driver, prior, quick)
        z_neutral = run.reference_drive().z_exp[0].cpu().numpy()
        transfer = {"absolute": lambda z: np.asarray(z),
                    "relative": lambda z: np.asarray(z) - np.asarray(z)[:1] + z_neutral}
        results["cross"] = {"frames": len(video_b.frames), "ceiling_jitter": jitter(multi.z_exp)}
        ceilings = {name: score(run, make_drive(run, multi.timesteps, f(multi.z_exp), multi.rot, multi.trans,
                                                multi.scale), truth_b, serials) for name, f in transfer.items()}
        results["cross"]["ceiling"] = ceilings
        log(f"cross ceilings (B's point clouds tracked with A's prior): {ceilings}")
        multi_first = (multi.rot[0], multi.trans[0], multi.scale)
        checkpoint(results)
        for lm in landmark_modes:
            tag = "with_landmarks" if lm else "without_landmarks"
            tracking, spf = track_monocular(video_b, prior, lm, quick, work / f"track_cross_{tag}.npz")
            t = tracking.timesteps
            zeros = np.broadcast_to(zero, tracking.z_exp.shape)
            entry = {"pose": pose_errors(tracking, video_b), "jitter": jitter(tracking.z_exp),
                     "eye_closure_corr": closure_correlation(tracking, video_b), "seconds_per_frame": spf,
                     "cpu_seconds_per_frame": tracking.meta["cpu_seconds_per_frame"]}
            poses = {"aligned": align_to_first(tracking.rot, tracking.trans, tracking.scale, multi_first),
                     "world": (tracking.rot, tracking.trans, tracking.scale)}
            for frame_name, pose in poses.items():
                block = entry if frame_name == "aligned" else entry.setdefault("world_pose", {})
                floor = score(run, make_drive(run, t, zeros, *pose), truth_b, serials)
                block["floor"] = floor
                for name, f in transfer.items():
                    drive = make_drive(run, t, f(tracking.z_exp), *pose, tracking.eye_closure, tracking.part_motion)
                    mono = score(run, drive, truth_b, serials)
                    block[name] = {"mono": mono, "gap_closed": gap_closed(mono, floor, ceilings[name]),
                                   "gap_closed_ssim": gap_closed(mono, floor, ceilings[name], "ssim")}
            geometry = evaluate_against_groundtruth(prior, replace(tracking, meta={}), video_b.groundtruth)
            entry["chamfer_mm_mean"] = geometry["chamfer_mm_mean"]
            # the tracked codes (absolute), at the ceiling's poses: what the poses leave open
            multi_pose = (multi.rot, multi.trans, multi.scale)
            at_pose = at_poses(run, tracking, multi_pose, truth_b, serials)
            entry["at_ceiling_pose"] = {**at_pose, "codes_gap_closed": gap_closed(
                at_pose["mono_codes"], at_pose["zero_codes"], ceilings["absolute"], min_span=0.1)}
            results["cross"][tag] = entry
            log(f"cross {tag}: {json.dumps(evaluation.json_safe(entry))}")
            checkpoint(results)
    return results


def percent(share: float | None) -> str:
    """A share as the tables print it ("87 %"; "n/a" for None or a non-finite one)."""
    return "n/a" if share is None or not math.isfinite(share) else f"{100 * share:.0f} %"


def markdown_table(results: dict) -> str:
    """The README table: one row per (protocol, landmarks)."""
    def f(x, d=2):
        return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{d}f}"

    head = ("| protocol | landmarks | PSNR floor / mono / ceiling (dB) | gap closed | gap closed, unaligned pose | "
            "codes' gap at ceiling pose | SSIM mono | rotation ° | in-plane / depth mm | Chamfer mm | "
            "jitter (multi-view) | s/frame (CPU) |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = [head]
    for protocol in ("self", "cross"):
        block = results.get(protocol)
        if not block:
            continue
        for tag in ("with_landmarks", "with_landmarks_through_avatar", "without_landmarks",
                    "without_landmarks_through_avatar"):
            e = block.get(tag)
            if not e:
                continue
            world = e.get("world_pose", {})
            through = ", through the avatar" if tag.endswith("_through_avatar") else ""
            variants = [(through, e, block["ceiling"], world)] if protocol == "self" else [
                (f" ({name})", e[name], block["ceiling"][name], world.get(name, {})) for name in ("absolute", "relative")]
            for suffix, m, ceil, w in variants:
                p = e["pose"]
                # the codes at the ceiling's poses: absolute codes only
                codes = None if suffix == " (relative)" else e.get("at_ceiling_pose", {}).get("codes_gap_closed")
                rows.append(
                    f"| {protocol}{suffix} | {'yes' if tag.startswith('with_') else 'no'} | "
                    f"{f(e['floor']['psnr'])} / {f(m['mono']['psnr'])} / {f(ceil['psnr'])} | {percent(m['gap_closed'])} | {percent(w.get('gap_closed'))} | "
                    f"{percent(codes)} | "
                    f"{f(m['mono']['ssim'], 3)} | {f(p['rotation_deg_mean'])} | "
                    f"{f(p['translation_inplane_mm_mean'], 1)} / {f(p['translation_depth_mm_mean'], 1)} | "
                    f"{f(e['chamfer_mm_mean'])} | {f(e['jitter'], 3)} ({f(block['ceiling_jitter'], 3)}) | "
                    f"{f(e.get('cpu_seconds_per_frame', e['seconds_per_frame']), 1)} |")
    return "\n".join(rows) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="avatar RUN of person A (npga fit / npga demo)")
    parser.add_argument("--driver", type=Path, default=None,
                        help="capture participant folder of person B (a synthetic capture) for cross-identity")
    parser.add_argument("--work", type=Path, default=Path("/tmp/npga_monocular"),
                        help="folder for the monocular videos (reused when their settings match)")
    parser.add_argument("--quick", action="store_true", help="small tracker settings (CI-sized checks)")
    parser.add_argument("--camera-seed", type=int, default=0, help="seed of A's hand-held path (B: +1)")
    parser.add_argument("--static", action="store_true", help="a tripod instead of the hand-held path")
    parser.add_argument("--landmarks", choices=["both", "with", "without"], default="both")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--out", type=Path, default=None, help="JSON results")
    parser.add_argument("--markdown", type=Path, default=None, help="write the markdown table here too")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for path, what in ((args.run, "--run"), (args.driver, "--driver")):
        if path is not None and not path.is_dir():
            parser.error(f"{what}: {path} is not a folder")
    modes = {"both": (True, False), "with": (True,), "without": (False,)}[args.landmarks]
    start = time.perf_counter()
    def write(results):
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(evaluation.json_safe(results), indent=2) + "\n")

    try:
        results = run_benchmark(args.run, args.driver, args.work, args.quick, args.camera_seed, args.static, modes,
                                log=lambda m: print(m, file=sys.stderr), checkpoint=write)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    results["seconds"] = time.perf_counter() - start
    table = markdown_table(results)
    print(table)
    write(results)
    if args.markdown:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
