"""npga-taichi: Neural Parametric Gaussian Avatars with a differentiable Taichi rasterizer.

Public entry points:
  - :func:`npga_taichi.render.rasterize`: the differentiable Gaussian rasterizer.
  - :mod:`npga_taichi.reference`: its pure-PyTorch oracle.
  - ``npga`` command line (``npga --help``).
"""
__version__ = "0.1.0"
