"""What one camera can tell: the monocular benchmark's self-driving protocol with half of the
answer given (issue 15's measurement of what blocks the 90 % bar).

Person A's held-out FREE, seen by one hand-held camera (the video of ``benchmarks/monocular.py``),
is tracked through A's avatar (:func:`npga_taichi.avatar_tracking.track_through_avatar`, as
``npga track-video --avatar`` does) four ways:

* ``tracked`` — as shipped: the prior proxy's track as the start, code, label corrections and
  head pose fitted;
* ``true_codes`` — the multi-view tracking's codes, eye closure and part motion given and held
  (their rates 0), the head pose fitted from the proxy's;
* ``true_poses`` — the multi-view head poses given and held, the code and label corrections
  fitted from the proxy's;
* ``truth`` — the multi-view tracking itself, nothing fitted: its held-out score is the
  benchmark's ceiling, its video loss what the one view says of the multi-view answer.

Each is scored as the benchmark scores self-driving (the run's held-out cameras, ``npga eval``'s
PSNR; floor: the neutral code at the track's own poses; ceiling: the multi-view tracking), with
its pose difference from the multi-view poses and the **video loss**: the mean L1 (x 1000)
between each frame and the avatar's render of the track from the video's camera, and the whole
image objective the tracker minimises (L1, D-SSIM, silhouette; ``meta["objective"]``). When
``truth`` has a higher objective than ``tracked``, minimising it leads away from the multi-view
answer, and no optimiser of it reaches the ceiling; the two half-given tracks say whether the
pose or the codes are what the one view leaves open.

Usage (after ``benchmarks/monocular.py`` made the video under the same ``--work``, or it is made
here)::

    OMP_NUM_THREADS=1 python benchmarks/monocular_oracle.py --run D0/run --work /tmp/npga_monocular \\
        --threads 1 --out benchmarks/results/monocular_oracle0.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import monocular as bench  # noqa: E402  (benchmarks/ is not a package)

from npga_taichi import evaluation  # noqa: E402

# What each variant holds: the rates set to 0 (and the steps a track that fits nothing skips).
HELD = {
    "tracked": {},
    "true_codes": {"lr_exp": 0.0, "lr_parts": 0.0},
    "true_poses": {"lr_rot": 0.0, "lr_trans": 0.0, "pose_steps_per_frame": 0},
    "truth": {"first_frame_steps": 0, "steps_per_frame": 0, "pose_steps_per_frame": 0, "refit_first_frames": 0},
}


def multiview_frames(multi, timesteps) -> dict:
    """The multi-view tracking ``multi`` (a :class:`~npga_taichi.reenactment.Drive`, capture
    world) at the video's ``timesteps``: name -> (T, ...) float32 array (None where it has none)."""
    index = {int(t): i for i, t in enumerate(multi.timesteps)}
    try:
        rows = [index[int(t)] for t in timesteps]
    except KeyError as err:
        raise ValueError(f"the multi-view tracking has no frame {err.args[0]} of the video") from None
    return {name: None if getattr(multi, name) is None else getattr(multi, name).cpu().numpy()[rows].astype(np.float32)
            for name in ("z_exp", "rot", "trans", "scale", "eye_closure", "part_motion")}


def multiview_start(proxy, multi: dict, video, codes: bool, poses: bool):
    """The proxy's track with the multi-view codes and label measurements (``codes``) and / or
    its head poses moved into the static video camera's world (``poses``; the labels are then
    measured again at them, as ``--labels`` measures them at the tracked poses)."""
    from npga_taichi.prior.photometric import add_video_labels

    start = proxy
    if poses:
        rot, trans = bench.static_camera_pose(multi["rot"], multi["trans"], video)
        start = replace(start, rot=rot.astype(np.float32), trans=trans.astype(np.float32),
                        scale=float(multi["scale"][0]))
        if video.labels is not None:  # start is already a copy: the proxy's labels stay
            start = add_video_labels(start, video.labels, video.static_camera, source=f"{video.path}/labels")
    if codes:
        start = replace(start, z_exp=multi["z_exp"],
                        **{name: multi[name] for name in ("eye_closure", "part_motion")
                           if getattr(proxy, name) is not None and multi[name] is not None})
    return start


