"""Photometric tracking (npga_taichi.prior.photometric) and its commands.

The recovery test uses an analytic prior (closed-form SDF, albedo and backward field) whose
target images come from an independent renderer: sphere tracing of the posed SDF in PyTorch
with Lambert shading — not the tracker's surfels, Newton inversion or rasterizer.
"""
import json
import shutil

import imageio.v3 as iio
import numpy as np
import torch
from click.testing import CliRunner
from scipy.spatial.transform import Rotation

from npga_taichi.cameras import Camera, look_at
from npga_taichi.cli.main import cli
from npga_taichi.prior.config import preset
from npga_taichi.prior.model import MonoNPHM
from npga_taichi.prior.photometric import (
    LANDMARK_NAMES,
    PhotometricConfig,
    PhotometricTracker,
    cast_landmarks,
    quats_from_normals,
    track_video,
)
from npga_taichi.fidelity import label_path
from npga_taichi.part_motion import PART_MOTION_DIM
from npga_taichi.prior.tracking import load_tracking, posed_to_world
from npga_taichi.reenactment import drive_from_tracking


class AnalyticPrior(MonoNPHM):
    """Ellipsoid head with a nose; identity dims 0..2 scale the radii; expression dim 0 stretches
    the lower half downwards (a jaw), dim 1 pushes the nose forward. Albedo: smooth colour bands."""

    RADII = torch.tensor([0.36, 0.5, 0.42])

    def __init__(self):
        cfg = preset("tiny")
        super().__init__(cfg, torch.zeros(cfg.n_anchors, 3), n_identities=1, n_expressions=1)
        with torch.no_grad():
            self.codes_geo.weight.zero_()
            self.codes_app.weight.zero_()
            self.codes_exp.weight.zero_()

    def anchors(self, z_geo):
        return torch.tensor([[0.0, 0.0, 0.4], [0.2, 0.1, 0.3], [-0.2, 0.1, 0.3], [0.0, 0.4, 0.0]])

    def sdf(self, x, z_geo, shape_index=None):
        x = x[:, :3]
        radii = self.RADII * (1.0 + z_geo[:3])
        ell = ((x / radii).norm(dim=-1) - 1.0) * radii.min()
        nose = (x - torch.tensor([0.0, -0.05, 0.44]) * radii / self.RADII).norm(dim=-1) - 0.07
        k = 0.03
        h = torch.clamp(0.5 + 0.5 * (nose - ell) / k, 0.0, 1.0)
        return nose * (1 - h) + ell * h - k * h * (1 - h)

    def sdf_and_color(self, x, z_geo, z_app, shape_index=None):
        x3 = x[:, :3]
        rgb = torch.stack([torch.sin(9 * x3[:, 0]) * 0.5, torch.cos(7 * x3[:, 1]) * 0.5,
                           torch.sin(6 * x3[:, 2] + 4 * x3[:, 0]) * 0.4], -1) + z_app[:3]
        return self.sdf(x, z_geo), rgb

    def backward_with_hyper(self, x, z_exp, z_geo, shape_index=None):
        z = z_exp if z_exp.dim() == 2 else z_exp[None].expand(x.shape[0], -1)
        lower = torch.sigmoid(-x[:, 1:2] / 0.05)  # below y = 0
        jaw = torch.zeros_like(x)
        jaw[:, 1:2] = lower * x[:, 1:2] * (1.0 / (1.0 + z[:, :1]) - 1.0)
        nose = torch.zeros_like(x)
        w = torch.exp(-((x - torch.tensor([0.0, -0.05, 0.5])) ** 2).sum(-1, keepdim=True) / 0.02)
        nose[:, 2:3] = -w * z[:, 1:2] * 0.1
        return torch.cat([x + jaw + nose, torch.zeros(x.shape[0], 2)], -1)


