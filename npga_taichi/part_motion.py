"""Per-frame motion of the brows and the mouth corners measured from label maps.

Why it exists: the tracked codes carry the jaw and little else. The ``small`` prior's expression
space holds 9 % of a brow raise and 19 % of a smile even for the best code, so no tracker can put
them into z (README, *What G should see*), and an avatar driven by z alone never raises its
brows. The images do see them: where each brow's pixels lie relative to its eye, where each
mouth corner lies relative to the mouth's centre. Like the eye closure
(:mod:`npga_taichi.eye_closure`), these measurements are the avatar's input where the codes are
blind.

Measure, per frame, measuring camera (:func:`npga_taichi.eye_closure.measuring_cameras`) and side
(subject's left, +x, first):

* brow: the centroid of the ``brows`` pixels nearer this side's projected brow centre
  (:data:`BROW_CENTRES`);
* mouth corner: the mean of the outermost :data:`CORNER_SHARE` of the mouth's pixels (``lips``,
  ``teeth``, ``mouth_interior``) on this side of the head's midline (:data:`MOUTH_CENTRE`).

Each pixel offset from the part's projected rest centre is mapped back into the head's x / y
plane (canonical units) through the 2x2 Jacobian of the projection at that centre under the
tracked pose, x signed outward, so a symmetric motion has the same sign on both sides.
The motion is that offset minus the same camera's median over every frame of the participant
(the rest position; most frames are at rest or near it), combined over the cameras that see the
part by least squares in pixels (:func:`motion_from_measurements`: a profile camera, whose view
foreshortens the head's x to nothing, counts along y only).

Layout: (T, 8) float32, canonical units (x 0.25 = metres): brow left (out, up), brow right (out,
up), mouth corner left (out, up), mouth corner right (out, up). A raised brow has up > 0, a frown
up < 0 and out < 0, a smile lifts and widens its corner, a pucker narrows both.

The avatar moves the Gaussians near each part by the part's motion with a Gaussian falloff
(:func:`part_displacement`, added to F's motion) and gives it to G (x :data:`PART_MOTION_SCALE`):
G alone does not learn to move a brow band farther than its own width.

Label maps as in :mod:`npga_taichi.eye_closure` (``<frame>/labels/cam_<serial>.png``, ids into
:data:`npga_taichi.data.synthetic.LABEL_NAMES`); a real capture's face parser with brow, lip and
mouth classes serves.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

# Head-frame (canonical units) rest centres of the synthetic heads' parts, subject's left first;
# the prior's canonical space is trained on those heads (as EYE_CENTRES).
BROW_CENTRES = ((0.106, 0.13, 0.33), (-0.106, 0.13, 0.33))
MOUTH_CENTRE = (0.0, -0.222, 0.36)
CORNER_CENTRES = ((0.085, -0.222, 0.36), (-0.085, -0.222, 0.36))
CORNER_SHARE = 0.15   # a mouth corner: this outermost share of one side's mouth pixels
MIN_PIXELS = 8        # a camera sees a part when it shows at least this many of its pixels
PART_MOTION_NAMES = ("brow_left_out", "brow_left_up", "brow_right_out", "brow_right_up",
                     "corner_left_out", "corner_left_up", "corner_right_out", "corner_right_up")
PART_MOTION_DIM = len(PART_MOTION_NAMES)
# The motion displaces the canonical neighbourhood of each part (part_displacement): a Gaussian
# falloff of this width (canonical units; 0.05 = 12.5 mm) about the part's rest centre.
PART_RADIUS = 0.05
DISPLACED_PARTS = {"none": 0, "brows": 2, "brows_corners": 4}  # name -> how many of the parts (in order)
# G reads the motion times this: a full brow raise or smile (0.03 canonical units) is ~1, the
# scale of the expression codes and the eye closure next to it in G's code.
PART_MOTION_SCALE = 30.0
_JACOBIAN_STEP = 0.02  # canonical units: the finite difference of the projection's Jacobian


def part_displacement(means: torch.Tensor, part_motion: torch.Tensor, parts: int = 4) -> torch.Tensor:
    """(N, 3) head-frame displacement (canonical units) of canonical points ``means`` (N, 3) by the
    measured ``part_motion`` (8,) of the first ``parts`` parts (brow left, brow right, corner left,
    corner right): sum over parts of exp(-|x - c|^2 / (2 PART_RADIUS^2)) (±out, up, 0), the sign
    turning the right side's "out" to -x. A point at a part's centre moves exactly as measured."""
    centres = torch.tensor(BROW_CENTRES + CORNER_CENTRES, dtype=means.dtype, device=means.device)[:parts]
    motion = part_motion.to(means).reshape(4, 2)[:parts]
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=means.dtype, device=means.device)[:parts]
    shift = torch.stack([sign * motion[:, 0], motion[:, 1], torch.zeros_like(sign)], dim=-1)  # (P, 3)
    weight = torch.exp(-torch.cdist(means, centres) ** 2 / (2 * PART_RADIUS ** 2))  # (N, P)
    return weight @ shift


def part_centres_world(rot, trans, scale) -> torch.Tensor:
    """(9, 3) world positions under a tracked head pose (world = scale · rot · x + trans) of the
    rest centres [brow left, brow right, mouth] (3 rows), then of each centre stepped by
    ``_JACOBIAN_STEP`` along head x and head y (6 rows: part-major, x before y)."""
    from npga_taichi.prior.tracking import posed_to_world

    centres = torch.tensor(BROW_CENTRES + (MOUTH_CENTRE,), dtype=torch.float32)  # (3, 3)
    steps = torch.tensor([[_JACOBIAN_STEP, 0, 0], [0, _JACOBIAN_STEP, 0]], dtype=torch.float32)
    points = torch.cat([centres, (centres[:, None] + steps[None]).reshape(-1, 3)])  # (9, 3)
    return posed_to_world(points, torch.as_tensor(np.asarray(rot), dtype=torch.float32),
                          torch.as_tensor(np.asarray(trans), dtype=torch.float32),
                          float(np.asarray(scale).reshape(-1)[0]))


def _projected_frames(camera: Any, world: torch.Tensor, image_width: int) -> tuple[np.ndarray, np.ndarray]:
    """Projected centres (3, 2) and Jacobians (3, 2, 2) (pixels per canonical unit along head x,
    y) of :func:`part_centres_world`'s points, in pixels of an image ``image_width`` wide."""
    uv = camera.project(world.to(camera.viewmat))[0].cpu().double().numpy() * (image_width / camera.width)
    centres = uv[:3]
    steps = uv[3:].reshape(3, 2, 2)  # part, axis (x, y), pixel (col, row)
    jacobian = (steps - centres[:, None]).transpose(0, 2, 1) / _JACOBIAN_STEP  # part, pixel, axis
    return centres, jacobian


