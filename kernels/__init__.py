"""Taichi kernels of npga-taichi (imported as ``npga_taichi.kernels``).

Only Taichi code lives here. Import through ``npga_taichi.kernels.<module>`` so every kernel
module is compiled once per process, and initialise Taichi through :mod:`.runtime` first.
"""
