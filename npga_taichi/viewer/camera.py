"""Browser camera <-> our :class:`npga_taichi.cameras.Camera`, and the capture's viewing frame.

viser reports a client's camera as ``wxyz`` (R_world_camera, OpenCV axes: x right, y down,
z forward, the same as ours), ``position`` (camera centre, world), ``fov`` (vertical, radians)
and the canvas size in pixels. three.js renders square pixels with the principal point at the
canvas centre, so K = [[f, 0, W/2], [0, f, H/2], [0, 0, 1]] with f = (H/2) / tan(fov/2).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from npga_taichi.avatar.rotations import quat_to_rotmat
from npga_taichi.cameras import Camera, camera_center
from npga_taichi.render_run import DEFAULT_CAMERA as FRONTAL_SERIAL  # NeRSemble's frontal upper-row camera


def quat_wxyz_to_matrix(wxyz) -> np.ndarray:
    """(4,) unit quaternion w, x, y, z -> (3, 3) rotation matrix."""
    return quat_to_rotmat(torch.as_tensor(np.asarray(wxyz, dtype=np.float64))).numpy()


def viewer_camera(wxyz, position, fov: float, width: int, height: int, serial: str = "viewer") -> Camera:
    """The browser's camera as our Camera (viewmat world->camera OpenCV, K in pixels, float32)."""
    R_wc = quat_wxyz_to_matrix(wxyz)
    viewmat = np.eye(4)
    viewmat[:3, :3] = R_wc.T
    viewmat[:3, 3] = -R_wc.T @ np.asarray(position, dtype=np.float64)
    width, height = max(1, int(width)), max(1, int(height))
    f = 0.5 * height / math.tan(0.5 * float(fov))
    K = np.array([[f, 0.0, 0.5 * width], [0.0, f, 0.5 * height], [0.0, 0.0, 1.0]])
    return Camera(serial, torch.from_numpy(viewmat).float(), torch.from_numpy(K).float(), width, height)


def resized_keep_fov(camera: Camera, max_side: int) -> Camera:
    """``camera`` rendered with its longer side ``max_side`` pixels (same view, same aspect)."""
    scale = max_side / max(camera.width, camera.height)
    if scale >= 1.0:
        return camera
    return camera.resized(max(1, round(camera.width * scale)), max(1, round(camera.height * scale)))


def camera_pose(camera) -> dict:
    """Where a browser camera must go to see what ``camera`` sees: centre (3,), forward (3,), up
    (3,), right (3,) in world coordinates and the vertical field of view (radians) of its K."""
    v = np.asarray(camera.viewmat.detach().cpu() if isinstance(camera.viewmat, torch.Tensor) else camera.viewmat,
                   dtype=np.float64)
    K = np.asarray(camera.K.detach().cpu() if isinstance(camera.K, torch.Tensor) else camera.K, dtype=np.float64)
    R = v[:3, :3]
    return {"position": camera_center(v), "forward": R[2].copy(), "up": -R[1].copy(), "right": R[0].copy(),
            "fov": 2.0 * math.atan(0.5 * int(camera.height) / K[1, 1])}


def frontal_serial(cameras: dict, center) -> str:
    """The capture camera facing the head: NeRSemble's frontal serial when the capture has it,
    else the camera whose direction from ``center`` is nearest the rig's mean direction."""
    if FRONTAL_SERIAL in cameras:
        return FRONTAL_SERIAL
    center = np.asarray(center, dtype=np.float64)
    dirs = {s: camera_pose(c)["position"] - center for s, c in cameras.items()}
    dirs = {s: d / np.linalg.norm(d) for s, d in dirs.items()}
    mean = np.mean(list(dirs.values()), axis=0)
    return max(sorted(dirs), key=lambda s: float(dirs[s] @ mean))
