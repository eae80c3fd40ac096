"""``npga drive RUN --tracking T`` (npga_taichi/driving.py) on the session's tiny demo run."""
import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from npga_taichi.cli.main import cli
from npga_taichi.driving import compose, driven_drive, invert, moved_viewmat, relative_codes
from npga_taichi.metrics import psnr
from npga_taichi.prior.tracking import load_tracking, save_tracking

SERIAL = "222200040"  # a held-out camera of the tiny run: the "driving camera" of these tests


@pytest.fixture(scope="module")
def setup(tiny_demo, tmp_path_factory):
    """(run, FREE tracking path, driving video folder (the capture's FREE from SERIAL at the run's
    resolution), its camera file, LoadedRun)."""
    from npga_taichi.reenactment import LoadedRun, ground_truth
    from npga_taichi.video import write_png_frames

    run_dir = tiny_demo["out"] / "run"
    run = LoadedRun(run_dir)
    tracking = run.capture_root / run.participant / "annotations" / "tracking" / "FREE.npz"
    tmp = tmp_path_factory.mktemp("drive")
    drive = run.drive("FREE")
    write_png_frames(tmp / "video", [ground_truth(run, "FREE", int(t), SERIAL)[0] for t in drive.timesteps])
    cam = run.camera(SERIAL)
    camera_file = tmp / "camera.json"
    camera_file.write_text(json.dumps({"K": cam.K.tolist(), "viewmat": cam.viewmat.tolist(),
                                       "width": cam.width, "height": cam.height}))
    return run_dir, tracking, tmp / "video", camera_file, run


def _drive(args):
    return CliRunner().invoke(cli, ["drive", *map(str, args)])


