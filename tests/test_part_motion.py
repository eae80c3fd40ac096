"""Brow and mouth-corner motion from label maps (npga_taichi/part_motion.py), its tracks, and G's input."""
from pathlib import Path

import numpy as np
import pytest
import torch

from npga_taichi.data.synthetic import LABEL_NAMES
from npga_taichi.part_motion import (BROW_CENTRES, MOUTH_CENTRE, PART_MOTION_DIM, PART_MOTION_NAMES,
                                     PART_MOTION_SCALE, add_part_motion, motion_from_measurements,
                                     part_measurements)
from npga_taichi.prior.tracking import load_tracking, posed_to_world, save_tracking
from npga_taichi.reenactment import drive_from_tracking

from label_captures import PaintedCapture

SKIN, BROWS, LIPS = (LABEL_NAMES.index(n) for n in ("skin", "brows", "lips"))
STEP = 0.0008  # canonical units between painted points (0.2 mm: < 0.3 px in these cameras)


def _patch(centre, half_x, half_y, x_from=None):
    """(P, 3) head-frame points filling a rectangle in the x / y plane around ``centre``
    (x from ``x_from`` instead of centre - half_x when given)."""
    x0 = centre[0] - half_x if x_from is None else x_from
    xs = np.arange(x0, centre[0] + half_x, STEP)
    ys = np.arange(centre[1] - half_y, centre[1] + half_y, STEP)
    xx, yy = np.meshgrid(xs, ys)
    return np.stack([xx.ravel(), yy.ravel(), np.full(xx.size, centre[2])], 1)


def _face(moves: dict[str, tuple[float, float]]):
    """{label id: (P, 3) head-frame points} of a face whose parts are moved by ``moves``:
    part name -> (dx, dy) head-frame canonical units. Brows are bands around BROW_CENTRES; the
    mouth is a band around MOUTH_CENTRE split at the midline, each half moving with its corner."""
    brows, lips = [], []
    for side, sign, name in ((0, 1.0, "brow_left"), (1, -1.0, "brow_right")):
        dx, dy = moves.get(name, (0.0, 0.0))
        brows.append(_patch(BROW_CENTRES[side], 0.05, 0.012) + [sign * dx, dy, 0.0])  # dx is outward
    for sign, name in ((1.0, "corner_left"), (-1.0, "corner_right")):
        dx, dy = moves.get(name, (0.0, 0.0))
        half = _patch((sign * 0.0425 + MOUTH_CENTRE[0], MOUTH_CENTRE[1], MOUTH_CENTRE[2]), 0.0425, 0.02)
        lips.append(half + [sign * dx, dy, 0.0])  # dx is outward
    return {BROWS: np.concatenate(brows), LIPS: np.concatenate(lips)}


def FaceCapture(root: Path, frames: dict[str, list[dict]]) -> PaintedCapture:
    """Cameras round the front of a head (yaw 0, 0.35 and 1.25 rad, the last nearly in profile)
    whose label maps paint :func:`_face` under a turned and tilted head pose (so head x / y are
    not image x / y)."""
    a = 0.15
    rot = torch.tensor([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]], dtype=torch.float32)
    rot = rot @ torch.tensor([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]], dtype=torch.float32)

    def paint(moves, cam, rot, trans):
        labels = np.full((cam.height, cam.width), SKIN, np.uint8)
        for label, pts in _face(moves).items():
            uv = cam.project(posed_to_world(torch.tensor(pts, dtype=torch.float32), rot, trans, 0.25))[0]
            col, row = uv.floor().long().numpy().T
            inside = (col >= 0) & (col < cam.width) & (row >= 0) & (row < cam.height)
            labels[row[inside], col[inside]] = label
        return labels

    return PaintedCapture(root, frames, paint, size=(320, 240), focal=1400.0, yaws=(0.0, 0.35, 1.25), rot=rot,
                          trans=(0.0, 0.02, 0.0))


# frames 0-2 at rest (the median rest needs most frames there), then a left brow raise, a right
# frown (down and in), a left smile (corner up and out), a pucker (both corners in)
MOVES = [{}, {}, {}, {"brow_left": (0.0, 0.02)}, {"brow_right": (-0.01, -0.012)},
         {"corner_left": (0.012, 0.02)}, {"corner_left": (-0.01, 0.0), "corner_right": (-0.01, 0.0)}]


