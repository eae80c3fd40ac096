"""Eye closure from label maps (npga_taichi/eye_closure.py), its tracks, and the avatar input it feeds."""
from pathlib import Path

import numpy as np
import pytest
import torch

from npga_taichi.avatar.config import AvatarConfig
from npga_taichi.avatar.deformation import FrameCode
from npga_taichi.avatar.model import NPGAAvatar, avatar_from_state, avatar_state
from npga_taichi.data.synthetic import LABEL_NAMES
from npga_taichi.eye_closure import (EYE_CENTRES, add_eye_closure, closure_from_counts, eye_pixel_counts,
                                     has_label_maps)
from npga_taichi.prior.tracking import Tracking, load_tracking, posed_to_world, save_tracking
from npga_taichi.reenactment import drive_from_tracking

from label_captures import PaintedCapture

EYES = LABEL_NAMES.index("eyes")
SKIN = LABEL_NAMES.index("skin")


def DiscCapture(root: Path, radii: dict[str, list[tuple[float, float]]]) -> PaintedCapture:
    """Two frontal-ish cameras whose label maps hold one disc of "eyes" per eye, centred on the
    projected eye centre, of a radius the test chooses per frame and eye."""

    def paint(per_eye, cam, rot, trans):
        uv = cam.project(posed_to_world(torch.tensor(EYE_CENTRES, dtype=torch.float32), rot, trans, 0.25))[0].numpy()
        yy, xx = np.mgrid[:cam.height, :cam.width]
        labels = np.full((cam.height, cam.width), SKIN, np.uint8)
        for (u, v), r in zip(uv, per_eye):
            labels[(xx - u) ** 2 + (yy - v) ** 2 < r * r] = EYES
        return labels

    return PaintedCapture(root, radii, paint)


def test_closure_follows_the_visible_eye_area_per_eye(tmp_path):
    # Left eye closes over frames 1-3 while the right stays open; the right closes in frame 4.
    radii = {"A": [(8, 8), (6, 8), (3, 8), (0, 8), (8, 0)], "B": [(8, 8), (8, 8), (8, 8)]}
    cap = DiscCapture(tmp_path, radii)
    counts = eye_pixel_counts(cap, cap.tracks["A"])
    assert counts.shape == (5, 2, 2)
    assert counts[3, :, 0].sum() == 0 and counts[4, :, 1].sum() == 0      # a closed eye has no pixels
    assert (counts[0, :, 0] > 150).all() and (counts[0, :, 1] > 150).all()  # each disc goes to its own eye
    closure = closure_from_counts({"A": counts, "B": eye_pixel_counts(cap, cap.tracks["B"])})
    left, right = closure["A"][:, 0], closure["A"][:, 1]
    assert left[0] == pytest.approx(0.0, abs=1e-6) and left[3] == pytest.approx(1.0)
    assert left[1] == pytest.approx(1 - counts[1, :, 0].sum() / counts[0, :, 0].sum(), abs=1e-6)
    assert 0.0 < left[1] < left[2] < left[3]                                # monotone in the lid's progress
    assert np.allclose(right[:4], 0.0, atol=1e-6) and right[4] == pytest.approx(1.0)
    assert np.allclose(closure["B"], 0.0, atol=1e-6)


def test_add_eye_closure_writes_the_tracks_and_skips_captures_without_labels(tmp_path):
    cap = DiscCapture(tmp_path / "cap", {"A": [(8, 8), (0, 0)]})
    folder = tmp_path / "tracking"
    save_tracking(cap.tracks["A"], folder / "A.npz")
    assert has_label_maps(cap, "A")
    assert add_eye_closure(cap, folder) == {"A": pytest.approx(0.5)}
    track = load_tracking(folder / "A.npz")
    assert np.allclose(track.eye_closure, [[0, 0], [1, 1]], atol=1e-6)
    drive = drive_from_tracking(track)
    assert torch.allclose(drive.frame(1)["eye_closure"], torch.ones(2))
    for path in (tmp_path / "cap").rglob("*.png"):
        path.unlink()
    assert not has_label_maps(cap, "A") and add_eye_closure(cap, folder) == {}


@pytest.mark.parametrize("name, width", [("eye_closure", 2), ("part_motion", 8)])
def test_tracking_file_rejects_a_malformed_label_measurement(tmp_path, name, width):
    t = 3
    track = Tracking("S", np.arange(t), np.zeros((t, 4)), np.zeros(3), np.zeros(3), np.repeat(np.eye(3)[None], t, 0),
                     np.zeros((t, 3)), 0.25, np.zeros(t), **{name: np.zeros((t, width + 1))})
    path = tmp_path / "S.npz"
    save_tracking(track, path)
    with pytest.raises(ValueError, match=f"{name} has shape"):
        load_tracking(path)
    setattr(track, name, np.full((t, width), np.nan))
    with pytest.raises(ValueError, match=name):
        save_tracking(track, path)


