"""Sphere-trace a posed :class:`~npga_taichi.data.synthetic.SyntheticHead` into many cameras.

One Taichi kernel renders every pixel x sample of every camera of a frame: rays are
transformed into the head frame (``x_world = s R x_posed + t``), clipped to the head's bounding
box and sphere-traced on ``sdf(backward(x, e))`` (the SDF written once in ``synthetic.py``).
A hit is shaded with the SDF normal under fixed studio lighting (key + fill + ambient + a weak
specular, with two-tap ambient occlusion so the mouth cavity is dark). Antialiasing: ``n x n``
stratified, hash-jittered samples per pixel (default 2 x 2 = 4); the alpha matte is the fraction
of samples that hit. Pixel centres are at (j + 0.5, i + 0.5) (the rasterizer's convention);
cameras are world->camera OpenCV with intrinsics at the rendered resolution.

Besides the image, the kernel reports per pixel the world position and normal where the first
sample hit (NaN where it missed): the capture writer turns these into the point clouds.
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


@ti.kernel
def _render_kernel(viewmats: ti.types.ndarray(dtype=ti.f32, ndim=3), Ks: ti.types.ndarray(dtype=ti.f32, ndim=3),
                   pose: ti.types.ndarray(dtype=ti.f32, ndim=2), ident: ti.types.ndarray(dtype=ti.f32, ndim=1),
                   expr: ti.types.ndarray(dtype=ti.f32, ndim=2), light: ti.types.ndarray(dtype=ti.f32, ndim=1),
                   side: ti.i32, seed: ti.i32,
                   rgba: ti.types.ndarray(dtype=ti.f32, ndim=4), hits: ti.types.ndarray(dtype=ti.f32, ndim=4)):
    n_cams, height, width = rgba.shape[0], rgba.shape[1], rgba.shape[2]
    for c, i, j in ti.ndrange(n_cams, height, width):
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
        acc = vec3(0.0, 0.0, 0.0)
        n_hit = 0
        first = 1
        n_w = vec3(0.0, 0.0, 1.0)  # shading state shared by the pixel's samples
        ao = 1.0
        alb = vec3(0.0, 0.0, 0.0)
        t_shaded = 0.0
        for k in ti.static(range(6)):
            hits[c, i, j, k] = ti.math.nan
        # Pixel cone: march one cone that contains every sample ray of the pixel while it is
        # clear of the surface (a step of sdf - cone radius is safe for all of them); each sample
        # ray then starts where the cone stopped. Saves most of the far steps of the n*n rays.
        d_centre = (Rc.transpose() @ vec3((j + 0.5 - cx) / fx, (i + 0.5 - cy) / fy, 1.0)).normalized()
        d_cp = R.transpose() @ d_centre
        cone = 0.75 * pixel_angle * 1.05  # half-diagonal of a pixel, per unit distance
        span_c = slab(o_p, d_cp, bmin, bmax)
        t_cone = ti.max(span_c[0] - 0.05, 0.0)
        t_cone_far = span_c[1] + 0.05
        while t_cone < t_cone_far:
            clearance = syn.posed_sdf(o_p + t_cone * d_cp, e, idp, True) - cone * t_cone
            if clearance < 0.004:
                break
            t_cone += 0.8 * clearance
        for sidx in range(side * side):
            su = (sidx % side + hash01(ti.u32(c * 7919 + seed), ti.u32(i * 65537 + j), ti.u32(2 * sidx))) / side
            sv = (sidx // side + hash01(ti.u32(c * 7919 + seed), ti.u32(i * 65537 + j), ti.u32(2 * sidx + 1))) / side
            d_cam = vec3((j + su - cx) / fx, (i + sv - cy) / fy, 1.0)
            d_world = (Rc.transpose() @ d_cam).normalized()
            d_p = R.transpose() @ d_world  # unit; distances along it are in head units
            # slab test against the head's bounding box
            span = slab(o_p, d_p, bmin, bmax)
            t_near = ti.max(ti.max(span[0], 0.0), t_cone)
            t_far = span[1]
            hit = 0
            tt = t_near
            if t_near < t_far:
                for _ in range(160):
                    dist = syn.posed_sdf(o_p + tt * d_p, e, idp, True)
                    if dist < ti.max(2e-4, 0.25 * tt * pixel_angle):
                        hit = 1
                        break
                    # 0.8: the composition with the deformation is not exactly 1-Lipschitz
                    tt += 0.8 * dist
                    if tt > t_far:
                        break
            if hit == 1:
                xp = o_p + tt * d_p
                # Normal, occlusion and albedo vary slowly at this resolution: shade once per
                # pixel, and again only for a sample on another surface (a depth jump, e.g. the
                # nose over the cheek), so silhouettes stay antialiased by every sample.
                if first == 1 or ti.abs(tt - t_shaded) > 0.01:
                    n_p = syn.posed_normal(xp, e, idp, 5e-4, True)
                    n_w = R @ n_p
                    # two-tap ambient occlusion along the normal (mouth cavity, nostrils, ears)
                    occ = 0.0
                    for k in range(2):
                        hk = 0.015 + 0.035 * k
                        occ += (hk - ti.max(syn.posed_sdf(xp + hk * n_p, e, idp, True), 0.0)) / hk * (0.45 - 0.2 * k)
                    ao = ti.math.clamp(1.0 - occ, 0.05, 1.0)
                    alb = syn.canonical_albedo(syn.deform_backward(xp, e, idp), idp, True)
                    t_shaded = tt
                view = -d_world
                half = (key_dir + view).normalized()
                diffuse = light[6] * ti.max(n_w.dot(key_dir), 0.0) * (0.35 + 0.65 * ao) + \
                    light[7] * ti.max(n_w.dot(fill_dir), 0.0) * (0.35 + 0.65 * ao) + light[8] * ao
                spec = light[9] * ti.pow(ti.max(n_w.dot(half), 0.0), 32.0) * ao
                acc += alb * diffuse + spec
                n_hit += 1
                if first == 1:
                    first = 0
                    xw = s_head * (R @ xp) + t_head
                    for k in ti.static(range(3)):
                        hits[c, i, j, k] = xw[k]
                        hits[c, i, j, 3 + k] = n_w[k]
            else:
                acc += bg
        col = acc / (side * side)
        for k in ti.static(range(3)):
            rgba[c, i, j, k] = ti.math.clamp(col[k], 0.0, 1.0)
        rgba[c, i, j, 3] = n_hit / (side * side)


def render_head(head: "syn.SyntheticHead", expr, viewmats: torch.Tensor, Ks: torch.Tensor, width: int,
                height: int, rotation=None, translation=None, scale: float = syn.UNIT_METRES,
                samples_per_side: int = 2, lighting: Lighting | None = None, seed: int = 0):
    """Render one posed head into C cameras.

    Args:
        head: the identity.
        expr: (E,) expression parameters.
        viewmats: (C, 4, 4) world->camera, OpenCV. Ks: (C, 3, 3) pixels at (width, height).
        rotation (3, 3), translation (3,) metres, scale (metres per unit): x_world = s R x + t.
        samples_per_side: n -> n*n stratified samples per pixel.
    Returns:
        rgba (C, H, W, 4) float32 in [0, 1] (colour over the lighting's backdrop, alpha matte) and
        hits (C, H, W, 6): world position and world normal of the first sample's hit, NaN = miss.
    """
    runtime.ensure_initialized()
    if samples_per_side < 1:
        raise ValueError(f"samples_per_side must be >= 1, got {samples_per_side}")
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
    _render_kernel(viewmats.contiguous(), Ks.contiguous(), pose.to(device), head._ident(device), expr_t,
                   light, int(samples_per_side), int(seed), rgba, hits)
    return rgba, hits
