"""Camera orbits, the expression square, video writing and `npga render` on the tiny trained run."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from npga_taichi import camera_paths, video


def _look_at_viewmat(eye, target, up=(0.0, -1.0, 0.0)):
    """OpenCV world->camera looking from eye to target (independent of camera_paths)."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, -np.asarray(up))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, :3] = np.stack([x, y, z])
    m[:3, 3] = -m[:3, :3] @ eye
    return m


def test_orbit_circles_the_centre_and_keeps_it_in_view():
    center = np.array([0.02, -0.01, 0.05])
    ref = _look_at_viewmat([0.3, 0.1, 1.0], center)
    K = np.array([[100.0, 0, 32], [0, 100.0, 32], [0, 0, 1]])
    cam = SimpleNamespace(serial="ref", viewmat=torch.tensor(ref), K=K, width=64, height=64)
    orbit = camera_paths.orbit_cameras(cam, 12, center=center, yaw_degrees=40, pitch_degrees=15)
    assert len(orbit) == 12 and orbit[0].serial == "orbit_000" and orbit[0].width == 64
    assert isinstance(orbit[3].viewmat, torch.Tensor)
    assert np.allclose(orbit[0].viewmat.numpy(), ref, atol=1e-12)  # starts at the reference camera
    radius = np.linalg.norm(camera_paths.camera_center(ref) - center)
    centres = []
    for c in orbit:
        v = c.viewmat.numpy()
        assert np.allclose(v[:3, :3] @ v[:3, :3].T, np.eye(3), atol=1e-10)
        centres.append(camera_paths.camera_center(v))
        assert np.linalg.norm(centres[-1] - center) == pytest.approx(radius, rel=1e-10)
        p = v[:3, :3] @ center + v[:3, 3]
        assert np.allclose(K @ p / p[2], [32, 32, 1], atol=1e-8)  # the centre stays at the image centre
    spread = max(np.linalg.norm(a - b) for a in centres for b in centres)
    assert spread > 0.5 * radius  # it really moves


def test_full_circle_orbit_comes_back_around():
    ref = _look_at_viewmat([0.0, 0.0, 1.0], [0, 0, 0])
    mats = camera_paths.orbit_viewmats(ref, 4, center=[0, 0, 0], pitch_degrees=0, full_circle=True)
    # a quarter turn about the camera's up axis moves the camera to the side, half a turn behind
    assert np.allclose(camera_paths.camera_center(mats[2]), [0, 0, -1], atol=1e-12)
    assert abs(camera_paths.camera_center(mats[1])[0]) == pytest.approx(1.0)


def test_bilinear_square_hits_the_corners_and_blends_linearly():
    codes = torch.randn(4, 6, dtype=torch.float64)
    for k, (u, v) in enumerate(camera_paths.SQUARE_CORNERS):
        assert torch.equal(camera_paths.bilinear_code(codes, u, v), codes[k])
    mid = camera_paths.bilinear_code(codes, 0.5, 0.5)
    assert torch.allclose(mid, codes.mean(0))
    top = camera_paths.bilinear_code(codes, 0.25, 0.0)
    assert torch.allclose(top, 0.75 * codes[0] + 0.25 * codes[1])
    assert np.allclose(camera_paths.bilinear_code(codes.numpy(), 0.3, 0.9), camera_paths.bilinear_code(codes, 0.3, 0.9))
    with pytest.raises(ValueError, match="unit square"):
        camera_paths.bilinear_weights(1.2, 0.0)
    with pytest.raises(ValueError, match=r"\(4, E\)"):
        camera_paths.bilinear_code(torch.zeros(3, 6), 0, 0)