def sphere_trace(prior, z_exp, z_geo, rot, trans, scale, cam: Camera, light=(0.3, 0.5, 0.8)):
    """Independent renderer: image (H, W, 3) and matte (H, W) of the posed analytic head, Lambert
    shading of the albedo with one directional light plus ambient, black background."""
    H, W = cam.height, cam.width
    ii, jj = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    d_cam = torch.stack([jj, ii, torch.ones_like(ii)], -1).reshape(-1, 3) @ torch.linalg.inv(cam.K).T
    R = cam.viewmat[:3, :3]
    d = torch.nn.functional.normalize(d_cam @ R, dim=-1)  # world directions
    o = cam.center().expand_as(d)
    # into the head frame: x = Rᵀ (p − t) / s
    o_h = (o - trans) @ rot / scale
    d_h = d @ rot / scale
    d_h_n = torch.nn.functional.normalize(d_h, dim=-1)

    def f(x):
        return prior.sdf(prior.backward(x, z_exp, z_geo), z_geo)

    t = torch.full((len(d),), (o_h.norm(dim=-1).mean() - 0.8).item())
    hit = torch.zeros(len(d), dtype=torch.bool)
    with torch.no_grad():
        for _ in range(160):
            x = o_h + t[:, None] * d_h_n
            v = f(x)
            hit |= v.abs() < 1e-5
            t = torch.where(hit, t, t + 0.6 * v)
    x = (o_h + t[:, None] * d_h_n).detach().requires_grad_(True)
    v = f(x)
    (g,) = torch.autograd.grad(v.sum(), x)
    n = torch.nn.functional.normalize(g, dim=-1) @ rot.T  # world normal
    with torch.no_grad():
        albedo = ((prior.sdf_and_color(prior.backward(x, z_exp, z_geo), z_geo, torch.zeros(3))[1] + 1) / 2)
        shade = 0.35 + 0.65 * (n @ torch.nn.functional.normalize(torch.tensor(light), dim=0)).clamp_min(0)
        img = torch.where(hit[:, None], (albedo * shade[:, None]).clamp(0, 1), torch.zeros(()))
    return img.reshape(H, W, 3), hit.float().reshape(H, W)


def _cameras(w=72, h=96):
    full = [look_at([x, 0.05, 1.0], [0.0, 0.0, 0.0]) for x in (-0.5, 0.0, 0.5)]
    f = 6600.0 * w / 2200.0  # NeRSemble's focal length at this width: the head fills ~2/3 of the height
    return [Camera(str(i), m, [[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]], w, h)
            for i, m in enumerate(full)]


def _truth():
    rots = Rotation.from_euler("yxz", [[4, -2, 1], [6, -1, 2], [8, 0, 3]], degrees=True).as_matrix()
    trans = np.array([[0.01, -0.005, 0.02], [0.014, -0.002, 0.021], [0.018, 0.001, 0.024]])
    exps = [(0.0, 0.0), (0.12, 0.3), (0.25, 0.6)]
    return rots, trans, exps


