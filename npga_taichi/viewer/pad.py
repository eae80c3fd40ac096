"""NPGA's interpolation pad drawn in the 3D scene (viser has no 2D pad widget).

The pad is a square image of side ``size`` metres facing the initial (frontal) camera: its
node's axes are that camera's (x right, y down, z forward), so pad coordinates (x, y) map to
(u, v) = (x / size + 1/2, y / size + 1/2) — u left to right, v top to bottom, the convention of
``camera_paths.SQUARE_CORNERS``. A transform gizmo restricted to translations in the pad's plane
is the cursor; the u/v sliders move it too. The image shows the four corner expressions, one
per quadrant.
"""
from __future__ import annotations

import numpy as np

CURSOR_LIFT = 0.002  # the cursor floats this many metres in front of the pad image


def uv_to_position(uv, size: float) -> np.ndarray:
    """(u, v) in [0, 1]² -> (3,) cursor position in the pad node's frame (metres)."""
    u, v = (float(np.clip(x, 0.0, 1.0)) for x in uv)
    return np.array([(u - 0.5) * size, (v - 0.5) * size, -CURSOR_LIFT])


def position_to_uv(position, size: float) -> tuple[float, float]:
    """Inverse of :func:`uv_to_position`, clamped to the unit square and rounded to 1e-4 (the
    sliders' step) so a dragged cursor and a slider agree on the same value."""
    p = np.asarray(position, dtype=np.float64)
    uv = np.clip(p[:2] / size + 0.5, 0.0, 1.0)
    return float(round(uv[0], 4)), float(round(uv[1], 4))


def pad_image(corners: list[np.ndarray], border: int = 2) -> np.ndarray:
    """2x2 grid (H, W, 3) uint8 of four (h, w, 3) uint8 corner thumbnails (TL, TR, BL, BR), cropped
    to squares, with a dark frame and cross so the quadrants read as one pad."""
    side = min(min(c.shape[0], c.shape[1]) for c in corners)
    tiles = []
    for c in corners:
        y0, x0 = (c.shape[0] - side) // 2, (c.shape[1] - side) // 2
        tiles.append(c[y0:y0 + side, x0:x0 + side, :3])
    image = np.concatenate([np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)], axis=0).copy()
    dark = np.array([40, 40, 40], np.uint8)
    image[:border], image[-border:], image[:, :border], image[:, -border:] = dark, dark, dark, dark
    image[side - border // 2 - 1:side + border // 2 + 1] = dark
    image[:, side - border // 2 - 1:side + border // 2 + 1] = dark
    return image