def test_square_grid_and_path():
    grid = camera_paths.square_grid(3, 4)
    assert len(grid) == 12 and grid[0] == (0.0, 0.0) and grid[3] == (1.0, 0.0) and grid[-1] == (1.0, 1.0)
    path = camera_paths.square_path(41)
    assert path[0] == (0.0, 0.0) and path[-1] == (0.0, 0.0)
    for corner in [(1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]:  # every corner is visited exactly
        assert corner in path
    steps = [math.dist(a, b) for a, b in zip(path, path[1:])]
    assert max(steps) < 0.25  # a smooth path, no jumps
    assert camera_paths.parse_waypoints("0,0; 1,1") == [(0.0, 0.0), (1.0, 1.0)]
    with pytest.raises(ValueError, match="bad waypoint"):
        camera_paths.parse_waypoints("0,0;x,1")
    with pytest.raises(ValueError, match="unit square"):
        camera_paths.square_path(5, [(0, 0), (2, 0)])


def test_mp4_and_png_writers_round_trip(tmp_path):
    frames = [np.full((21, 30, 3), 40 * i, dtype=np.uint8) for i in range(5)]  # odd height: padded
    path = video.write_mp4(tmp_path / "v.mp4", frames, fps=10)
    decoded = video.read_video(path)
    assert decoded.shape == (5, 22, 30, 3)
    assert np.abs(decoded[:, :21].astype(int) - np.stack(frames)).max() <= 6  # lossy but close
    pngs = video.write_png_frames(tmp_path / "frames", [f / 255.0 for f in frames])
    assert [p.name for p in pngs][:2] == ["frame_00000.png", "frame_00001.png"]
    assert np.array_equal(video.read_video(tmp_path / "frames"), np.stack(frames))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames", "v.mp4"]  # no temporaries left
    with pytest.raises(ValueError, match="no frames"):
        video.write_mp4(tmp_path / "empty.mp4", [])
    with pytest.raises(ValueError, match=r"\.mp4"):
        video.write_mp4(tmp_path / "v.avi", frames)


def test_video_falls_back_to_png_without_ffmpeg(tmp_path, monkeypatch):
    monkeypatch.setattr(video, "ffmpeg_available", lambda: False)
    out = video.write_video(tmp_path / "v.mp4", [np.zeros((4, 4, 3))], fps=5)
    assert out == tmp_path / "v" and (out / "frame_00000.png").is_file()


# ----------------------------------------------------------------------- `npga render` on a run

import json  # noqa: E402

from click.testing import CliRunner  # noqa: E402



def _invoke(*args):
    from npga_taichi.cli.main import cli

    return CliRunner().invoke(cli, ["render", *map(str, args)])


def _last_json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_render_self_reenactment_side_by_side(tiny_demo, tmp_path):
    import imageio.v2 as imageio

    from npga_taichi.reenactment import LoadedRun, ground_truth

    run_dir = tiny_demo["out"] / "run"
    run = LoadedRun(run_dir)
    serial = run.heldout_cameras()[0]
    info = _last_json(_invoke(run_dir, "--camera", serial, "--side-by-side", "--png", "--max-frames", 2,
                              "--out", tmp_path / "r", "--json"))
    assert info["sequence"] == "FREE" and info["num_frames"] == 2 and info["mode"] == "self"
    cam = run.camera(serial)
    drive = run.drive("FREE")
    png = imageio.imread(tmp_path / "r" / "frames" / "frame_00001.png")
    assert png.shape == (cam.height, 2 * cam.width, 3)
    expected = video.to_uint8(run.render(run.gaussians(drive.frame(1)), cam))
    assert np.array_equal(png[:, cam.width:], expected)  # right: the avatar, bit-exact
    gt, alpha = ground_truth(run, "FREE", int(drive.timesteps[1]), serial)
    gt = video.to_uint8(alpha * gt + (1 - alpha) * run.background)
    assert np.array_equal(png[:, :cam.width], gt)  # left: the masked ground truth
    frames = video.read_video(info["outputs"]["video"])
    assert frames.shape[0] == 2 and frames.shape[2] >= 2 * cam.width - 1
    again = _invoke(run_dir, "--camera", serial, "--max-frames", 2, "--out", tmp_path / "r")
    assert again.exit_code == 1 and "--force" in again.output


def test_render_orbit_cross_and_interpolation(tiny_demo, tmp_path):
    import imageio.v2 as imageio

    from npga_taichi.camera_paths import bilinear_code
    from npga_taichi.reenactment import LoadedRun, tracking_file

    run_dir = tiny_demo["out"] / "run"
    run = LoadedRun(run_dir)
    orbit = _last_json(_invoke(run_dir, "--orbit", 3, "--max-frames", 2, "--out", tmp_path / "o", "--json"))
    assert orbit["num_frames"] == 3 and video.read_video(orbit["outputs"]["video"]).shape[0] == 3

    other_seq = [s for s in run.capture.sequences() if s != "FREE"][0]
    npz = tracking_file(run.capture_root, run.participant, other_seq)
    cross = _last_json(_invoke(run_dir, "--expressions", npz, "--max-frames", 2, "--out", tmp_path / "x", "--json"))
    assert cross["mode"] == "cross" and cross["sequence"] == other_seq

    grid = _last_json(_invoke(run_dir, "--interpolate", "auto", "--grid", "2x3", "--out", tmp_path / "g", "--json"))
    image = imageio.imread(grid["outputs"]["grid"])
    cam = run.camera(grid["camera"])
    assert image.shape == (2 * cam.height, 3 * cam.width, 3)
    # the corners are the four codes named in render.json (SEQ:T), found in the tracking
    corners = torch.stack([_code(run, label) for label in grid["corners"]])
    assert len(set(grid["corners"])) == 4
    # interpolated codes come without an eye closure or part motion (open eyes, parts at rest)
    pose = {k: v for k, v in run.reference_drive().frame(0).items() if k not in ("eye_closure", "part_motion")}
    # the grid's last tile is the bottom-right corner code on the reference pose
    last = run.render(run.gaussians({**pose, "z_exp": bilinear_code(corners, 1.0, 1.0)}), cam)
    assert np.array_equal(image[cam.height:, 2 * cam.width:], video.to_uint8(last))
    path = _last_json(_invoke(run_dir, "--interpolate", "auto", "--frames", 3, "--path", "0,0;1,1",
                              "--no-video", "--out", tmp_path / "p", "--json"))
    assert np.allclose(path["uv"], [[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]])
    assert len(list((tmp_path / "p" / "frames").glob("*.png"))) == 3


def _code(run, label):
    seq, t = label.rsplit(":", 1)
    drive = run.drive(seq)
    return drive.z_exp[int(np.nonzero(drive.timesteps == int(t))[0][0])]


def test_auto_corners_are_mutually_distant():
    from npga_taichi.reenactment import farthest_codes

    z = torch.tensor([[0.0, 0], [0.1, 0], [5, 0], [0, 5], [5, 5], [0.05, 0.05]])
    assert sorted(farthest_codes(z, 4)) == [0, 2, 3, 4] or sorted(farthest_codes(z, 4)) == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="at least 4"):
        farthest_codes(z[:3], 4)


