"""Tracking through the avatar itself (npga_taichi/avatar_tracking.py, ``npga track-video --avatar``).

The truth here is the tiny demo's avatar rendered from one of its capture cameras with known
codes, label measurements and head poses: the tracker, started from poses a few degrees and
millimetres off, must find them again by matching those renders.
"""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from npga_taichi.avatar.deformation import FrameCode, apply_rigid_pose
from npga_taichi.avatar_tracking import AvatarTrackingConfig, border_colour, track_through_avatar
from npga_taichi.cli.main import cli
from npga_taichi.prior.tracking import Tracking, axis_angle_to_matrix


@pytest.fixture(scope="module")
def run(tiny_demo):
    from npga_taichi.reenactment import LoadedRun

    return LoadedRun(tiny_demo["out"] / "run")


BACKDROP = torch.tensor([0.55, 0.5, 0.45])


def _rotation_deg(a, b) -> np.ndarray:
    chord = np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=(1, 2)) / (2 * np.sqrt(2))
    return np.degrees(2 * np.arcsin(np.clip(chord, 0, 1)))


@pytest.fixture(scope="module")
def scene(run):
    """(frames (3, H, W, 3), mattes (3, H, W), camera, true Tracking) of the avatar's own renders:
    its FREE codes, its first frame's label measurements held (the tiny capture's measure the
    brows moving by more than a full raise between frames, which a frame without a measurement
    cannot follow), its first pose turning 1° and moving 2 mm per frame."""
    drive = run.drive("FREE").select(range(3))
    held = lambda x: None if x is None else x[:1].expand_as(x).clone()  # noqa: E731
    drive = replace(drive, eye_closure=held(drive.eye_closure), part_motion=held(drive.part_motion))
    camera = run.camera(run.heldout_cameras()[0])
    step = axis_angle_to_matrix(torch.tensor([0.0, np.radians(1.0), 0.0], dtype=torch.float32))
    rots = [drive.rot[0]]
    for _ in range(2):
        rots.append(step @ rots[-1])
    rot = torch.stack(rots)
    trans = drive.trans[0] + torch.tensor([0.002, 0.0, 0.0]) * torch.arange(3.0)[:, None]
    frames, mattes = [], []
    with torch.no_grad():
        for i in range(3):
            frame = FrameCode(drive.z_exp[i], rot[i], trans[i], float(drive.scale[i]),
                              None if drive.eye_closure is None else drive.eye_closure[i],
                              None if drive.part_motion is None else drive.part_motion[i])
            inputs = run.avatar.raster_inputs(run.avatar.deform(frame))
            out = run.rasterize(inputs["means"], inputs["quats"], inputs["scales"], inputs["opacities"],
                                inputs["colors"], camera.viewmat.float(), camera.K.float(), camera.width,
                                camera.height, sh_degree=inputs["sh_degree"])
            # what a matted video holds: the person's unpremultiplied colour, the backdrop elsewhere
            # (tracker and trainer composite image * matte + background * (1 - matte))
            frames.append(torch.where(out.alpha > 1e-4, out.image / out.alpha.clamp_min(1e-4), BACKDROP))
            mattes.append(out.alpha[..., 0])
    as_np = lambda x: None if x is None else x.numpy()  # noqa: E731
    truth = Tracking("FREE", np.arange(3), drive.z_exp.numpy(), np.zeros(4, np.float32), np.zeros(4, np.float32),
                     rot.numpy(), trans.numpy(), float(drive.scale[0]), np.zeros(3, np.float32),
                     eye_closure=as_np(drive.eye_closure), part_motion=as_np(drive.part_motion))
    return torch.stack(frames), torch.stack(mattes), camera, truth


def _perturbed(truth: Tracking) -> Tracking:
    """The truth with every pose turned 2° about a tilted axis and moved 3 mm."""
    off = axis_angle_to_matrix(torch.tensor([0.02, 0.025, -0.01])).numpy()
    return replace(truth, rot=np.einsum("ij,tjk->tik", off, truth.rot).astype(np.float32),
                   trans=(truth.trans + np.array([0.003, -0.002, 0.002], np.float32)).astype(np.float32))