def test_quaternions_from_normals_rotate_z_onto_the_normal():
    from npga_taichi.avatar.rotations import quat_to_rotmat

    n = torch.nn.functional.normalize(torch.randn(200, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    n[0] = torch.tensor([0.0, 0.0, -1.0])
    n[1] = torch.tensor([0.0, 0.0, 1.0])
    assert torch.allclose(quat_to_rotmat(quats_from_normals(n))[:, :, 2], n, atol=1e-5)


def test_photometric_tracking_recovers_pose_and_expression():
    torch.manual_seed(0)
    prior = AnalyticPrior()
    cams = _cameras()
    rots, trans, exps = _truth()
    z_geo = torch.zeros(prior.config.lat_dim_geo)
    frames, mattes = [], []
    for r, t, e in zip(rots, trans, exps):
        z = torch.zeros(prior.config.lat_dim_exp)
        z[:2] = torch.tensor(e)
        views = [sphere_trace(prior, z, z_geo, torch.tensor(r, dtype=torch.float32),
                              torch.tensor(t, dtype=torch.float32), 0.25, c) for c in cams]
        frames.append(torch.stack([v[0] for v in views]))
        mattes.append(torch.stack([v[1] for v in views]))
    cfg = PhotometricConfig(num_points=2000, image_scale=1.0, views_per_step=3, first_frame_steps=100,
                            steps_per_frame=30, w_reg_exp=1e-6, w_smooth_exp=1e-6, lr_exp=2e-2)
    # identity known (as when a capture's first sequence fixed it); lighting, pose and expression
    # are fitted from the rough initial pose the mattes give
    identity = (z_geo, torch.zeros(prior.config.lat_dim_app), 0.25)
    tracking = track_video(torch.stack(frames), cams, prior, mattes=torch.stack(mattes), config=cfg,
                           sequence="SYN", progress=False, identity=identity)
    assert tracking.z_exp.shape == (3, prior.config.lat_dim_exp) and tracking.rot.shape == (3, 3, 3)
    # At 72 x 96 one pixel is ~4.6 mm at the head and 1 degree moves the nose tip ~2 mm: the
    # bounds ask for sub-pixel alignment (the 1 degree / 2 mm targets are for 275 x 401 images).
    for i in range(3):
        rot_err = np.degrees(Rotation.from_matrix(tracking.rot[i].T @ rots[i]).magnitude())
        trans_err_mm = 1000 * np.linalg.norm(tracking.trans[i] - trans[i])
        assert rot_err < 3.0, (i, rot_err)
        assert trans_err_mm < 3.0, (i, trans_err_mm)
    # the jaw stretch follows the truth (monotone, close)
    assert tracking.z_exp[2, 0] > tracking.z_exp[1, 0] > tracking.z_exp[0, 0]
    np.testing.assert_allclose(tracking.z_exp[:, 0], [e[0] for e in exps], atol=0.08)
    assert tracking.meta["residual"] == "photometric L1 x 1000"


def _truth_views(prior, cams, rot, trans):
    z_geo = torch.zeros(prior.config.lat_dim_geo)
    views = [sphere_trace(prior, torch.zeros(prior.config.lat_dim_exp), z_geo, torch.tensor(rot, dtype=torch.float32),
                          torch.tensor(trans, dtype=torch.float32), 0.25, c) for c in cams]
    return torch.stack([v[0] for v in views]), torch.stack([v[1] for v in views])


def test_proxy_silhouette_is_not_inflated():
    """The bias the recovery test caught: surfels on the surface splat a silhouette ~1.4 px too
    wide (more with holes from an uneven cover), which the fit absorbed by moving the head away
    and shrinking the jaw code. Sunk by the calibrated rim offset, the proxy's alpha covers the
    independent sphere tracer's matte to a fraction of a pixel along the outline."""
    from scipy.ndimage import binary_erosion

    prior = AnalyticPrior()
    cams = _cameras()
    rots, trans, _ = _truth()
    _, mattes = _truth_views(prior, cams, rots[0], trans[0])
    identity = (torch.zeros(prior.config.lat_dim_geo), torch.zeros(prior.config.lat_dim_app), 0.25)

    def shift_px(calibrate, rim_scale=1.0):
        cfg = PhotometricConfig(num_points=2000, image_scale=1.0, rim_calibration=calibrate, rim_scale=rim_scale)
        tracker = PhotometricTracker(prior, cams, cfg, identity)
        tracker.rot = torch.tensor(rots[0], dtype=torch.float32)
        tracker.trans = torch.tensor(trans[0], dtype=torch.float32)
        tracker.calibrate_rim(tracker.rot, tracker.trans)
        out = []
        for rgba, matte in zip(tracker.render_views(), mattes):
            m = matte.numpy() > 0.5
            outline = (m & ~binary_erosion(m)).sum()
            alpha = rgba[..., 3].numpy()
            out.append((alpha.sum() - m.sum()) / outline)  # px the outline moved out (+) or in (-)
            inner = binary_erosion(m, iterations=3)
            assert np.quantile(alpha[inner], 0.01) > 0.8  # no holes inside
        return np.array(out)

    assert (shift_px(False) > 1.0).all()
    area_matched = shift_px(True)
    assert (np.abs(area_matched) < 0.3).all()
    # the default sinks them 1.25x as deep (the fit's L1 terms put the alpha-1/2 contour on the
    # outline): the alpha area falls a little short of the matte's, by a fraction of a pixel
    deeper = shift_px(True, PhotometricConfig().rim_scale)
    assert (deeper < area_matched - 0.05).all() and (deeper > -0.6).all(), (deeper, area_matched)


def test_config_rejects_a_negative_rim_scale():
    import pytest

    with pytest.raises(ValueError, match="rim_scale"):
        PhotometricConfig(rim_scale=-1.0).validate()


def test_neck_cut_mask_follows_the_cut_at_the_necks_depth():
    """Pixels below the posed neck cut are ignored; the line must sit where the neck's outline
    crosses the cut. Placed at the head centre's depth instead, it lay ~8 px too low for the
    capture's cameras above the head, and the matte's neck between it and the proxy's end pulled
    the head 2 mm down (identity 4242's FREE). Checked by projecting posed points just above and
    below the cut on the neck's axis plane (pure camera geometry, independent of the mask code)."""
    prior = AnalyticPrior()
    identity = (torch.zeros(prior.config.lat_dim_geo), torch.zeros(prior.config.lat_dim_app), 0.25)
    w, h, f = 400, 700, 1200.0
    cams = [Camera(str(i), look_at(eye, [0.0, 0.0, 0.0]), [[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]], w, h)
            for i, eye in enumerate(([0.17, 0.31, 0.93], [-0.48, 0.31, 0.81], [0.49, -0.17, 0.84]))]
    cfg = PhotometricConfig(num_points=500, image_scale=1.0)
    tracker = PhotometricTracker(prior, cams, cfg, identity)
    rot = torch.tensor(Rotation.from_euler("yxz", [5, -3, 2], degrees=True).as_matrix(), dtype=torch.float32)
    trans = torch.tensor([0.01, -0.005, 0.02])
    eps = 0.04  # canonical units (10 mm); the old line was ~0.13 off for the cameras above
    for cam in cams:
        mask = tracker._valid_mask(cam, rot, trans)[..., 0]
        for x in (-0.1, 0.0, 0.1):
            for dy, expected in ((eps, 1.0), (-eps, 0.0)):
                p = posed_to_world(torch.tensor([[x, cfg.neck_cut + dy, 0.0]]), rot, trans, 0.25)
                uv, _ = cam.project(p)
                col, row = int(uv[0, 0]), int(uv[0, 1])
                assert float(mask[row, col]) == expected, (cam.serial, x, dy)


def _side_view(azimuth_degrees, w=72, h=96):
    """One camera ``azimuth_degrees`` to the side of the face, and a head pose (rot (3, 3), trans (3,))."""
    f = 6600.0 * w / 2200.0
    az = np.radians(azimuth_degrees)
    cam = Camera("0", look_at([np.sin(az), 0.05, np.cos(az)], [0.0, 0.0, 0.0]), [[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]],
                 w, h)
    return cam, Rotation.from_euler("yxz", [5, -3, 2], degrees=True).as_matrix(), np.array([0.01, -0.005, 0.02])


def test_monocular_initial_pose_from_landmarks():
    """One camera 35° to the side: the landmarks place the head (rigid least squares from yaw
    starts) where "facing the camera" would be 30° off; no gradient step is taken here."""
    prior = AnalyticPrior()
    cam, rot, trans = _side_view(35.0)
    images, mattes = _truth_views(prior, [cam], rot, trans)
    z_geo = torch.zeros(prior.config.lat_dim_geo)
    truth = torch.tensor(rot, dtype=torch.float32), torch.tensor(trans, dtype=torch.float32)
    lmk = cam.project(posed_to_world(cast_landmarks(lambda x: prior.sdf(x, z_geo)), *truth, 0.25))[0]
    lmk[3] = float("nan")  # a hidden landmark
    cfg = PhotometricConfig(num_points=800, image_scale=1.0, first_frame_steps=1, lr_rot=0.0, lr_trans=0.0,
                            lr_exp=0.0, lr_light=0.0)
    identity = (z_geo, torch.zeros(prior.config.lat_dim_app), 0.25)
    tracking = track_video(images[None], [cam], prior, mattes=mattes[None], landmarks=lmk[None, None], config=cfg,
                           progress=False, identity=identity)
    assert np.degrees(Rotation.from_matrix(tracking.rot[0].T @ rot).magnitude()) < 0.2
    assert 1000 * np.linalg.norm(tracking.trans[0] - trans) < 0.5


def _posed_points(prior, canonical, z_exp, z_geo, iters=12):
    """Posed points x with backward(x) = canonical (L, 3): Newton's method with autograd
    Jacobians of the analytic backward field (the test's own solver, not the tracker's)."""
    def field(p):
        return prior.backward(p[None], z_exp, z_geo)[0]

    x = canonical.clone()
    for _ in range(iters):
        x = torch.stack([p - torch.linalg.solve(torch.autograd.functional.jacobian(field, p), field(p) - c)
                         for p, c in zip(x, canonical)])
    assert (torch.stack([field(p) for p in x]) - canonical).abs().max() < 1e-5
    return x


class JawPrior(AnalyticPrior):
    """The analytic head with a jaw hinged below the nose: expression dim 0 stretches the face
    below canonical y = −0.15 downwards; the eyes and nose stay (< 0.1 px here)."""

    def backward_with_hyper(self, x, z_exp, z_geo, shape_index=None):
        z = z_exp if z_exp.dim() == 2 else z_exp[None].expand(x.shape[0], -1)
        y = x[:, 1:2] + 0.15
        jaw = torch.zeros_like(x)
        jaw[:, 1:2] = torch.sigmoid(-y / 0.03) * y * (1.0 / (1.0 + z[:, :1]) - 1.0)
        return torch.cat([x + jaw, torch.zeros(x.shape[0], 2)], -1)


def test_monocular_landmark_replacement_keeps_depth_when_the_jaw_opens():
    """The depth bug of the monocular benchmark (issue 15): each later frame is first re-placed
    rigidly from the landmarks posed with the *previous* frame's expression. When the jaw opens,
    the mouth and chin landmarks spread downwards; fitted rigidly with every landmark, that
    spread read as the head coming closer (here 34 mm and 5.7°; 10–45 mm on identity 4242's
    FREE). The re-placement uses only the landmarks expressions barely move (eye corners, nose).
    No gradient step is taken (zero learning rates): this is the re-placement alone."""
    prior = JawPrior()
    cam, rot, trans = _side_view(20.0)
    truth = torch.tensor(rot, dtype=torch.float32), torch.tensor(trans, dtype=torch.float32)
    z_geo = torch.zeros(prior.config.lat_dim_geo)
    canonical = cast_landmarks(lambda x: prior.sdf(x, z_geo))
    images, mattes = _truth_views(prior, [cam], rot, trans)  # the images barely matter here
    lmks = []
    for jaw in (0.0, 0.2):  # the tracker's expression stays neutral (lr_exp = 0): a lagging code
        z = torch.zeros(prior.config.lat_dim_exp)
        z[0] = jaw
        posed = _posed_points(prior, canonical, z, z_geo)
        lmks.append(cam.project(posed_to_world(posed, *truth, 0.25))[0])
    assert (lmks[1] - lmks[0]).norm(dim=-1).max() > 2.5  # the chin moves by pixels
    cfg = PhotometricConfig(num_points=800, image_scale=1.0, first_frame_steps=1, steps_per_frame=1, lr_rot=0.0,
                            lr_trans=0.0, lr_exp=0.0, lr_light=0.0)
    identity = (z_geo, torch.zeros(prior.config.lat_dim_app), 0.25)
    tracking = track_video(images[None].expand(2, -1, -1, -1, -1), [cam], prior, mattes=mattes[None].expand(2, -1, -1, -1),
                           landmarks=torch.stack(lmks)[:, None], config=cfg, progress=False, identity=identity)
    depth_err_mm = 1000 * abs(cam.viewmat[2, :3].double().numpy() @ (tracking.trans[1] - trans))
    assert depth_err_mm < 3.0, depth_err_mm  # was 34 mm with every landmark
    assert np.degrees(Rotation.from_matrix(tracking.rot[1].T @ rot).magnitude()) < 1.5  # was 5.7°

def test_landmarks_are_cast_on_the_surface():
    prior = AnalyticPrior()
    z_geo = torch.zeros(prior.config.lat_dim_geo)
    pts = cast_landmarks(lambda x: prior.sdf(x, z_geo))
    assert pts.shape == (len(LANDMARK_NAMES), 3)
    assert prior.sdf(pts, z_geo).abs().max() < 1e-4
    assert (pts[:, 2] > 0).all()  # the front of the head


# ------------------------------------------------------------------------------------ commands
FAST = ["--steps-first", "4", "--steps", "2", "--points", "300"]


def _participant(tiny_demo):
    return next(p.parent for p in (tiny_demo["out"] / "capture").glob("*/calibration"))


def _copy_sequence(pdir, dest, seq, frames=2):
    """A capture with one sequence of ``frames`` frames (images + mattes, no point clouds)."""
    import shutil

    (dest / "calibration").mkdir(parents=True)
    shutil.copy(pdir / "calibration" / "camera_params.json", dest / "calibration")
    shutil.copytree(pdir / "groundtruth", dest / "groundtruth")
    src = pdir / "sequences" / seq / "timesteps"
    for fdir in sorted(src.iterdir())[:frames]:
        for sub in fdir.iterdir():
            if sub.name != "colmap":  # never read by the photometric tracker: prove it by leaving it out
                shutil.copytree(sub, dest / "sequences" / seq / "timesteps" / fdir.name / sub.name)
    return dest


def _write_mp4(path, frames):
    from npga_taichi.video import to_uint8
    import imageio_ffmpeg

    h, w = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=10, codec="libx264", quality=10,
                                         macro_block_size=1, output_params=["-pix_fmt", "yuv444p"])
    writer.send(None)
    for f in frames:
        writer.send(np.ascontiguousarray(to_uint8(f)))
    writer.close()


def test_track_photometric_writes_the_tracking_files_without_point_clouds(tiny_demo, tmp_path):
    pdir = _participant(tiny_demo)
    data = _copy_sequence(pdir, tmp_path / "cap" / pdir.name, "EXP-1")
    args = ["track", str(data), "--prior", str(tiny_demo["out"] / "prior"), "--photometric", "--views", "3",
            "--evaluate", "--json", "--quiet", *FAST]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)["sequences"]["EXP-1"]
    assert summary["frames"] == 2 and summary["photometric_l1_x1000_mean"] > 0
    assert {"chamfer_mm_mean", "rotation_deg_mean"} <= set(summary["evaluation"])
    tracking = load_tracking(data / "annotations" / "tracking" / "EXP-1.npz")
    assert tracking.z_exp.shape[0] == 2 and tracking.meta["residual"] == "photometric L1 x 1000"
    # existing files are kept (and reported as skipped) without --force
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and json.loads(again.output)["sequences"]["EXP-1"]["skipped"] == "exists"
    bad = CliRunner().invoke(cli, ["track", str(data), "--prior", str(tiny_demo["out"] / "prior"), "--views", "2"])
    assert bad.exit_code != 0 and "--views needs --photometric" in bad.output


