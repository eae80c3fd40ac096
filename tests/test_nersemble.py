"""The NeRSemble data layer on a small synthetic capture: layout, camera convention, loader,
v2 videos, splits and errors on bad data."""
import json
import shutil
import warnings

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from npga_taichi.cli.synth import command as synth_command
from npga_taichi.data import nersemble as ns
from npga_taichi.data.pcd import read_pcd, write_pcd

SEED = 20261123  # an identity seed no other test or default uses
PID = SEED % 1000


@pytest.fixture(scope="module")
def capture_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("capture")
    result = CliRunner().invoke(synth_command, [str(root), "--preset", "tiny", "--identity", str(SEED), "--frames", "2",
                                                "--sequences", "EXP-1,FREE", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["frames"] == 4 and summary["cameras"] == 16 and summary["image_size"] == [137, 200]
    return root


@pytest.fixture(scope="module")
def capture(capture_root):
    return ns.NersembleCapture(capture_root, PID)


def test_layout_and_rig(capture_root, capture):
    pdir = capture_root / f"{PID:03d}"
    calib = json.loads((pdir / "calibration" / "camera_params.json").read_text())
    assert list(calib["world_2_cam"]) == list(ns.UPPER_ROW + ns.LOWER_ROW)
    assert sorted(calib["world_2_cam"]) == sorted(ns.SERIALS)
    frame = pdir / "sequences" / "FREE" / "timesteps" / "frame_00001"
    assert (frame / "images-16x" / "cam_222200042.png").is_file()
    assert (frame / "alpha_map" / "cam_221501007.png").is_file()
    assert (frame / "colmap" / "pointclouds" / "pointcloud_16.pcd").is_file()
    gt = json.loads((pdir / "groundtruth" / "groundtruth.json").read_text())
    assert np.asarray(gt["sequences"]["FREE"]["expression"]).shape == (2, len(gt["expression_names"]))
    assert np.asarray(gt["sequences"]["EXP-1"]["rotation"]).shape == (2, 3, 3)
    assert capture.sequences() == ["EXP-1", "FREE"] and capture.timesteps("FREE") == [0, 1]
    # two rows of eight, left to right (increasing x), upper row above the lower row
    centres = {s: c.center().numpy() for s, c in capture.cameras.items()}
    for row in (ns.UPPER_ROW, ns.LOWER_ROW):
        xs = [centres[s][0] for s in row]
        assert xs == sorted(xs)
    assert min(centres[s][1] for s in ns.UPPER_ROW) > max(centres[s][1] for s in ns.LOWER_ROW)
    for c in centres.values():
        assert 0.9 < np.linalg.norm(c) < 1.1
    # every camera looks at the head: the origin projects near the image centre, in front
    for cam in capture.cameras.values():
        uv, z = cam.project(torch.zeros(1, 3))
        assert z[0] > 0.9 and abs(uv[0, 0] - cam.width / 2) < 0.1 * cam.width


def test_pointclouds_land_inside_the_mattes(capture):
    """Pins the camera convention: world points project into every camera's silhouette."""
    worst = 1.0
    for seq in capture.sequences():
        for t in capture.timesteps(seq):
            pts = torch.from_numpy(capture.load_pointcloud(seq, t))
            assert len(pts) > 1000
            for serial, cam in capture.cameras.items():
                alpha = capture.load_alpha(seq, t, serial)[..., 0]
                uv, z = cam.project(pts)
                col = np.floor(uv[:, 0].numpy()).astype(int)
                row = np.floor(uv[:, 1].numpy()).astype(int)
                ok = (z.numpy() > 0) & (col >= 0) & (col < cam.width) & (row >= 0) & (row < cam.height)
                inside = np.zeros(len(pts), bool)
                inside[ok] = alpha[row[ok], col[ok]] > 0
                worst = min(worst, inside.mean())
                # control: a y-up convention (rows flipped) must not agree
                if t == 0:
                    flipped = np.zeros(len(pts), bool)
                    flipped[ok] = alpha[cam.height - 1 - row[ok], col[ok]] > 0
                    assert flipped.mean() < 0.8
    assert worst >= 0.95


def test_loader_round_trip(capture_root, capture):
    pdir = capture_root / f"{PID:03d}"
    calib = json.loads((pdir / "calibration" / "camera_params.json").read_text())
    cam = capture.cameras["222200036"]
    assert (cam.width, cam.height) == (137, 200)
    K = np.asarray(calib["intrinsics"])
    np.testing.assert_allclose(cam.K.numpy()[0], K[0] * 137 / 2200, rtol=1e-6)
    np.testing.assert_allclose(cam.K.numpy()[1], K[1] * 200 / 3208, rtol=1e-6)
    np.testing.assert_allclose(cam.viewmat.numpy(), calib["world_2_cam"]["222200036"], atol=1e-6)
    frame = pdir / "sequences" / "EXP-1" / "timesteps" / "frame_00000"
    raw = iio.imread(frame / "images-16x" / "cam_222200036.png")
    img = capture.load_image("EXP-1", 0, "222200036")
    assert img.dtype == np.float32 and img.shape == (200, 137, 3)
    np.testing.assert_allclose(img, raw / 255.0, atol=1e-6)
    alpha = capture.load_alpha("EXP-1", 0, "222200036")
    assert alpha.shape == (200, 137, 1) and alpha.max() == 1.0 and alpha.min() == 0.0
    # the same capture through an explicit downscale
    again = ns.NersembleCapture(capture_root, PID, downscale=16)
    np.testing.assert_array_equal(again.load_image("EXP-1", 0, "222200036"), img)
    # dataset: splits, stride, compositing onto a background colour
    train_cams, test_cams = ns.split_cameras(list(capture.cameras), "nersemble")
    assert set(test_cams) == set(ns.HOLDOUT_CAMERAS["nersemble"]) and len(train_cams) == 12
    assert ns.split_cameras(list(capture.cameras), "benchmark2025")[1] == ["222200046", "222200037", "222200039"]
    assert ns.split_sequences(capture.sequences()) == (["EXP-1"], ["FREE"])
    with pytest.raises(ValueError, match="not among"):
        ns.split_cameras(list(capture.cameras), ["123"])
    ds = ns.CaptureDataset(capture, ["EXP-1", "FREE"], test_cams, frame_stride=2, background=(0.0, 1.0, 0.0))
    assert len(ds) == 2 * 1 * 4
    item = ds[0]
    assert item["sequence"] == "EXP-1" and item["timestep"] == 0 and item["serial"] == test_cams[0]
    assert item["camera"].serial == test_cams[0] and item["image"].shape == (200, 137, 3)
    a = item["alpha"][..., 0]
    bgpix = item["image"][a == 0]
    assert len(bgpix) > 100
    np.testing.assert_allclose(bgpix.numpy(), np.tile([0.0, 1.0, 0.0], (len(bgpix), 1)), atol=1e-6)
    fg = item["image"][a == 1].numpy()
    raw = capture.load_image("EXP-1", 0, test_cams[0])[a.numpy() == 1]
    np.testing.assert_allclose(fg, raw, atol=1e-6)


def test_pcd_ascii_and_binary(tmp_path):
    rng = np.random.default_rng(0)
    cols = {"x": rng.normal(size=50).astype(np.float32), "y": rng.normal(size=50).astype(np.float32),
            "z": rng.normal(size=50).astype(np.float32), "label": np.arange(50, dtype=np.int32)}
    for binary in (True, False):
        path = tmp_path / f"c{int(binary)}.pcd"
        write_pcd(path, cols, binary=binary)
        back = read_pcd(path)
        for k, v in cols.items():
            np.testing.assert_allclose(back[k], v, rtol=1e-6)
    (tmp_path / "bad.pcd").write_text("VERSION 0.7\nFIELDS x y\nSIZE 4 4\nTYPE F F\nCOUNT 1 1\nPOINTS 1\nDATA ascii\n1 2\n")
    with pytest.raises(ValueError, match="bad.pcd"):
        read_pcd(tmp_path / "bad.pcd")


def _copy_participant(capture_root, dst, sequences=("EXP-1",)):
    src = capture_root / f"{PID:03d}"
    out = dst / f"{PID:03d}"
    shutil.copytree(src / "calibration", out / "calibration")
    for seq in sequences:
        shutil.copytree(src / "sequences" / seq, out / "sequences" / seq)
    return out


def test_v2_videos_and_colour_correction(capture_root, capture, tmp_path):
    import imageio_ffmpeg

    out = _copy_participant(capture_root, tmp_path, sequences=())
    vid_dir = out / "sequences" / "FREE" / "images"
    vid_dir.mkdir(parents=True)
    serials = ["222200036", "222200041"]
    originals = {}
    for s in serials:
        # yuv420p needs even sizes: crop 137 -> 136 columns (the loader scales K per axis)
        frames = [(capture.load_image("FREE", t, s)[:, :136] * 255).round().astype(np.uint8) for t in (0, 1)]
        originals[s] = frames
        writer = imageio_ffmpeg.write_frames(str(vid_dir / f"cam_{s}.mp4"), (136, 200), fps=10, quality=10,
                                             macro_block_size=1)
        writer.send(None)
        for f in frames:
            writer.send(np.ascontiguousarray(f))
        writer.close()
    v2 = ns.NersembleCapture(tmp_path, PID, color_correction=False)
    assert v2.is_video("FREE") and v2.timesteps("FREE") == [0, 1]
    assert (v2.width, v2.height) == (136, 200) and v2.available_serials("FREE") == serials
    img = v2.load_image("FREE", 1, "222200041")
    assert img.shape == (200, 136, 3)
    assert np.abs(img - originals["222200041"][1] / 255.0).mean() < 0.03
    assert v2.load_alpha("FREE", 1, "222200041") is None
    ds = ns.CaptureDataset(v2, ["FREE"], serials)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        item = ds[0]
    assert any("no alpha" in str(w.message) for w in caught)
    assert torch.all(item["alpha"] == 1)
    # colour correction: a per-camera affine, applied when the file is present
    A = {s: [[0.5, 0, 0, 0.1], [0, 1, 0, 0], [0, 0, 1, 0]] for s in serials}
    (out / "calibration" / "color_calibration.json").write_text(json.dumps(A))
    corrected = ns.NersembleCapture(tmp_path, PID).load_image("FREE", 1, "222200041")
    np.testing.assert_allclose(corrected[..., 0], np.clip(0.5 * img[..., 0] + 0.1, 0, 1), atol=1e-6)
    np.testing.assert_allclose(corrected[..., 1:], img[..., 1:], atol=1e-6)


def test_bad_inputs_name_the_file(capture_root, tmp_path):
    out = _copy_participant(capture_root, tmp_path)
    frame = out / "sequences" / "EXP-1" / "timesteps" / "frame_00000"
    # a camera absent from the calibration
    shutil.copy(frame / "images-16x" / "cam_222200036.png", frame / "images-16x" / "cam_999999999.png")
    cap = ns.NersembleCapture(tmp_path, PID)
    with pytest.raises(ns.CaptureError, match="999999999.*absent from the calibration"):
        cap.available_serials("EXP-1", 0)
    with pytest.raises(ns.CaptureError, match="camera_params.json"):
        cap.load_image("EXP-1", 0, "999999999")
    with pytest.raises(ns.CaptureError, match="absent from the calibration"):
        ns.CaptureDataset(cap, ["EXP-1"], ["999999999"])
    # an unreadable image
    (frame / "images-16x" / "cam_222200038.png").write_bytes(b"not a png")
    with pytest.raises(ns.CaptureError, match="cam_222200038.png"):
        cap.load_image("EXP-1", 0, "222200038")
    # sizes that disagree
    iio.imwrite(frame / "alpha_map" / "cam_222200047.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(ns.CaptureError, match="cam_222200047.png.*disagrees"):
        cap.load_alpha("EXP-1", 0, "222200047")
    # a missing image
    (frame / "images-16x" / "cam_222200049.png").unlink()
    with pytest.raises(ns.CaptureError, match="missing image .*cam_222200049"):
        cap.load_image("EXP-1", 0, "222200049")
    # missing / malformed calibration
    calib = out / "calibration" / "camera_params.json"
    calib.write_text("{")
    with pytest.raises(ns.CaptureError, match="camera_params.json"):
        ns.NersembleCapture(tmp_path, PID)
    calib.unlink()
    with pytest.raises(ns.CaptureError, match="missing file .*camera_params.json"):
        ns.NersembleCapture(tmp_path, PID)


def test_synth_refuses_to_overwrite(capture_root):
    result = CliRunner().invoke(synth_command, [str(capture_root), "--preset", "tiny", "--identity", str(SEED),
                                                "--frames", "2", "--sequences", "EXP-1,FREE"])
    assert result.exit_code != 0 and "--force" in result.output
    result = CliRunner().invoke(synth_command, [str(capture_root), "--sequences", "NOPE"])
    assert result.exit_code != 0 and "unknown sequence" in result.output
