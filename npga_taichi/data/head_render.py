"""Sphere-trace a posed :class:`~npga_taichi.data.synthetic.SyntheticHead` into many cameras.

One Taichi kernel renders every pixel x sample of every camera of a frame: rays are
transformed into the head frame (``x_world = s R x_posed + t``), clipped to the head's bounding
box and sphere-traced on ``sdf(backward(x, e))`` (the SDF written once in ``synthetic.py``).
Each thread renders a tile of ``TILE x TILE`` pixels: one cone containing every ray of the tile
is marched from the bounding box towards the head first (the long, shared part of the march);
from where it stopped, one cone per pixel containing all its sample rays; then each of the
``n x n`` stratified, hash-jittered samples (default 2 x 2 = 4) is traced from where the pixel's
cone stopped.
The alpha matte is the fraction of samples that hit. A hit is shaded with the SDF normal under
fixed studio lighting (key + fill + ambient + a weak specular, two-tap ambient occlusion so
the mouth cavity is dark); normal, occlusion and albedo are computed once per pixel and again
for any sample that lands on another surface (a depth jump), so silhouettes and occlusion
edges are antialiased by all samples. Pixel centres are at (j + 0.5, i + 0.5) (the
rasterizer's convention); cameras are world->camera OpenCV with intrinsics at the rendered
resolution. The kernel is a small state machine with a single SDF call site, which keeps its
cold compile short.

Besides the image, the kernel reports per pixel the world position and normal where the first
hitting sample hit (NaN where all missed): the capture writer turns these into point clouds;
and what the pixel shows (skin, eyelids, eyes, lips, ... as ids of ``synthetic.LABEL_NAMES``),
by majority of its samples: the capture writes these as label maps for region-aware evaluation.

Step sizes: the posed SDF ``sdf(backward(x))`` is not 1-Lipschitz where the blinks squeeze the
eye slit into the seam of the closed lids; every step is divided by the analytic bound of the
deformation's stretch (``synthetic.blink_lipschitz``), so no ray steps through a lid edge.
"""
# (no `from __future__ import annotations`: Taichi reads kernel annotations as objects)
from dataclasses import dataclass

import numpy as np
import taichi as ti
import torch

from npga_taichi.data import synthetic as syn
from npga_taichi.kernels import runtime

vec3 = ti.math.vec3


@dataclass
class Lighting:
    """Fixed studio lighting, directions in world coordinates (towards the light)."""

    key_dir: tuple = (0.45, 0.55, 0.75)   # upper front, from the subject's left
    key: float = 0.85                     # key light intensity
    fill_dir: tuple = (-0.7, 0.1, 0.55)   # front right, low
    fill: float = 0.35                    # fill light intensity
    ambient: float = 0.28                 # ambient term (scaled by occlusion)
    specular: float = 0.08                # Blinn-Phong specular strength of the key light
    background: tuple = (0.55, 0.55, 0.55)  # studio backdrop behind the head (RGB)

    def as_array(self) -> np.ndarray:
        kd = np.asarray(self.key_dir, np.float64)
        fd = np.asarray(self.fill_dir, np.float64)
        kd /= np.linalg.norm(kd)
        fd /= np.linalg.norm(fd)
        return np.array([*kd, *fd, self.key, self.fill, self.ambient, self.specular, *self.background],
                        np.float32)


@ti.func
def hash01(a: ti.u32, b: ti.u32, c: ti.u32) -> ti.f32:
    """Deterministic hash of three integers -> [0, 1)."""
    h = a * ti.u32(0x8DA6B343) ^ b * ti.u32(0xD8163841) ^ c * ti.u32(0xCB1AB31F)
    h ^= h >> ti.u32(15)
    h *= ti.u32(0x2C1B3C6D)
    h ^= h >> ti.u32(12)
    h *= ti.u32(0x297A2D39)
    h ^= h >> ti.u32(15)
    return ti.cast(h >> ti.u32(8), ti.f32) / 16777216.0


@ti.func
def axis_dir(k):
    """Unit vector along axis k (0, 1, 2): the normal's forward-difference taps."""
    return vec3(ti.cast(k == 0, ti.f32), ti.cast(k == 1, ti.f32), ti.cast(k == 2, ti.f32))


@ti.func
def slab(o, d, bmin, bmax):
    """(t_enter, t_exit) of the ray o + t d through the box [bmin, bmax] (enter > exit: miss)."""
    t_enter = -1e30
    t_exit = 1e30
    for k in ti.static(range(3)):
        inv = 1.0 / (d[k] if ti.abs(d[k]) > 1e-9 else 1e-9)
        ta = (bmin[k] - o[k]) * inv
        tb = (bmax[k] - o[k]) * inv
        t_enter = ti.max(t_enter, ti.min(ta, tb))
        t_exit = ti.min(t_exit, ti.max(ta, tb))
    return ti.math.vec2(t_enter, t_exit)


