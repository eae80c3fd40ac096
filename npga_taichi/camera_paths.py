"""Camera orbits around a head and paths through NPGA's square of four expression codes.

Cameras follow the project convention: ``viewmat (4, 4)`` world->camera with **OpenCV** axes
(x right, y down, z forward), ``K (3, 3)`` in pixels. An orbit keeps the reference camera's
intrinsics, image size and distance to the orbit centre, and rotates its pose about the
reference camera's *up* axis (yaw) and *right* axis (pitch), both through the centre, so the
head stays centred and upright as seen from the reference camera.

Expression interpolation follows NPGA's viewer ("quadrilateral linear interpolation between 4
cornering expressions"): four codes sit at the corners of the unit square,

    (u, v) = (0, 0): codes[0]  top-left        (1, 0): codes[1]  top-right
    (u, v) = (0, 1): codes[2]  bottom-left     (1, 1): codes[3]  bottom-right

and the code at (u, v) is the bilinear blend
``(1-u)(1-v) z0 + u(1-v) z1 + (1-u) v z2 + u v z3``.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from npga_taichi.cameras import camera_center

# Corners of the expression square in the order of the four codes (see module docstring).
SQUARE_CORNERS = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0))
# Default loop: every corner once, around the border, back to the start.
DEFAULT_SQUARE_WAYPOINTS = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0), (0.0, 0.0))


def _as_numpy(matrix) -> np.ndarray:
    if isinstance(matrix, torch.Tensor):
        return matrix.detach().cpu().double().numpy()
    return np.asarray(matrix, dtype=np.float64)


def _like(array: np.ndarray, reference):
    """Return ``array`` as the same kind (numpy / torch, dtype, device) as ``reference``."""
    if isinstance(reference, torch.Tensor):
        return torch.as_tensor(array, dtype=reference.dtype, device=reference.device)
    return np.asarray(array, dtype=np.asarray(reference).dtype)


def axis_angle_matrix(axis: np.ndarray, angle: float) -> np.ndarray:
    """(3, 3) rotation by ``angle`` radians about unit ``axis`` (Rodrigues)."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    x, y, z = axis
    skew = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + math.sin(angle) * skew + (1.0 - math.cos(angle)) * (skew @ skew)


def default_orbit_center(viewmat, point=(0.0, 0.0, 0.0)) -> np.ndarray:
    """The point on the camera's optical axis at the depth of ``point`` (default: world origin).

    Heads in NeRSemble and in our synthetic captures sit near the world origin, so this keeps
    the orbit centred on the head when no better centre (e.g. the avatar's mean) is given.
    """
    v = _as_numpy(viewmat)
    depth = float((v[:3, :3] @ np.asarray(point, dtype=np.float64) + v[:3, 3])[2])
    if depth <= 0:
        raise ValueError(f"the orbit centre {tuple(point)} is behind the reference camera")
    forward = v[2, :3]  # camera z axis in world coordinates
    return camera_center(v) + depth * forward


