"""npga-taichi: Neural Parametric Gaussian Avatars with a differentiable Taichi rasterizer.

Public entry points:
  - :func:`npga_taichi.render.rasterize`: the differentiable Gaussian rasterizer.
  - :mod:`npga_taichi.reference`: its pure-PyTorch oracle.
  - ``npga`` command line (``npga --help``).
"""
import os

# torch's OpenMP workers wait between parallel regions. libgomp's default spins ~300k
# iterations, stealing the cores Taichi's thread pool needs next (compositing forward 280 ms CPU
# vs 90 ms on 2 cores); passive waiting (no spin) puts every worker to sleep after each op,
# which taxes code made of many small torch ops: `npga track-video --avatar` took 5.6 s per
# frame passive against 4.2 s with this short spin, the prior's proxy alone 1.65x as long; a
# training step was as fast or faster, the rasterizer alone ~10 % slower (2-core machine,
# 12-01). Read when torch loads libgomp, so it must be set before; OMP_WAIT_POLICY or
# GOMP_SPINCOUNT set by the user win.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "30000")
# Taichi would otherwise phone home for a version check at init (no network here, and nothing
# may be fetched at run time) and print its banner on stdout, corrupting `--json` output.
os.environ.setdefault("TI_SKIP_VERSION_CHECK", "ON")
os.environ.setdefault("ENABLE_TAICHI_HEADER_PRINT", "False")
# ...and route kernel prints through a Python buffer whenever sys.stdout is redirected.
os.environ.setdefault("TI_ENABLE_PYBUF", "0")

__version__ = "0.1.0"