def _avatar(eye_closure_dim, detail_conditioning="code"):
    cfg = AvatarConfig(num_init_gaussians=30, max_gaussians=60, latent_dim=4, sh_degree=1, detail_hidden=16,
                       detail_layers=2, scratch_field_hidden=16, scratch_field_layers=2, knn_k=4,
                       eye_closure_dim=eye_closure_dim, detail_conditioning=detail_conditioning)
    torch.manual_seed(0)
    avatar = NPGAAvatar(cfg, None, exp_dim=5)
    with torch.no_grad():
        avatar.gaussians.means.copy_(torch.randn(30, 3))
        avatar.detail.mlp.out.weight.normal_(0, 0.1)  # a trained G: its output depends on its inputs
    return avatar


def test_closure_blend_shapes_act_on_the_closing_eye_only():
    from npga_taichi.avatar.deformation import deform_canonical
    from npga_taichi.avatar.gaussians import CanonicalGaussians
    from npga_taichi.eye_closure import EYE_REGION_RADIUS, closure_weights

    left, right = torch.tensor(EYE_CENTRES[0]), torch.tensor(EYE_CENTRES[1])
    means = torch.stack([left, right, left + torch.tensor([0.0, 0.0, 0.9 * EYE_REGION_RADIUS]),
                         torch.tensor([0.0, -0.3, 0.3])])  # left eye, right eye, near the left, chin
    assert torch.allclose(closure_weights(means, torch.tensor([0.8, 0.3])), torch.tensor([0.8, 0.3, 0.8, 0.0]))
    cloud = CanonicalGaussians(4, 3, 1, closure_shapes=True)
    assert {"closure_colors", "closure_opacity"} <= set(cloud.names)
    with torch.no_grad():
        cloud.means.copy_(means)
        cloud.closure_colors.fill_(1.0)
        cloud.closure_opacity.fill_(2.0)
    z = torch.zeros(3)
    opened = deform_canonical(cloud, None, None, z, False, eye_closure=None)
    closed = deform_canonical(cloud, None, None, z, False, eye_closure=torch.tensor([1.0, 0.0]))
    assert torch.allclose(closed.colors - opened.colors, torch.tensor([1.0, 0.0, 1.0, 0.0])[:, None].expand(4, 3))
    assert torch.allclose(torch.logit(closed.opacities) - torch.logit(opened.opacities),
                          torch.tensor([2.0, 0.0, 2.0, 0.0]), atol=1e-5)
    # gradients reach the blend shapes only through a closed eye
    closed.colors.sum().backward()
    assert torch.equal(cloud.closure_colors.grad[:, 0], torch.tensor([1.0, 0.0, 1.0, 0.0]))


@pytest.mark.parametrize("conditioning, code_dims", [("code", (7, 5)), ("deformation", (2, 0))])
def test_detail_network_sees_the_eye_closure_and_checkpoints_keep_it(conditioning, code_dims):
    avatar = _avatar(2, conditioning)
    z = torch.randn(5)
    assert avatar.detail.mlp.code_dim == code_dims[0]
    frame = lambda closure: FrameCode(z, torch.eye(3), torch.zeros(3), 1.0, closure)  # noqa: E731
    open_eyes, closed = avatar.deform(frame(torch.zeros(2))), avatar.deform(frame(torch.ones(2)))
    assert not torch.allclose(open_eyes.means, closed.means)
    assert torch.equal(avatar.deform(frame(None)).means, open_eyes.means)  # no closure given = open eyes
    assert "closure_colors" in avatar.gaussians.names and "closure_colors" not in _avatar(0).gaussians.names
    restored = avatar_from_state(avatar_state(avatar), "test")
    assert restored.eye_closure_dim == 2
    assert torch.equal(restored.deform(frame(torch.ones(2))).means, closed.means)
    # an avatar trained without the input ignores a closure it is given
    plain = _avatar(0, conditioning)
    assert plain.detail.mlp.code_dim == code_dims[1]
    assert torch.equal(plain.deform(frame(torch.ones(2))).means, plain.deform(frame(None)).means)


