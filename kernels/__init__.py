"""Taichi kernels of npga-taichi (imported as ``npga_taichi.kernels``).

Only Taichi code lives here. Import through ``npga_taichi.kernels.<module>`` so every kernel
module is compiled once per process, and initialise Taichi through :mod:`.runtime` first.

Each kernel module names its PyTorch twin in :mod:`npga_taichi.reference` (the twin carries the
kernel's name) and its test file (named after the module): ``projection.py`` ->
``reference.project_gaussians`` -> tests/test_projection.py; ``sh.py`` -> ``reference.sh_to_color``
-> tests/test_sh.py; ``footprint.py``, ``tiles.py``, ``composite.py`` -> ``reference.fragments``,
``reference.front_to_back``, ``reference.composite`` -> tests/test_render.py.
"""