def figure_strip(run, drives: dict, truth, serial: str, frames, margin: int = 8) -> np.ndarray:
    """(rows * h, (1 + 2 * len(drives)) * w, 3) uint8: per frame index of ``frames``, the truth from
    camera ``serial`` over the run's background, each drive's render and each render's |error| x 4,
    cropped to the box around the truth's matte in those frames (+ ``margin`` pixels)."""
    background = run.background.cpu().reshape(1, 1, 3)
    rows, mattes = [], []
    for i in frames:
        image, alpha = truth(int(next(iter(drives.values())).timesteps[i]), serial)
        alpha = alpha.cpu()
        gt = image.cpu() * alpha + background * (1.0 - alpha)
        renders = [run.render(run.gaussians(d.frame(i)), run.camera(serial)).cpu() for d in drives.values()]
        errors = [((r - gt).abs() * 4.0).clamp(0, 1) for r in renders]
        rows.append([gt, *renders, *errors])
        mattes.append(alpha[..., 0] > 0.01)
    seen = torch.stack(mattes).any(0)
    ys, xs = torch.nonzero(seen.any(1))[:, 0], torch.nonzero(seen.any(0))[:, 0]
    if len(ys):
        y0, y1 = max(int(ys.min()) - margin, 0), int(ys.max()) + margin + 1
        x0, x1 = max(int(xs.min()) - margin, 0), int(xs.max()) + margin + 1
    else:
        y0, y1, x0, x1 = 0, seen.shape[0], 0, seen.shape[1]
    strip = torch.cat([torch.cat([panel[y0:y1, x0:x1] for panel in row], 1) for row in rows], 0)
    return (strip.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)


