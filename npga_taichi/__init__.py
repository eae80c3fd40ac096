"""npga-taichi: Neural Parametric Gaussian Avatars with a differentiable Taichi rasterizer.

Public entry points:
  - :func:`npga_taichi.render.rasterize`: the differentiable Gaussian rasterizer.
  - :mod:`npga_taichi.reference`: its pure-PyTorch oracle.
  - ``npga`` command line (``npga --help``).
"""
import os

# torch's OpenMP workers wait between parallel regions. libgomp's default spins ~300k
# iterations, stealing the cores Taichi's thread pool needs next (compositing forward 280 ms CPU
# vs 90 ms passive on 2 cores); passive waiting puts every worker to sleep after each op, which
# taxes the trackers' thousands of small ops (`npga track-video --avatar`: 5.9-6.9 s per frame
# passive, 4.3-4.7 with this short spin; benchmarks/wait_policy.py). Read when torch loads
# libgomp, so it must be set before; a user's OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "30000")
# Taichi would otherwise phone home for a version check at init (no network here, and nothing
# may be fetched at run time) and print its banner on stdout, corrupting `--json` output.
os.environ.setdefault("TI_SKIP_VERSION_CHECK", "ON")
os.environ.setdefault("ENABLE_TAICHI_HEADER_PRINT", "False")
# ...and route kernel prints through a Python buffer whenever sys.stdout is redirected.
os.environ.setdefault("TI_ENABLE_PYBUF", "0")

__version__ = "0.1.0"
