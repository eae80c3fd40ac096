"""``npga synth OUT --monocular``: the synthetic monocular video (npga_taichi/data/monocular.py).

One video (identity and plan of the session's tiny demo capture, FREE, 3 frames at 137x200) is
written once per module and checked against things the writer does not compute itself: the
renderer's matte, the head's analytic SDF, the capture's ground truth, the camera algebra.
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from benchmark_modules import load_benchmark
from click.testing import CliRunner

from npga_taichi.cli.main import cli
from npga_taichi.data import synthetic as syn
from npga_taichi.data.capture import CaptureConfig
from npga_taichi.data.monocular import (MonocularConfig, apparent_pose, handheld_path, load_monocular,
                                        world_pose, write_monocular)
from npga_taichi.prior.tracking import world_to_posed


@pytest.fixture(scope="module")
def video(tiny_demo, tmp_path_factory) -> tuple[Path, dict, Path]:
    """(video folder, the CLI's JSON summary, the demo's capture participant folder)."""
    pdir = next((tiny_demo["out"] / "capture").glob("[0-9][0-9][0-9]"))
    cfg = json.loads((pdir / "synthetic_capture.json").read_text())
    out = tmp_path_factory.mktemp("mono") / "video"
    args = ["synth", str(out), "--monocular", "--identity", str(cfg["identity_seed"]), "--preset", "tiny",
            "--frames", str(cfg["frames_per_sequence"]), "--samples", str(cfg["samples_per_side"]),
            "--sequences", ",".join(cfg["sequences"]), "--camera-seed", "3", "--json"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout.strip().splitlines()[-1]), pdir


def test_outputs_and_frame_count(video):
    from npga_taichi.video import read_video

    out, summary, pdir = video
    frames = json.loads((pdir / "synthetic_capture.json").read_text())["frames_per_sequence"]
    assert summary["frames"] == frames and summary["sequence"] == "FREE"
    assert len(sorted((out / "frames").glob("frame_*.png"))) == frames
    assert len(sorted((out / "mattes").glob("frame_*.png"))) == frames
    mp4 = read_video(out / "video.mp4")
    v = load_monocular(out)
    assert mp4.shape == (frames, v.frames.shape[1] + v.frames.shape[1] % 2, v.frames.shape[2] + v.frames.shape[2] % 2, 3)
    assert v.frames.shape == (frames, 200, 137, 3) and v.mattes.shape == (frames, 200, 137)
    # the mp4 is the PNGs, lossily encoded
    assert np.abs(mp4[:, :200, :137] / 255.0 - v.frames).mean() < 0.03


def test_same_plan_as_the_capture(video):
    """The video shows the capture's FREE: same expressions and head poses as its ground truth."""
    out, _, pdir = video
    capture_gt = json.loads((pdir / "groundtruth" / "groundtruth.json").read_text())["sequences"]["FREE"]
    gt = load_monocular(out).groundtruth["sequences"]["FREE"]
    for key in ("expression", "rotation", "translation", "timesteps"):
        np.testing.assert_array_equal(np.asarray(gt[key]), np.asarray(capture_gt[key]))


def test_cameras_look_at_the_head_from_off_the_rig(video):
    out, _, pdir = video
    v = load_monocular(out)
    rig = json.loads((pdir / "calibration" / "camera_params.json").read_text())["world_2_cam"]
    rig_centres = np.array([-np.asarray(m)[:3, :3].T @ np.asarray(m)[:3, 3] for m in rig.values()])
    centres = np.array([c.center().double().numpy() for c in v.cameras])
    assert np.all(np.abs(np.linalg.norm(centres, axis=1) - 1.0) < 0.1)  # --distance 1 m (+-4 % drift)
    assert np.linalg.norm(centres[:, None] - rig_centres[None], axis=2).min() > 0.01  # not a rig camera
    assert np.abs(np.diff(centres, axis=0)).max() > 1e-4  # hand-held: it moves
    np.testing.assert_allclose(v.static_camera.viewmat.numpy(), v.cameras[0].viewmat.numpy())
    for cam, matte in zip(v.cameras, v.mattes):  # the head is in every frame, near the middle
        rows, cols = np.nonzero(matte > 0.5)
        assert len(rows) > 0.1 * matte.size
        assert abs(cols.mean() - cam.width / 2) < cam.width / 4