def _expected(moves):
    out = np.zeros(PART_MOTION_DIM)
    for part, (dx, dy) in moves.items():
        j = PART_MOTION_NAMES.index(f"{part}_out")
        out[j: j + 2] = dx, dy
    return out


def test_motion_recovers_each_parts_head_frame_shift_under_a_tilted_pose(tmp_path):
    cap = FaceCapture(tmp_path, {"A": MOVES})
    offsets, weights = part_measurements(cap, cap.tracks["A"], list(cap.cameras))
    assert offsets.shape == (len(MOVES), 3, PART_MOTION_DIM) and weights.shape == (len(MOVES), 3, 4, 2, 2)
    assert np.isfinite(offsets).all()
    # the near-profile camera resolves the head's x far worse than the frontal one, y about as well
    assert (weights[:, 2, :, 0, 0] < 0.2 * weights[:, 0, :, 0, 0]).all()
    assert (weights[:, 2, :, 1, 1] > 0.5 * weights[:, 0, :, 1, 1]).all()
    motion = motion_from_measurements({"A": (offsets, weights)})["A"]
    assert motion.shape == (len(MOVES), PART_MOTION_DIM) and motion.dtype == np.float32
    for i, moves in enumerate(MOVES):
        # 1 mm = 0.004 canonical units; the shifts are 2.5-5 mm
        np.testing.assert_allclose(motion[i], _expected(moves), atol=0.0025, err_msg=f"frame {i}: {moves}")
    assert motion[3, 1] > 0.015 and motion[4, 3] < -0.008 and motion[5, 5] > 0.015  # the signs people expect


def test_the_rest_is_shared_by_a_participants_sequences_and_unseen_parts_stay_at_rest():
    # camera 0 sees a brow 0.01 up in sequence B only; camera 1 never sees it (NaN)
    rest = np.zeros((4, 2, PART_MOTION_DIM))
    raised = rest[:1].copy()
    raised[0, 0, 1] = 0.01
    rest[:, 1, :2] = np.nan
    raised[:, 1, :2] = np.nan
    weights = np.broadcast_to(np.eye(2), (4, 2, 4, 2, 2))
    out = motion_from_measurements({"A": (rest, weights), "B": (raised, weights[:1])})
    assert np.allclose(out["A"], 0.0) and out["B"][0, 1] == pytest.approx(0.01)
    unseen = np.full((2, 2, PART_MOTION_DIM), np.nan)
    assert np.allclose(motion_from_measurements({"A": (unseen, weights[:2])})["A"], 0.0)
    with pytest.raises(ValueError, match="no frames"):
        motion_from_measurements({"A": (np.zeros((0, 2, PART_MOTION_DIM)), weights[:0])})


def test_cameras_count_along_each_direction_as_much_as_they_resolve_it():
    # two cameras disagree on a brow's motion: camera 0 resolves x and y alike, camera 1 y only
    # (a profile); the least-squares motion takes x from camera 0 and y from both, 9:1
    offsets = np.zeros((2, 2, PART_MOTION_DIM))
    offsets[1, 0, :2] = 0.01, 0.01
    offsets[1, 1, :2] = 0.05, 0.02
    weights = np.zeros((2, 2, 4, 2, 2))
    weights[:, 0] = np.diag([9.0, 9.0])
    weights[:, 1] = np.diag([1e-6, 1.0])
    # a rest at 0: the median of two frames is their mean, so give frame 0 three copies
    measured = {"rest": (np.zeros((3, 2, PART_MOTION_DIM)), weights[:1].repeat(3, 0)), "A": (offsets, weights)}
    motion = motion_from_measurements(measured)["A"][1]
    assert motion[0] == pytest.approx(0.01, abs=1e-5) and motion[1] == pytest.approx(0.011, abs=1e-6)


