"""npga-taichi: Neural Parametric Gaussian Avatars with a differentiable Taichi rasterizer.

Public entry points:
  - :func:`npga_taichi.render.rasterize`: the differentiable Gaussian rasterizer.
  - :mod:`npga_taichi.reference`: its pure-PyTorch oracle.
  - ``npga`` command line (``npga --help``).
"""
import os

# torch's OpenMP workers busy-wait between parallel regions by default and steal the cores
# Taichi's own thread pool needs (measured: compositing forward 280 ms CPU spinning vs 90 ms
# passive on 2 cores). Must be set before torch loads libgomp; a user's explicit choice wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Taichi would otherwise phone home for a version check at init (no network here, and nothing
# may be fetched at run time) and print its banner on stdout, corrupting `--json` output.
os.environ.setdefault("TI_SKIP_VERSION_CHECK", "ON")
os.environ.setdefault("ENABLE_TAICHI_HEADER_PRINT", "False")
# ...and route kernel prints through a Python buffer whenever sys.stdout is redirected.
os.environ.setdefault("TI_ENABLE_PYBUF", "0")

__version__ = "0.1.0"
