"""EWA projection of 3D Gaussians to the image plane: forward and hand-written backward.

PyTorch twin: :func:`npga_taichi.reference.project_gaussians`; tests: ``tests/test_projection.py``.
Kernels: :func:`project_gaussians_kernels` -> ``(project_gaussians_forward,
project_gaussians_backward)``.

Per Gaussian (all arrays are torch tensors handed to Taichi as ndarrays, one row per Gaussian):

    q = quat / |quat| (wxyz)        R = R(q)        (|quat| taken scale-safely, see below)        M = R diag(scale)        Sigma = M M^T
    t = W x + tvec                  (camera space, OpenCV axes: x right, y down, z forward)
    Sigma_c = W Sigma W^T
    J = [[fx/tz, 0, -fx tx'/tz^2], [0, fy/tz, -fy ty'/tz^2]]   with tx' = tz clamp(tx/tz, ...)
    Sigma_2d = J Sigma_c J^T + eps2d I          conic = Sigma_2d^-1 = (a, b, c) upper triangle
    mean2d = (fx tx/tz + cx, fy ty/tz + cy)      depth = tz
    radius = ceil(sqrt(2 ln(255 o) lambda_max(Sigma_2d)))

The clamp of tx/tz and ty/tz to 1.3x the frustum is gsplat's ``_persp_proj`` exactly:
``lim_x_pos = (W - cx)/fx + 0.3 tan_fovx``, ``lim_x_neg = cx/fx + 0.3 tan_fovx`` (same for y),
and the derivative through the clamp is the one autograd gives for that expression.

A Gaussian is culled (radius 0, zero gradients) iff tz <= near or tz >= far, opacity < 1/255,
det(Sigma_2d) <= 0, the opacity-aware radius is 0, or the rectangle mean2d +- radius does not
touch the image. Tile binning (kernels/tiles.py) culls further by the exact ellipse inside
that radius (kernels/footprint.py).

Quaternions whose |quat|^2 would under- or overflow (float32: components <= 1e-19 or >= 1e20)
are normalised as q' = quat / max_k |quat_k|, then q' / |q'|: the same unit quaternion, with
|q'| in [1, 2]. The oracle does the same for every quaternion (``reference.normalize_quats``).

Kernels are built by :func:`project_gaussians_kernels` once per float dtype (``ti.f32`` / ``ti.f64``);
every literal constant is cast to that dtype because Taichi would otherwise round it to f32.
"""

import functools

import taichi as ti

from npga_taichi.contract import ALPHA_MIN, FRUSTUM_CLAMP
from npga_taichi.kernels import runtime

# |quat|^2 outside this range takes the rescaled path (float32 is exact well inside it).
QUAT_NORM2_MIN = 1e-30
QUAT_NORM2_MAX = 1e30