def test_landmarks_lie_on_the_head(video):
    """Visible landmarks project where the renderer's matte shows the head, lie on the posed
    surface of the analytic head, and cameras.json projects the world landmarks onto them."""
    out, _, _ = video
    v = load_monocular(out)
    gt = v.groundtruth
    head = syn.SyntheticHead(np.asarray(gt["identity"], np.float32))
    seq = gt["sequences"]["FREE"]
    world = np.asarray(gt["landmarks_world"])
    assert v.visible.mean() > 0.6
    for t, cam in enumerate(v.cameras):
        uv, _ = cam.project(torch.as_tensor(world[t]))
        np.testing.assert_allclose(uv.numpy(), v.landmarks[t], atol=1e-3)
        vis = v.visible[t]
        cols, rows = np.floor(v.landmarks[t][vis]).astype(int).T
        assert np.all(v.mattes[t][rows, cols] > 0.5)
        posed = world_to_posed(torch.as_tensor(world[t][vis], dtype=torch.float32),
                               torch.tensor(seq["rotation"][t]), torch.tensor(seq["translation"][t]), gt["scale"])
        sdf = head.posed_sdf(posed.contiguous(), np.asarray(seq["expression"][t], np.float32))
        assert float(sdf.abs().max()) * gt["scale"] < 3e-4  # metres
    written = json.loads((out / "landmarks.json").read_text())
    hidden = ~v.visible
    assert all(written["landmarks"][t][k] is None for t, k in zip(*np.nonzero(hidden)))


def test_apparent_pose_is_what_the_static_camera_sees(video):
    out, _, _ = video
    v = load_monocular(out)
    seq = v.groundtruth["sequences"]["FREE"]
    scale = v.groundtruth["scale"]
    x = torch.randn(50, 3, dtype=torch.float64) * 0.2
    for t, cam in enumerate(v.cameras):
        rot, trans = np.asarray(seq["rotation"][t]), np.asarray(seq["translation"][t])
        app_r, app_t = np.asarray(seq["apparent_rotation"][t]), np.asarray(seq["apparent_translation"][t])
        true_px, _ = cam.project(scale * x @ torch.as_tensor(rot).T + torch.as_tensor(trans))
        seen_px, _ = v.static_camera.project(scale * x @ torch.as_tensor(app_r).T + torch.as_tensor(app_t))
        np.testing.assert_allclose(seen_px.numpy(), true_px.numpy(), atol=1e-3)  # float32 cameras
        back_r, back_t = world_pose(app_r, app_t, cam.viewmat.double().numpy(), v.static_camera.viewmat.double().numpy())
        np.testing.assert_allclose(back_r, rot, atol=1e-6)  # the JSON holds float32 values
        np.testing.assert_allclose(back_t, trans, atol=1e-7)
    r, t = apparent_pose(np.eye(3), np.zeros(3), v.cameras[0].viewmat.double().numpy(),
                         v.static_camera.viewmat.double().numpy())
    np.testing.assert_allclose(r, np.eye(3), atol=1e-6)


def test_static_camera_path_holds_still():
    cfg = MonocularConfig(capture=CaptureConfig.preset("tiny"), static=True, camera_seed=4)
    views = handheld_path(cfg, 5)
    np.testing.assert_allclose(views, np.repeat(views[:1], 5, 0))
    moving = handheld_path(MonocularConfig(capture=CaptureConfig.preset("tiny"), camera_seed=4), 5)
    np.testing.assert_allclose(moving[0][:3, :3] @ moving[0][:3, :3].T, np.eye(3), atol=1e-12)


def test_bad_inputs_name_the_file(video, tmp_path):
    import shutil

    out, _, _ = video
    result = CliRunner().invoke(cli, ["synth", str(out), "--monocular", "--preset", "tiny"])
    assert result.exit_code != 0 and "--force" in result.output and str(out) in result.output
    result = CliRunner().invoke(cli, ["synth", str(tmp_path / "v"), "--monocular", "--preset", "tiny",
                                      "--sequences", "EXP-1", "--sequence", "NOPE"])
    assert result.exit_code != 0 and "NOPE" in result.output and "Traceback" not in result.output
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "frames" / "frame_00001.png").unlink()
    with pytest.raises(FileNotFoundError, match="frame_00001.png"):
        load_monocular(broken)
    (broken / "cameras.json").write_text("{not json")
    with pytest.raises(ValueError, match="cameras.json"):
        load_monocular(broken)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_monocular(tmp_path / "nowhere")


