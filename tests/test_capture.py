"""The capture writer: write_capture's output (render, then a writer process) equals the frame
written directly from one render_head call by the in-process writer, byte for byte."""
import numpy as np
import torch

from npga_taichi.data import capture as cap
from npga_taichi.data import synthetic as syn
from npga_taichi.data.head_render import Lighting, render_head


def test_write_capture_equals_direct_render_and_write(tmp_path):
    config = cap.CaptureConfig.preset("tiny", identity_seed=5, participant=5, downscale=32, frames_per_sequence=2,
                                      sequences=("EXP-1", "EMO-4"), points_per_frame=300, samples_per_side=1)
    cap.write_capture(tmp_path / "cap", config, progress=False)
    pdir = tmp_path / "cap" / "005"

    # reference: the old, single-process path for frame 1 of EMO-4 (the second sequence)
    name, t = "EMO-4", 1
    plan = cap.plan_capture(config)
    seq = plan["sequences"][name]
    width, height = cap.image_size(config.downscale)
    cams = {s: c.resized(width, height) for s, c in cap.nersemble_rig().items()}
    serials = list(cams)
    viewmats = torch.stack([cams[s].viewmat for s in serials])
    Ks = torch.stack([cams[s].K for s in serials])
    rgba, hits, labels = render_head(syn.SyntheticHead.from_seed(5), np.asarray(seq["expression"][t], np.float32),
                                     viewmats, Ks, width, height, rotation=seq["rotation"][t],
                                     translation=seq["translation"][t], scale=syn.UNIT_METRES,
                                     samples_per_side=1, lighting=Lighting(), seed=t)
    rgba8 = (rgba.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()
    ref = tmp_path / "ref"
    cap._write_frame(ref, "images-32x", serials, rgba8, hits.numpy(), labels.numpy(),
                     np.random.default_rng([5, 1, t, 11]), 300, config.point_noise, viewmats.numpy(), Ks.numpy())

    got = cap.frame_dir(pdir, name, t)
    ref_files = sorted(p.relative_to(ref) for p in ref.rglob("*") if p.is_file())
    assert ref_files == sorted(p.relative_to(got) for p in got.rglob("*") if p.is_file())
    assert len(ref_files) == 3 * 16 + 1
    for rel in ref_files:
        assert (got / rel).read_bytes() == (ref / rel).read_bytes(), rel
    # the frame is not trivially empty: the head is in the images and the cloud has its points
    assert (rgba8[..., 3] > 0).mean() > 0.05
    assert len((ref / "colmap" / "pointclouds" / cap.POINTCLOUD_NAME).read_bytes()) > 300 * 6 * 4


def test_resume_writes_only_missing_frames(tmp_path):
    config = cap.CaptureConfig.preset("tiny", identity_seed=6, participant=6, downscale=32, frames_per_sequence=2,
                                      sequences=("EXP-1",), points_per_frame=200, samples_per_side=1)
    first = cap.write_capture(tmp_path, config, progress=False)
    assert first["frames_written"] == 2
    pdir = tmp_path / "006"
    pcd = cap.frame_dir(pdir, "EXP-1", 1) / "colmap" / "pointclouds" / cap.POINTCLOUD_NAME
    before = pcd.read_bytes()
    pcd.unlink()
    cfg = pdir / "synthetic_capture.json"
    cfg.write_text(cfg.read_text().replace('"complete": true', '"complete": false'))
    again = cap.write_capture(tmp_path, config, progress=False)
    assert again["frames_written"] == 1 and pcd.read_bytes() == before