def test_track_photometric_reads_the_nersemble_v2_layout(tiny_demo, tmp_path):
    """One mp4 per camera, calibration only: NeRSemble v2 (no mattes, no point clouds)."""
    from npga_taichi.data.nersemble import NersembleCapture

    pdir = _participant(tiny_demo)
    cap = NersembleCapture(pdir)
    dest = tmp_path / "v2" / pdir.name
    (dest / "calibration").mkdir(parents=True)
    calib = json.loads((pdir / "calibration" / "camera_params.json").read_text())
    serials = list(cap.cameras)[:2]
    calib["world_2_cam"] = {s: calib["world_2_cam"][s] for s in serials}
    (dest / "calibration" / "camera_params.json").write_text(json.dumps(calib))
    (dest / "sequences" / "EXP-1" / "images").mkdir(parents=True)
    for s in serials:
        _write_mp4(dest / "sequences" / "EXP-1" / "images" / f"cam_{s}.mp4",
                   [cap.load_image("EXP-1", t, s) for t in cap.timesteps("EXP-1")[:2]])
    assert NersembleCapture(dest).is_video("EXP-1")
    result = CliRunner().invoke(cli, ["track", str(dest), "--prior", str(tiny_demo["out"] / "prior"),
                                      "--photometric", "--json", "--quiet", *FAST])
    assert result.exit_code == 0, result.output
    tracking = load_tracking(dest / "annotations" / "tracking" / "EXP-1.npz")
    assert tracking.z_exp.shape[0] == 2 and tracking.meta["serials"] == ",".join(serials)


