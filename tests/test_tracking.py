"""Tracking: rotation maths, tracking files, MonoNPHM import, and recovery of a frame's surface
and pose for a head model whose surface is known in closed form."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from npga_taichi.prior.config import preset
from npga_taichi.prior.model import MonoNPHM
from npga_taichi.prior.tracking import (KnownIdentity, Tracking, TrackingConfig, axis_angle_to_matrix,
                                        import_mononphm_tracking, load_tracking, posed_to_world,
                                        save_tracking, track_sequence, world_to_posed)


def test_axis_angle_matches_scipy_and_pose_inverts():
    rng = np.random.default_rng(0)
    for _ in range(5):
        w = rng.normal(size=3) * 0.7
        ours = axis_angle_to_matrix(torch.tensor(w)).numpy()
        np.testing.assert_allclose(ours, Rotation.from_rotvec(w).as_matrix(), atol=1e-10)
    np.testing.assert_allclose(axis_angle_to_matrix(torch.zeros(3, dtype=torch.float64)).numpy(), np.eye(3))
    rot = torch.tensor(Rotation.from_rotvec([0.1, -0.2, 0.3]).as_matrix(), dtype=torch.float32)
    x = torch.randn(20, 3)
    world = posed_to_world(x, rot, torch.tensor([0.01, 0.02, -0.03]), 0.25)
    torch.testing.assert_close(world_to_posed(world, rot, torch.tensor([0.01, 0.02, -0.03]), 0.25), x,
                               atol=1e-5, rtol=0)


def _tracking(t=3, e=4, g=6):
    rng = np.random.default_rng(1)
    return Tracking("EXP-1", np.arange(t) * 2, rng.normal(size=(t, e)).astype(np.float32),
                    rng.normal(size=g).astype(np.float32), rng.normal(size=g).astype(np.float32),
                    Rotation.random(t, random_state=2).as_matrix().astype(np.float32),
                    rng.normal(size=(t, 3)).astype(np.float32), 0.25, np.array([0.1, 0.2, 0.3], np.float32),
                    {"source": "test"})


def test_tracking_file_roundtrip_and_errors(tmp_path):
    tr = _tracking()
    path = save_tracking(tr, tmp_path / "tracking" / "EXP-1")
    assert path.name == "EXP-1.npz" and (tmp_path / "tracking" / "EXP-1.json").is_file()
    back = load_tracking(path)
    assert back.sequence == "EXP-1" and back.scale == 0.25 and back.meta == {"source": "test"}
    for name in ("timesteps", "z_exp", "z_geo", "z_app", "rot", "trans", "residual"):
        np.testing.assert_array_equal(getattr(back, name), getattr(tr, name))
    summary = json.loads((tmp_path / "tracking" / "EXP-1.json").read_text())
    assert summary["frames"] == 3 and abs(summary["residual_mm_mean"] - 0.2) < 1e-6
    np.savez(tmp_path / "bad.npz", z_exp=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="lacks arrays"):
        load_tracking(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="not found"):
        load_tracking(tmp_path / "nope.npz")


def test_tracking_folder_listing_skips_a_killed_writers_temporary(tmp_path):
    from npga_taichi.prior.tracking import load_trackings

    folder = tmp_path / "tracking"
    save_tracking(_tracking(), folder / "EXP-1")
    (folder / ".EXP-2.npz.k3j_9x2a.tmp.npz").write_bytes(b"PK\x03\x04 torn")  # SIGKILL mid-save
    assert list(load_trackings(folder)) == ["EXP-1"]
    assert load_trackings(tmp_path / "missing") == {}


def test_import_mononphm_tracking(tmp_path):
    tr = _tracking()
    root = tmp_path / "mononphm"
    for i, t in enumerate(tr.timesteps):
        d = root / f"{t:05d}"
        d.mkdir(parents=True)
        np.save(d / "z_exp.npy", tr.z_exp[i][None])
        np.save(d / "rot.npy", Rotation.from_matrix(tr.rot[i]).as_rotvec() if i % 2 else tr.rot[i])
        np.save(d / "trans.npy", tr.trans[i])
        np.save(d / "scale.npy", np.array([0.25]))
    np.save(root / "z_geo.npy", tr.z_geo[None])
    np.save(root / "z_app.npy", tr.z_app[None])
    got = import_mononphm_tracking(root, "EXP-1")
    np.testing.assert_array_equal(got.timesteps, tr.timesteps)
    np.testing.assert_allclose(got.z_exp, tr.z_exp)
    np.testing.assert_allclose(got.rot, tr.rot, atol=1e-5)
    np.testing.assert_allclose(got.trans, tr.trans)
    np.testing.assert_allclose(got.z_geo, tr.z_geo)
    assert got.scale == 0.25
    (root / "00000" / "trans.npy").unlink()
    with pytest.raises(ValueError, match="trans.npy"):
        import_mononphm_tracking(root, "EXP-1")


class AnalyticHead(MonoNPHM):
    """A head model with a closed-form surface: an ellipsoid with a nose bump.

    Identity code dims 0..2 scale the radii; expression code dim 0 stretches y (like a jaw).
    Only the methods the tracker uses are analytic; everything else is the tiny network.
    """

    RADII = torch.tensor([0.36, 0.5, 0.42])

    def __init__(self):
        cfg = preset("tiny")
        super().__init__(cfg, torch.zeros(cfg.n_anchors, 3), n_identities=1, n_expressions=1)
        with torch.no_grad():
            self.codes_geo.weight.zero_()
            self.codes_exp.weight.zero_()

    def anchors(self, z_geo):
        return torch.tensor([[0.0, 0.0, 0.4], [0.2, 0.1, 0.3], [-0.2, 0.1, 0.3], [0.0, 0.4, 0.0]])

    def posed_sdf(self, x, z_exp, z_geo, shape_index=None):
        radii = self.RADII * (1.0 + z_geo[:3])
        y_stretch = 1.0 + z_exp[..., 0] if z_exp.dim() == 1 else 1.0 + z_exp[:, 0]
        q = x / torch.stack([radii[0], radii[1] * y_stretch, radii[2]])
        ell = (q.norm(dim=-1) - 1.0) * radii.min()
        nose = (x - torch.tensor([0.0, -0.05, 0.44]) * torch.stack([radii[0] / 0.36, radii[1] / 0.5, radii[2] / 0.42])
                ).norm(dim=-1) - 0.07
        k = 0.03  # polynomial smooth union keeps the surface differentiable
        h = torch.clamp(0.5 + 0.5 * (nose - ell) / k, 0.0, 1.0)
        return nose * (1 - h) + ell * h - k * h * (1 - h)


def _surface(model, z_exp, z_geo, n, gen):
    from npga_taichi.prior.surface import sample_level_set

    return sample_level_set(lambda x: model.posed_sdf(x, z_exp, z_geo), n, torch.full((3,), -0.8),
                            torch.full((3,), 0.8), gen, tolerance=1e-5)


def test_tracking_recovers_surface_and_pose():
    torch.manual_seed(0)
    model = AnalyticHead()
    gen = torch.Generator().manual_seed(0)
    g = model.config.lat_dim_geo
    z_geo_true = torch.zeros(g)
    z_geo_true[:3] = torch.tensor([0.06, -0.05, 0.04])
    exps = [0.0, 0.08, 0.15]
    rots = Rotation.from_euler("yxz", [[3, -2, 1], [4, -1, 2], [5, 0, 2]], degrees=True).as_matrix()
    trans = np.array([[0.01, -0.005, 0.02], [0.012, -0.003, 0.021], [0.015, 0.0, 0.02]])
    clouds, truths = [], []
    for e, r, t in zip(exps, rots, trans):
        z = torch.zeros(model.config.lat_dim_exp)
        z[0] = e
        surf = _surface(model, z, z_geo_true, 3000, gen)
        truths.append(surf)
        world = posed_to_world(surf, torch.tensor(r, dtype=torch.float32), torch.tensor(t, dtype=torch.float32), 0.25)
        visible = surf[:, 2] > -0.25  # the cameras see the front and the sides of the head
        clouds.append(world[visible] + 0.0005 * torch.randn(int(visible.sum()), 3, generator=gen))
    cfg = TrackingConfig(points_per_frame=300, first_frame_steps=200, steps_per_frame=30,
                         w_reg_geo=1e-6, w_reg_exp=1e-6)

    def chamfer_mm(tracking, i, row=None):
        """Symmetric mean point-to-surface distance (mm, world) between the tracked surface (the
        track's ``row``, default ``i``) and frame ``i``'s true one, each side measured with the
        other surface's closed-form SDF."""
        row = i if row is None else row
        z = torch.as_tensor(tracking.z_exp[row])
        zg = torch.as_tensor(tracking.z_geo)
        rot, tr = torch.as_tensor(tracking.rot[row]), torch.as_tensor(tracking.trans[row])
        r_gt, t_gt = torch.tensor(rots[i], dtype=torch.float32), torch.tensor(trans[i], dtype=torch.float32)
        z_true = torch.zeros(model.config.lat_dim_exp)
        z_true[0] = exps[i]
        tracked = _surface(model, z, zg, 1500, gen)
        in_true = world_to_posed(posed_to_world(tracked, rot, tr, tracking.scale), r_gt, t_gt, 0.25)
        in_tracked = world_to_posed(posed_to_world(truths[i], r_gt, t_gt, 0.25), rot, tr, tracking.scale)
        with torch.no_grad():
            a = model.posed_sdf(in_true, z_true, z_geo_true).abs().mean() * 0.25
            b = model.posed_sdf(in_tracked, z, zg).abs().mean() * tracking.scale
        return 500.0 * float(a + b)

    # 1) Identity, pose and expression from the first frame alone: the surface is recovered
    first = track_sequence(model, "EXP-1", [0], lambda t: clouds[t], cfg, progress=False)
    assert chamfer_mm(first, 0) < 1.0
    assert np.degrees(Rotation.from_matrix(first.rot[0].T @ rots[0]).magnitude()) < 1.0
    # 2) With the identity known, poses and expressions of all frames are recovered.
    z_app = torch.zeros(model.config.lat_dim_app)
    tracking = track_sequence(model, "EXP-1", [0, 1, 2], lambda t: clouds[t], cfg,
                              identity=(z_geo_true, z_app, 0.25), progress=False)
    assert tracking.rot.shape == (3, 3, 3) and tracking.z_exp.shape == (3, model.config.lat_dim_exp)
    for i in range(3):
        rot_err = np.degrees(Rotation.from_matrix(tracking.rot[i].T @ rots[i]).magnitude())
        trans_err_mm = 1000 * np.linalg.norm(tracking.trans[i] - trans[i])
        assert rot_err < 1.0, (i, rot_err)
        assert trans_err_mm < 2.0, (i, trans_err_mm)
        assert chamfer_mm(tracking, i) < 0.5
        assert tracking.residual[i] < 1.0
    # The expression code follows the true stretch (monotone over the frames).
    assert tracking.z_exp[2, 0] > tracking.z_exp[1, 0] > tracking.z_exp[0, 0] - 0.02
    # 3) Another sequence starting at frame 2 (5.4 deg, 5 mm from frame 0's pose), started from the
    # identity frame's offset between head origin and cloud centroid: its few steps suffice.
    offset = torch.tensor(trans[0], dtype=torch.float32) - clouds[0].mean(0)
    short = TrackingConfig(**{**cfg.to_dict(), "first_frame_steps_known_identity": 60})
    other = track_sequence(model, "EXP-2", [2], lambda t: clouds[t], short, progress=False,
                           identity=KnownIdentity(z_geo_true, z_app, 0.25, offset))
    assert other.meta["steps"] == 60
    assert np.degrees(Rotation.from_matrix(other.rot[0].T @ rots[2]).magnitude()) < 1.0
    assert 1000 * np.linalg.norm(other.trans[0] - trans[2]) < 2.0
    assert chamfer_mm(other, 2, row=0) < 0.5


# ---------------------------------------------------------------------- region weighting, early stop
class BumpBackward(MonoNPHM):
    """Tiny prior whose backward field is analytic: expression code dim 0 moves points near
    ``CENTRE`` along y by z[0] · exp(−|x − CENTRE|² / σ²) and leaves everything else still (an
    "eyelid" in a static head). Training codes: z[0] = 0, 0.1, ..., 0.9."""

    CENTRE = torch.tensor([0.2, 0.1, 0.4])
    SIGMA = 0.05

    def __init__(self):
        cfg = preset("tiny")
        super().__init__(cfg, torch.zeros(cfg.n_anchors, 3), n_identities=1, n_expressions=10)
        with torch.no_grad():
            self.codes_exp.weight.zero_()
            self.codes_exp.weight[:, 0] = torch.arange(10) * 0.1

    def bump(self, x):
        return torch.exp(-(x - self.CENTRE).square().sum(-1) / self.SIGMA ** 2)

    def backward(self, x, z_exp, z_geo):
        z = z_exp.expand(x.shape[0], -1) if z_exp.dim() == 1 else z_exp
        return x + torch.stack([0 * x[:, 0], z[:, 0] * self.bump(x), 0 * x[:, 0]], dim=-1)


def test_expressivity_is_the_rms_motion_over_training_codes():
    from npga_taichi.prior.tracking import FrameFitter

    model = BumpBackward()
    cfg = TrackingConfig(region_codes=10)
    fitter = FrameFitter(model, cfg)
    x = torch.cat([BumpBackward.CENTRE + 0.02 * torch.randn(20, 3), torch.randn(50, 3) * 0.3 + 1.0])
    got = fitter.expressivity(x)
    # closed form: RMS over the codes of |z_k0 - mean z0| * bump(x)
    z0 = torch.arange(10) * 0.1
    expected = (z0 - z0.mean()).square().mean().sqrt() * model.bump(x)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert float(got[:20].min()) > 100 * float(got[20:].max())


def test_region_subsample_draws_its_share_by_weight():
    from npga_taichi.prior.tracking import FrameFitter

    fitter = FrameFitter(AnalyticHead(), TrackingConfig(points_per_frame=200, region_share=0.3))
    cloud = torch.rand(5000, 3)
    pool = torch.cat([torch.full((10, 3), -5.0), torch.rand(90, 3)])  # 10 marked rows
    weights = torch.cat([torch.ones(10), torch.zeros(90)])
    sub = fitter._subsample(cloud, (pool, weights))
    assert sub.shape == (200, 3)
    assert int((sub[:, 0] == -5.0).sum()) == 60   # exactly the region share, all from the marked rows
    assert int((sub[:, 0] == -5.0).sum()) == int((sub < 0).any(-1).sum())
    # region_share = 0: uniform only
    fitter0 = FrameFitter(AnalyticHead(), TrackingConfig(points_per_frame=200, region_share=0.0))
    assert int((fitter0._subsample(cloud, None) < 0).sum()) == 0
    # the region estimate of a frame weights the moving part: most region draws land on it
    bump = FrameFitter(BumpBackward(), TrackingConfig(points_per_frame=400, region_share=0.5))
    bump.trans = torch.zeros(3)
    near = BumpBackward.CENTRE + 0.02 * torch.randn(40, 3)
    cloud = torch.cat([near, torch.rand(3960, 3) * 2 - 1]) * 0.25  # world = 0.25 * posed
    picked = bump._subsample(cloud, bump._region(cloud))[200:] / 0.25
    assert float(BumpBackward().bump(picked).gt(0.1).float().mean()) > 0.8   # 1 % of the cloud


def test_a_converged_frame_stops_early():
    from npga_taichi.prior.tracking import FrameFitter

    torch.manual_seed(0)
    model = AnalyticHead()
    gen = torch.Generator().manual_seed(0)
    z_geo = torch.zeros(model.config.lat_dim_geo)
    cloud = posed_to_world(_surface(model, torch.zeros(model.config.lat_dim_exp), z_geo, 2000, gen),
                           torch.eye(3), torch.zeros(3), 0.25)
    cfg = TrackingConfig(points_per_frame=300, steps_per_frame=60, first_frame_steps=100, converge_tol=0.01)
    fitter = FrameFitter(model, cfg, z_geo, torch.zeros(model.config.lat_dim_app), 0.25)
    fitter.fit_frame(cloud, first=True)
    assert fitter.last_steps == 100
    fitter.fit_frame(cloud, first=False)   # warm start on the same frame: nothing left to fit
    assert cfg.min_steps_per_frame <= fitter.last_steps < 60
    still = FrameFitter(model, TrackingConfig(points_per_frame=300, steps_per_frame=60, converge_tol=0.0),
                        z_geo, torch.zeros(model.config.lat_dim_app), 0.25)
    still.rot, still.trans = fitter.rot, fitter.trans
    still.fit_frame(cloud, first=False)
    assert still.last_steps == 60


def test_tracking_in_worker_processes_gives_the_tracks_of_one_process(tmp_path):
    """``npga track`` spreads the sequences after the first over processes (``workers``): the
    identity still comes from the first sequence, every track equals the one-process track, the
    summaries keep the sequence order and a worker's error reaches the caller."""
    from test_hardening import make_capture

    from npga_taichi.prior.model import save_prior
    from npga_taichi.prior.tracking import track_capture, tracking_files

    torch.manual_seed(0)
    cfg = preset("tiny")
    prior_dir = tmp_path / "prior"
    save_prior(MonoNPHM(cfg, torch.randn(cfg.n_anchors, 3) * 0.3), prior_dir)
    sequences = ("EXP-1", "EXP-2", "EXP-3", "FREE")
    runs = {}
    for workers in (1, 2):
        pdir = make_capture(tmp_path / f"w{workers}", sequences=sequences, frames=(0, 1, 2))
        seen = []
        result = track_capture(pdir, prior_dir, steps_first=4, steps=3, points=60, progress=False,
                               workers=workers, on_sequence=lambda seq, summary: seen.append(seq))
        assert seen == list(result["sequences"]) == ["EXP-1", "EXP-2", "EXP-3", "FREE"]
        runs[workers] = {seq: load_tracking(path) for seq, path in tracking_files(result["tracking_dir"]).items()}
    assert set(runs[1]) == set(runs[2]) == set(sequences)
    for seq in sequences:
        one, two = runs[1][seq], runs[2][seq]
        np.testing.assert_array_equal(two.z_geo, runs[2]["EXP-1"].z_geo)  # one identity, from EXP-1
        for name in ("z_exp", "z_geo", "rot", "trans", "residual"):
            np.testing.assert_allclose(getattr(two, name), getattr(one, name), rtol=1e-4, atol=1e-6,
                                       err_msg=f"{seq}.{name}")
    # a worker's failure (here: a frame with too few finite points) is the caller's ValueError
    pdir = make_capture(tmp_path / "broken", sequences=sequences, frames=(0, 1))
    from test_hardening import _write_cloud

    cloud = pdir / "sequences" / "EXP-3" / "timesteps" / "frame_00001" / "colmap" / "pointclouds" / "pointcloud_16.pcd"
    _write_cloud(cloud, np.full((5, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="EXP-3"):
        track_capture(pdir, prior_dir, steps_first=2, steps=1, points=30, progress=False, workers=2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_stops_parallel_tracking_at_once(tmp_path):
    """Ctrl-C (SIGINT to the whole foreground process group, as a terminal sends it) while the
    worker processes track: `npga track` stops within seconds, leaves no process behind and
    prints neither a traceback nor a leaked-semaphore warning."""
    from ctrl_c import group_members, interrupt_when
    from test_hardening import make_capture

    from npga_taichi.prior.model import save_prior

    torch.manual_seed(0)
    cfg = preset("tiny")
    prior_dir = tmp_path / "prior"
    save_prior(MonoNPHM(cfg, torch.randn(cfg.n_anchors, 3) * 0.3), prior_dir)
    pdir = make_capture(tmp_path / "cap", sequences=("EXP-1", "EXP-2", "EXP-3", "FREE"), frames=tuple(range(6)))
    cmd = [sys.executable, "-c", "from npga_taichi.cli.main import cli; cli()", "track", str(pdir), "--prior",
           str(prior_dir), "--steps-first", "3", "--steps", "3000", "--points", "60", "--workers", "2", "--quiet"]
    # the parent, the resource tracker and two workers; then 5 s: the workers are inside their
    # sequences (3000 steps per frame: minutes)
    code, output, stopped_after = interrupt_when(cmd, lambda pgid: len(group_members(pgid)) >= 4, settle_s=5)
    assert code != 0 and stopped_after < 30, output
    assert "Traceback" not in output and "leaked" not in output, output
    assert not list((pdir / "annotations" / "tracking").glob("*.npz")), "a sequence finished: not interrupted"