def test_add_part_motion_writes_the_tracks_and_skips_captures_without_labels(tmp_path):
    cap = FaceCapture(tmp_path / "cap", {"A": MOVES[:4]})
    folder = tmp_path / "tracking"
    save_tracking(cap.tracks["A"], folder / "A.npz")
    mean_mm = add_part_motion(cap, folder)["A"]
    track = load_tracking(folder / "A.npz")
    assert track.part_motion.shape == (4, PART_MOTION_DIM)
    assert track.part_motion[3, 1] == pytest.approx(0.02, abs=0.0025)
    assert mean_mm == pytest.approx(np.abs(track.part_motion).mean() * 250, rel=1e-5)
    drive = drive_from_tracking(track)
    assert torch.allclose(drive.frame(3)["part_motion"], torch.as_tensor(track.part_motion[3]))
    assert torch.allclose(drive.select([3]).part_motion[0], torch.as_tensor(track.part_motion[3]))
    for path in (tmp_path / "cap").rglob("*.png"):
        path.unlink()
    assert add_part_motion(cap, folder) == {}


@pytest.mark.parametrize("detail_conditioning", ["code", "deformation"])
def test_detail_network_reads_the_part_motion_scaled_and_checkpoints_keep_it(detail_conditioning):
    from npga_taichi.avatar.config import AvatarConfig
    from npga_taichi.avatar.deformation import FrameCode
    from npga_taichi.avatar.model import NPGAAvatar, avatar_from_state, avatar_state

    cfg = AvatarConfig(num_init_gaussians=30, max_gaussians=60, latent_dim=4, sh_degree=1, detail_hidden=16,
                       detail_layers=2, scratch_field_hidden=16, scratch_field_layers=2, knn_k=4,
                       eye_closure_dim=2, part_motion_dim=PART_MOTION_DIM, detail_conditioning=detail_conditioning)
    torch.manual_seed(0)
    avatar = NPGAAvatar(cfg, None, exp_dim=5)
    with torch.no_grad():
        avatar.gaussians.means.copy_(torch.randn(30, 3))
        avatar.detail.mlp.out.weight.normal_(0, 0.1)  # a trained G: its output depends on its inputs
    z, closure = torch.randn(5), torch.tensor([0.3, 0.0])
    motion = torch.linspace(-0.02, 0.02, PART_MOTION_DIM)
    code = avatar.detail_code(z, closure, motion)
    assert code.shape == ((5 if detail_conditioning == "code" else 0) + 2 + PART_MOTION_DIM,)
    assert torch.allclose(code[-PART_MOTION_DIM:], motion * PART_MOTION_SCALE)
    assert torch.allclose(avatar.detail_code(z, closure, None)[-PART_MOTION_DIM:], torch.zeros(PART_MOTION_DIM))
    frame = lambda m: FrameCode(z, torch.eye(3), torch.zeros(3), 0.25, closure, m)  # noqa: E731
    at_rest, moved = avatar.deform(frame(None)), avatar.deform(frame(motion))
    assert torch.equal(at_rest.means, avatar.deform(frame(torch.zeros(PART_MOTION_DIM))).means)
    assert not torch.allclose(at_rest.means, moved.means)  # G moves the Gaussians with the parts
    again = avatar_from_state(avatar_state(avatar), "test")
    assert again.part_motion_dim == PART_MOTION_DIM
    assert torch.allclose(again.deform(frame(motion)).means, moved.means)


def test_avatars_without_the_part_motion_ignore_it():
    from npga_taichi.avatar.config import AvatarConfig
    from npga_taichi.avatar.model import NPGAAvatar

    cfg = AvatarConfig(num_init_gaussians=30, max_gaussians=60, latent_dim=4, sh_degree=1, detail_hidden=16,
                       detail_layers=2, scratch_field_hidden=16, scratch_field_layers=2, knn_k=4)
    avatar = NPGAAvatar(cfg, None, exp_dim=5)
    z = torch.randn(5)
    assert avatar.part_motion_dim == 0
    assert torch.equal(avatar.detail_code(z, None, torch.ones(PART_MOTION_DIM)), z)