def _video_inputs(tiny_demo, tmp_path, frames=3):
    from npga_taichi.data.nersemble import NersembleCapture

    from npga_taichi.render_run import DEFAULT_CAMERA

    cap = NersembleCapture(_participant(tiny_demo))
    serial = DEFAULT_CAMERA if DEFAULT_CAMERA in cap.cameras else list(cap.cameras)[0]  # frontal: the eyes show
    ts = cap.timesteps("EXP-1")[:frames]
    video = tmp_path / "drive.mp4"
    _write_mp4(video, [cap.load_image("EXP-1", t, serial) for t in ts])
    mattes = tmp_path / "mattes"
    mattes.mkdir()
    for i, t in enumerate(ts):
        iio.imwrite(mattes / f"{i:04d}.png", (cap.load_alpha("EXP-1", t, serial)[:, :, 0] * 255).astype(np.uint8))
    K = tmp_path / "K.json"
    K.write_text(json.dumps(cap.cameras[serial].K.tolist()))
    labels = tmp_path / "labels"  # the capture's label maps of the same frames
    labels.mkdir()
    for i, t in enumerate(ts):
        shutil.copy(label_path(cap.frame_dir("EXP-1", t), serial), labels / f"{i:04d}.png")
    return video, mattes, K, cap


def test_track_video_writes_a_tracking_file_render_accepts(tiny_demo, tmp_path):
    video, mattes, K, cap = _video_inputs(tiny_demo, tmp_path)
    out = tmp_path / "track.npz"
    args = ["track-video", str(video), "--prior", str(tiny_demo["out"] / "prior"), "--mattes", str(mattes),
            "--labels", str(tmp_path / "labels"), "--K", str(K), "--out", str(out), "--json", "--quiet", *FAST]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["frames"] == 3 and summary["mattes"] and summary["labels"] and summary["tracking"] == str(out)
    tracking = load_tracking(out)
    assert tracking.z_exp.shape == (3, len(tracking.z_exp[0])) and tracking.sequence == "drive"
    # the eye closure from the label maps (closure vs the blink: tests/test_monocular.py), and what npga drive reads
    assert tracking.eye_closure.shape == (3, 2) and ((tracking.eye_closure >= 0) & (tracking.eye_closure <= 1)).all()
    assert torch.equal(drive_from_tracking(tracking).eye_closure, torch.from_numpy(tracking.eye_closure))
    # and the brows' and mouth corners' motion (its accuracy: tests/test_part_motion.py)
    assert tracking.part_motion.shape == (3, PART_MOTION_DIM) and np.isfinite(tracking.part_motion).all()
    assert torch.equal(drive_from_tracking(tracking).part_motion, torch.from_numpy(tracking.part_motion))
    # the file drives an avatar: npga render --expressions
    render = CliRunner().invoke(cli, ["render", str(tiny_demo["out"] / "run"), "--expressions", str(out),
                                      "--max-frames", "1", "--out", str(tmp_path / "render"), "--json"])
    assert render.exit_code == 0, render.output
    # no overwrite without --force; a folder of frames and --fov work too
    again = CliRunner().invoke(cli, args)
    assert again.exit_code != 0 and "--force" in again.output and "Traceback" not in again.output
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, t in enumerate(cap.timesteps("EXP-1")[:2]):
        iio.imwrite(frames / f"f{i}.png", (cap.load_image("EXP-1", t, list(cap.cameras)[0]) * 255).astype(np.uint8))
    folder = CliRunner().invoke(cli, ["track-video", str(frames), "--prior", str(tiny_demo["out"] / "prior"),
                                      "--fov", "19", "--out", str(tmp_path / "f.npz"), "--quiet", *FAST])
    assert folder.exit_code == 0, folder.output
    assert load_tracking(tmp_path / "f.npz").z_exp.shape[0] == 2