LabelVotes = ti.types.vector(syn.NUM_LABELS, ti.i32)
PHASE_CONE, PHASE_NEXT, PHASE_TRACE, PHASE_NORMAL, PHASE_AO, PHASE_SHADE, PHASE_TILE, PHASE_PIXEL = range(8)
# Pixels per side of the tiles whose shared cone is marched before their pixels' own cones.
TILE = 4
# A pixel's cone stops this close (head units) to the surface; its samples trace from there.
CONE_CLEARANCE = 0.0015
# A sample ray that has not hit after this many sphere-tracing steps counts as a miss (steps
# shrink by up to ~20x where closed lids meet, see synthetic.blink_lipschitz).
MAX_TRACE_STEPS = 400
# Forward-difference step (head units, 0.125 mm) of the SDF normal at a hit.
NORMAL_STEP = 5e-4


@ti.kernel
def _render_kernel(viewmats: ti.types.ndarray(dtype=ti.f32, ndim=3), Ks: ti.types.ndarray(dtype=ti.f32, ndim=3),
                   pose: ti.types.ndarray(dtype=ti.f32, ndim=2), ident: ti.types.ndarray(dtype=ti.f32, ndim=1),
                   expr: ti.types.ndarray(dtype=ti.f32, ndim=2), light: ti.types.ndarray(dtype=ti.f32, ndim=1),
                   side: ti.i32, seed: ti.i32, first_camera: ti.i32, tile: ti.i32,
                   rgba: ti.types.ndarray(dtype=ti.f32, ndim=4), hits: ti.types.ndarray(dtype=ti.f32, ndim=4),
                   labels: ti.types.ndarray(dtype=ti.i32, ndim=3)):
    n_cams, height, width = rgba.shape[0], rgba.shape[1], rgba.shape[2]
    n_ty = (height + tile - 1) // tile
    n_tx = (width + tile - 1) // tile
    for c, ty, tx in ti.ndrange(n_cams, n_ty, n_tx):
        idp = syn.load_identity(ident)
        e = syn.load_expression(expr, 0)
        # head pose: x_world = s R x_posed + t  (pose rows 0..2 = [R | t], pose[3, 0] = s)
        R = ti.Matrix([[pose[r, k] for k in ti.static(range(3))] for r in ti.static(range(3))])
        t_head = vec3(pose[0, 3], pose[1, 3], pose[2, 3])
        s_head = pose[3, 0]
        # camera: world->camera [Rc | t_cam]; centre = -Rc^T t_cam
        Rc = ti.Matrix([[viewmats[c, r, k] for k in ti.static(range(3))] for r in ti.static(range(3))])
        t_cam = vec3(viewmats[c, 0, 3], viewmats[c, 1, 3], viewmats[c, 2, 3])
        cam_o = -(Rc.transpose() @ t_cam)
        fx, fy, cx, cy = Ks[c, 0, 0], Ks[c, 1, 1], Ks[c, 0, 2], Ks[c, 1, 2]
        o_p = (R.transpose() @ (cam_o - t_head)) / s_head
        key_dir = vec3(light[0], light[1], light[2])
        fill_dir = vec3(light[3], light[4], light[5])
        bg = vec3(light[10], light[11], light[12])
        pixel_angle = 1.0 / ti.max(fx, fy)
        bmin = vec3(syn.BOUNDS_MIN[0], syn.BOUNDS_MIN[1], syn.BOUNDS_MIN[2])
        bmax = vec3(syn.BOUNDS_MAX[0], syn.BOUNDS_MAX[1], syn.BOUNDS_MAX[2])
        # The tile is rendered by one state machine whose every iteration evaluates the posed
        # SDF at exactly one point: the SDF is inlined once (it dominates compile time).
        #   TILE:   march one cone containing every ray of the tile's pixels while it is clear
        #           of the surface (most of the march from the bounding box to the head is
        #           shared by tile x tile pixels);
        #   PIXEL:  next pixel of the tile (no SDF evaluation);
        #   CONE:   from there, march one cone containing all the pixel's sample rays (a step of
        #           sdf - cone radius is safe for all of them);
        #   TRACE:  sphere-trace sample `sidx` from where the cone stopped;
        #   NORMAL: 3 forward-difference taps at the hit;  AO: 2 occlusion taps along n.
        # Normal, occlusion and albedo vary slowly at this resolution: they are computed for the
        # pixel's first hit and again only for a sample on another surface (a depth jump, e.g.
        # the nose over the cheek), so silhouettes stay antialiased by every sample.
        tile_c = vec3((tx * tile + 0.5 * tile - cx) / fx, (ty * tile + 0.5 * tile - cy) / fy, 1.0)
        d_tile = R.transpose() @ (Rc.transpose() @ tile_c).normalized()
        cone_tile = 0.75 * tile * pixel_angle * 1.05  # half-diagonal of the tile, per unit distance
        span_t = slab(o_p, d_tile, bmin, bmax)
        t_tile = ti.max(span_t[0] - 0.05, 0.0)
        # past the centre ray's exit + the tile's half-width, every pixel ray has left the box
        t_tile_far = span_t[1] + 0.05 + cone_tile * span_t[1]
        cone = 0.75 * pixel_angle * 1.05  # half-diagonal of a pixel, per unit distance
        i = 0
        j = 0
        pidx = -1
        acc = vec3(0.0, 0.0, 0.0)
        n_hit = 0
        first = 1
        n_w = vec3(0.0, 0.0, 1.0)  # shading state shared by the pixel's samples
        ao = 1.0
        alb = vec3(0.0, 0.0, 0.0)
        lab = 0
        votes = LabelVotes(0)  # samples per label of the current pixel
        t_shaded = 0.0
        d_cp = vec3(0.0, 0.0, 1.0)
        t_cone = 0.0
        t_cone_far = 0.0
        phase = PHASE_TILE
        if t_tile >= t_tile_far:
            phase = PHASE_PIXEL
        sidx = -1
        tt = 0.0
        t_far = 0.0
        steps = 0
        tap = 0
        d_world = vec3(0.0, 0.0, 1.0)
        d_p = vec3(0.0, 0.0, 1.0)
        xp = vec3(0.0, 0.0, 0.0)
        n_p = vec3(0.0, 0.0, 1.0)
        g = vec3(0.0, 0.0, 0.0)
        v_hit = 0.0
        v_cone = 0.0
        occ = 0.0
        # safety cap on the state machine: every sample's trace, normal and occlusion taps
        max_iters = tile * tile * (side * side * (MAX_TRACE_STEPS + 10) + 300) + 300
        for _ in range(max_iters):
            if phase == PHASE_PIXEL:  # set up the tile's next pixel (no SDF evaluation)
                pidx += 1
                if pidx >= tile * tile:
                    break
                i = ty * tile + pidx // tile
                j = tx * tile + pidx % tile
                if i < height and j < width:
                    acc = vec3(0.0, 0.0, 0.0)
                    n_hit = 0
                    votes = LabelVotes(0)
                    first = 1
                    for k in ti.static(range(6)):
                        hits[c, i, j, k] = ti.math.nan
                    d_centre = (Rc.transpose() @ vec3((j + 0.5 - cx) / fx, (i + 0.5 - cy) / fy, 1.0)).normalized()
                    d_cp = R.transpose() @ d_centre
                    span_c = slab(o_p, d_cp, bmin, bmax)
                    t_cone = ti.max(span_c[0] - 0.05, t_tile)
                    t_cone_far = span_c[1] + 0.05
                    v_cone = 0.0
                    sidx = -1
                    phase = PHASE_CONE
                    if t_cone >= t_cone_far:
                        phase = PHASE_NEXT
                continue
            if phase == PHASE_NEXT:  # set up the next sample ray (no SDF evaluation)
                sidx += 1
                if sidx >= side * side:  # the pixel is done
                    col = acc / (side * side)
                    for k in ti.static(range(3)):
                        rgba[c, i, j, k] = ti.math.clamp(col[k], 0.0, 1.0)
                    rgba[c, i, j, 3] = n_hit / (side * side)
                    best = 0  # the label most samples show; ties go to the higher (rarer) id
                    best_votes = votes[0]
                    for k in ti.static(range(1, syn.NUM_LABELS)):  # static: no dynamic indexing
                        if votes[k] >= best_votes:
                            best = k
                            best_votes = votes[k]
                    labels[c, i, j] = best
                    phase = PHASE_PIXEL
                    continue
                su = (sidx % side + hash01(ti.u32((c + first_camera) * 7919 + seed), ti.u32(i * 65537 + j), ti.u32(2 * sidx))) / side
                sv = (sidx // side + hash01(ti.u32((c + first_camera) * 7919 + seed), ti.u32(i * 65537 + j),
                                                   ti.u32(2 * sidx + 1))) / side
                d_world = (Rc.transpose() @ vec3((j + su - cx) / fx, (i + sv - cy) / fy, 1.0)).normalized()
                d_p = R.transpose() @ d_world  # unit; distances along it are in head units
                span = slab(o_p, d_p, bmin, bmax)
                # The cone's last value bounds this ray's distance at t_cone (minus how far the
                # ray is from the cone's axis there): the first step is free.
                free = ti.max(v_cone - t_cone * (d_p - d_cp).norm(), 0.0)
                tt = ti.max(ti.max(span[0], 0.0), t_cone + 0.8 * free)
                t_far = span[1]
                steps = 0
                phase = PHASE_TRACE
                if tt >= t_far:
                    acc += bg
                    votes[0] += 1
                    phase = PHASE_NEXT
                continue
            q = o_p + t_cone * d_cp
            if phase == PHASE_TILE:
                q = o_p + t_tile * d_tile
            elif phase == PHASE_TRACE:
                q = o_p + tt * d_p
            elif phase == PHASE_NORMAL:
                q = xp + NORMAL_STEP * axis_dir(tap)
            elif phase == PHASE_AO:
                q = xp + (0.015 + 0.035 * tap) * n_p
            v = syn.posed_sdf(q, e, idp, True)  # the single call site
            # A safe step: the posed SDF is sdf(backward(x)) and the blinks stretch backward up
            # to ~20x where the closed lids meet (see synthetic.blink_lipschitz); marching by v
            # there stepped through the 2 mm lid edge (dark speckles, broken lid edges).
            vs = v
            if v > 0.0:
                vs = syn.blink_safe_distance(q, v, e, idp)
            if phase == PHASE_TILE:
                clearance = vs - cone_tile * t_tile
                if clearance < 0.001:
                    phase = PHASE_PIXEL
                else:
                    t_tile += 0.8 * clearance
                    if t_tile >= t_tile_far:  # every pixel misses
                        phase = PHASE_PIXEL
            elif phase == PHASE_CONE:
                v_cone = vs
                clearance = vs - cone * t_cone
                if clearance < CONE_CLEARANCE:
                    phase = PHASE_NEXT
                else:
                    # full steps near the surface, as in TRACE below
                    t_cone += clearance if clearance < 2.0 * t_cone * pixel_angle else 0.8 * clearance
                    if t_cone >= t_cone_far:  # every sample misses
                        phase = PHASE_NEXT
            elif phase == PHASE_TRACE:
                steps += 1
                if v < ti.max(2e-4, 0.4 * tt * pixel_angle):  # 0.4 of a pixel footprint
                    xp = o_p + tt * d_p
                    v_hit = v
                    if first == 1 or ti.abs(tt - t_shaded) > 0.01:
                        phase = PHASE_NORMAL
                        tap = 0
                        g = vec3(0.0, 0.0, 0.0)
                    else:
                        phase = PHASE_SHADE
                else:
                    # 0.8: the Gaussian displacements keep the composition slightly above
                    # 1-Lipschitz even where vs has divided out the blinks' stretch
                    step = 0.8 * vs
                    if vs < 2.0 * tt * pixel_angle:
                        # Within two pixel footprints of the surface a full step overshoots by
                        # at most the deformation's small excess over 1-Lipschitz; once the
                        # pixel's first sample has hit, step to the tangent plane of that hit
                        # (at most 2 v; not where a blink stretches the field). Overshooting into the surface ends the trace a
                        # fraction of a pixel deep.
                        step = vs
                        if first == 0 and vs == v:
                            step = vs / ti.max(-n_p.dot(d_p), 0.5)
                    tt += step
                    if tt > t_far or steps >= MAX_TRACE_STEPS:
                        acc += bg
                        votes[0] += 1
                        phase = PHASE_NEXT
            elif phase == PHASE_NORMAL:
                g += axis_dir(tap) * (v - v_hit)
                tap += 1
                if tap == 3:
                    n_p = g.normalized(1e-12)
                    n_w = R @ n_p
                    phase = PHASE_AO
                    tap = 0
                    occ = 0.0
            elif phase == PHASE_AO:
                hk = 0.015 + 0.035 * tap
                occ += (hk - ti.max(v, 0.0)) / hk * (0.45 - 0.2 * tap)
                tap += 1
                if tap == 2:
                    ao = ti.math.clamp(1.0 - occ, 0.05, 1.0)
                    surf = syn.canonical_surface(syn.deform_backward(xp, e, idp), idp, True)
                    alb = surf.xyz
                    lab = ti.cast(surf.w + 0.5, ti.i32)
                    t_shaded = tt
                    phase = PHASE_SHADE
            if phase == PHASE_SHADE:  # accumulate the sample's colour with the current shading
                half = (key_dir - d_world).normalized()
                diffuse = light[6] * ti.max(n_w.dot(key_dir), 0.0) * (0.35 + 0.65 * ao) + \
                    light[7] * ti.max(n_w.dot(fill_dir), 0.0) * (0.35 + 0.65 * ao) + light[8] * ao
                spec = light[9] * ti.pow(ti.max(n_w.dot(half), 0.0), 32.0) * ao
                acc += alb * diffuse + spec
                n_hit += 1
                for k in ti.static(range(1, syn.NUM_LABELS)):
                    if lab == k:
                        votes[k] += 1
                if first == 1:
                    first = 0
                    xw = s_head * (R @ xp) + t_head
                    for k in ti.static(range(3)):
                        hits[c, i, j, k] = xw[k]
                        hits[c, i, j, 3 + k] = n_w[k]
                phase = PHASE_NEXT