def test_label_maps_and_eye_closure_follow_a_true_blink(tiny_demo, tmp_path):
    """EXP-4 (blinks) of the tiny demo's identity seen by one camera: the label maps agree with the
    renderer's matte, and the eye closure that `npga track-video --labels` measures from them
    (with the tracked poses) follows the true blink parameters, each eye its own."""
    from npga_taichi.prior.photometric import video_eye_closure
    from npga_taichi.prior.tracking import load_tracking

    pdir = next((tiny_demo["out"] / "capture").glob("[0-9][0-9][0-9]"))
    identity = json.loads((pdir / "synthetic_capture.json").read_text())["identity_seed"]
    cap = CaptureConfig.preset("tiny", sequences=("EXP-4",), frames_per_sequence=6, samples_per_side=1,
                               identity_seed=identity)
    out = tmp_path / "blink"
    summary = write_monocular(out, MonocularConfig(capture=cap, sequence="EXP-4", camera_seed=2, azimuth_range=15.0),
                              progress=False)
    assert summary["outputs"]["labels"] == str(out / "labels")
    assert len(sorted((out / "labels").glob("frame_*.png"))) == 6
    v = load_monocular(out)
    assert v.labels.dtype == np.uint8 and v.labels.shape == v.mattes.shape
    assert ((v.labels > 0) == (v.mattes > 0.5)).mean() > 0.99  # the parts cover exactly the head
    seq = v.groundtruth["sequences"]["EXP-4"]
    expr = np.asarray(seq["expression"])
    blinks = expr[:, [syn.EXPRESSION_NAMES.index("blink_left"), syn.EXPRESSION_NAMES.index("blink_right")]]
    assert (blinks.std(0) > 0.2).all() and blinks.min() < 0.05  # both eyes blink, an open frame exists

    def correlations(closure):
        assert closure.shape == (6, 2) and ((closure >= 0) & (closure <= 1)).all()
        return [np.corrcoef(closure[:, k], blinks[:, k])[0, 1] for k in range(2)]

    # at the true (apparent) poses
    exact = video_eye_closure(v.labels, v.static_camera, seq["apparent_rotation"], seq["apparent_translation"],
                              v.groundtruth["scale"])
    assert min(correlations(exact)) > 0.9
    # through npga track-video with the tracker's own poses (camera at the origin)
    (tmp_path / "K.json").write_text(json.dumps({"K": v.static_camera.K.tolist()}))
    track = tmp_path / "track.npz"
    result = CliRunner().invoke(cli, ["track-video", str(out / "frames"), "--prior", str(tiny_demo["out"] / "prior"),
                                      "--mattes", str(out / "mattes"), "--landmarks", str(out / "landmarks.json"),
                                      "--labels", str(out / "labels"), "--K", str(tmp_path / "K.json"),
                                      "--out", str(track), "--json", "--quiet",
                                      "--steps-first", "6", "--steps", "2", "--points", "300"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["labels"]
    assert min(correlations(load_tracking(track).eye_closure)) > 0.9
    # a label folder that does not fit the video is refused, naming it
    (out / "labels" / "frame_00005.png").unlink()
    result = CliRunner().invoke(cli, ["track-video", str(out / "frames"), "--prior", str(tiny_demo["out"] / "prior"),
                                      "--labels", str(out / "labels"), "--K", str(tmp_path / "K.json"),
                                      "--out", str(tmp_path / "t2.npz"), "--quiet"])
    assert result.exit_code != 0 and str(out / "labels") in result.output and "5 label maps" in result.output
    with pytest.raises(FileNotFoundError, match="frame_00005.png"):
        load_monocular(out)


def test_benchmark_truth_and_grading(video, tiny_demo):
    """The cross-identity truth (the synthetic head re-rendered from the held-out cameras) of A
    driven by A's own plan is the capture's image; the true pose grades as error-free."""
    from types import SimpleNamespace

    from npga_taichi.evaluation import psnr_value
    from npga_taichi.reenactment import LoadedRun, ground_truth

    bench = load_benchmark("monocular")
    out, _, pdir = video
    run = LoadedRun(tiny_demo["out"] / "run")
    v = load_monocular(out)
    truth = bench.synthetic_truth(run, pdir, v.groundtruth)
    for serial in run.heldout_cameras()[:2]:
        image, alpha = truth(1, serial)
        gt, gt_alpha = ground_truth(run, "FREE", 1, serial)
        assert psnr_value(image, gt) > 30.0  # only the antialiasing jitter differs
        assert float((alpha - gt_alpha).abs().mean()) < 0.01
    seq = v.groundtruth["sequences"]["FREE"]
    exact = SimpleNamespace(meta={"apparent": (np.asarray(seq["apparent_rotation"]),
                                               np.asarray(seq["apparent_translation"]))})
    errors = bench.pose_errors(exact, v)
    assert max(errors.values()) < 1e-3
    assert bench.gap_closed({"psnr": 20.0}, {"psnr": 10.0}, {"psnr": 30.0}) == 0.5
    assert bench.jitter(np.outer(np.arange(5.0), np.ones(3))) == 0.0  # linear motion: no jitter
    # aligning to the first frame: a pose sequence moved by any similarity comes back exactly
    rot, trans = np.asarray(seq["rotation"]), np.asarray(seq["translation"])
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    moved_r, moved_t = q @ rot, (trans @ q.T) * 1.3 + np.array([0.1, -0.2, 0.3])
    back_r, back_t, s = bench.align_to_first(moved_r, moved_t, 0.25 * 1.3, (rot[0], trans[0], 0.25))
    np.testing.assert_allclose(back_r, rot, atol=1e-9)
    np.testing.assert_allclose(back_t, trans, atol=1e-9)
    assert s == pytest.approx(0.25)


def test_benchmark_runs_both_trackers_end_to_end(tiny_demo, tmp_path):
    """The benchmark's self-driving protocol at CI size: the proxy's track and the track through
    the avatar (``npga track-video --avatar``) are both tracked, written and scored, and the
    table has a row for each (the numbers of a 100-step avatar mean nothing; the README's come
    from default-size runs)."""
    import math

    from npga_taichi.prior.tracking import load_tracking

    bench = load_benchmark("monocular")
    results = bench.run_benchmark(tiny_demo["out"] / "run", None, tmp_path, quick=True, landmark_modes=(True,),
                                  log=lambda message: None)
    proxy, own = results["self"]["with_landmarks"], results["self"]["with_landmarks_through_avatar"]
    for entry in (proxy, own):
        assert entry["mono"]["num_images"] == entry["floor"]["num_images"] > 0
        values = [entry["mono"]["psnr"], entry["floor"]["psnr"], entry["world_pose"]["mono"]["psnr"],
                  *entry["pose"].values(), entry["cpu_seconds_per_frame"]]
        assert all(math.isfinite(v) for v in values)
    track = load_tracking(tmp_path / "track_self_with_landmarks_through_avatar.npz")
    assert track.meta["tracked_through"] == str(tiny_demo["out"] / "run")
    assert "tracked_through" not in load_tracking(tmp_path / "track_self_with_landmarks.npz").meta
    assert track.part_motion is not None and track.eye_closure is not None  # measured from the labels, refined
    table = bench.markdown_table(results)
    assert "| self | yes |" in table and "| self, through the avatar | yes |" in table


def test_oracle_benchmark_holds_what_it_gives(tiny_demo, tmp_path):
    """``benchmarks/monocular_oracle.py``: the track given everything reproduces the benchmark's
    ceiling exactly (the poses' round trip through the video camera's world is exact), and each
    half-given track keeps what it was given while the tracked one moves."""
    oracle = load_benchmark("monocular_oracle")
    results = oracle.run_oracle(tiny_demo["out"] / "run", tmp_path, quick=True, log=lambda message: None,
                                figure=tmp_path / "oracle.png")
    tracks = results["tracks"]
    assert set(tracks) == {"tracked", "true_codes", "true_poses", "truth"}
    truth = tracks["truth"]
    assert truth["mono"]["psnr"] == pytest.approx(results["ceiling"]["psnr"], abs=1e-3)
    assert truth["gap_closed"] == pytest.approx(1.0, abs=1e-3)
    for name in ("truth", "true_poses"):
        pose = tracks[name]["pose_vs_multiview"]
        assert pose["rotation_deg_max"] < 1e-3 and pose["translation_inplane_mm_max"] < 1e-3
        assert pose["translation_depth_mm_max"] < 1e-3
    for name in ("truth", "true_codes"):
        assert tracks[name]["code_vs_multiview"] < 1e-6
    assert tracks["tracked"]["code_vs_multiview"] > 1e-3
    assert tracks["tracked"]["pose_vs_multiview"]["rotation_deg_mean"] > 1e-3
    for entry in tracks.values():
        assert len(entry["video_l1_x1000_per_frame"]) == results["tracks"]["truth"]["mono"]["num_images"] // len(
            results["cameras"])
        assert all(math.isfinite(v) for v in entry["video_l1_x1000_per_frame"])
        assert entry["video_objective_x1000"] > entry["video_l1_x1000"] > 0  # L1 plus D-SSIM and silhouette
    table = oracle.markdown_table(results)
    assert table.count("\n| ") == 4 and "| truth | everything |" in table
    # the picture: the ground truth, the four tracks and their errors side by side, first / middle / last frame
    import imageio.v3 as iio

    from npga_taichi.reenactment import LoadedRun

    camera = LoadedRun(tiny_demo["out"] / "run").camera(results["figure"]["camera"])
    frames = len(tracks["truth"]["video_l1_x1000_per_frame"])
    rows = len({0, frames // 2, frames - 1})
    strip = iio.imread(tmp_path / "oracle.png")
    assert len(results["figure"]["columns"]) == 9
    assert strip.shape[0] % rows == 0 and strip.shape[1] % 9 == 0 and strip.shape[2] == 3
    assert strip.shape[0] // rows <= camera.height and strip.shape[1] // 9 <= camera.width
    h, w = strip.shape[0] // rows, strip.shape[1] // 9
    truth_panel, ceiling_error = strip[:h, :w].astype(float), strip[:h, 5 * w:6 * w].astype(float)
    assert truth_panel.std() > 5.0 and ceiling_error.mean() < truth_panel.mean()  # a head, small errors