@functools.lru_cache(maxsize=None)
def project_gaussians_kernels(real):
    """Return ``(project_gaussians_forward, project_gaussians_backward)`` Taichi kernels for float
    dtype ``real``."""
    runtime.ensure_initialized()  # kernels are compiled for the arch chosen once per process
    vec3 = ti.types.vector(3, real)
    mat2 = ti.types.matrix(2, 2, real)
    mat3 = ti.types.matrix(3, 3, real)
    arr1 = ti.types.ndarray(dtype=real, ndim=1)
    arr2 = ti.types.ndarray(dtype=real, ndim=2)
    one, two, half = 1.0, 2.0, 0.5  # exact in f32, so safe as untyped literals in f64 kernels
    frustum_margin = FRUSTUM_CLAMP - 1.0  # 0.3 of the half field of view beyond the image edge

    @ti.func
    def quat_to_rotmat(w, x, y, z):
        return mat3(
            [one - two * (y * y + z * z), two * (x * y - w * z), two * (x * z + w * y)],
            [two * (x * y + w * z), one - two * (x * x + z * z), two * (y * z - w * x)],
            [two * (x * z - w * y), two * (y * z + w * x), one - two * (x * x + y * y)],
        )

    @ti.func
    def load_camera(viewmat: arr2, Kmat: arr2):
        W = mat3(
            [viewmat[0, 0], viewmat[0, 1], viewmat[0, 2]],
            [viewmat[1, 0], viewmat[1, 1], viewmat[1, 2]],
            [viewmat[2, 0], viewmat[2, 1], viewmat[2, 2]],
        )
        tvec = vec3(viewmat[0, 3], viewmat[1, 3], viewmat[2, 3])
        return W, tvec, Kmat[0, 0], Kmat[1, 1], Kmat[0, 2], Kmat[1, 2]

    @ti.func
    def frustum_limits(fx, fy, cx, cy, width, height):
        tan_fovx = half * width / fx
        tan_fovy = half * height / fy
        margin = real(frustum_margin)
        return (
            (width - cx) / fx + margin * tan_fovx,
            cx / fx + margin * tan_fovx,
            (height - cy) / fy + margin * tan_fovy,
            cy / fy + margin * tan_fovy,
        )

    @ti.func
    def unit_quat(quats: arr2, i):
        """(w, x, y, z) of quaternion i normalised, ``scale`` and ``norm`` with
        |quat| = scale * norm. A quaternion whose squared norm would under- or overflow is first
        divided by its max-abs component (scale = that component, norm in [1, 2]); the others
        take the direct path (scale = 1), which costs nothing extra."""
        qw, qx, qy, qz = quats[i, 0], quats[i, 1], quats[i, 2], quats[i, 3]
        n2 = qw * qw + qx * qx + qy * qy + qz * qz
        scale = real(1.0)
        if not (n2 > real(QUAT_NORM2_MIN) and n2 < real(QUAT_NORM2_MAX)):
            scale = ti.max(ti.max(ti.abs(qw), ti.abs(qx)), ti.max(ti.abs(qy), ti.abs(qz)))
            qw, qx, qy, qz = qw / scale, qx / scale, qy / scale, qz / scale
            n2 = qw * qw + qx * qx + qy * qy + qz * qz
        norm = ti.sqrt(n2)
        return qw / norm, qx / norm, qy / norm, qz / norm, scale, norm

    @ti.func
    def covariance(means: arr2, quats: arr2, scales: arr2, i):
        w, qxn, qyn, qzn, _scale, _norm = unit_quat(quats, i)
        R = quat_to_rotmat(w, qxn, qyn, qzn)
        M = mat3(0)
        for r in ti.static(range(3)):
            for c in ti.static(range(3)):
                M[r, c] = R[r, c] * scales[i, c]
        return M @ M.transpose()

    @ti.func
    def jacobian(t, fx, fy, lim_xp, lim_xn, lim_yp, lim_yn):
        """J and the clamped camera x/y (txc, tyc) plus flags telling whether the clamp bit."""
        tz = t[2]
        u = t[0] / tz
        v = t[1] / tz
        uc = ti.min(ti.max(u, -lim_xn), lim_xp)
        vc = ti.min(ti.max(v, -lim_yn), lim_yp)
        txc = tz * uc
        tyc = tz * vc
        J = ti.Matrix([[fx / tz, real(0.0), -fx * txc / (tz * tz)], [real(0.0), fy / tz, -fy * tyc / (tz * tz)]], dt=real)
        return J, txc, tyc, uc, vc, (u < -lim_xn) or (u > lim_xp), (v < -lim_yn) or (v > lim_yp)

    @ti.func
    def screen_covariance(J, Sigma_c, eps2d):
        """Sigma_2d = J Sigma_c J^T + eps2d I as its entries (a, b, c) and determinant; the
        forward and the backward both call this so they can never disagree on it."""
        cov = J @ Sigma_c @ J.transpose()
        a = cov[0, 0] + eps2d
        b = half * (cov[0, 1] + cov[1, 0])
        c = cov[1, 1] + eps2d
        return a, b, c, a * c - b * b

    @ti.kernel
    def project_gaussians_forward(
        means: arr2, quats: arr2, scales: arr2, opacities: arr1,
        viewmat: arr2, Kmat: arr2, width: real, height: real, near: real, far: real, eps2d: real,
        means2d: arr2, conics: arr2, depths: arr1, radii: ti.types.ndarray(dtype=ti.i32, ndim=1),
    ):
        for i in range(means.shape[0]):
            W, tvec, fx, fy, cx, cy = load_camera(viewmat, Kmat)
            lim_xp, lim_xn, lim_yp, lim_yn = frustum_limits(fx, fy, cx, cy, width, height)
            x = vec3(means[i, 0], means[i, 1], means[i, 2])
            t = W @ x + tvec
            tz = t[2]
            radius = 0
            # depth-culled Gaussians get z = 1 here (as the oracle does) so means2d stays finite
            z_safe = tz if tz > near and tz < far else real(1.0)
            mx = fx * t[0] / z_safe + cx
            my = fy * t[1] / z_safe + cy
            ca = real(0.0)
            cb = real(0.0)
            cc = real(0.0)
            o = opacities[i]
            if tz > near and tz < far and o >= real(ALPHA_MIN):
                Sigma_c = W @ covariance(means, quats, scales, i) @ W.transpose()
                J, _txc, _tyc, _uc, _vc, _clx, _cly = jacobian(t, fx, fy, lim_xp, lim_xn, lim_yp, lim_yn)
                a, b, c, det = screen_covariance(J, Sigma_c, eps2d)
                if det > 0:
                    ca = c / det
                    cb = -b / det
                    cc = a / det
                    mid = half * (a + c)
                    lam = mid + ti.sqrt(ti.max(mid * mid - det, real(0.0)))
                    reach2 = two * ti.log(real(255.0) * o) * lam
                    r_float = ti.sqrt(ti.max(reach2, real(0.0)))
                    r = ti.cast(ti.ceil(r_float), ti.i32)
                    rr = ti.cast(r, real)
                    if r > 0 and mx + rr > 0 and mx - rr < width and my + rr > 0 and my - rr < height:
                        radius = r
            means2d[i, 0] = mx
            means2d[i, 1] = my
            conics[i, 0] = ca
            conics[i, 1] = cb
            conics[i, 2] = cc
            depths[i] = tz
            radii[i] = radius

    @ti.kernel
    def project_gaussians_backward(
        means: arr2, quats: arr2, scales: arr2,
        viewmat: arr2, Kmat: arr2, width: real, height: real, eps2d: real,
        radii: ti.types.ndarray(dtype=ti.i32, ndim=1),
        v_means2d: arr2, v_conics: arr2, v_depths: arr1,
        v_means: arr2, v_quats: arr2, v_scales: arr2,
    ):
        """Vector-Jacobian product of project_gaussians_forward (means2d, conics, depths) -> inputs."""
        for i in range(means.shape[0]):
            gx = vec3(0)
            gq = ti.Vector([real(0.0), real(0.0), real(0.0), real(0.0)])
            gs = vec3(0)
            if radii[i] > 0:
                W, tvec, fx, fy, cx, cy = load_camera(viewmat, Kmat)
                lim_xp, lim_xn, lim_yp, lim_yn = frustum_limits(fx, fy, cx, cy, width, height)
                x = vec3(means[i, 0], means[i, 1], means[i, 2])
                t = W @ x + tvec
                tz = t[2]
                # ---- recompute the forward intermediates
                w, qxn, qyn, qzn, qscale, qnorm = unit_quat(quats, i)
                R = quat_to_rotmat(w, qxn, qyn, qzn)
                s = vec3(scales[i, 0], scales[i, 1], scales[i, 2])
                M = mat3(0)
                for r in ti.static(range(3)):
                    for c in ti.static(range(3)):
                        M[r, c] = R[r, c] * s[c]
                Sigma_c = W @ (M @ M.transpose()) @ W.transpose()
                J, txc, tyc, uc, vc, clamped_x, clamped_y = jacobian(t, fx, fy, lim_xp, lim_xn, lim_yp, lim_yn)
                a, b, c, det = screen_covariance(J, Sigma_c, eps2d)
                Q = mat2([[c / det, -b / det], [-b / det, a / det]])
                # ---- conic -> cov2d: dL/dCov = -Q G Q, G symmetric; the conic's off-diagonal
                # entry is one parameter standing for both matrix entries, so G01 = G10 = v_b / 2.
                G = mat2([[v_conics[i, 0], half * v_conics[i, 1]], [half * v_conics[i, 1], v_conics[i, 2]]])
                v_cov = -(Q @ G @ Q)
                # ---- cov2d = J Sigma_c J^T (+ eps2d I): both sides symmetric
                v_J = two * (v_cov @ J @ Sigma_c)
                v_Sigma_c = J.transpose() @ v_cov @ J
                # ---- means2d and depth -> camera-space t
                gt = vec3(0)
                gt[0] += v_means2d[i, 0] * fx / tz
                gt[1] += v_means2d[i, 1] * fy / tz
                gt[2] += -(v_means2d[i, 0] * fx * t[0] + v_means2d[i, 1] * fy * t[1]) / (tz * tz)
                gt[2] += v_depths[i]
                # ---- J entries -> t (through the clamp exactly as autograd differentiates
                # tx' = tz * clamp(tx / tz): unclamped dtx'/dtx = 1, dtx'/dtz = 0; clamped 0, uc)
                tz2 = tz * tz
                tz3 = tz2 * tz
                gt[2] += -v_J[0, 0] * fx / tz2 - v_J[1, 1] * fy / tz2
                gt[2] += v_J[0, 2] * two * fx * txc / tz3 + v_J[1, 2] * two * fy * tyc / tz3
                g_txc = -v_J[0, 2] * fx / tz2
                g_tyc = -v_J[1, 2] * fy / tz2
                if clamped_x:
                    gt[2] += g_txc * uc
                else:
                    gt[0] += g_txc
                if clamped_y:
                    gt[2] += g_tyc * vc
                else:
                    gt[1] += g_tyc
                gx = W.transpose() @ gt
                # ---- Sigma_c = W Sigma W^T ; Sigma = M M^T ; M = R diag(s)
                v_Sigma = W.transpose() @ v_Sigma_c @ W
                v_M = two * (v_Sigma @ M)
                v_R = mat3(0)
                for r in ti.static(range(3)):
                    for c2 in ti.static(range(3)):
                        gs[c2] += v_M[r, c2] * R[r, c2]
                        v_R[r, c2] = v_M[r, c2] * s[c2]
                # ---- R(q_n) -> q_n -> q (normalisation)
                gn = ti.Vector([
                    two * (qxn * (v_R[2, 1] - v_R[1, 2]) + qyn * (v_R[0, 2] - v_R[2, 0]) + qzn * (v_R[1, 0] - v_R[0, 1])),
                    two * (-two * qxn * (v_R[1, 1] + v_R[2, 2]) + qyn * (v_R[0, 1] + v_R[1, 0])
                           + qzn * (v_R[0, 2] + v_R[2, 0]) + w * (v_R[2, 1] - v_R[1, 2])),
                    two * (qxn * (v_R[0, 1] + v_R[1, 0]) - two * qyn * (v_R[0, 0] + v_R[2, 2])
                           + qzn * (v_R[1, 2] + v_R[2, 1]) + w * (v_R[0, 2] - v_R[2, 0])),
                    two * (qxn * (v_R[0, 2] + v_R[2, 0]) + qyn * (v_R[1, 2] + v_R[2, 1])
                           - two * qzn * (v_R[0, 0] + v_R[1, 1]) + w * (v_R[1, 0] - v_R[0, 1])),
                ])
                qn = ti.Vector([w, qxn, qyn, qzn])
                # d(q/|q|)/dq = (I - qn qn^T) / |q| with |q| = qscale * qnorm, divided in two
                # steps so neither a huge nor a tiny quaternion overflows on the way
                gq = (gn - qn * qn.dot(gn)) / qnorm
                if qscale != real(1.0):
                    gq = gq / qscale
            v_means[i, 0] = gx[0]
            v_means[i, 1] = gx[1]
            v_means[i, 2] = gx[2]
            for k in ti.static(range(4)):
                v_quats[i, k] = gq[k]
            for k in ti.static(range(3)):
                v_scales[i, k] = gs[k]

    return project_gaussians_forward, project_gaussians_backward