def test_track_video_bad_inputs_name_the_file(tiny_demo, tmp_path):
    video, mattes, K, cap = _video_inputs(tiny_demo, tmp_path, frames=2)
    prior = str(tiny_demo["out"] / "prior")

    def run(*extra, src=video):
        result = CliRunner().invoke(cli, ["track-video", str(src), "--prior", prior, "--out",
                                          str(tmp_path / "o.npz"), "--quiet", *FAST, *extra])
        assert result.exit_code != 0 and "Traceback" not in result.output
        return result.output

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    assert "broken.mp4" in run("--fov", "20", src=broken)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "zero frames" in run("--fov", "20", src=empty)
    assert "exactly one of --fov" in run()
    small = tmp_path / "small_mattes"
    small.mkdir()
    for i in range(2):
        iio.imwrite(small / f"{i}.png", np.zeros((8, 8), np.uint8))
    out = run("--fov", "20", "--mattes", str(small))
    assert "small_mattes" in out and "size" in out
    few = tmp_path / "few_mattes"
    few.mkdir()
    iio.imwrite(few / "0.png", iio.imread(next(mattes.iterdir())))
    assert "few_mattes" in run("--fov", "20", "--mattes", str(few))
    for name, k in (("k_bad.json", [[0, 0, 1], [0, 1, 1], [0, 0, 1]]), ("k_nan.json", [[1, 0, 1], [0, float("nan"), 1], [0, 0, 1]]),
                    ("k_shape.json", [[1, 0], [0, 1]])):
        (tmp_path / name).write_text(json.dumps(k))
        assert name in run("--K", str(tmp_path / name))
    lmk = tmp_path / "lmk.npy"
    np.save(lmk, np.zeros((2, 3, 2), np.float32))
    assert "lmk.npy" in run("--fov", "20", "--landmarks", str(lmk))
    # label maps: wrong count, size, channels, bit depth, ids; every message names the file or folder
    labels = tmp_path / "labels"
    first = iio.imread(labels / "0000.png")
    one = tmp_path / "one_label"
    one.mkdir()
    iio.imwrite(one / "0000.png", first)
    out = run("--fov", "20", "--labels", str(one))
    assert str(one) in out and "1 label maps, the video has 2 frames" in out
    for name, image in (("small", np.zeros((8, 8), np.uint8)), ("rgb", np.stack([first, first + 1, first], -1)),
                        ("deep", first.astype(np.uint16) * 300), ("ids", np.full_like(first, 200))):
        bad = tmp_path / f"labels_{name}"
        bad.mkdir()
        iio.imwrite(bad / "0000.png", first)
        iio.imwrite(bad / "0001.png", image)
        out = run("--fov", "20", "--labels", str(bad))
        assert str(bad / "0001.png") in out, (name, out)
    assert "0000.png" in run("--fov", "20", "--labels", str(labels / "0000.png"))  # a file, not a folder


