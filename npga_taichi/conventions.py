"""Conventions defined once for the whole project (kernels, oracle, prior, avatar, exports).

* Units: the prior's canonical space is FLAME coordinates × 4 (MonoNPHM), so one canonical unit
  is 250 mm; every "mm" figure in logs and metrics converts with :data:`MM_PER_UNIT`.
* Spherical harmonics: the real SH basis of graphdeco 3DGS / gsplat (``sh_utils.py``,
  ``_eval_sh_bases_fast``), degree 0..3; colour = max(Σ_k Y_k(dir) c_k + 0.5, 0). The Taichi
  kernel (``kernels/sh.py``), the oracle (``reference.py``) and the PLY layout
  (f_dc = (colour − 0.5) / SH_C0) all read these constants.
* Camera centre, pixel centres and image scaling: ``npga_taichi.cameras``. PSNR: ``metrics.psnr``.
"""
from __future__ import annotations

MM_PER_UNIT = 250.0  # canonical unit = FLAME metres × 4 -> 250 mm

# Real SH constants, degree 0..3 (double precision; float32 code rounds them once).
SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
         0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)