def test_deform_head_is_deform_before_the_pose(run):
    drive = run.drive("FREE")
    frame = FrameCode(drive.z_exp[1], drive.rot[1], drive.trans[1], float(drive.scale[1]),
                      None if drive.eye_closure is None else drive.eye_closure[1],
                      None if drive.part_motion is None else drive.part_motion[1])
    with torch.no_grad():
        whole = run.avatar.deform(frame)
        parts = apply_rigid_pose(run.avatar.deform_head(frame), frame.rot, frame.trans, frame.scale)
    torch.testing.assert_close(parts.means, whole.means)
    torch.testing.assert_close(parts.quats, whole.quats)


def test_recovers_a_known_pose_from_the_avatars_own_renders(run, scene):
    frames, mattes, camera, truth = scene
    start = _perturbed(truth)
    assert _rotation_deg(start.rot, truth.rot).min() > 1.9
    cfg = AvatarTrackingConfig(first_frame_steps=60, steps_per_frame=20, pose_steps_per_frame=20)
    tracked = track_through_avatar(run, frames, camera, start, mattes, cfg, progress=False)
    rot_err = _rotation_deg(tracked.rot, truth.rot)
    trans_err = np.linalg.norm(tracked.trans - truth.trans, axis=1) * 1000
    assert rot_err.max() < 0.5, rot_err
    assert trans_err.max() < 1.0, trans_err
    assert tracked.meta["tracked_through"] == str(run.run_dir)
    assert tracked.meta["avatar_tracking"] == cfg.to_dict()
    assert tracked.residual.shape == (3,) and (tracked.residual < 10).all()  # L1 x 1000 of matching renders
    # the frames after a one-frame start follow by their own motion (frame 1 starts 1° / 2 mm
    # off, with frame 0's code): close, though without the proxy's per-frame start less so
    short = replace(start, timesteps=start.timesteps[:1], z_exp=start.z_exp[:1], rot=start.rot[:1],
                    trans=start.trans[:1], eye_closure=None if start.eye_closure is None else start.eye_closure[:1],
                    part_motion=None if start.part_motion is None else start.part_motion[:1])
    followed = track_through_avatar(run, frames, camera, short, mattes, cfg, progress=False)
    np.testing.assert_array_equal(followed.timesteps, np.arange(3))
    assert _rotation_deg(followed.rot, truth.rot).max() < 0.3
    assert (np.linalg.norm(followed.trans - truth.trans, axis=1) * 1000).max() < 1.5


def test_an_offset_in_the_part_motion_is_found_once_and_carried(run, scene):
    # a video measures the brows and mouth corners from its own median frame, the avatar learnt
    # them from its capture's: the start track's part motion is off by a constant here
    frames, mattes, camera, truth = scene
    assert truth.part_motion is not None
    offset = 0.01  # a third of a full brow raise / smile
    start = replace(truth, part_motion=truth.part_motion + offset)
    # 3 steps on the later frames move the part motion by at most 3 x lr_parts / 30 = 0.001
    # there: the rest of the correction must come from frame 0's, carried
    cfg = AvatarTrackingConfig(first_frame_steps=120, steps_per_frame=3, pose_steps_per_frame=3, refit_first_frames=0)
    tracked = track_through_avatar(run, frames, camera, start, mattes, cfg, progress=False)
    motion_err = np.abs(tracked.part_motion - truth.part_motion).mean(axis=1)
    assert motion_err.max() < 0.7 * offset, motion_err
    assert _rotation_deg(tracked.rot, truth.rot).max() < 0.3


def test_without_mattes_the_backdrop_is_the_frames_border(run, scene):
    frames, mattes, camera, truth = scene
    assert torch.allclose(border_colour(torch.ones(20, 30, 3) * BACKDROP), BACKDROP)
    # a video without mattes: the person over the backdrop, which the tracker must find at the border
    video = frames * mattes[..., None] + BACKDROP * (1 - mattes[..., None])
    cfg = AvatarTrackingConfig(first_frame_steps=60, steps_per_frame=20, pose_steps_per_frame=20)
    tracked = track_through_avatar(run, video[:1], camera, _perturbed(truth), None, cfg, progress=False)
    assert _rotation_deg(tracked.rot, truth.rot[:1]).max() < 0.7
    assert (np.linalg.norm(tracked.trans - truth.trans[:1], axis=1) * 1000).max() < 1.5