def test_render_bad_arguments(tiny_demo, tmp_path):
    run_dir = tiny_demo["out"] / "run"
    cases = [
        (["--grid", "2x2"], 2, "--interpolate"),
        (["--interpolate", "auto", "--grid", "1x5"], 2, "2x2"),
        (["--interpolate", "FREE:0;FREE:1"], 2, "four"),
        (["--camera", "999"], 1, "unknown camera"),
        (["--sequence", "NOPE"], 1, "NOPE"),
        (["--orbit", 3, "--side-by-side"], 2, "--side-by-side"),
        (["--interpolate", "auto", "--path", "0,0;x,1"], 2, "bad waypoint"),
    ]
    for args, code, message in cases:
        result = _invoke(run_dir, *args, "--out", tmp_path / "bad")
        assert result.exit_code == code and message in result.output, (args, result.output)
    assert not (tmp_path / "bad" / "video.mp4").exists()


def test_render_library_errors_name_the_option(tiny_demo, tmp_path):
    """`render_run` (the work under `npga render`) raises ValueError subclasses naming the option,
    FileNotFoundError for a missing run and FileExistsError instead of overwriting."""
    from npga_taichi.render_run import OptionError, render_run

    run_dir = tiny_demo["out"] / "run"
    cases = [
        (dict(interpolate="auto", grid="1x5"), "--grid", "2x2"),
        (dict(interpolate="auto", grid=(3, 1)), "--grid", "2x2"),
        (dict(interpolate="FREE:0;FREE:1"), "--interpolate", "four"),
        (dict(interpolate="FREE:0;FREE:1;FREE:2;FREE:99"), "--interpolate", "no tracked timestep 99"),
        (dict(interpolate="auto", path="0,0;x,1"), "--path", "bad waypoint"),
        (dict(orbit=1), "--orbit", "minimum 2"),
        (dict(stride=0), "--stride", "minimum 1"),
        (dict(fps=0.0), "--fps", "minimum 0.1"),
        (dict(orbit=3, side_by_side=True), None, "--side-by-side"),
        (dict(source_pose=True), None, "--expressions"),
    ]
    for kwargs, option, message in cases:
        with pytest.raises(OptionError, match=message) as info:
            render_run(run_dir, tmp_path / "bad", **kwargs)
        assert info.value.option == option, kwargs
        assert str(info.value).startswith(f"{option}: " if option else "--"), str(info.value)
    with pytest.raises(ValueError, match="unknown camera '999'"):
        render_run(run_dir, tmp_path / "bad", camera="999")
    with pytest.raises(FileNotFoundError, match="RUN"):
        render_run(tmp_path / "no_run", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # nothing written before the inputs are checked

    info = render_run(run_dir, tmp_path / "ok", max_frames=1, video=False, progress=False)
    assert info["outputs"] == {"frames": str(tmp_path / "ok" / "frames")} and info["timesteps"] == [0]
    assert json.loads((tmp_path / "ok" / "render.json").read_text()) == json.loads(json.dumps(info))
    with pytest.raises(FileExistsError, match="--force"):
        render_run(run_dir, tmp_path / "ok", max_frames=1, video=False, progress=False)


def test_head_center_is_the_opacity_weighted_mean():
    from npga_taichi.render_run import head_center

    means = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0.0, 2, 0]])
    opacities = torch.tensor([1.0, 3.0, 0.0])
    run = SimpleNamespace(gaussians=lambda frame: {"means": means, "opacities": opacities})
    drive = SimpleNamespace(frame=lambda i: {})
    assert np.allclose(head_center(run, drive), [0.75, 0.0, 0.0])


def test_png_frames_keep_unrelated_files_and_drop_only_stale_frames(tmp_path):
    """Writing frames into a folder touches only <prefix>NNNNN.png files (issue 13: --force and
    overwrites remove only what the command wrote)."""
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    frames = [np.full((4, 5, 3), v, np.float32) for v in (0.1, 0.5, 0.9)]
    video.write_png_frames(folder, frames)
    video.write_png_frames(folder, frames[:2])
    assert sorted(p.name for p in folder.iterdir()) == ["frame_00000.png", "frame_00001.png", "notes.txt"]
    assert (folder / "notes.txt").read_text() == "mine"
    assert not any(p.name.startswith(".") for p in folder.iterdir())