def test_tiny_demo_tracks_carry_the_eye_closure_and_the_avatar_takes_it(tiny_demo):
    from npga_taichi.avatar.config import load_configs
    from npga_taichi.prior.tracking import load_trackings

    out = Path(tiny_demo["out"])
    tracks = load_trackings(next(out.glob("capture/*/annotations/tracking")))
    assert tracks and all(t.eye_closure is not None and t.eye_closure.shape == (len(t.timesteps), 2)
                          for t in tracks.values())
    values = np.concatenate([t.eye_closure for t in tracks.values()])
    assert ((values >= 0) & (values <= 1)).all()
    avatar_cfg, _, _ = load_configs(out / "run")
    assert avatar_cfg.eye_closure_dim == 2


def test_photometric_loss_weights_the_regions():
    from npga_taichi.avatar.config import TrainConfig
    from npga_taichi.avatar.trainer import photometric_loss

    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(8, 9, 3, generator=g), torch.rand(8, 9, 3, generator=g)
    alpha = torch.ones(8, 9, 1)
    cfg = TrainConfig(lambda_dssim=0.0)
    plain, _ = photometric_loss(pred, target, alpha, cfg)
    assert torch.allclose(photometric_loss(pred, target, alpha, cfg, torch.ones(8, 9, 1))[0], plain)
    weight = torch.ones(8, 9, 1)
    weight[2:4, 3:6] = 5.0
    weighted, _ = photometric_loss(pred, target, alpha, cfg, weight)
    diff = (pred - target).abs()
    assert torch.allclose(weighted, (weight * diff).sum() / (weight.sum() * 3))


def test_region_weights_and_closed_eye_sampling_on_the_tiny_capture(tiny_demo):
    from types import SimpleNamespace

    from npga_taichi.avatar.config import TrainConfig
    from npga_taichi.avatar.fitting import split_views
    from npga_taichi.avatar.trainer import AvatarData, Trainer
    from npga_taichi.data.nersemble import NersembleCapture
    from npga_taichi.fidelity import label_path, load_labels
    from npga_taichi.prior.tracking import load_trackings

    pdir = next(Path(tiny_demo["out"]).glob("capture/*/annotations")).parent
    capture = NersembleCapture(pdir)
    trackings = load_trackings(pdir / "annotations" / "tracking")
    cfg = TrainConfig(region_weight=5.0, closed_eye_share=0.5)
    train_views, val_views = split_views(capture, trackings, cfg)
    data = AvatarData(capture, trackings, train_views, val_views, (1.0, 1.0, 1.0))
    view = max(train_views[:40], key=lambda v: float(data.pixel_weight(v, 5.0).max()))
    weight = data.pixel_weight(view, 5.0)
    labels = load_labels(label_path(capture.frame_dir(view.sequence, view.timestep), view.serial))
    assert weight.shape == (data.camera(view.serial).height, data.camera(view.serial).width, 1)
    assert float(weight.max()) == pytest.approx(5.0) and float(weight.min()) == 1.0
    face_parts = np.isin(labels, [LABEL_NAMES.index(n) for n in ("eyelids", "eyes", "lips", "teeth", "mouth_interior")])
    if labels.shape == tuple(weight.shape[:2]):  # same resolution: the weight is exactly the label mask
        assert torch.equal(weight[..., 0] > 1.0, torch.from_numpy(face_parts))
    assert data.pixel_weight(view, 1.0) is None

    # one frame with a closed eye: half the draws go to it (plus its uniform share)
    seq = train_views[0].sequence
    track = trackings[seq]
    track.eye_closure = np.zeros((len(track.timesteps), 2), np.float32)
    track.eye_closure[0, 1] = 0.9
    for t in trackings.values():
        if t is not track:
            t.eye_closure = np.zeros((len(t.timesteps), 2), np.float32)
    closed = [k for k, v in enumerate(train_views) if v.sequence == seq and v.frame_index == 0]
    assert data.closed_eye_views() == closed
    draws = []
    for share, cameras_per_frame in ((0.5, 1), (0.5, 2), (0.0, 1)):
        fake = SimpleNamespace(cfg=TrainConfig(closed_eye_share=share, views_per_step=2,
                                               cameras_per_frame=cameras_per_frame),
                               data=data, sampler=np.random.Generator(np.random.PCG64(0)))
        picks = [v for _ in range(400) for group in Trainer.sample_views(fake) for v in group]
        draws.append(np.mean([(v.sequence, v.frame_index) == (seq, 0) for v in picks]))
    base = len(closed) / len(train_views)
    assert draws[0] == pytest.approx(0.5 + 0.5 * base, abs=0.06)
    assert draws[1] == pytest.approx(0.5 + 0.5 * base, abs=0.08)
    assert draws[2] == pytest.approx(base, abs=0.05)