def test_bad_inputs_are_named(run, scene):
    frames, mattes, camera, truth = scene
    with pytest.raises(ValueError, match="mattes are"):
        track_through_avatar(run, frames, camera, truth, mattes[:, :-1], progress=False)
    with pytest.raises(ValueError, match="the camera is"):
        track_through_avatar(run, frames[:, :-1], camera, truth, None, progress=False)
    with pytest.raises(ValueError, match=r"frames must be \(T >= 1, H, W, 3\)"):
        track_through_avatar(run, frames[..., :2], camera, truth, None, progress=False)
    with pytest.raises(ValueError, match="steps_per_frame"):
        AvatarTrackingConfig(steps_per_frame=-1).validate()
    with pytest.raises(ValueError, match="lr_rot"):
        AvatarTrackingConfig(lr_rot=float("nan")).validate()


def test_track_video_avatar_cli(tiny_demo, tmp_path):
    """``npga track-video --avatar RUN`` writes the refined track (meta names the run); a folder
    that is no run is refused by name before any tracking."""
    from npga_taichi.data.capture import CaptureConfig
    from npga_taichi.data.monocular import MonocularConfig, write_monocular
    from npga_taichi.prior.tracking import load_tracking

    pdir = next((tiny_demo["out"] / "capture").glob("[0-9][0-9][0-9]"))
    identity = json.loads((pdir / "synthetic_capture.json").read_text())["identity_seed"]
    cap = CaptureConfig.preset("tiny", sequences=("FREE",), frames_per_sequence=2, samples_per_side=1,
                               identity_seed=identity)
    video = tmp_path / "video"
    write_monocular(video, MonocularConfig(capture=cap, sequence="FREE", camera_seed=1), progress=False)
    cams = json.loads((video / "cameras.json").read_text())
    (tmp_path / "K.json").write_text(json.dumps({"K": cams["static_camera"]["K"]}))
    base = ["track-video", str(video / "frames"), "--prior", str(tiny_demo["out"] / "prior"),
            "--mattes", str(video / "mattes"), "--K", str(tmp_path / "K.json"), "--quiet",
            "--steps-first", "6", "--steps", "2", "--points", "300"]
    result = CliRunner().invoke(cli, [*base, "--avatar", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.npz")])
    assert result.exit_code != 0 and "nothing" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.npz").exists()
    out = tmp_path / "own.npz"
    result = CliRunner().invoke(cli, [*base, "--avatar", str(tiny_demo["out"] / "run"), "--avatar-steps", "2",
                                      "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["avatar"] == str(tiny_demo["out"] / "run") and summary["frames"] == 2
    track = load_tracking(out)
    assert track.meta["tracked_through"] == str(tiny_demo["out"] / "run")
    assert track.meta["avatar_tracking"]["steps_per_frame"] == 2
    assert np.isfinite(track.z_exp).all() and track.z_exp.shape[0] == 2


def test_track_video_help_states_the_configs_defaults():
    # the defaults are written into the help by hand (the CLI does not import the heavy config
    # modules to start): this keeps them from drifting (--steps once said 20 for 40)
    from npga_taichi.avatar_tracking import PROXY_POINTS
    from npga_taichi.prior.photometric import PhotometricConfig

    result = CliRunner().invoke(cli, ["track-video", "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    photo, own = PhotometricConfig(), AvatarTrackingConfig()
    for stated in (f"expression) [default: {photo.first_frame_steps}]",
                   f"Steps for every later frame [default: {photo.steps_per_frame}]",
                   f"[default: {photo.num_points}; {PROXY_POINTS} with --avatar",
                   f"joint steps per later frame [default: {own.steps_per_frame}]",
                   f"fits the pose alone for {own.pose_steps_per_frame} more",
                   f"resampled by this factor [default: {photo.image_scale}]"):
        assert stated in text, stated
