"""Pinhole cameras in the conventions the whole project uses.

* ``viewmat (4, 4)``: world -> camera, **OpenCV** axes (x right, y down, z forward).
* ``K (3, 3)``: intrinsics in pixels *at the camera's width x height*; pixel (row i, col j) has
  its centre at (j + 0.5, i + 0.5), i.e. continuous pixel coordinates start at the image corner.
* A camera scaled to another resolution multiplies the first row of K by ``new_w / w`` and the
  second by ``new_h / h`` (this is what resizing the image does to those coordinates).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def _as_tensor(x, dtype=None, device=None) -> torch.Tensor:
    """Tensor of ``x``; keeps a floating tensor's dtype unless ``dtype`` says otherwise
    (float32 for everything else)."""
    if isinstance(x, torch.Tensor):
        dtype = dtype or (x.dtype if x.is_floating_point() else torch.float32)
        return x.to(dtype=dtype, device=device if device is not None else x.device)
    return torch.as_tensor(np.asarray(x), dtype=dtype or torch.float32, device=device)


def camera_center(viewmat):
    """(3,) world position of the camera of a world->camera ``viewmat`` (4, 4): -Rᵀ t.

    Works on torch tensors (differentiably) and numpy arrays alike.
    """
    return -(viewmat[:3, :3].T @ viewmat[:3, 3])


@dataclass
class Camera:
    """A calibrated camera (see the module docstring for conventions)."""

    serial: str           # camera serial, e.g. "222200042"
    viewmat: torch.Tensor  # (4, 4) world -> camera, OpenCV
    K: torch.Tensor        # (3, 3) pixels at (width, height)
    width: int             # image width in pixels
    height: int            # image height in pixels

    def __post_init__(self):
        self.viewmat = _as_tensor(self.viewmat)
        self.K = _as_tensor(self.K, self.viewmat.dtype, self.viewmat.device)
        if self.viewmat.shape != (4, 4):
            raise ValueError(f"camera {self.serial}: viewmat must be (4, 4), got {tuple(self.viewmat.shape)}")
        if self.K.shape != (3, 3):
            raise ValueError(f"camera {self.serial}: K must be (3, 3), got {tuple(self.K.shape)}")
        if isinstance(self.width, bool) or isinstance(self.height, bool):
            raise ValueError(f"camera {self.serial}: width and height must be integers, not booleans")
        self.width = int(self.width)
        self.height = int(self.height)
        if self.width < 1 or self.height < 1:
            raise ValueError(f"camera {self.serial}: image size must be positive, got {self.width}x{self.height}")

    @property
    def device(self) -> torch.device:
        return self.viewmat.device

    def center(self) -> torch.Tensor:
        """(3,) camera centre in world coordinates: -R^T t."""
        return camera_center(self.viewmat)

    def world_to_camera(self, points: torch.Tensor) -> torch.Tensor:
        """(N, 3) world -> (N, 3) camera coordinates (OpenCV)."""
        points = _as_tensor(points, self.viewmat.dtype, self.device)
        return points @ self.viewmat[:3, :3].T + self.viewmat[:3, 3]

    def project(self, points: torch.Tensor):
        """(N, 3) world -> ((N, 2) pixel coordinates (x = column, y = row, continuous), (N,) depth z).

        A point projects into pixel (row, col) = (floor(y), floor(x)). Points behind the camera
        (z <= 0) get non-finite or meaningless coordinates: check depth.
        """
        pc = self.world_to_camera(points)
        z = pc[:, 2]
        uvw = pc @ self.K.T.to(pc.dtype)
        uv = uvw[:, :2] / z[:, None]
        return uv, z

    def scaled(self, factor: float) -> "Camera":
        """The camera for images resized by ``factor`` (0.5 = half size); sizes round to the
        nearest pixel (at least 1). Training, rendering and evaluation all scale through here."""
        if not factor > 0:
            raise ValueError(f"scale factor must be positive, got {factor}")
        if factor == 1.0:
            return self
        return self.resized(max(1, round(self.width * factor)), max(1, round(self.height * factor)))

    def resized(self, width: int, height: int) -> "Camera":
        """The camera for images resized to exactly (width, height)."""
        sx = width / self.width
        sy = height / self.height
        S = torch.tensor([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], dtype=self.K.dtype, device=self.device)
        return Camera(self.serial, self.viewmat.clone(), S @ self.K, width, height)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Camera":
        """This camera with its matrices on ``device`` / in ``dtype`` (self when nothing changes)."""
        device = torch.device(device) if device is not None else self.device
        dtype = dtype or self.viewmat.dtype
        if device == self.device and dtype == self.viewmat.dtype:
            return self
        return Camera(self.serial, self.viewmat.to(device, dtype), self.K.to(device, dtype), self.width,
                      self.height)


def look_at(eye, target, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """(4, 4) world -> camera (OpenCV) for a camera at `eye` looking at `target`.

    `up` is the world direction that should appear upwards in the image (OpenCV y points down).
    """
    eye = np.asarray(eye, np.float64)
    forward = np.asarray(target, np.float64) - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, np.asarray(up, np.float64))
    if np.linalg.norm(right) < 1e-9:
        raise ValueError("look_at: up is parallel to the viewing direction")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])
    viewmat = np.eye(4)
    viewmat[:3, :3] = R
    viewmat[:3, 3] = -R @ eye
    return viewmat
