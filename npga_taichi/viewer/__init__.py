"""``npga view``: an interactive browser viewer for trained avatars, built on viser.

* :mod:`~npga_taichi.viewer.app` — the server, its GUI and the one worker thread (:class:`Viewer`)
* :mod:`~npga_taichi.viewer.expressions` — tracked frames, the interpolation pad's codes, the
  canonical cloud, saving an expression for ``npga render --expressions``
* :mod:`~npga_taichi.viewer.splats` — Gaussians -> viser splats (millimetres: float16 covariances)
* :mod:`~npga_taichi.viewer.camera` — browser camera <-> our Camera, the frontal capture camera
* :mod:`~npga_taichi.viewer.pad` — the pad drawn in the scene (uv <-> cursor position, image)

viser is imported only when a :class:`Viewer` is made.
"""
from __future__ import annotations


def __getattr__(name):
    if name == "Viewer":
        from npga_taichi.viewer.app import Viewer

        return Viewer
    raise AttributeError(name)