def test_outputs_and_the_driving_camera_panel(setup, tmp_path):
    """Files, sizes, and the middle panel = the avatar rendered from the driving camera (with the
    tracked pose: exactly npga render's frame; with the relative pose the camera moves with the
    head, so the image stays the same up to SH view-direction effects)."""
    from npga_taichi.video import read_video, to_uint8

    run_dir, tracking, video, camera_file, run = setup
    out = tmp_path / "tracked"
    result = _drive([run_dir, "--tracking", tracking, "--video", video, "--video-camera", camera_file,
                     "--pose", "tracked", "--out", out, "--png", "--json", "--max-frames", "2"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["num_frames"] == 2 and info["panels"][0] == "driver" and info["formula"] == "z_t"
    assert json.loads((out / "drive.json").read_text())["outputs"] == info["outputs"]
    cam = run.camera(SERIAL)
    h, w = cam.height, cam.width
    frames = sorted((out / "frames").glob("frame_*.png"))
    assert len(frames) == 2
    first = iio.imread(frames[0])
    assert first.shape == (h, 3 * w + 4, 3)
    assert read_video(Path(info["outputs"]["video"])).shape[0] == 2
    still = iio.imread(out / "still.png")
    assert still.shape == (2 * (h + 2), 3 * w + 4, 3)
    drive = run.drive("FREE")
    expected = to_uint8(run.render(run.gaussians(drive.frame(0)), cam))
    np.testing.assert_array_equal(first[:, w + 2:2 * w + 2], expected)
    np.testing.assert_array_equal(first[:, :w], iio.imread(sorted(video.glob("*.png"))[0]))
    other = to_uint8(run.render(run.gaussians(drive.frame(0)), run.camera("222200037")))
    np.testing.assert_array_equal(first[:, 2 * w + 4:], other)

    result = _drive([run_dir, "--tracking", tracking, "--video-camera", camera_file, "--pose", "fixed",
                     "--out", tmp_path / "fixed", "--png", "--max-frames", "2", "--orbit"])
    assert result.exit_code == 0, result.output
    fixed = iio.imread(tmp_path / "fixed" / "frames" / "frame_00001.png")[:, :w].astype(np.float64)
    tracked_view = iio.imread(frames[1])[:, w + 2:2 * w + 2].astype(np.float64)
    assert psnr(torch.from_numpy(fixed), torch.from_numpy(tracked_view), data_range=255.0) > 28.0
    assert json.loads((tmp_path / "fixed" / "drive.json").read_text())["panels"][-1] == "avatar (orbit)"


def test_a_track_video_tracking_is_seen_from_its_own_camera_not_the_folders(setup, tmp_path):
    """`npga track-video` tracks in the world of a camera at the origin (its meta holds K); a
    monocular folder's cameras.json puts its static camera in the capture's world. The driving
    camera must be the tracking's: with the folder's the head fell outside the middle panel."""
    from dataclasses import replace

    from npga_taichi.video import to_uint8, write_png_frames

    run_dir, tracking, video, _, run = setup
    cam = run.camera(SERIAL)
    view = cam.viewmat.double().numpy()
    free = load_tracking(tracking)
    # the FREE track seen from SERIAL, with SERIAL moved to the origin: P' = V ∘ P
    rot = np.einsum("ij,tjk->tik", view[:3, :3], np.asarray(free.rot, np.float64))
    trans = np.asarray(free.trans, np.float64) @ view[:3, :3].T + view[:3, 3]
    origin = replace(free, rot=rot.astype(np.float32), trans=trans.astype(np.float32),
                     meta={**free.meta, "K": json.dumps(cam.K.tolist())})
    origin_path = save_tracking(origin, tmp_path / "origin.npz")
    folder = tmp_path / "mono"
    write_png_frames(folder / "frames", [iio.imread(p) for p in sorted(video.glob("*.png"))])
    (folder / "monocular.json").write_text("{}")
    other = run.camera("222200037")
    (folder / "cameras.json").write_text(json.dumps({"static_camera": {"K": other.K.tolist(),
                                                                       "viewmat": other.viewmat.tolist()},
                                                     "width": cam.width, "height": cam.height}))
    out = tmp_path / "drive"
    result = _drive([run_dir, "--tracking", origin_path, "--video", folder, "--pose", "tracked", "--out", out,
                     "--png", "--max-frames", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    w = cam.width
    middle = iio.imread(out / "frames" / "frame_00000.png")[:, w + 2:2 * w + 2].astype(np.float64)
    expected = to_uint8(run.render(run.gaussians(run.drive("FREE").frame(0)), cam)).astype(np.float64)
    # the same view up to SH colours (evaluated with world-space view directions)
    assert psnr(torch.from_numpy(middle), torch.from_numpy(expected), data_range=255.0) > 28.0


def test_relative_formula(setup):
    run_dir, tracking, _, _, run = setup
    ref = run.reference_drive()
    own = load_tracking(run.capture_root / run.participant / "annotations" / "tracking" / f"{ref.sequence}.npz")
    # the avatar's own neutral sequence drives it: relative == absolute (z_0 is z_neutral)
    rel, _ = driven_drive(run, own, relative=True, pose="tracked")
    absolute, _ = driven_drive(run, own, relative=False, pose="tracked")
    torch.testing.assert_close(rel.z_exp, absolute.z_exp, atol=1e-6, rtol=0)
    torch.testing.assert_close(rel.z_exp[0], ref.z_exp[0], atol=1e-6, rtol=0)
    # another driver: z_t - z_0 + z_neutral, neutral chosen explicitly
    free = load_tracking(tracking)
    neutral = f"{ref.sequence}:{int(ref.timesteps[1])}"
    drive, _ = driven_drive(run, free, relative=True, neutral=neutral, pose="tracked")
    z = torch.as_tensor(free.z_exp)
    torch.testing.assert_close(drive.z_exp, z - z[:1] + ref.z_exp[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(relative_codes(z, ref.z_exp[1])[0], ref.z_exp[1])


def test_relative_pose_and_camera_algebra(setup):
    run_dir, tracking, _, _, run = setup
    free = load_tracking(tracking)
    drive, tracked = driven_drive(run, free, pose="relative")
    ref = run.reference_drive()
    torch.testing.assert_close(drive.rot[0], ref.rot[0], atol=1e-5, rtol=0)  # starts at the avatar's pose
    torch.testing.assert_close(drive.trans[0], ref.trans[0], atol=1e-6, rtol=0)
    # the head moves as the driver's did, in its own frame: R'_0^T R'_t == R_0^T R_t
    for i in range(1, len(drive)):
        torch.testing.assert_close(drive.rot[0].T @ drive.rot[i], tracked.rot[0].T @ tracked.rot[i], atol=1e-5, rtol=0)
    # a camera moved by a similarity sees the moved world as the camera saw the original one
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    w = (1.3, q * np.sign(np.linalg.det(q)), rng.normal(size=3))
    view = run.camera(SERIAL).viewmat.double().numpy()
    x = rng.normal(size=(20, 3)) * 0.1
    moved = moved_viewmat(view, invert(w))
    s, r, t = w
    xw = s * x @ r.T + t
    project = lambda v, p: (p @ v[:3, :3].T + v[:3, 3])[:, :2] / (p @ v[:3, :3].T + v[:3, 3])[:, 2:]  # noqa: E731
    np.testing.assert_allclose(project(moved, xw), project(view, x), atol=1e-10)
    np.testing.assert_allclose(compose(w, invert(w))[1], np.eye(3), atol=1e-12)


def test_bad_inputs_name_the_file(setup, tmp_path):
    run_dir, tracking, _, _, run = setup
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip at all")
    for args, needle in (([run_dir, "--tracking", garbage], str(garbage)),
                         ([run_dir, "--tracking", tmp_path / "none.npz"], "none.npz"),
                         ([tmp_path / "norun", "--tracking", tracking], "norun"),
                         ([run_dir, "--tracking", tracking, "--video", tmp_path / "novideo"], "novideo"),
                         ([run_dir, "--tracking", tracking, "--camera", "123"], "123")):
        result = _drive([*args, "--out", tmp_path / "o"])
        assert result.exit_code != 0, args
        assert needle in result.output and "Traceback" not in result.output, result.output
    wide = load_tracking(tracking)
    wide.z_exp = np.concatenate([wide.z_exp, np.zeros((len(wide.z_exp), 3), np.float32)], axis=1)
    path = save_tracking(wide, tmp_path / "wide.npz")
    result = _drive([run_dir, "--tracking", path, "--out", tmp_path / "o"])
    assert result.exit_code != 0 and str(path) in result.output and "expects" in result.output, result.output
    # outputs are never overwritten without --force
    out = tmp_path / "twice"
    assert _drive([run_dir, "--tracking", tracking, "--out", out, "--max-frames", "1"]).exit_code == 0
    result = _drive([run_dir, "--tracking", tracking, "--out", out, "--max-frames", "1"])
    assert result.exit_code != 0 and "--force" in result.output
    assert _drive([run_dir, "--tracking", tracking, "--out", out, "--max-frames", "1", "--force"]).exit_code == 0