def test_part_displacement_moves_each_parts_neighbourhood_by_its_measured_motion():
    from npga_taichi.part_motion import CORNER_CENTRES, PART_RADIUS, part_displacement

    motion = torch.tensor([0.0, 0.02, -0.01, -0.012, 0.012, 0.02, 0.0, 0.0], dtype=torch.float64)
    points = torch.tensor([BROW_CENTRES[0], BROW_CENTRES[1], CORNER_CENTRES[0], (0.0, 0.6, 0.0),
                           (BROW_CENTRES[0][0], BROW_CENTRES[0][1] + PART_RADIUS, BROW_CENTRES[0][2])],
                          dtype=torch.float64)
    d = part_displacement(points, motion, parts=4)
    # at a centre, exactly the measured motion ("out" of the right brow is -x), up to the other
    # parts' tails (the brows are 4.2 radii apart)
    assert torch.allclose(d[0], torch.tensor([0.0, 0.02, 0.0], dtype=torch.float64), atol=1e-5)
    assert torch.allclose(d[1], torch.tensor([0.01, -0.012, 0.0], dtype=torch.float64), atol=1e-5)
    assert torch.allclose(d[2], torch.tensor([0.012, 0.02, 0.0], dtype=torch.float64), atol=1e-5)
    assert d[3].abs().max() < 1e-12                                     # the top of the head stays
    assert d[4, 1] == pytest.approx(0.02 * np.exp(-0.5), rel=1e-3)      # one radius away: the Gaussian falloff
    brows_only = part_displacement(points, motion, parts=2)
    assert torch.allclose(brows_only[:2], d[:2], atol=1e-5)            # the corners' tails barely reach the brows
    assert brows_only[2].abs().max() < 1e-6                             # corners not displaced with parts=2


@pytest.mark.parametrize("part_displacement", ["none", "brows"])
def test_avatar_displaces_the_brows_by_the_measured_motion_where_configured(part_displacement):
    from npga_taichi.avatar.config import AvatarConfig
    from npga_taichi.avatar.deformation import FrameCode
    from npga_taichi.avatar.model import NPGAAvatar

    cfg = AvatarConfig(num_init_gaussians=30, max_gaussians=60, latent_dim=4, sh_degree=1, detail_hidden=16,
                       detail_layers=2, scratch_field_hidden=16, scratch_field_layers=2, knn_k=4,
                       part_motion_dim=PART_MOTION_DIM, part_displacement=part_displacement)
    avatar = NPGAAvatar(cfg, None, exp_dim=5)
    with torch.no_grad():
        avatar.gaussians.means[0] = torch.tensor(BROW_CENTRES[0])
    raise_left = torch.zeros(PART_MOTION_DIM)
    raise_left[1] = 0.02
    frame = lambda m: FrameCode(torch.zeros(5), torch.eye(3), torch.zeros(3), 0.25, None, m)  # noqa: E731
    with torch.no_grad():
        moved = avatar.deform(frame(raise_left)).means[0] - avatar.deform(frame(None)).means[0]
    # G is zero-initialised: what moves is the displacement (world metres = 0.25 x canonical)
    expected = 0.25 * 0.02 if part_displacement == "brows" else 0.0
    assert float(moved[1]) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="part_displacement must be one of"):
        AvatarConfig(part_displacement="cheeks").validate()


def test_part_motion_benchmark_scores_a_measurement_that_determines_the_expression_as_one():
    from benchmark_modules import load_benchmark

    bench = load_benchmark("part_motion")
    rng = np.random.default_rng(0)
    expression = rng.uniform(0, 1, size=(40, 3))
    expression[:, 2] = 0.0  # a parameter that never moves is left out
    motion = np.zeros((40, PART_MOTION_DIM))
    motion[:, 1] = 0.03 * expression[:, 0]             # brow_left_up follows the first parameter
    motion[:, 5] = -0.02 * expression[:, 1] + 0.001    # corner_left_up against the second
    scores = bench.score(motion, expression, ["a", "b", "still"])
    assert scores["frames"] == 40 and set(scores["r2"]) == {"a", "b"}
    assert scores["r2"]["a"] == pytest.approx(1.0) and scores["r2"]["b"] == pytest.approx(1.0)
    assert scores["correlation"]["brow_left_up"]["a"] == pytest.approx(1.0)
    assert scores["correlation"]["corner_left_up"]["b"] == pytest.approx(-1.0)
    assert scores["correlation"]["brow_right_up"]["a"] is None  # a measurement that never moved
    assert scores["std_mm"]["brow_left_up"] == pytest.approx(0.03 * expression[:, 0].std() * 250)
    noise = bench.score(rng.normal(size=(40, PART_MOTION_DIM)) * 0.01, expression, ["a", "b", "still"])
    assert noise["r2"]["a"] < 0.5  # 8 random regressors on 40 frames explain little