def test_synthetic_landmarks_follow_the_face_and_the_jaw():
    """The true landmarks of a synthetic head (what `npga synth` can write for the tracker)."""
    from heads import expression, front_camera
    from npga_taichi.data.synthetic import SyntheticHead
    from npga_taichi.prior.photometric import synthetic_landmarks

    head = SyntheticHead.from_seed(3)
    cam = front_camera(110, 160)
    names = {n: i for i, n in enumerate(LANDMARK_NAMES)}
    neutral = synthetic_landmarks(head, expression(), np.eye(3), np.zeros(3), 0.25, [cam])[0]
    assert neutral.shape == (len(LANDMARK_NAMES), 2) and np.isfinite(neutral).all()
    assert ((neutral >= 0) & (neutral < [110, 160])).all()
    # the subject's left is the image's right for a camera facing the subject; eyes above the mouth
    assert neutral[names["left_eye_outer"], 0] > neutral[names["right_eye_outer"], 0]
    assert neutral[names["nose_tip"], 1] < neutral[names["lower_lip"], 1] < neutral[names["chin"], 1]
    jaw = synthetic_landmarks(head, expression(jaw_open=1.0), np.eye(3), np.zeros(3), 0.25, [cam])[0]
    drop = jaw[:, 1] - neutral[:, 1]
    assert drop[names["chin"]] > 2.0 and abs(drop[names["forehead"]]) < 0.5
