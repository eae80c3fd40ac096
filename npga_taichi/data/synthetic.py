"""A procedural head: analytic canonical SDF, procedural albedo and an analytic backward
expression deformation, written once as Taichi functions.

Coordinates (MonoNPHM's canonical space, i.e. FLAME coordinates x 4): the head is about one
unit tall (1 unit = 250 mm), ``+y`` up, the face looks along ``+z``, ``+x`` is the subject's
left. The origin is roughly the centre of the head, a little above the ears.

Three fields, all analytic and smooth:

* ``sdf(x_canonical)``: signed distance (negative inside) of a recognisable head -- cranium,
  face, cheekbones, brow ridge, nose with nostrils, ears with a concha, eye sockets with
  eyeballs and eyelids (an open slit), lips with a thin opening into a mouth cavity holding two
  rows of teeth, a neck and a hair cap. It is a union of primitives with polynomial smooth
  min/max, so it is a distance *bound* (Lipschitz about 1), not an exact Euclidean distance.
* ``albedo(x_canonical)``: skin (identity tone, low-frequency variation, red cheeks), brows,
  lips, sclera / iris / pupil, teeth, mouth interior and hair with strands.
* ``backward(x_posed, expr) -> x_canonical``: the kind of field MonoNPHM learns. An expression
  is ``NUM_EXPRESSION_PARAMS`` numbers (nominal range [0, 1], 0 = neutral; see
  ``EXPRESSION_NAMES``). The jaw opens by rotating the lower face about a jaw axis with a
  smoothly varying angle (the angle is a monotone C1 remap of the polar angle about the axis, so
  the lips part and reveal the cavity); blinks rotate the eyelid shell about the eyeball centre
  in the same way; the remaining expressions are Gaussian-weighted displacements (smile pulls
  the mouth corners up and out, brows raise or frown, pucker pushes the lips forward and
  together, cheeks puff, the mouth stretches). All weights are smooth (C1), so the field is
  differentiable, and the displacement gradients stay below 1 for parameters in [0, 1], so it is
  invertible there. ``backward(x, 0) == x`` exactly.

The posed head is ``{x : sdf(backward(x, e)) < 0}``. A captured frame additionally places the
head rigidly in the world: ``x_world = s * R @ x_posed + t`` (s = 0.25 m per unit).

The Taichi functions (``head_parts``, ``compose_sdf``, ``deform_backward``, ``posed_sdf``,
``canonical_albedo``) are shared by the
query kernels here and the sphere tracer in :mod:`npga_taichi.data.head_render`, so the head is
written exactly once.
"""
# (no `from __future__ import annotations`: Taichi reads kernel annotations as objects)

import numpy as np
import taichi as ti
import torch

from npga_taichi.kernels import runtime

IDENTITY_NAMES: tuple[str, ...] = (
    "head_width",     # cranium and face width, +-7 %
    "head_length",    # cranium height and depth, +-6 %
    "jaw_width",      # jaw, chin and neck width, +-10 %
    "chin_length",    # chin drop (and mouth height)
    "nose_length",    # nose tip further down and forward
    "nose_width",     # nostril wings apart and larger
    "eye_spacing",    # distance between the eyes, +-7 %
    "lip_fullness",   # lip thickness, +-25 %
    "ear_size",       # ear height and depth, +-15 %
    "skin_tone",      # -1 light ... +1 dark
    "hair_colour",    # -1 blond ... +1 black (iris colour follows)
    "hair_volume",    # -1 short and thin ... +1 thick
)
EXPRESSION_NAMES: tuple[str, ...] = (
    "jaw_open",
    "smile_left",
    "smile_right",
    "brow_raise_left",
    "brow_raise_right",
    "frown_left",
    "frown_right",
    "blink_left",
    "blink_right",
    "pucker",
    "cheek_puff",
    "mouth_stretch",
)
NUM_IDENTITY_PARAMS = len(IDENTITY_NAMES)
NUM_EXPRESSION_PARAMS = len(EXPRESSION_NAMES)
# Part channels returned by head_parts (distances, canonical units).
PART_NAMES = ("skin", "lips", "hair", "eyes", "teeth", "cavity", "slit")
NUM_PARTS = len(PART_NAMES)

# What a surface point shows: ids of the per-pixel label maps (uint8) the capture writes.
# Ids grow towards the rarer parts, so a tie between samples goes to the rarer part.
LABEL_NAMES = ("background", "skin", "hair", "brows", "eyelids", "lips", "eyes", "teeth", "mouth_interior")
(LABEL_BACKGROUND, LABEL_SKIN, LABEL_HAIR, LABEL_BROWS, LABEL_EYELIDS, LABEL_LIPS, LABEL_EYES, LABEL_TEETH,
 LABEL_MOUTH_INTERIOR) = range(len(LABEL_NAMES))
NUM_LABELS = len(LABEL_NAMES)
# label of each part channel (skin is refined into eyelids / brows; the slit is not a surface)
PART_LABELS = (LABEL_SKIN, LABEL_LIPS, LABEL_HAIR, LABEL_EYES, LABEL_TEETH, LABEL_MOUTH_INTERIOR, LABEL_SKIN)

# Metres per canonical unit (FLAME metres x 4 -> canonical; 1 / 4 back).
UNIT_METRES = 0.25
# Axis-aligned box (canonical / posed units) containing the head for every identity and every
# expression in [0, 1]: rays are clipped to it and points outside are cheap.
BOUNDS_MIN = (-0.52, -1.45, -0.68)
BOUNDS_MAX = (0.52, 0.72, 0.64)

vec3 = ti.math.vec3
IdVec = ti.types.vector(NUM_IDENTITY_PARAMS, ti.f32)
ExVec = ti.types.vector(NUM_EXPRESSION_PARAMS, ti.f32)
PartsVec = ti.types.vector(NUM_PARTS, ti.f32)

