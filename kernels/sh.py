"""Real spherical harmonics (degree 0..3) to RGB: forward and hand-written backward.

PyTorch twin: :func:`npga_taichi.reference.sh_to_color` (bases: ``reference.eval_sh``);
tests: ``tests/test_sh.py``. Kernels: :func:`sh_to_color_kernels` ->
``(sh_to_color_forward, sh_to_color_backward)``.

    dir = normalise(mean - camera_centre)
    colour[c] = max(sum_k Y_k(dir) coeffs[k, c] + 0.5, 0)

Y_k are the real SH bases with the constants (``npga_taichi.conventions``) and sign conventions
of 3DGS / gsplat, written in the factored form of ``gsplat.cuda._torch_impl._eval_sh_bases_fast``
(Sloan, "Efficient Spherical Harmonic Evaluation", JCGT 2013), which uses x^2 + y^2 + z^2 = 1.
``coeffs`` is (N, K, 3) with K >= (degree+1)^2; extra rows are ignored. The backward gives
gradients to the coefficients and, through ``dir``, to the means.
"""

import functools

import taichi as ti

from npga_taichi.conventions import SH_C0, SH_C1, SH_C2, SH_C3
from npga_taichi.kernels import runtime

# Coefficients of the factored degree-2/3 bases, from the conventions' constants (on the unit
# sphere 2z^2 - x^2 - y^2 = 3z^2 - 1, 4z^2 - x^2 - y^2 = 5z^2 - 1, 2z^2 - 3x^2 - 3y^2 = 5z^2 - 3;
# SH_C2[0] = 2 SH_C2[4], SH_C2[1] = SH_C2[3], SH_C3[1] = 2 SH_C3[5], SH_C3[0] = SH_C3[6]).
C2_ZX = SH_C2[1]          # Y5 = C2_ZX z y, Y7 = C2_ZX z x
C2_XX = SH_C2[4]          # Y8 = C2_XX (x^2 - y^2), Y4 = C2_XX 2xy
C2_Z0 = SH_C2[2]          # Y6 = 3 C2_Z0 z^2 - C2_Z0
C3_Z = SH_C3[3]           # Y12 = z (5 C3_Z z^2 - 3 C3_Z)
C3_T = SH_C3[2]           # Y11, Y13 = C3_T (5 z^2 - 1) (y, x)
C3_B = SH_C3[5]           # Y14 = C3_B z (x^2 - y^2), Y10 = C3_B z 2xy
C3_A = SH_C3[0]           # Y15 = C3_A (x^3 - 3xy^2), Y9 = C3_A (3x^2 y - y^3)