def part_offsets(labels: np.ndarray, camera: Any, world: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """One label map's part positions: (offsets (8,) canonical units in :data:`PART_MOTION_NAMES`
    order, NaN where the part shows fewer than :data:`MIN_PIXELS`; weights (4, 2, 2) = J^T J of
    each part (brow left, brow right, corner left, corner right) in its (out, up) coordinates,
    pixels² per unit²).

    labels: (H, W) uint8; camera at any resolution with the label map's aspect ratio; world:
    :func:`part_centres_world` of the frame's pose."""
    from npga_taichi.data.synthetic import LABEL_NAMES
    from npga_taichi.fidelity import REGIONS

    centres, jac = _projected_frames(camera, world, labels.shape[1])
    outward = (np.eye(2), np.diag([-1.0, 1.0]))  # head (x, y) -> (out, up) of the left / right side
    # per part: projected rest centre and Jacobian of (out, up) -> pixels
    part_centre = [centres[0], centres[1], centres[2], centres[2]]
    part_jac = [jac[0] @ outward[0], jac[1] @ outward[1], jac[2] @ outward[0], jac[2] @ outward[1]]
    offsets = np.full(PART_MOTION_DIM, np.nan)

    def head_offsets(part: int, pix: np.ndarray) -> np.ndarray:  # (P, 2) pixels -> (P, 2) (out, up)
        j = part_jac[part]
        if abs(np.linalg.det(j)) <= 1e-9 * (j ** 2).sum():  # the part's plane seen edge-on
            return np.full((len(pix), 2), np.nan)
        return np.linalg.solve(j, (pix - part_centre[part]).T).T

    rows, cols = np.nonzero(labels == LABEL_NAMES.index("brows"))
    pix = np.stack([cols + 0.5, rows + 0.5], 1)
    nearer_left = ((pix - centres[0]) ** 2).sum(1) < ((pix - centres[1]) ** 2).sum(1)
    for part, mine in enumerate((nearer_left, ~nearer_left)):
        if mine.sum() >= MIN_PIXELS:
            offsets[2 * part: 2 * part + 2] = head_offsets(part, pix[mine].mean(0, keepdims=True))[0]

    mouth = np.isin(labels, [LABEL_NAMES.index(n) for n in REGIONS["mouth"]])
    rows, cols = np.nonzero(mouth)
    pix = np.stack([cols + 0.5, rows + 0.5], 1)
    for part in (2, 3):
        head = head_offsets(part, pix)
        mine = head[:, 0] > 0  # this side of the midline (none when seen edge-on)
        if mine.sum() >= MIN_PIXELS:
            keep = max(1, int(round(CORNER_SHARE * mine.sum())))
            offsets[2 * part: 2 * part + 2] = head[mine][np.argsort(head[mine, 0])[-keep:]].mean(0)
    weights = np.stack([j.T @ j for j in part_jac])
    return offsets, weights


def part_measurements(capture: Any, tracking: Any, serials: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(offsets (T, V, 8), weights (T, V, 4, 2, 2)) of every tracked frame in the cameras
    ``serials`` of ``capture`` (:func:`part_offsets`)."""
    from npga_taichi.fidelity import label_path, load_labels

    offsets = np.zeros((len(tracking.timesteps), len(serials), PART_MOTION_DIM))
    weights = np.zeros((len(tracking.timesteps), len(serials), 4, 2, 2))
    for i, t in enumerate(np.asarray(tracking.timesteps).tolist()):
        world = part_centres_world(tracking.rot[i], tracking.trans[i], tracking.scale)
        frame_dir = capture.frame_dir(tracking.sequence, int(t))
        for v, serial in enumerate(serials):
            labels = load_labels(label_path(frame_dir, serial))
            offsets[i, v], weights[i, v] = part_offsets(labels, capture.cameras[serial], world)
    return offsets, weights


def video_part_motion(labels: np.ndarray, camera: Any, rot, trans, scale) -> np.ndarray:
    """(T, 8) float32 part motion of a monocular video from its label maps ``labels`` (T, H, W)
    uint8 and the head poses tracked with ``camera`` (rot (T, 3, 3), trans (T, 3), scale): the
    video is its one camera, its median frame the rest."""
    measured = [part_offsets(labels[t], camera, part_centres_world(rot[t], trans[t], scale))
                for t in range(len(labels))]
    offsets = np.stack([m[0] for m in measured])[:, None]
    weights = np.stack([m[1] for m in measured])[:, None]
    return motion_from_measurements({"video": (offsets, weights)})["video"]


def motion_from_measurements(measured: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Sequence -> (offsets (T, V, 8), weights (T, V, 4, 2, 2))  to  sequence -> (T, 8) float32
    part motion.

    Each camera's offsets minus its median over every frame given (the rest, shared by all
    sequences of a participant); then per part the least-squares motion over the cameras that
    see it, (sum_v W_v)^-1 sum_v W_v (o_v - rest_v) with W_v = J_v^T J_v: the motion whose
    projection best matches every camera's pixel shift, so each camera counts along each
    direction as much as its image resolves it (a profile camera barely along x). A part no
    camera sees in a frame is at rest there."""
    stacked = np.concatenate([np.asarray(o, np.float64) for o, _ in measured.values()])
    if len(stacked) == 0:
        raise ValueError("no frames to measure the brows and mouth corners on")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a part one camera never sees: NaN rest
        rest = np.nanmedian(stacked, axis=0)  # (V, 8)
    out = {}
    for seq, (offsets, weights) in measured.items():
        motion = (np.asarray(offsets, np.float64) - rest).reshape(*np.shape(offsets)[:2], 4, 2)  # (T, V, 4, 2)
        seen = np.isfinite(motion).all(-1)
        w = np.where(seen[..., None, None], np.asarray(weights, np.float64), 0.0)
        lhs = w.sum(1)  # (T, 4, 2, 2)
        rhs = np.einsum("tvpij,tvpj->tpi", w, np.where(seen[..., None], motion, 0.0))
        solvable = np.linalg.det(lhs) > 1e-12 * np.maximum(np.einsum("tpii->tp", lhs) ** 2, 1e-30)
        eye = np.eye(2)
        solved = np.linalg.solve(np.where(solvable[..., None, None], lhs, eye), rhs[..., None])[..., 0]
        out[seq] = np.where(solvable[..., None], solved, 0.0).reshape(len(motion), PART_MOTION_DIM).astype(np.float32)
    return out


def add_part_motion(capture: Any, tracking_folder: str | Path) -> dict[str, float]:
    """Measure the brows' and mouth corners' motion in every track of ``tracking_folder`` of
    ``capture`` and write it into the tracks (``Tracking.part_motion``). Returns {sequence: mean
    |motion| in mm}; {} (nothing written) when the capture has no label maps."""
    from npga_taichi.conventions import MM_PER_UNIT
    from npga_taichi.eye_closure import add_label_measurement

    motion = add_label_measurement(capture, tracking_folder, "part_motion", lambda trackings, serials: (
        motion_from_measurements({seq: part_measurements(capture, tr, serials) for seq, tr in trackings.items()})))
    return {seq: float(np.abs(m).mean() * MM_PER_UNIT) for seq, m in motion.items()}