# Jaw axis (parallel to x) and the largest jaw rotation (radians at jaw_open = 1).
JAW_AXIS_Y, JAW_AXIS_Z, JAW_MAX_ANGLE = -0.03, 0.0, 0.30
# Eyelid rotation at blink = 1 (radians about the eyeball centre), and the smooth steps that
# confine it: radial (on between the eyeball and the lid surface, off towards the socket rim),
# across (off beyond the eye corners, in |x - centre.x|) and in the polar angle phi about the
# eye's x axis (the lid from just below the slit up over the eye). The same numbers feed
# deform_backward and its Lipschitz bound (blink_lipschitz): keep them in one place.
BLINK_ANGLE = 0.78
BLINK_R_IN = (0.050, 0.053)
BLINK_R_OUT = (0.058, 0.065)
BLINK_X = (0.045, 0.075)
BLINK_PHI_IN = (-0.54, -0.30)
BLINK_PHI_OUT = (0.45, 1.7)
# Upper bound of |backward(x, e) - x| for expressions in [0, 1] (the jaw moves the chin most).
MAX_DISPLACEMENT = 0.2
# Below this height (canonical) only the neck exists (the chin ends above y = -0.52).
NECK_ONLY_Y = -0.64
EYEBALL_RADIUS, LID_RADIUS, SOCKET_RADIUS = 0.048, 0.056, 0.066


# --------------------------------------------------------------------------- primitives
@ti.func
def smin(a, b, k):
    """Polynomial smooth minimum (C1); k = blend width."""
    h = ti.max(k - ti.abs(a - b), 0.0) / k
    return ti.min(a, b) - h * h * k * 0.25


@ti.func
def smax(a, b, k):
    return -smin(-a, -b, k)