@functools.lru_cache(maxsize=None)
def sh_to_color_kernels(real):
    """Return ``(sh_to_color_forward, sh_to_color_backward)`` Taichi kernels for float dtype ``real``."""
    runtime.ensure_initialized()  # kernels are compiled for the arch chosen once per process
    arr1 = ti.types.ndarray(dtype=real, ndim=1)
    arr2 = ti.types.ndarray(dtype=real, ndim=2)
    arr3 = ti.types.ndarray(dtype=real, ndim=3)
    vec16 = ti.types.vector(16, real)
    mat16x3 = ti.types.matrix(16, 3, real)

    @ti.func
    def bases_and_jacobian(x, y, z):
        """SH bases Y (16,) at unit direction (x, y, z) and dY/d(x, y, z) (16, 3).

        The partials treat x, y, z as independent; the normalisation is chained by the caller.
        """
        Y = vec16(0)
        dY = mat16x3(0)
        Y[0] = real(SH_C0)
        # degree 1
        Y[1] = real(-SH_C1) * y
        Y[2] = real(SH_C1) * z
        Y[3] = real(-SH_C1) * x
        dY[1, 1] = real(-SH_C1)
        dY[2, 2] = real(SH_C1)
        dY[3, 0] = real(-SH_C1)
        # degree 2
        z2 = z * z
        b2 = real(C2_ZX)
        a2 = real(C2_XX)
        fC1 = x * x - y * y
        fS1 = real(2.0) * x * y
        Y[6] = real(3.0 * C2_Z0) * z2 - real(C2_Z0)
        Y[7] = b2 * z * x
        Y[5] = b2 * z * y
        Y[8] = a2 * fC1
        Y[4] = a2 * fS1
        dY[6, 2] = real(6.0 * C2_Z0) * z
        dY[7, 0] = b2 * z
        dY[7, 2] = b2 * x
        dY[5, 1] = b2 * z
        dY[5, 2] = b2 * y
        dY[8, 0] = real(2.0) * a2 * x
        dY[8, 1] = real(-2.0) * a2 * y
        dY[4, 0] = real(2.0) * a2 * y
        dY[4, 1] = real(2.0) * a2 * x
        # degree 3
        tC = real(5.0 * C3_T) * z2 - real(C3_T)
        tB = real(C3_B) * z
        tA = real(C3_A)
        fC2 = x * fC1 - y * fS1
        fS2 = x * fS1 + y * fC1
        Y[12] = z * (real(5.0 * C3_Z) * z2 - real(3.0 * C3_Z))
        Y[13] = tC * x
        Y[11] = tC * y
        Y[14] = tB * fC1
        Y[10] = tB * fS1
        Y[15] = tA * fC2
        Y[9] = tA * fS2
        dY[12, 2] = real(15.0 * C3_Z) * z2 - real(3.0 * C3_Z)
        dY[13, 0] = tC
        dY[13, 2] = real(10.0 * C3_T) * z * x
        dY[11, 1] = tC
        dY[11, 2] = real(10.0 * C3_T) * z * y
        dY[14, 0] = tB * real(2.0) * x
        dY[14, 1] = tB * real(-2.0) * y
        dY[14, 2] = real(C3_B) * fC1
        dY[10, 0] = tB * real(2.0) * y
        dY[10, 1] = tB * real(2.0) * x
        dY[10, 2] = real(C3_B) * fS1
        dY[15, 0] = tA * real(3.0) * fC1           # d(x^3 - 3xy^2)/dx = 3(x^2 - y^2)
        dY[15, 1] = tA * real(-6.0) * x * y
        dY[9, 0] = tA * real(6.0) * x * y          # d(3x^2 y - y^3)/dx = 6xy
        dY[9, 1] = tA * real(3.0) * fC1
        return Y, dY

    @ti.func
    def direction(means: arr2, campos: arr1, i):
        dx = means[i, 0] - campos[0]
        dy = means[i, 1] - campos[1]
        dz = means[i, 2] - campos[2]
        norm = ti.sqrt(dx * dx + dy * dy + dz * dz)
        return dx / norm, dy / norm, dz / norm, norm

    @ti.kernel
    def sh_to_color_forward(means: arr2, coeffs: arr3, campos: arr1, degree: ti.i32, colors: arr2):
        for i in range(means.shape[0]):
            x, y, z, _norm = direction(means, campos, i)
            Y, _dY = bases_and_jacobian(x, y, z)
            n_bases = (degree + 1) * (degree + 1)
            for c in ti.static(range(3)):
                acc = real(0.0)
                for b in range(n_bases):
                    acc += Y[b] * coeffs[i, b, c]
                colors[i, c] = ti.max(acc + real(0.5), real(0.0))

    @ti.kernel
    def sh_to_color_backward(
        means: arr2, coeffs: arr3, campos: arr1, degree: ti.i32, v_colors: arr2,
        v_coeffs: arr3, v_means: arr2,
    ):
        for i in range(means.shape[0]):
            x, y, z, norm = direction(means, campos, i)
            Y, dY = bases_and_jacobian(x, y, z)
            n_bases = (degree + 1) * (degree + 1)
            gdir = ti.Vector([real(0.0), real(0.0), real(0.0)])
            for c in ti.static(range(3)):
                acc = real(0.0)
                for b in range(n_bases):
                    acc += Y[b] * coeffs[i, b, c]
                # clamp_min(., 0) passes the gradient where its input is >= 0
                g = v_colors[i, c] if acc + real(0.5) >= real(0.0) else real(0.0)
                for b in range(n_bases):
                    v_coeffs[i, b, c] = Y[b] * g
                    gdir += g * coeffs[i, b, c] * ti.Vector([dY[b, 0], dY[b, 1], dY[b, 2]])
            n = ti.Vector([x, y, z])
            gm = (gdir - n * n.dot(gdir)) / norm
            for c in ti.static(range(3)):
                v_means[i, c] = gm[c]

    return sh_to_color_forward, sh_to_color_backward
