"""Shared helpers of the procedural-head tests: named expressions and a frontal camera."""
import numpy as np

from npga_taichi.cameras import Camera, look_at
from npga_taichi.data import synthetic as syn

E = {n: i for i, n in enumerate(syn.EXPRESSION_NAMES)}


def expression(**kw) -> np.ndarray:
    """(E,) float32 expression with the named parameters set, e.g. expression(jaw_open=1.0)."""
    e = np.zeros(syn.NUM_EXPRESSION_PARAMS, np.float32)
    for k, v in kw.items():
        e[E[k]] = v
    return e


def front_camera(width=64, height=96) -> Camera:
    """A NeRSemble-like camera 1 m in front of the head, resized to width x height."""
    full = Camera("front", look_at([0.0, 0.02, 1.0], [0.0, 0.0, -0.01]),
                  [[6600.0, 0, 1100.0], [0, 6600.0, 1604.0], [0, 0, 1]], 2200, 3208)
    return full.resized(width, height)