@ti.func
def smoothstep(e0, e1, x):
    """Hermite step from 0 at e0 to 1 at e1 (e1 < e0 gives a falling step)."""
    t = ti.math.clamp((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@ti.func
def sd_ellipsoid(p, r):
    """Ellipsoid distance bound (Quilez); p relative to the centre, r the radii."""
    k0 = (p / r).norm()
    k1 = (p / (r * r)).norm()
    return k0 * (k0 - 1.0) / ti.max(k1, 1e-6)


@ti.func
def sd_ellipse2(a, b, ra, rb):
    """2D ellipse distance bound in the (a, b) plane."""
    k0 = ti.sqrt((a / ra) ** 2 + (b / rb) ** 2)
    k1 = ti.sqrt((a / (ra * ra)) ** 2 + (b / (rb * rb)) ** 2)
    return k0 * (k0 - 1.0) / ti.max(k1, 1e-6)


@ti.func
def sd_tapered_capsule(p, a, b, ra, rb):
    """Capsule from a to b whose radius goes linearly from ra to rb (a distance bound)."""
    pa = p - a
    ba = b - a
    h = ti.math.clamp(pa.dot(ba) / ba.dot(ba), 0.0, 1.0)
    return (pa - ba * h).norm() - (ra + (rb - ra) * h)


@ti.func
def gauss(v, sig):
    """Anisotropic Gaussian weight exp(-|v / sig|^2 / 2)."""
    u = v / sig
    return ti.exp(-0.5 * u.dot(u))


# --------------------------------------------------------------------------- landmarks
@ti.func
def mouth_y(idp):
    return -0.222 - 0.012 * idp[3]


@ti.func
def eye_centre(idp, side):
    """Eyeball centre; side = +1 (subject's left, +x) or -1."""
    return vec3(side * 0.112 * (1.0 + 0.07 * idp[6]), 0.045, 0.300)


@ti.func
def cranium_centre():
    return vec3(0.0, 0.14, -0.06)


@ti.func
def cranium_radii(idp):
    return vec3(0.29 * (1.0 + 0.07 * idp[0]), 0.33 * (1.0 + 0.06 * idp[1]), 0.38 * (1.0 + 0.06 * idp[1]))


@ti.func
def hair_thickness(idp):
    return 0.025 + 0.025 * (idp[11] + 1.0)


# --------------------------------------------------------------------------- geometry
@ti.func
def sd_neck(p, idp):
    jw = 1.0 + 0.10 * idp[2]
    return sd_tapered_capsule(p, vec3(0.0, -0.3, -0.06), vec3(0.0, -1.4, -0.12), 0.20 * jw, 0.21 * jw)


@ti.func
def head_bound(p):
    """Distance to a sphere around the head and a capsule around the neck: a lower bound of the
    head's SDF for every identity (used only outside, to step quickly)."""
    d_head = (p - vec3(0.0, 0.03, -0.02)).norm() - 0.66
    d_neck = sd_tapered_capsule(p, vec3(0.0, -0.3, -0.06), vec3(0.0, -1.4, -0.12), 0.26, 0.26)
    return ti.min(d_head, d_neck)


@ti.func
def head_parts(p, idp, fast: ti.template()):
    """Distances (canonical units) of the head's parts at canonical point p.

    Returns a PartsVec (skin, lips, hair, eyes, teeth, cavity, slit); compose_sdf combines them.
    With ``fast`` (the sphere tracer), a part whose bounding sphere is further than the current
    skin distance + 0.05 is skipped (its entry becomes a bound that leaves compose_sdf's result
    unchanged near the surface), and points more than 0.03 outside the head's bounding volume
    return that bound for every part: a valid step size, never a false hit. Without ``fast`` every
    part is evaluated, so the SDF is continuous everywhere (the values the prior trains on).
    """
    far = 1e3
    out = PartsVec([far, far, far, far, far, far, far])
    hw = 1.0 + 0.07 * idp[0]
    jw = 1.0 + 0.10 * idp[2]
    cl = idp[3]
    q = vec3(ti.abs(p.x), p.y, p.z)  # mirrored point for symmetric parts
    d_bound = head_bound(p)
    if ti.static(fast) and (d_bound > 0.03 or p.y < NECK_ONLY_Y):
        # Outside the bound, or below the chin (every part but the neck lies above y = -0.52 for
        # all identities): the bound, or the neck alone capped by the distance to y = -0.52.
        d_far = d_bound
        if d_bound <= 0.03:
            d_far = ti.min(sd_neck(p, idp), -0.52 - p.y)
        for k in ti.static(range(NUM_PARTS)):
            out[k] = d_far
        out[5] = far  # the cavity is subtracted: far away it must not cut anything
        out[6] = far
    else:
        cc = cranium_centre()
        cr = cranium_radii(idp)
        d = sd_ellipsoid(p - cc, cr)
        # face, jaw, chin, cheekbones and brow ridge all lie within 0.44 of (0, -0.12, 0.10) for
        # every identity: skipped (fast) when that sphere cannot change the smooth union
        if ti.static(not fast) or (p - vec3(0.0, -0.12, 0.10)).norm() - 0.44 < ti.abs(d) + 0.08:
            d = smin(d, sd_ellipsoid(p - vec3(0.0, -0.06, 0.10), vec3(0.25 * hw, 0.30, 0.30)), 0.08)
            d = smin(d, sd_ellipsoid(p - vec3(0.0, -0.25 - 0.02 * cl, 0.08), vec3(0.20 * jw, 0.17 + 0.02 * cl, 0.26)), 0.06)
            d = smin(d, sd_ellipsoid(p - vec3(0.0, -0.37 - 0.035 * cl, 0.25), vec3(0.10 * jw, 0.08, 0.08)), 0.05)
            d = smin(d, sd_ellipsoid(q - vec3(0.17 * hw, -0.02, 0.22), vec3(0.09, 0.075, 0.09)), 0.05)
            # brow ridge
            d = smin(d, sd_tapered_capsule(q, vec3(0.0, 0.125, 0.335), vec3(0.15 * hw, 0.13, 0.305), 0.034, 0.028), 0.04)
        # neck
        d = smin(d, sd_neck(p, idp), 0.10)
        # ears (mirrored): a flat plate with a hollow concha
        es = 1.0 + 0.15 * idp[8]
        ear_c = vec3(0.905 * cr.x + 0.015, 0.0, -0.03)
        if ti.static(not fast) or (q - ear_c).norm() - 0.2 < ti.abs(d) + 0.05:
            d_ear = sd_ellipsoid(q - ear_c, vec3(0.032, 0.12 * es, 0.075 * es))
            d_ear = smax(d_ear, -((q - ear_c - vec3(0.045, -0.01, 0.005)).norm() - 0.045 * es), 0.01)
            d = smin(d, d_ear, 0.02)
        # nose
        nose_tip = vec3(0.0, -0.115 - 0.02 * idp[4], 0.455 + 0.035 * idp[4])
        if ti.static(not fast) or (p - vec3(0.0, -0.03, 0.40)).norm() - 0.22 < ti.abs(d) + 0.05:
            d_nose = sd_tapered_capsule(p, vec3(0.0, 0.07, 0.345), nose_tip, 0.022, 0.037)
            wing = vec3(0.042 * (1.0 + 0.18 * idp[5]), nose_tip.y - 0.012, nose_tip.z - 0.062)
            d_nose = smin(d_nose, (q - wing).norm() - 0.033 * (1.0 + 0.1 * idp[5]), 0.02)
            d = smin(d, d_nose, 0.025)
            nostril = vec3(0.021 * (1.0 + 0.18 * idp[5]), nose_tip.y - 0.028, nose_tip.z - 0.035)
            d = smax(d, -sd_ellipsoid(q - nostril, vec3(0.012, 0.008, 0.016)), 0.004)
        # eyes: socket, lids (a shell around the eyeball with an almond slit), eyeball
        ce = eye_centre(idp, 1.0)
        v = q - ce
        rv = v.norm()
        out[3] = rv - EYEBALL_RADIUS
        if ti.static(not fast) or rv - 0.1 < ti.abs(d) + 0.05:
            d = smax(d, -(rv - SOCKET_RADIUS), 0.02)
            d_slit = ti.max(sd_ellipse2(v.x, v.y - 0.002, 0.041, 0.017), 0.012 - v.z)
            d_lid = smax(rv - LID_RADIUS, -d_slit, 0.004)
            d = smin(d, d_lid, 0.012)
        out[0] = d
        # mouth: lips, slit, cavity, teeth
        my = mouth_y(idp)
        mp = p - vec3(0.0, my, 0.30)
        if ti.static(not fast) or mp.norm() - 0.2 < ti.abs(d) + 0.05:
            lf = 1.0 + 0.25 * idp[7]
            d_ul = sd_ellipsoid(p - vec3(0.0, my + 0.019 * lf, 0.352), vec3(0.088, 0.024 * lf, 0.042))
            d_ll = sd_ellipsoid(p - vec3(0.0, my - 0.022 * lf, 0.345), vec3(0.080, 0.027 * lf, 0.042))
            out[1] = smin(d_ul, d_ll, 0.01)
            out[6] = ti.max(ti.max(ti.abs(p.y - my) - 0.0035, ti.abs(p.x) - 0.082), 0.29 - p.z)
            out[5] = sd_ellipsoid(p - vec3(0.0, my + 0.005, 0.245), vec3(0.085, 0.05, 0.09))
            d_ut = sd_ellipsoid(p - vec3(0.0, my + 0.016, 0.255), vec3(0.07, 0.017, 0.075))
            d_lt = sd_ellipsoid(p - vec3(0.0, my - 0.018, 0.25), vec3(0.065, 0.016, 0.07))
            out[4] = ti.max(ti.min(d_ut, d_lt), 0.2 - p.z)
        else:  # bounds that leave compose_sdf unchanged (see the docstring)
            out[1] = mp.norm() - 0.2
            out[4] = mp.norm() - 0.2
        # hair: a thick cap over the cranium, cut by a sloping hairline
        ht = hair_thickness(idp)
        d_cap = sd_ellipsoid(p - (cc + vec3(0.0, 0.012 + 0.4 * ht, -0.012)), cr + ht)
        hairline = 0.06 - 0.02 * idp[11] - (0.8 * p.y - 0.6 * p.z)
        out[2] = smax(d_cap, hairline, 0.03)
    return out


@ti.func
def compose_sdf(parts):
    """The head's signed distance from its part distances (see head_parts)."""
    s = smin(parts[0], parts[1], 0.012)
    s = smax(s, -parts[6], 0.003)
    s = smax(s, -parts[5], 0.008)
    s = ti.min(s, parts[4])
    s = ti.min(s, parts[3])
    s = smin(s, parts[2], 0.01)
    return s


@ti.func
def canonical_sdf(p, idp, fast: ti.template()):
    return compose_sdf(head_parts(p, idp, fast))


# --------------------------------------------------------------------------- deformation
@ti.func
def rotate_yz(v, angle):
    """Rotate (v.y, v.z) so that the polar angle atan2(y, z) grows by `angle`."""
    c = ti.cos(angle)
    s = ti.sin(angle)
    return vec3(v.x, v.y * c + v.z * s, -v.y * s + v.z * c)


@ti.func
def displaced_backward(x, amount, centre, disp, sig):
    """Backward offset of a Gaussian-weighted forward displacement `amount * disp` at centre.

    The forward field moves points near `centre` by amount*disp; its (first-order) inverse
    subtracts the same displacement weighted around the displaced centre.
    """
    off = vec3(0.0, 0.0, 0.0)
    v = (x - (centre + amount * disp)) / sig
    r2 = v.dot(v)
    # skip zero amounts and the far tail (exp(-0.5 * 36) < 2e-8): exactly smooth enough
    if amount != 0.0 and r2 < 36.0:
        off = -amount * disp * ti.exp(-0.5 * r2)
    return off


@ti.func
def deform_backward(x, e, idp):
    """x_posed (head frame) -> x_canonical for expression vector e (ExVec)."""
    y = x
    my = mouth_y(idp)
    # Jaw: rotate the lower face about the jaw axis. In polar coordinates (rho, psi) about the
    # axis, psi_canonical = psi + theta * w(psi): w = 1 below the lips, 0 above, a smooth ramp
    # over the opening (wide enough that d psi_c / d psi > 0, i.e. no fold).
    # (the jaw's weight is exactly 0 above y = 0.05: psi > psi_m + 0.12 there)
    if e[0] != 0.0 and x.y < 0.05 and x.y > -0.8:  # w = 0 outside (-0.8, 0.05)
        theta = JAW_MAX_ANGLE * e[0]
        ry = x.y - JAW_AXIS_Y
        rz = x.z - JAW_AXIS_Z
        rho = ti.sqrt(ry * ry + rz * rz)
        psi = ti.atan2(ry, rz)
        psi_m = ti.atan2(my - JAW_AXIS_Y, 0.37 - JAW_AXIS_Z)
        w = 1.0 - smoothstep(psi_m - theta - 0.12, psi_m + 0.12, psi)
        w *= smoothstep(-2.5, -1.55, psi)  # not the back of the neck
        w *= smoothstep(0.04, 0.14, rho)  # C1 at the axis
        w *= 1.0 - smoothstep(-0.40, -0.80, x.y)  # fade out down the neck
        psi_c = psi + theta * w
        y = vec3(x.x, JAW_AXIS_Y + rho * ti.sin(psi_c), JAW_AXIS_Z + rho * ti.cos(psi_c))
    # Blinks: rotate the lid shell (between eyeball and skin) downwards about the eye centre.
    for k in ti.static(range(2)):
        side = 1.0 - 2.0 * k  # blink_left (+x) then blink_right (-x)
        amount = e[7 + k]
        ce = eye_centre(idp, side)
        v = y - ce
        r2 = v.dot(v)
        if amount != 0.0 and r2 < BLINK_R_OUT[1] ** 2:  # the lid weight wr is 0 beyond
            r = ti.sqrt(r2)
            wr = smoothstep(BLINK_R_IN[0], BLINK_R_IN[1], r) * (1.0 - smoothstep(BLINK_R_OUT[0], BLINK_R_OUT[1], r))
            wx = 1.0 - smoothstep(BLINK_X[0], BLINK_X[1], ti.abs(v.x))
            phi = ti.atan2(v.y, v.z)
            bump = smoothstep(BLINK_PHI_IN[0], BLINK_PHI_IN[1], phi) * (
                1.0 - smoothstep(BLINK_PHI_OUT[0], BLINK_PHI_OUT[1], phi))
            y = ce + rotate_yz(v, BLINK_ANGLE * amount * bump * wr * wx)
    off = vec3(0.0, 0.0, 0.0)
    corner_sig = vec3(0.045, 0.04, 0.05)
    for k in ti.static(range(2)):
        side = 1.0 - 2.0 * k
        corner = vec3(side * 0.085, my, 0.36)
        off += displaced_backward(x, e[1 + k], corner, vec3(side * 0.018, 0.028, -0.012), corner_sig)
        off += displaced_backward(x, e[11], corner, vec3(side * 0.022, -0.012, -0.006), corner_sig)
        off += displaced_backward(x, e[3 + k], vec3(side * 0.12, 0.13, 0.34), vec3(0.0, 0.03, 0.0), vec3(0.075, 0.05, 0.07))
        off += displaced_backward(x, e[5 + k], vec3(side * 0.08, 0.12, 0.35), vec3(-side * 0.015, -0.018, 0.006), vec3(0.05, 0.045, 0.06))
        off += displaced_backward(x, e[10], vec3(side * 0.15, -0.18, 0.28), vec3(side * 0.02, 0.0, 0.022), vec3(0.06, 0.06, 0.06))
    # Pucker: lips forward and together (x contracts towards the midline).
    m = vec3(0.0, my, 0.38 + 0.03 * e[9])
    vm = (x - m) / vec3(0.07, 0.05, 0.06)
    if e[9] != 0.0 and vm.dot(vm) < 36.0:
        off += -e[9] * ti.exp(-0.5 * vm.dot(vm)) * vec3(-0.35 * x.x, 0.0, 0.03)
    return y + off


@ti.func
def ramp_slope(lo, hi, edges: ti.template()):
    """Largest |d/du smoothstep(edges[0], edges[1], u)| for u in [lo, hi] (1.5 / width where the
    interval meets the ramp, else 0)."""
    slope = 0.0
    if hi >= edges[0] and lo <= edges[1]:
        slope = 1.5 / (edges[1] - edges[0])
    return slope


@ti.func
def blink_lipschitz(x, radius, e, idp):
    """Upper bound of the spectral norm of d backward / d x_posed from the blinks, over the ball
    |x' - x| <= radius (1 where no blink acts on that ball).

    The blink maps v = x - centre to R_x(theta(v)) v, so |J| <= 1 + rp |grad theta| with rp the
    distance from the eye's x axis; theta = BLINK_ANGLE * a * bump(phi) * wr(r) * wx(|v.x|) and
    |grad phi| = 1 / rp give rp |grad theta| <= BLINK_ANGLE a (|bump'| wr wx + rp bump (|wr'| wx
    + wr |wx'|)), each factor and slope maximised over the ball's range of phi, r and |v.x| (so
    where one factor is 0 on the whole ball, e.g. below the lids, the bound stays 1). Where the closed lids meet
    (phi in BLINK_PHI_IN) the slit is squeezed ~14x, so the posed SDF is far from 1-Lipschitz
    there: the sphere tracer divides its steps by this bound (overstepping there went through
    the 2 mm lid edge and left dark speckles and broken lid edges in the capture). The two eyes
    act on disjoint balls, so the factors multiply harmlessly. Jaw and the Gaussian
    displacements are not included (the tracer's 0.8 step factor covers them).
    """
    bound = 1.0
    for k in ti.static(range(2)):
        amount = ti.abs(e[7 + k])
        ce = eye_centre(idp, 1.0 - 2.0 * k)
        v = x - ce
        r = v.norm()
        if amount != 0.0 and r - radius < BLINK_R_OUT[1]:
            rp = ti.sqrt(v.y * v.y + v.z * v.z)
            phi = ti.atan2(v.y, v.z)
            half = 4.0  # the ball covers every polar angle when it reaches the axis
            if rp > radius:
                half = ti.asin(radius / rp)
            lo, hi = phi - half, phi + half
            bump_slope = ramp_slope(lo, hi, BLINK_PHI_IN) + ramp_slope(lo, hi, BLINK_PHI_OUT)
            bump_max = smoothstep(BLINK_PHI_IN[0], BLINK_PHI_IN[1], hi) * (
                1.0 - smoothstep(BLINK_PHI_OUT[0], BLINK_PHI_OUT[1], lo))
            lo, hi = r - radius, r + radius
            wr_slope = ramp_slope(lo, hi, BLINK_R_IN) + ramp_slope(lo, hi, BLINK_R_OUT)
            wr_max = smoothstep(BLINK_R_IN[0], BLINK_R_IN[1], hi) * (
                1.0 - smoothstep(BLINK_R_OUT[0], BLINK_R_OUT[1], lo))
            ax = ti.abs(v.x)
            wx_slope = ramp_slope(ax - radius, ax + radius, BLINK_X)
            wx_max = 1.0 - smoothstep(BLINK_X[0], BLINK_X[1], ax - radius)
            rp_max = ti.min(rp + radius, BLINK_R_OUT[1])
            # |grad(bump wr wx)| <= |bump'| wr wx + bump |wr'| wx + bump wr |wx'| (factor maxima)
            bound *= 1.0 + BLINK_ANGLE * amount * (
                bump_slope * wr_max * wx_max + rp_max * bump_max * (wr_slope * wx_max + wr_max * wx_slope))
    return bound


@ti.func
def blink_safe_distance(x, v, e, idp):
    """A radius around posed point x that holds no surface, given the posed SDF value v > 0 there:
    the largest min(s, v / L(s)) over s = v, v/2, ..., v/64, with L(s) = blink_lipschitz over the
    ball of radius s (a ball of radius min(s, v / L(s)) is free: f cannot fall from v to 0 within
    it). Equals v where no blink acts; trying smaller balls keeps a far-away ramp from shrinking
    the steps of rays that never reach it."""
    best = v / blink_lipschitz(x, v, e, idp)  # s = v (== v wherever no blink reaches the ball)
    s = 0.5 * v
    for _ in range(6):
        if best >= s:  # no smaller ball can do better
            break
        best = ti.max(best, ti.min(s, v / blink_lipschitz(x, s, e, idp)))
        s *= 0.5
    return best


@ti.func
def posed_sdf(x, e, idp, fast: ti.template()):
    """sdf(backward(x, e)); fast: see head_parts (and far from the head, skip the deformation:
    it moves no point by more than MAX_DISPLACEMENT, so the head bound minus that is a bound)."""
    d = 0.0
    if ti.static(fast):
        d = head_bound(x) - MAX_DISPLACEMENT
    if ti.static(not fast) or d < 0.03:
        d = canonical_sdf(deform_backward(x, e, idp), idp, fast)
    return d


@ti.func
def tetra_dir(k):
    """Vertex k of the tetrahedron (1,-1,-1), (-1,-1,1), (-1,1,-1), (1,1,1) (gradient taps)."""
    return 2.0 * vec3(((k + 3) >> 1) & 1, (k >> 1) & 1, k & 1) - 1.0


# --------------------------------------------------------------------------- albedo
@ti.func
def hash_noise(p):
    """Smooth low-frequency variation in [-1, 1] (a few incommensurate sines)."""
    return (ti.sin(13.1 * p.x + 2.3 * ti.sin(7.7 * p.y)) * ti.sin(11.3 * p.y + 1.7)
            + 0.5 * ti.sin(29.0 * p.z + 17.0 * p.x + 3.1 * ti.sin(21.0 * p.y))) / 1.5


@ti.func
def canonical_albedo(p, idp, fast: ti.template()):
    """Albedo (RGB in [0, 1]) of the canonical head at p (meant near the surface).

    fast: see head_parts; at the surface both give the same colour up to ~1e-5."""
    return canonical_surface(p, idp, fast).xyz


@ti.func
def canonical_surface(p, idp, fast: ti.template()):
    """(r, g, b, label) of the canonical head's surface at p: the albedo and the LABEL_NAMES id
    (as a float) of the part whose own surface p lies on (the largest of the albedo's part
    weights; skin within the lid radius of an eye in front of it is "eyelids", skin under a
    brow band "brows")."""
    parts = head_parts(p, idp, fast)
    tone = 0.5 * (idp[9] + 1.0)
    skin = (1.0 - tone) * vec3(0.86, 0.67, 0.56) + tone * vec3(0.42, 0.27, 0.19)
    skin *= 1.0 + 0.06 * hash_noise(p)
    q = vec3(ti.abs(p.x), p.y, p.z)
    # rosy cheeks
    skin = skin * (1.0 - 0.12 * gauss(q - vec3(0.17, -0.07, 0.28), vec3(0.06, 0.05, 0.1)) * vec3(0.0, 1.0, 1.0))
    hc = 0.5 * (idp[10] + 1.0)
    hair = (1.0 - hc) * vec3(0.72, 0.56, 0.30) + hc * vec3(0.07, 0.05, 0.04)
    # brows: a band above each eye, in hair colour
    ce = eye_centre(idp, 1.0)
    bx = (q.x - ce.x * 0.95) / 0.055
    by = q.y - (0.118 + 0.012 * (1.0 - bx * bx))
    brow = smoothstep(1.05, 0.85, ti.abs(bx)) * smoothstep(0.014, 0.008, ti.abs(by)) * smoothstep(0.25, 0.3, q.z)
    brow_col = hair * 0.8 + 0.04 * (1.0 - hc)
    skin = skin * (1.0 - 0.85 * brow) + brow_col * 0.85 * brow
    lips = skin * vec3(0.85, 0.55, 0.55) + vec3(0.08, 0.0, 0.0)
    strands = 0.75 + 0.25 * ti.sin(140.0 * p.x + 40.0 * ti.sin(9.0 * p.z) + 20.0 * p.y)
    hair_c = hair * (0.8 + 0.2 * strands)
    # eyes: sclera, iris (hair-dependent colour), pupil, looking along +z
    v = q - ce
    ang = ti.acos(ti.math.clamp(v.z / ti.max(v.norm(), 1e-6), -1.0, 1.0))
    iris_col = (1.0 - hc) * vec3(0.25, 0.45, 0.6) + hc * vec3(0.3, 0.18, 0.08)
    eye = vec3(0.93, 0.91, 0.87)
    eye = eye * (1.0 - smoothstep(0.40, 0.36, ang)) + iris_col * smoothstep(0.40, 0.36, ang)
    eye = eye * (1.0 - smoothstep(0.17, 0.14, ang)) + vec3(0.02, 0.02, 0.02) * smoothstep(0.17, 0.14, ang)
    teeth = vec3(0.92, 0.89, 0.80)
    cavity = vec3(0.30, 0.07, 0.07)
    # soft assignment of the surface point to the part whose own surface it lies on
    eps = 0.004
    wt = PartsVec([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    for k in ti.static(range(NUM_PARTS)):
        dk = parts[k]
        if ti.static(k == 5):
            dk = -dk  # the cavity's surface is its inside wall
        wt[k] = ti.exp(-ti.abs(dk) / eps)
    wt[6] = 0.0
    wt[0] += 1e-8
    total = wt.sum()
    col = (wt[0] * skin + wt[1] * lips + wt[2] * hair_c + wt[3] * eye + wt[4] * teeth
           + wt[5] * cavity) / total
    label = LABEL_SKIN
    best_w = wt[0]
    for k in ti.static(range(1, 6)):
        if wt[k] > best_w:
            best_w = wt[k]
            label = PART_LABELS[k]
    if label == LABEL_SKIN:
        if v.norm() < LID_RADIUS + 0.006 and v.z > 0.0:
            label = LABEL_EYELIDS
        elif brow > 0.5:
            label = LABEL_BROWS
    col = ti.math.clamp(col, 0.0, 1.0)
    return ti.math.vec4(col.x, col.y, col.z, ti.cast(label, ti.f32))


# --------------------------------------------------------------------------- query kernels
@ti.func
def load_identity(ident: ti.template()):
    idp = IdVec(0.0)
    for k in ti.static(range(NUM_IDENTITY_PARAMS)):
        idp[k] = ident[k]
    return idp


@ti.func
def load_expression(expr: ti.template(), row):
    e = ExVec(0.0)
    for k in ti.static(range(NUM_EXPRESSION_PARAMS)):
        e[k] = expr[row, k]
    return e


QUERY_POSED_SDF, QUERY_POSED_SDF_NORMAL, QUERY_BACKWARD, QUERY_ALBEDO, QUERY_PROJECT = 0, 1, 2, 3, 4


@ti.kernel
def _query_kernel(x: ti.types.ndarray(dtype=ti.f32, ndim=2), expr: ti.types.ndarray(dtype=ti.f32, ndim=2),
                  ident: ti.types.ndarray(dtype=ti.f32, ndim=1), mode: ti.i32, iters: ti.i32,
                  out: ti.types.ndarray(dtype=ti.f32, ndim=2)):
    """Every per-point query in one kernel with ONE inlined SDF call site (compile time).

    SDF modes run rounds of 5 taps (value + 4 tetrahedral gradient taps); QUERY_PROJECT runs
    iters + 1 rounds and Newton-steps x <- x - f n between them. out columns:
    (f, nx, ny, nz) for the SDF modes, (x, y, z, |f|, nx, ny, nz) for QUERY_PROJECT,
    (x, y, z) canonical for QUERY_BACKWARD, (r, g, b, label) for QUERY_ALBEDO.
    """
    n_expr_rows = expr.shape[0]
    for i in range(x.shape[0]):
        idp = load_identity(ident)
        e = load_expression(expr, i if n_expr_rows > 1 else 0)
        p = vec3(x[i, 0], x[i, 1], x[i, 2])
        if mode == QUERY_BACKWARD:
            c = deform_backward(p, e, idp)
            for k in ti.static(range(3)):
                out[i, k] = c[k]
        elif mode == QUERY_ALBEDO:
            a = canonical_surface(p, idp, False)
            for k in ti.static(range(4)):
                out[i, k] = a[k]
        else:
            h = 2e-4
            taps = 1 if mode == QUERY_POSED_SDF else 5
            rounds = iters + 1 if mode == QUERY_PROJECT else 1
            f = 0.0
            g = vec3(0.0, 0.0, 0.0)
            n = vec3(0.0, 0.0, 1.0)
            for step in range(taps * rounds):
                tap = step % taps
                q = p
                if tap > 0:
                    q = p + h * tetra_dir(tap - 1)
                v = posed_sdf(q, e, idp, False)
                if tap == 0:
                    f = v
                    g = vec3(0.0, 0.0, 0.0)
                else:
                    g += tetra_dir(tap - 1) * v
                if tap == taps - 1 and taps == 5:
                    n = g.normalized(1e-12)
                    if mode == QUERY_PROJECT and step < taps * rounds - 1:
                        p = p - f * n
            if mode == QUERY_PROJECT:
                for k in ti.static(range(3)):
                    out[i, k] = p[k]
                    out[i, 4 + k] = n[k]
                out[i, 3] = ti.abs(f)
            else:
                out[i, 0] = f
                if taps == 5:
                    for k in ti.static(range(3)):
                        out[i, 1 + k] = n[k]


@ti.kernel
def _lipschitz_kernel(x: ti.types.ndarray(dtype=ti.f32, ndim=2), expr: ti.types.ndarray(dtype=ti.f32, ndim=2),
                      ident: ti.types.ndarray(dtype=ti.f32, ndim=1), radius: ti.f32,
                      out: ti.types.ndarray(dtype=ti.f32, ndim=1)):
    n_expr_rows = expr.shape[0]
    for i in range(x.shape[0]):
        e = load_expression(expr, i if n_expr_rows > 1 else 0)
        out[i] = blink_lipschitz(vec3(x[i, 0], x[i, 1], x[i, 2]), radius, e, load_identity(ident))


# --------------------------------------------------------------------------- python API
def _as_points(name: str, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"{name} must be (N, 3), got {tuple(x.shape)}")
    runtime.check_device(name, x)
    return x.detach().to(torch.float32).contiguous()


class SyntheticHead:
    """One procedural identity: analytic SDF, albedo and backward expression deformation.

    All query methods take torch float tensors of canonical / posed points ``(N, 3)`` on the
    device Taichi runs on (CPU, or CUDA when Taichi uses CUDA) and return float32 tensors on the
    same device. No gradients flow through them (they produce training targets).
    """

    def __init__(self, identity: np.ndarray):
        identity = np.asarray(identity, dtype=np.float32).reshape(-1)
        if identity.shape != (NUM_IDENTITY_PARAMS,):
            raise ValueError(f"identity must have {NUM_IDENTITY_PARAMS} parameters, got {identity.shape}")
        if not np.all(np.isfinite(identity)):
            raise ValueError("identity parameters must be finite")
        self.identity = identity

    # ---- construction
    @classmethod
    def from_seed(cls, seed: int) -> "SyntheticHead":
        """A random identity: parameters ~ N(0, 0.5) clipped to [-1, 1]."""
        rng = np.random.default_rng(int(seed))
        return cls(np.clip(rng.normal(0.0, 0.5, NUM_IDENTITY_PARAMS), -1.0, 1.0).astype(np.float32))

    @staticmethod
    def neutral_expression() -> np.ndarray:
        return np.zeros(NUM_EXPRESSION_PARAMS, np.float32)

    @staticmethod
    def random_expression(rng: np.random.Generator, active: float = 0.5) -> np.ndarray:
        """A random expression: each parameter active with probability `active`, value U(0, 1)."""
        mask = rng.random(NUM_EXPRESSION_PARAMS) < active
        return (mask * rng.random(NUM_EXPRESSION_PARAMS)).astype(np.float32)

    # ---- helpers
    def _ident(self, device) -> torch.Tensor:
        return torch.as_tensor(self.identity, dtype=torch.float32, device=device)

    def _expr(self, expr, n: int, device) -> torch.Tensor:
        if expr is None:
            return torch.zeros(1, NUM_EXPRESSION_PARAMS, dtype=torch.float32, device=device)
        e = torch.as_tensor(expr, dtype=torch.float32).to(device)
        if e.ndim == 1:
            e = e[None]
        if e.ndim != 2 or e.shape[1] != NUM_EXPRESSION_PARAMS or e.shape[0] not in (1, n):
            raise ValueError(f"expr must be ({NUM_EXPRESSION_PARAMS},) or (N={n}, {NUM_EXPRESSION_PARAMS}), "
                             f"got {tuple(e.shape)}")
        return e.contiguous()

    def _query(self, x, expr, mode: int, width: int) -> torch.Tensor:
        x = _as_points("x", x)
        out = torch.zeros(x.shape[0], width, dtype=torch.float32, device=x.device)
        if x.shape[0]:
            _query_kernel(x, self._expr(expr, x.shape[0], x.device), self._ident(x.device), mode, 0, out)
        return out

    # ---- fields
    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3) canonical -> (N,) signed distance (canonical units, negative inside)."""
        return self._query(x, None, QUERY_POSED_SDF, 1)[:, 0]

    def posed_sdf(self, x_posed: torch.Tensor, expr) -> torch.Tensor:
        """(N, 3) posed (head frame) -> (N,) = sdf(backward(x_posed, expr))."""
        return self._query(x_posed, expr, QUERY_POSED_SDF, 1)[:, 0]

    def sdf_gradient(self, x: torch.Tensor, expr=None) -> torch.Tensor:
        """(N, 3) -> (N, 3) unit normals of the (posed, if expr given) SDF (finite differences)."""
        return self._query(x, expr, QUERY_POSED_SDF_NORMAL, 4)[:, 1:4]

    def backward(self, x_posed: torch.Tensor, expr) -> torch.Tensor:
        """(N, 3) posed -> (N, 3) canonical. expr: (E,) or (N, E)."""
        return self._query(x_posed, expr, QUERY_BACKWARD, 3)

    def albedo(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3) canonical -> (N, 3) RGB in [0, 1]."""
        return self._query(x, None, QUERY_ALBEDO, 4)[:, :3]

    def surface_label(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3) canonical surface points -> (N,) int64 ids into LABEL_NAMES (what they show)."""
        return self._query(x, None, QUERY_ALBEDO, 4)[:, 3].round().long()

    def blink_lipschitz(self, x_posed: torch.Tensor, expr, radius: float = 0.0) -> torch.Tensor:
        """(N, 3) posed -> (N,) upper bound of the blinks' |d backward / d x| over the ball of
        ``radius`` (canonical units) around each point; see the Taichi function of that name."""
        x = _as_points("x", x_posed)
        out = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
        if x.shape[0]:
            _lipschitz_kernel(x, self._expr(expr, x.shape[0], x.device), self._ident(x.device), float(radius), out)
        return out

    def project_to_surface(self, x: torch.Tensor, expr=None, iters: int = 6):
        """Newton-project points onto the (posed) zero level set.

        Returns (points (N, 3), residual |sdf| (N,), normals (N, 3))."""
        x = _as_points("x", x)
        out = torch.zeros(x.shape[0], 7, dtype=torch.float32, device=x.device)
        if x.shape[0]:
            _query_kernel(x, self._expr(expr, x.shape[0], x.device), self._ident(x.device), QUERY_PROJECT,
                          int(iters), out)
        return out[:, :3], out[:, 3], out[:, 4:7]

    def sample_surface(self, n: int, expr=None, seed: int = 0, return_normals: bool = False,
                       device=None, tolerance: float = 1e-4):
        """n points on the (posed, if expr given) zero level set, (n, 3) on `device`.

        Points are drawn uniformly in the bounding box, kept within a shell of the surface,
        Newton-projected and kept if |sdf| < tolerance. Interior surfaces (mouth cavity, teeth,
        eyeballs under the lids) are included: they are part of the zero level set.
        """
        if device is None:
            device = "cuda" if runtime.ensure_initialized() == "cuda" else "cpu"
        gen = torch.Generator().manual_seed(int(seed))
        lo = torch.tensor(BOUNDS_MIN)
        hi = torch.tensor(BOUNDS_MAX)
        lo[1] = -0.9  # stop the neck short: samples concentrate on the head
        kept_p, kept_n, have = [], [], 0
        for _ in range(64):
            cand = lo + (hi - lo) * torch.rand(max(4 * n, 4096), 3, generator=gen)
            cand = cand.to(device)
            near = self.posed_sdf(cand, expr).abs() < 0.03
            cand = cand[near]
            p, res, nrm = self.project_to_surface(cand, expr)
            ok = res < tolerance
            kept_p.append(p[ok])
            kept_n.append(nrm[ok])
            have += int(ok.sum())
            if have >= n:
                break
        if have < n:
            raise RuntimeError(f"could only sample {have} of {n} surface points")
        pts = torch.cat(kept_p)[:n]
        nrms = torch.cat(kept_n)[:n]
        return (pts, nrms) if return_normals else pts

    def __repr__(self) -> str:
        vals = ", ".join(f"{k}={v:+.2f}" for k, v in zip(IDENTITY_NAMES, self.identity))
        return f"SyntheticHead({vals})"


__all__ = [
    "SyntheticHead", "NUM_IDENTITY_PARAMS", "NUM_EXPRESSION_PARAMS", "EXPRESSION_NAMES", "IDENTITY_NAMES",
    "UNIT_METRES", "BOUNDS_MIN", "BOUNDS_MAX", "LABEL_NAMES", "NUM_LABELS",
]