def orbit_viewmats(
    reference_viewmat,
    n_frames: int,
    center=None,
    yaw_degrees: float = 30.0,
    pitch_degrees: float = 10.0,
    full_circle: bool = False,
) -> list[np.ndarray]:
    """World->camera matrices (float64 numpy) orbiting ``center`` starting from the reference.

    yaw_degrees:   amplitude of the left-right swing (``full_circle``: ignored, a 360° turn)
    pitch_degrees: amplitude of the up-down nod, at twice the yaw frequency, so the path is a
                   smooth closed figure-eight (a Lissajous curve) that starts at the reference.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    ref = _as_numpy(reference_viewmat)
    if ref.shape != (4, 4):
        raise ValueError(f"reference viewmat must be (4, 4), got {ref.shape}")
    c = default_orbit_center(ref) if center is None else np.asarray(center, dtype=np.float64)
    cam_to_world = np.linalg.inv(ref)
    up = -ref[1, :3]     # OpenCV y points down, so the camera's up is -y (world coordinates)
    right = ref[0, :3]
    out = []
    for i in range(n_frames):
        phase = 2.0 * math.pi * i / n_frames
        yaw = phase if full_circle else math.radians(yaw_degrees) * math.sin(phase)
        pitch = math.radians(pitch_degrees) * math.sin(2.0 * phase)
        rotation = axis_angle_matrix(up, yaw) @ axis_angle_matrix(right, pitch)
        moved = np.eye(4)
        moved[:3, :3] = rotation @ cam_to_world[:3, :3]
        moved[:3, 3] = rotation @ (cam_to_world[:3, 3] - c) + c
        out.append(np.linalg.inv(moved))
    return out


def orbit_cameras(reference, n_frames: int, center=None, yaw_degrees: float = 30.0,
                  pitch_degrees: float = 10.0, full_circle: bool = False) -> list:
    """Cameras (same class, intrinsics and size as ``reference``) on an orbit; see :func:`orbit_viewmats`.

    ``reference`` is a :class:`npga_taichi.cameras.Camera`-like object with ``serial``,
    ``viewmat``, ``K``, ``width`` and ``height``; the orbit cameras are named ``orbit_<i:03d>``.
    """
    mats = orbit_viewmats(reference.viewmat, n_frames, center, yaw_degrees, pitch_degrees, full_circle)
    return [
        _replace_camera(reference, serial=f"orbit_{i:03d}", viewmat=_like(m, reference.viewmat))
        for i, m in enumerate(mats)
    ]


def _replace_camera(camera, **changes):
    import dataclasses

    if dataclasses.is_dataclass(camera):
        return dataclasses.replace(camera, **changes)
    fields = {k: getattr(camera, k) for k in ("serial", "viewmat", "K", "width", "height")}
    fields.update(changes)
    return type(camera)(**fields)


# --------------------------------------------------------------------------- expression square

def bilinear_weights(u: float, v: float) -> np.ndarray:
    """(4,) weights of the four corner codes at (u, v) in [0, 1]²; they sum to 1."""
    if not (0.0 <= u <= 1.0 and 0.0 <= v <= 1.0):
        raise ValueError(f"(u, v) must lie in the unit square, got ({u}, {v})")
    return np.array([(1 - u) * (1 - v), u * (1 - v), (1 - u) * v, u * v], dtype=np.float64)


def bilinear_code(codes, u: float, v: float):
    """Blend four expression codes ``codes (4, E)`` at (u, v); returns (E,) of the same kind."""
    if tuple(codes.shape[:1]) != (4,) or len(codes.shape) != 2:
        raise ValueError(f"codes must be (4, E) expression codes, got {tuple(codes.shape)}")
    w = bilinear_weights(u, v)
    if isinstance(codes, torch.Tensor):
        return (torch.as_tensor(w, dtype=codes.dtype, device=codes.device)[:, None] * codes).sum(0)
    return (w[:, None] * np.asarray(codes)).sum(0)


def square_grid(rows: int, cols: int) -> list[tuple[float, float]]:
    """(u, v) of a rows x cols grid covering the square corners included, row-major (v rows)."""
    if rows < 2 or cols < 2:
        raise ValueError(f"an interpolation grid needs at least 2x2 cells, got {rows}x{cols}")
    return [(j / (cols - 1), i / (rows - 1)) for i in range(rows) for j in range(cols)]


def square_path(n_frames: int, waypoints: Sequence[tuple[float, float]] = DEFAULT_SQUARE_WAYPOINTS
                ) -> list[tuple[float, float]]:
    """(u, v) per frame along the polyline ``waypoints``, eased (cosine) in and out of each one.

    Frames are spread over segments in proportion to their length, so the cursor moves at a
    steady average pace; the last frame is the last waypoint.
    """
    pts = np.asarray(waypoints, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 2:
        raise ValueError(f"waypoints must be at least two (u, v) pairs, got {waypoints!r}")
    if (pts < 0).any() or (pts > 1).any():
        raise ValueError(f"waypoints must lie in the unit square, got {waypoints!r}")
    if n_frames < 2:
        raise ValueError(f"n_frames must be >= 2, got {n_frames}")
    lengths = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    total = lengths.sum()
    if total == 0:
        return [tuple(pts[0])] * n_frames
    cumulative = np.concatenate([[0.0], np.cumsum(lengths)]) / total
    out = []
    for i in range(n_frames):
        s = i / (n_frames - 1)
        seg = min(int(np.searchsorted(cumulative, s, side="right")) - 1, len(lengths) - 1)
        while seg > 0 and lengths[seg] == 0:
            seg -= 1
        local = 0.0 if lengths[seg] == 0 else (s - cumulative[seg]) / (cumulative[seg + 1] - cumulative[seg])
        eased = 0.5 - 0.5 * math.cos(math.pi * min(max(local, 0.0), 1.0))
        p = pts[seg] + eased * (pts[seg + 1] - pts[seg])
        out.append((float(min(max(p[0], 0.0), 1.0)), float(min(max(p[1], 0.0), 1.0))))
    return out


def parse_waypoints(text: str) -> list[tuple[float, float]]:
    """Parse ``"u,v;u,v;..."`` (CLI syntax) into waypoints; raises ValueError naming the bad part."""
    out = []
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        try:
            u, v = (float(x) for x in part.split(","))
        except ValueError:
            raise ValueError(f"bad waypoint {part!r}: expected 'u,v' with numbers in [0, 1]") from None
        out.append((u, v))
    if len(out) < 2:
        raise ValueError(f"a path needs at least two waypoints 'u,v;u,v', got {text!r}")
    return out