def render_head(head: "syn.SyntheticHead", expr, viewmats: torch.Tensor, Ks: torch.Tensor, width: int,
                height: int, rotation=None, translation=None, scale: float = syn.UNIT_METRES,
                samples_per_side: int = 2, lighting: Lighting | None = None, seed: int = 0,
                tile: int = TILE, first_camera: int = 0):
    """Render one posed head into C cameras.

    Args:
        head: the identity.
        expr: (E,) expression parameters.
        viewmats: (C, 4, 4) world->camera, OpenCV. Ks: (C, 3, 3) pixels at (width, height).
        rotation (3, 3), translation (3,) metres, scale (metres per unit): x_world = s R x + t.
        samples_per_side: n -> n*n stratified samples per pixel.
        seed: jitter seed of the samples; camera c's jitter also depends on c + first_camera,
            so camera k of a rig rendered alone (``first_camera=k``) gets the same samples as
            in a render of the whole rig.
        tile: pixels per side of the tiles that share a cone march (speed only: the image
            changes only within the tracer's hit tolerance).
    Returns:
        (rgba, hits, labels): rgba (C, H, W, 4) float32 in [0, 1] (colour over the lighting's backdrop, alpha matte) and
        hits (C, H, W, 6): world position and world normal of the first sample's hit, NaN = miss;
        labels (C, H, W) int32: what the pixel shows, an id into ``synthetic.LABEL_NAMES`` (0 =
        background): the label of the surface most of its samples hit (misses vote background;
        ties go to the higher id, the rarer part).
    """
    runtime.ensure_initialized()
    if samples_per_side < 1:
        raise ValueError(f"samples_per_side must be >= 1, got {samples_per_side}")
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    viewmats = torch.as_tensor(viewmats, dtype=torch.float32)
    device = viewmats.device
    runtime.check_device("viewmats", viewmats)
    Ks = torch.as_tensor(Ks, dtype=torch.float32, device=device)
    if viewmats.ndim != 3 or viewmats.shape[1:] != (4, 4):
        raise ValueError(f"viewmats must be (C, 4, 4), got {tuple(viewmats.shape)}")
    if Ks.shape != (viewmats.shape[0], 3, 3):
        raise ValueError(f"Ks must be (C, 3, 3) matching viewmats, got {tuple(Ks.shape)}")
    pose = torch.zeros(4, 4, dtype=torch.float32)
    pose[:3, :3] = torch.eye(3) if rotation is None else torch.as_tensor(rotation, dtype=torch.float32)
    if translation is not None:
        pose[:3, 3] = torch.as_tensor(translation, dtype=torch.float32)
    pose[3, 0] = float(scale)
    expr_t = torch.as_tensor(np.asarray(expr, np.float32).reshape(1, -1), device=device)
    if expr_t.shape[1] != syn.NUM_EXPRESSION_PARAMS:
        raise ValueError(f"expr must have {syn.NUM_EXPRESSION_PARAMS} parameters, got {expr_t.shape[1]}")
    light = torch.as_tensor((lighting or Lighting()).as_array(), device=device)
    n_cams = viewmats.shape[0]
    rgba = torch.zeros(n_cams, height, width, 4, dtype=torch.float32, device=device)
    hits = torch.zeros(n_cams, height, width, 6, dtype=torch.float32, device=device)
    labels = torch.zeros(n_cams, height, width, dtype=torch.int32, device=device)
    _render_kernel(viewmats.contiguous(), Ks.contiguous(), pose.to(device), head._ident(device), expr_t,
                   light, int(samples_per_side), int(seed), int(first_camera), int(tile), rgba, hits, labels)
    return rgba, hits, labels