def run_oracle(run_dir, work: Path, quick: bool = False, camera_seed: int = 0, landmarks: bool = True,
               log=print, figure: Path | None = None) -> dict:
    """The four tracks' scores (module docstring) as a JSON-ready dict; ``figure``: also write
    :func:`figure_strip` of the first held-out camera, the first, middle and last frame, for
    every track (``truth`` is the ceiling's render: its errors are the avatar's own)."""
    from npga_taichi.avatar_tracking import AvatarTrackingConfig, track_through_avatar
    from npga_taichi.data.monocular import load_monocular
    from npga_taichi.reenactment import LoadedRun, ground_truth

    run = LoadedRun(run_dir)
    _, prior = bench.run_prior(run)
    video = load_monocular(bench.video_for(run.capture_root / run.participant, work, camera_seed, False))
    serials = run.heldout_cameras()
    multi = run.drive("FREE")
    truth = lambda t, s: ground_truth(run, "FREE", t, s)  # noqa: E731
    ceiling = bench.score(run, multi, truth, serials)
    results = {"run": str(run_dir), "video": str(video.path), "landmarks": landmarks, "quick": quick,
               "cameras": serials, "ceiling": ceiling, "tracks": {}}
    log(f"ceiling (the multi-view tracking): {ceiling['psnr']:.3f} dB")
    clock = time.process_time()
    proxy = bench.track_proxy(video, prior, landmarks, quick, for_avatar=True)
    results["proxy_cpu_seconds_per_frame"] = (time.process_time() - clock) / len(video.frames)
    base = bench.QUICK_AVATAR if quick else {}
    frames = multiview_frames(multi, proxy.timesteps)
    drives = {}
    for name, held in HELD.items():
        start = multiview_start(proxy, frames, video, codes=name in ("true_codes", "truth"),
                                poses=name in ("true_poses", "truth"))
        clock = time.process_time()
        track = track_through_avatar(run, torch.from_numpy(video.frames), video.static_camera, start,
                                     bench.video_mattes(video), AvatarTrackingConfig(**{**base, **held}),
                                     progress=False)
        cpu = (time.process_time() - clock) / len(video.frames)
        rot, trans = bench.capture_world_pose(track.rot, track.trans, video)
        t = track.timesteps
        drives[name] = bench.make_drive(run, t, track.z_exp, rot, trans, track.scale, track.eye_closure,
                                        track.part_motion)
        mono = bench.score(run, drives[name], truth, serials)
        floor = bench.score(run, bench.make_drive(run, t, np.zeros_like(track.z_exp), rot, trans, track.scale),
                            truth, serials)
        results["tracks"][name] = {
            "mono": mono, "floor": floor, "gap_closed": bench.gap_closed(mono, floor, ceiling),
            "video_l1_x1000": float(np.mean(track.residual)), "video_l1_x1000_per_frame": track.residual.tolist(),
            "video_objective_x1000": 1000.0 * float(np.mean(track.meta["objective"])),
            "pose_vs_multiview": bench.pose_difference(rot, trans, frames["rot"], frames["trans"], video),
            "code_vs_multiview": float(np.abs(track.z_exp - frames["z_exp"]).mean()),
            "avatar_cpu_seconds_per_frame": cpu}
        entry = results["tracks"][name]
        log(f"{name}: {mono['psnr']:.3f} dB (floor {floor['psnr']:.3f}), video L1 / objective x 1000 "
            f"{entry['video_l1_x1000']:.3f} / {entry['video_objective_x1000']:.3f}")
    if figure is not None:
        import imageio.v3 as iio

        count = len(drives["tracked"])
        shown = {name: drives[name] for name in ("truth", "tracked", "true_codes", "true_poses")}
        figure.parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(figure, figure_strip(run, shown, truth, serials[0], sorted({0, count // 2, count - 1})))
        results["figure"] = {"path": str(figure), "camera": serials[0],
                             "columns": ["ground truth", *shown, *(f"|{name} - ground truth| x 4" for name in shown)]}
    return results


def markdown_table(results: dict) -> str:
    """One row per track."""
    rows = ["| track | held | floor / mono / ceiling (dB) | gap closed | video L1 / objective x 1000 | rotation ° | "
            "in-plane / depth mm (vs multi-view) |",
            "|---|---|---|---|---|---|---|"]
    held = {"tracked": "nothing", "true_codes": "codes, eye closure, part motion", "true_poses": "head poses",
            "truth": "everything"}
    for name, e in results["tracks"].items():
        p = e["pose_vs_multiview"]
        rows.append(f"| {name} | {held[name]} | {e['floor']['psnr']:.2f} / {e['mono']['psnr']:.2f} / "
                    f"{results['ceiling']['psnr']:.2f} | {bench.percent(e['gap_closed'])} | "
                    f"{e['video_l1_x1000']:.2f} / {e['video_objective_x1000']:.2f} | "
                    f"{p['rotation_deg_mean']:.2f} | {p['translation_inplane_mm_mean']:.2f} / "
                    f"{p['translation_depth_mm_mean']:.2f} |")
    return "\n".join(rows) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path,
                        help="avatar RUN (npga fit / npga demo) of a synthetic capture")
    parser.add_argument("--work", type=Path, default=Path("/tmp/npga_monocular"),
                        help="folder of the monocular videos (benchmarks/monocular.py's; reused when their "
                             "settings match)")
    parser.add_argument("--quick", action="store_true", help="small tracker settings (CI-sized checks)")
    parser.add_argument("--camera-seed", type=int, default=0, help="seed of the hand-held camera path")
    parser.add_argument("--no-landmarks", action="store_true", help="track without the true 2D landmarks")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--out", type=Path, default=None, help="JSON results")
    parser.add_argument("--figure", type=Path, default=None,
                        help="PNG: ground truth | the four tracks' renders | their errors x 4, one held-out "
                             "camera, three frames")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.run.is_dir():
        parser.error(f"--run: {args.run} is not a folder")
    start = time.perf_counter()
    try:
        results = run_oracle(args.run, args.work, args.quick, args.camera_seed, not args.no_landmarks,
                             log=lambda m: print(m, file=sys.stderr), figure=args.figure)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    results["seconds"] = time.perf_counter() - start
    print(markdown_table(results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(evaluation.json_safe(results), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
