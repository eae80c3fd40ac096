"""Photometric tracking: expression codes and head pose from images (any number of views).

Analysis by synthesis through the prior, as MonoNPHM's tracking does, but rendered with our
Gaussian rasterizer (:func:`npga_taichi.render.rasterize`) instead of NeuS-style volume rendering.

The proxy of the person (one per identity):

* **Surfels just below the canonical zero level set**: ``num_points`` canonical points on
  ``SDF(x, z_geo) = 0`` (the box of :func:`npga_taichi.prior.distill.canonical_box` with the neck
  down to ``neck_cut``) chosen by farthest-point sampling (:func:`even_cover`: no gaps wider than
  about one spacing; a random subset with the median nearest-neighbour distance as spacing — half
  the mean spacing — left holes that showed through). Each is a flat Gaussian (``surfel_thickness`` of its extent along the
  normal) of opacity ``surfel_opacity``, its standard deviation along the surface
  ``surfel_radius`` times the mean spacing sqrt(area / N) (:func:`mean_spacing`), splatted with
  the rasterizer's ``eps2d`` dilation.
* **Rim offset**: a splatted surface's alpha falls to 1/2 roughly a surfel radius plus the
  dilation *outside* its outermost centres, so surfels on the surface draw a silhouette too wide
  by ~1.4 px at the default settings — a bias the fit absorbed (measured on the analytic test
  head: 2.4–3.8°, 7 mm too low and away, jaw code −0.14 at the true neutral) since it cannot
  shrink the proxy except by moving it and closing the jaw. The surfels therefore sit
  ``rim_offset`` below the surface along the normal (``x_c = x_s − d n``; albedo, normals and
  landmarks stay at the surface point ``x_s``). :func:`rim_offset` measures d for the views'
  pixel size at the head (:meth:`PhotometricTracker.calibrate_rim`, every frame, kept while the
  pixel size changes < 5 %): the same number of surfels covering a sphere of the proxy's area,
  rendered and compared with the sphere's exact outline (alpha area = disc area), then scaled by
  ``rim_scale`` (1.25: the fit's L1 terms want the alpha-1/2 contour on the outline, which needs
  more; measured on the default capture, see :meth:`PhotometricTracker.calibrate_rim`).
  ``rim_calibration=False`` turns it off.
* **Colour**: the prior's appearance field at the canonical point (``MonoNPHM.albedo``) times a
  lighting term — degree-2 real spherical harmonics of the world normal, 9 x 3 coefficients — then
  a global colour affine (3 x 3 matrix + bias), both fitted on the identity frames.
* **Posing through the backward field B**: a canonical surfel ``x_c`` sits at the posed point
  ``x_p`` with ``B(x_p, z_exp, z_geo) = x_c``. Each optimisation step takes one Newton step
  ``x_p <- x_p - J^-1 (B(x_p) - x_c)`` (J = dB/dx, exact 3x3 from autograd, detached) from the
  previous step's root; evaluated with B in the graph this is the *implicit gradient*
  ``dx_p/dθ = -J^-1 ∂B/∂θ`` at the root (MonoNPHM's implicit-differentiation correction). A frame
  starts with a few Newton iterations from the previous frame's roots (warm start). While the
  identity is fitted, the surface points follow the moving level set the same way (one Newton
  step ``x_s <- x_s - f ∇f/|∇f|²`` per optimisation step, differentiable in ``z_geo`` through f).
  Posed normals: ``Jᵀ n_c`` (the gradient of SDF(B(x))). World: ``x_w = s R x_p + t``
  (:mod:`npga_taichi.prior.tracking`'s convention, ``s`` fixed at ``init_scale``).

Per frame the fit minimises, over ``views_per_step`` views per step (cycled; with one view the
translation step is parametrised in the camera's axes, so that Adam's per-coordinate step sizes do
not carry image-plane corrections into the poorly observed depth):

* L1 (weight ``w_l1``) + D-SSIM (``w_dssim``) between the proxy rendered over black and the image
  times its matte (without mattes: the proxy over a fitted background colour vs the image);
* silhouette ``|alpha − matte|`` (``w_silhouette``);
* optional 2D landmarks (``w_landmarks``): mean pixel distance / image height between the given
  landmarks and the projections of the proxy's landmark points (below);
* ``w_reg_exp |z_exp|²`` (x ``first_frame_exp_reg_mult`` on the identity frames, so the
  identity explains the neutral face), ``w_reg_geo``/``w_reg_app`` on the identity codes, and
  temporal smoothness of z_exp and the pose relative to the previous frame.

Pixels below the posed neck cut (canonical ``y < neck_cut``; the prior learnt no neck below
−0.9) are ignored: the person's neck continues there, the proxy does not. Each pixel's ray is
tested at the depth of the neck's axis at the cut, where the neck's outline is (the proxy reaches
0.05 below the cut, so no matte pixel of the neck is left uncovered above the line).

Schedule: frame 0 (and every one of the first ``identity_frames``) runs ``first_frame_steps``
Adam steps — the first ``pose_only_fraction`` of them pose only, then identity (geometry and
appearance codes), lighting, colour affine, expression and pose jointly; identity and lighting
are then frozen. Every later frame warm-starts expression and pose from the previous frame and
runs ``steps_per_frame`` steps.

Initial pose: rotation = identity when there are several views (the NeRSemble world: +y up, the
face looking along +z), else the head faces the camera with the camera's up; translation from
the mattes (triangulated centroids; monocular: along the ray through the matte centroid at the
depth where the proxy's silhouette area matches the matte's), or ``init_distance`` in front of
the camera without mattes. Then, with landmarks, the rigid pose (scale fixed) that best
reprojects the proxy's canonical landmark points onto them in all views — robust (soft-L1) least
squares from seven yaw starts −90…90° — and, on every later frame, the same fit started from the
previous pose with the posed landmarks of :data:`RIGID_LANDMARKS` (eye corners, nose: the head
may turn faster than the few steps per frame follow; the mouth and chin points, posed with the
previous frame's expression, made an opening jaw read as the head coming closer). Monocular
without landmarks: a grid over yaw (±``init_search_degrees``, 10° steps) and pitch (−10°, 0°,
10°) about the head's own axes, each candidate shifted so its silhouette's centroid lands on the
matte's and scored by silhouette + L1 of the albedo-coloured proxy; the
best one starts the fit. (The video camera's azimuth is otherwise never corrected: gradient
steps from "facing the camera" stayed ~21° off on the monocular benchmark.)

**Landmarks** (optional input, shape (T, V, L, 2), pixel coordinates (x = column, y = row,
continuous, pixel centres at +0.5) at the frames' resolution; NaN = missing). The set is
:data:`LANDMARK_NAMES`: each is defined by a canonical (x, y) in :data:`LANDMARK_XY` — the
landmark is the first surface point hit by the ray from (x, y, +1) along −z in canonical space
(the point of the neutral face seen straight from the front there) — then posed with the
expression and the head pose. :func:`synthetic_landmarks` computes the true ones of a synthetic
head (``npga synth`` ground truth); the tracker places the same points on the prior's fitted
identity (ray cast on its SDF) and poses them with B, so both sides use the one definition.

Where we differ from MonoNPHM's tracker (github.com/SimonGiebenhain/MonoNPHM,
``src/mononphm/photometric_tracking/tracking.py``: its losses, soft-IoU silhouette and 34
anchor-iBUG landmark pairs):

* Rendering: splatted surfels of the canonical level set posed by Newton-inverted B, not
  volume rendering of SDF(B(x)) along rays (which needs B at ~100 samples per ray). Surfels slide
  with the identity's level set, but hyper coordinates are taken as 0 when placing them, so where
  B's hyper dims matter (lips, lids) the proxy is only approximately on the posed surface.
* No facial-parsing mask (the matte and the neck cut stand in for it), no mouth-interior
  down-weighting; the silhouette is an L1 of alpha instead of a soft IoU.
* Landmarks are an optional input (no detector weights ship with a package we can use) with our
  own landmark set (above) instead of 68 iBUG points matched to anchors.
* Scale fixed, as in our point-cloud tracker; no FLAME tracker for the first pose (MonoNPHM
  starts from a FLAME fit to landmarks): a rigid landmark fit or a silhouette grid search instead
  (above); Adam with a fixed step count per frame (MonoNPHM: 25–125 by landmark motion); no joint
  refinement over all frames.
* Our surfels need the calibrated rim offset (above); volume rendering's silhouette has no such
  bias.

Outputs are :class:`npga_taichi.prior.tracking.Tracking` objects (``residual``: the final
masked L1 per frame, x 1000, i.e. in thousandths of the colour range — not millimetres; ``meta``
says ``"residual": "photometric L1 x 1000"``).
"""
from __future__ import annotations

import functools
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from npga_taichi.cameras import Camera
from npga_taichi.conventions import SH_C0, SH_C1, SH_C2
from npga_taichi.metrics import ssim
from npga_taichi.prior.model import MonoNPHM
from npga_taichi.prior.tracking import (
    Tracking,
    axis_angle_to_matrix,
    evaluate_against_groundtruth,
    load_groundtruth,
    load_track_of_prior,
    posed_to_world,
    save_tracking,
    tracking_dir,
)
from npga_taichi.render import rasterize


@dataclass
class PhotometricConfig:
    """Settings of the photometric tracker (``npga track --photometric``, ``npga track-video``)."""

    num_points: int = 6000          # surfel Gaussians on the identity's canonical zero level set
    surfel_radius: float = 0.6      # Gaussian std along the surface / mean spacing sqrt(area / N)
                                    # (0.6 leaves no holes in a farthest-point cover)
    surfel_thickness: float = 0.1   # surfel extent along its normal / its radius
    surfel_opacity: float = 0.98    # opacity of every surfel
    eps2d: float = 0.3              # the rasterizer's screen-space dilation (pixels²) for the proxy
    rim_calibration: bool = True    # sink the surfels so the proxy's silhouette is not inflated
    rim_scale: float = 1.25         # the measured rim offset (area-matched) times this (see calibrate_rim)
    neck_cut: float = -0.85         # canonical y below which the proxy stops and pixels are ignored
    image_scale: float = 0.5        # frames are resampled by this factor before fitting
    views_per_step: int = 4         # views rendered per optimisation step (cycled through all)
    first_frame_steps: int = 150    # steps on each identity frame (pose only first, then all)
    identity_frames: int = 1        # the first frames that fit identity, lighting and colour
    pose_only_fraction: float = 0.3  # share of the identity frames' steps that fit the pose alone
    steps_per_frame: int = 40       # expression + pose steps for each later frame (20 left the
                                    # warm-started pose ~0.2 mm / 0.1° short on the default capture)
    newton_warm_iters: int = 3      # Newton iterations re-rooting B at the start of each frame
    jacobian_every: int = 4         # steps between fresh Jacobians of B (reused in between)
    lr_exp: float = 3e-2            # expression code learning rate
    lr_rot: float = 4e-3            # axis-angle learning rate (radians)
    lr_trans: float = 1e-3          # translation learning rate (metres)
    lr_geo: float = 5e-3            # identity geometry code learning rate (identity frames)
    lr_app: float = 1e-2            # identity appearance code learning rate (identity frames)
    lr_light: float = 1e-2          # SH lighting and colour affine learning rate (identity frames)
    init_scale: float = 0.25        # world metres per canonical unit (fixed, as in tracking.py)
    init_distance: float = 1.0      # metres from camera to head when no matte places the head
    init_search_degrees: float = 60.0  # monocular, no landmarks: yaw searched over ±this (0: off)
    w_l1: float = 1.0               # photometric L1 inside the matte
    w_dssim: float = 0.2            # D-SSIM of the matted images
    w_silhouette: float = 1.0       # |rendered alpha − matte|
    w_landmarks: float = 10.0       # mean landmark distance / image height (when landmarks given)
    w_reg_exp: float = 1e-4         # |z_exp|²
    first_frame_exp_reg_mult: float = 100.0  # |z_exp|² weight multiplier on the identity frames
    w_reg_geo: float = 1e-4         # |z_geo|² (identity frames)
    w_reg_app: float = 1e-4         # |z_app|² (identity frames)
    w_smooth_exp: float = 1e-3      # |z_t − z_{t−1}|²
    w_smooth_pose: float = 1e-1     # |ω_t|² + |Δt_t / s|² relative to the previous frame
    seed: int = 0                   # level-set sampling seed

    def validate(self) -> "PhotometricConfig":
        """ValueError naming the first out-of-range field."""
        positive = ("num_points", "surfel_radius", "surfel_thickness", "surfel_opacity", "eps2d", "image_scale",
                    "views_per_step", "jacobian_every", "first_frame_steps", "identity_frames", "steps_per_frame", "init_scale",
                    "init_distance")
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"photometric config: {name} must be > 0, got {value!r}")
        if not 0.0 <= self.pose_only_fraction < 1.0:
            raise ValueError(f"photometric config: pose_only_fraction must lie in [0, 1), got {self.pose_only_fraction}")
        if not (math.isfinite(self.init_search_degrees) and 0.0 <= self.init_search_degrees <= 180.0):
            raise ValueError(f"photometric config: init_search_degrees must lie in [0, 180], got {self.init_search_degrees}")
        if not (math.isfinite(self.rim_scale) and self.rim_scale >= 0.0):
            raise ValueError(f"photometric config: rim_scale must be >= 0, got {self.rim_scale!r}")
        if self.surfel_opacity > 1.0:
            raise ValueError(f"photometric config: surfel_opacity must be <= 1, got {self.surfel_opacity}")
        for name, value in asdict(self).items():
            if name.startswith(("w_", "lr_")) and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"photometric config: {name} must be >= 0, got {value!r}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------ landmarks
LANDMARK_NAMES: tuple[str, ...] = (
    "right_eye_outer", "right_eye_inner", "left_eye_inner", "left_eye_outer",
    "nose_bridge", "nose_tip", "right_mouth_corner", "upper_lip", "left_mouth_corner", "lower_lip",
    "chin", "right_cheek", "left_cheek", "forehead",
)
# Landmarks that expressions barely move (eye corners, nose): the rigid re-placement's set
RIGID_LANDMARKS: tuple[int, ...] = tuple(LANDMARK_NAMES.index(n) for n in (
    "right_eye_outer", "right_eye_inner", "left_eye_inner", "left_eye_outer", "nose_bridge", "nose_tip"))
# Canonical (x, y) of each landmark (MonoNPHM canonical units; +x = the subject's left, +y up).
LANDMARK_XY: tuple[tuple[float, float], ...] = (
    (-0.16, 0.045), (-0.065, 0.045), (0.065, 0.045), (0.16, 0.045),
    (0.0, 0.06), (0.0, -0.08), (-0.085, -0.225), (0.0, -0.195), (0.085, -0.225), (0.0, -0.255),
    (0.0, -0.38), (-0.17, -0.1), (0.17, -0.1), (0.0, 0.25),
)


def cast_landmarks(sdf_fn: Callable[[torch.Tensor], torch.Tensor], samples: int = 256,
                   z_range: tuple[float, float] = (1.0, -0.4), bisections: int = 20) -> torch.Tensor:
    """Canonical landmark points (L, 3): the first zero crossing of ``sdf_fn`` along each ray
    from (x, y, z_range[0]) towards −z (:data:`LANDMARK_XY`). ValueError when a ray misses."""
    xy = torch.tensor(LANDMARK_XY, dtype=torch.float32)
    zs = torch.linspace(z_range[0], z_range[1], samples)
    pts = torch.cat([xy[:, None, :].expand(-1, samples, -1), zs[None, :, None].expand(len(xy), -1, 1)], -1)
    with torch.no_grad():
        f = sdf_fn(pts.reshape(-1, 3)).reshape(len(xy), samples)
    inside = f < 0
    if not bool(inside.any(1).all()):
        missing = [LANDMARK_NAMES[i] for i in range(len(xy)) if not bool(inside[i].any())]
        raise ValueError(f"landmark rays miss the surface: {missing}")
    first = inside.float().argmax(1)  # first sample inside
    hi = zs[(first - 1).clamp_min(0)].clone()  # outside
    lo = zs[first].clone()                     # inside
    for _ in range(bisections):
        mid = 0.5 * (hi + lo)
        with torch.no_grad():
            fm = sdf_fn(torch.cat([xy, mid[:, None]], -1))
        out = fm >= 0
        hi = torch.where(out, mid, hi)
        lo = torch.where(out, lo, mid)
    return torch.cat([xy, (0.5 * (hi + lo))[:, None]], -1)


def synthetic_landmarks(head, expr, rot, trans, scale: float, cameras: Sequence[Camera],
                        iters: int = 60) -> np.ndarray:
    """True landmarks (V, L, 2) (pixels, see the module docstring) of a synthetic head
    (:class:`npga_taichi.data.synthetic.SyntheticHead`) with expression ``expr`` and pose
    (rot (3, 3), trans (3,), scale) seen by ``cameras``.

    The canonical points are posed by inverting the head's backward deformation with a
    fixed-point iteration ``x <- x − (backward(x) − x_c)`` (its displacement gradients stay below
    1 for expressions in [0, 1], so it contracts).
    """
    canonical = cast_landmarks(lambda x: head.sdf(x.contiguous()))
    x = canonical.clone()
    for _ in range(iters):
        x = x - (head.backward(x.contiguous(), expr) - canonical)
    world = posed_to_world(x, torch.as_tensor(np.asarray(rot), dtype=torch.float32),
                           torch.as_tensor(np.asarray(trans), dtype=torch.float32), float(scale))
    return np.stack([cam.project(world)[0].numpy() for cam in cameras]).astype(np.float32)


# ------------------------------------------------------------------------------------ helpers
def sh2_basis(normals: torch.Tensor) -> torch.Tensor:
    """Real SH basis of degree 2 at unit normals (N, 3) -> (N, 9) (3DGS's ordering and signs)."""
    x, y, z = normals.unbind(-1)
    return torch.stack([
        torch.full_like(x, SH_C0), -SH_C1 * y, SH_C1 * z, -SH_C1 * x,
        SH_C2[0] * x * y, SH_C2[1] * y * z, SH_C2[2] * (2 * z * z - x * x - y * y),
        SH_C2[3] * x * z, SH_C2[4] * (x * x - y * y)], dim=-1)


def quats_from_normals(normals: torch.Tensor) -> torch.Tensor:
    """wxyz quaternions (N, 4) rotating +z onto unit normals (N, 3) (the shortest arc)."""
    z = torch.zeros_like(normals)
    z[:, 2] = 1.0
    w = 1.0 + normals[:, 2:3]
    q = torch.cat([w, torch.cross(z, normals, dim=-1)], -1)
    flip = w[:, 0] < 1e-6  # normal = −z: any half turn about a horizontal axis
    q = torch.where(flip[:, None], torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=q.dtype, device=q.device), q)
    return q / q.norm(dim=-1, keepdim=True)


def even_cover(points: torch.Tensor, num: int, seed: int = 0) -> torch.Tensor:
    """``num`` of ``points`` (M >= num, 3) by farthest-point sampling (from a seeded random start):
    every point is within about one spacing of a chosen one, so surfels of
    :attr:`PhotometricConfig.surfel_radius` leave no holes (a random subset leaves gaps of a few
    spacings that show as holes in the silhouette)."""
    if len(points) < num:
        raise ValueError(f"only {len(points)} surface samples for {num} surfels")
    pts = points.detach()
    dist = torch.full((len(pts),), float("inf"), dtype=pts.dtype, device=pts.device)
    chosen = torch.empty(num, dtype=torch.long)
    idx = int(torch.randint(len(pts), (1,), generator=torch.Generator().manual_seed(seed)))
    for i in range(num):
        chosen[i] = idx
        dist = torch.minimum(dist, (pts - pts[idx]).square().sum(-1))
        idx = int(dist.argmax())
    return points[chosen.to(points.device)]


def mean_spacing(points: torch.Tensor, k: int = 8, chunk: int = 2048) -> float:
    """sqrt(area / N) of points (N, 3) covering a surface: the median over points of the local
    estimate r_k sqrt(π / k) (a disc of radius r_k, the k-th neighbour's distance, holds k points)."""
    k = min(k, len(points) - 1)
    if k < 1:
        raise ValueError("mean_spacing needs at least two points")
    rk = []
    with torch.no_grad():
        for i in range(0, len(points), chunk):
            d = torch.cdist(points[i:i + chunk], points)
            rk.append(d.topk(k + 1, largest=False).values[:, k])
    return float(torch.cat(rk).median()) * math.sqrt(math.pi / k)


def _splat(world: torch.Tensor, normals: torch.Tensor, colors: torch.Tensor, radius: float,
           cfg: PhotometricConfig, cam: Camera, background: torch.Tensor):
    """Surfels (flat Gaussians of std ``radius`` across, ``surfel_thickness`` x that along the
    normal) at world points (N, 3) with unit normals (N, 3): (image (H, W, C), alpha (H, W, 1))."""
    n = world.shape[0]
    scales = torch.tensor([radius, radius, radius * cfg.surfel_thickness],
                          dtype=world.dtype, device=world.device).expand(n, 3).contiguous()
    out = rasterize(world, quats_from_normals(normals.detach()), scales,
                    torch.full((n,), cfg.surfel_opacity, dtype=world.dtype, device=world.device), colors,
                    cam.viewmat, cam.K, cam.width, cam.height, background=background, eps2d=cfg.eps2d)
    return out.image, out.alpha


@functools.lru_cache(maxsize=4)
def _sphere_cover(num: int, seed: int) -> torch.Tensor:
    """Unit directions (M, 3): :func:`even_cover` of ``num`` points on the unit sphere, only the
    half facing +z (and a margin past the outline): the rest is hidden behind it."""
    gen = torch.Generator().manual_seed(seed)
    dirs = even_cover(F.normalize(torch.randn(3 * num, 3, generator=gen), dim=-1), num, seed)
    return dirs[dirs[:, 2] > -0.2]


def rim_offset(cfg: PhotometricConfig, num: int, spacing: float, pixel: float, iters: int = 3,
               seed: int = 0) -> float:
    """How deep (world units; negative: how high) to sink the proxy's surfels below the surface
    so that its silhouette is neither inflated nor shrunk, for ``num`` surfels ``spacing``
    apart (world) seen at ``pixel`` world units per pixel.

    A splatted surface's alpha falls to 1/2 about a surfel radius (plus the rasterizer's
    ``eps2d`` dilation) *outside* the outermost surfel centres, so a proxy on the surface has a
    silhouette ~1 pixel too wide at the tracker's resolutions — a bias the fit can only absorb by
    moving the head away and shrinking it with the expression code. The offset is measured, not
    modelled: ``num`` surfels cover a sphere of the same area as the proxy the same way
    (:func:`even_cover`), it is rendered at this pixel size, and the offset that makes its alpha's
    area equal the exact disc's (pixel centres inside the sphere's outline) is found by a few
    fixed-point steps (the area is about linear in the offset)."""
    radius = spacing * math.sqrt(num / (4.0 * math.pi))
    dirs = _sphere_cover(num, seed)
    distance = 100.0 * radius
    f = distance / pixel
    r_px = f * radius / math.sqrt(distance ** 2 - radius ** 2)  # the outline's radius in pixels
    size = 2 * int(math.ceil(r_px)) + 16
    cam = Camera("rim", torch.tensor([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, distance], [0, 0, 0, 1]]),
                 [[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], size, size)
    # exact outline: pixel centres whose ray passes within `radius` of the sphere's centre
    c = (torch.arange(size, dtype=torch.float64) + 0.5 - size / 2) / f
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    dist2 = distance ** 2 * (xx ** 2 + yy ** 2) / (1 + xx ** 2 + yy ** 2)
    truth = float((dist2 < radius ** 2).sum())
    sigma = cfg.surfel_radius * spacing
    offset = 0.0
    colors = torch.ones(len(dirs), 1)
    for _ in range(iters):
        with torch.no_grad():
            alpha = _splat((radius - offset) * dirs, dirs, colors, sigma, cfg, cam, torch.zeros(1))[1]
        offset += (float(alpha.sum()) - truth) / (2 * math.pi * r_px) * pixel
    return offset


def _look_rotation(forward: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Rotation whose columns are (x, y, z) with z = forward and y as close to ``up`` as possible."""
    z = forward / np.linalg.norm(forward)
    x = np.cross(up, z)
    x /= max(np.linalg.norm(x), 1e-9)
    y = np.cross(z, x)
    return np.stack([x, y, z], 1)


def _triangulate(origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Least-squares point nearest to rays (origins (V, 3), unit dirs (V, 3))."""
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for o, d in zip(origins, dirs):
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ o
    return np.linalg.solve(A, b)


def _pixel_ray(cam: Camera, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World origin and unit direction of the ray through pixel coordinates uv (2,)."""
    K = cam.K.double().numpy()
    R = cam.viewmat[:3, :3].double().numpy()
    d_cam = np.linalg.solve(K, np.array([uv[0], uv[1], 1.0]))
    d = R.T @ d_cam
    return cam.center().double().numpy(), d / np.linalg.norm(d)


# ------------------------------------------------------------------------------------ frames
class FrameData:
    """One frame's observations at the fitting resolution: images (V, H, W, 3), mattes
    (V, H, W, 1) or None, landmarks (V, L, 2) (pixels at the fitting resolution, NaN = missing)
    or None."""

    def __init__(self, images: torch.Tensor, mattes: torch.Tensor | None, landmarks: torch.Tensor | None):
        self.images, self.mattes, self.landmarks = images, mattes, landmarks


def _resample(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(V, H, W, C) -> (V, height, width, C) by area averaging (antialiased bilinear)."""
    if x.shape[1:3] == (height, width):
        return x
    y = F.interpolate(x.permute(0, 3, 1, 2), size=(height, width), mode="bilinear", antialias=True,
                      align_corners=False)
    return y.permute(0, 2, 3, 1).contiguous()


# ------------------------------------------------------------------------------------ tracker
class PhotometricTracker:
    """Fits consecutive frames of one sequence (see the module docstring).

    ``cameras``: the V cameras at the *input* frames' resolution; the tracker renders at
    ``config.image_scale`` of it. ``identity``: (z_geo, z_app, scale) to reuse frozen (then
    lighting is fitted on the first frame with the identity fixed).
    """

    def __init__(self, prior: MonoNPHM, cameras: Sequence[Camera], config: PhotometricConfig,
                 identity: tuple[torch.Tensor, torch.Tensor, float] | None = None,
                 lighting: dict | None = None):
        self.prior = prior
        self.cfg = cfg = config.validate()
        for p in prior.parameters():
            p.requires_grad_(False)
        if not cameras:
            raise ValueError("photometric tracking needs at least one camera")
        self.input_cameras = [c.to(dtype=torch.float32) for c in cameras]
        self.cameras = [c.scaled(cfg.image_scale) for c in self.input_cameras]
        mean_geo, mean_app = prior.mean_codes()
        self.identity_fixed = identity is not None
        self.z_geo = (torch.as_tensor(identity[0]) if identity is not None else mean_geo).float().clone()
        self.z_app = (torch.as_tensor(identity[1]) if identity is not None else mean_app).float().clone()
        self.scale = float(identity[2]) if identity is not None else cfg.init_scale
        self.z_exp = prior.codes_exp.weight.mean(0).detach().clone().float()
        self.light = torch.zeros(9, 3)
        self.light[0] = 1.0 / SH_C0   # shading 1 everywhere
        self.affine = torch.cat([torch.eye(3), torch.zeros(3, 1)], 1)
        self.background = torch.full((3,), 0.5)
        self.lighting_fixed = False
        if lighting is not None:
            self.light = torch.as_tensor(lighting["sh"], dtype=torch.float32).reshape(9, 3).clone()
            self.affine = torch.as_tensor(lighting["affine"], dtype=torch.float32).reshape(3, 4).clone()
            self.background = torch.as_tensor(lighting["background"], dtype=torch.float32).reshape(3).clone()
            self.lighting_fixed = True
        self.rot: torch.Tensor | None = None
        self.trans: torch.Tensor | None = None
        self.frames_done = 0
        self.view_cursor = 0
        self._build_proxy()

    # ---- proxy
    def _build_proxy(self) -> None:
        from npga_taichi.prior.distill import canonical_box
        from npga_taichi.prior.surface import sample_level_set

        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        lo, hi = canonical_box(self.prior, self.z_geo)
        lo = lo.clone()
        lo[1] = cfg.neck_cut - 0.05
        try:
            cand = sample_level_set(lambda x: self.prior.sdf(x, self.z_geo), 3 * cfg.num_points, lo, hi,
                                    generator=gen, tolerance=2e-3)
        except RuntimeError as err:
            raise ValueError(f"cannot place the tracking proxy on the prior's surface: {err}") from None
        pts = even_cover(cand.float(), cfg.num_points, cfg.seed)
        self.spacing = mean_spacing(pts)  # canonical units
        self.x_s = pts  # on the level set; the surfels sit rim_offset below (x_c)
        self.rim_offset = 0.0  # canonical units, set by calibrate_rim once the pose is known
        self._rim_pixel = None
        self.x_p = pts.clone()
        self.lmk_c = None
        try:
            self.lmk_c = cast_landmarks(lambda x: self.prior.sdf(x, self.z_geo))
        except ValueError:
            self.lmk_c = None  # the prior's identity has no face where the landmark rays go
        self.lmk_p = None if self.lmk_c is None else self.lmk_c.clone()
        self._refresh_identity_terms()

    @property
    def x_c(self) -> torch.Tensor:
        """Canonical surfel centres (N, 3): the surface points sunk by ``rim_offset`` along
        their normals (:func:`rim_offset`)."""
        return self.x_s - self.rim_offset * self.n_c

    def calibrate_rim(self, rot: torch.Tensor, trans: torch.Tensor) -> None:
        """Set ``rim_offset`` (:func:`rim_offset`) for the pixel size at the head (median over the
        views) at this pose (rot (3, 3), trans (3,)); kept while that pixel size changes by less
        than 5 %. Every frame's fit calls it; nothing to do with ``rim_calibration=False``."""
        if not self.cfg.rim_calibration:
            return
        head = posed_to_world(self.x_s.mean(0, keepdim=True), rot, trans, self.scale)
        pixels = []
        for cam in self.cameras:
            depth = float(cam.world_to_camera(head)[0, 2])
            if depth > 0:
                pixels.append(depth / float(0.5 * (cam.K[0, 0] + cam.K[1, 1])))
        if not pixels:
            return
        pixel = float(np.median(pixels))
        if self._rim_pixel is not None and abs(pixel / self._rim_pixel - 1) < 0.05:
            return
        self._rim_pixel = pixel
        # rim_scale: the area-matched offset left the fitted head ~1 mm back and 0.4° pitched down
        # (identity 4242's FREE, 16 views): the fit's L1 and silhouette terms want the splats'
        # alpha-1/2 contour on the outline, which on the calibration sphere needs ~1.6x the
        # area-matched offset. 1.25x measured best on 4242's first frame (0.34°, 0.59 mm,
        # Chamfer 0.72 mm; 1.0x: 0.45°, 0.84 mm, 0.67 mm; 1.5x: 0.31°, 0.59 mm, 1.01 mm — deeper
        # surfels make the fitted level set swell). Identity 31337 is the held-out check.
        world = self.cfg.rim_scale * rim_offset(self.cfg, len(self.x_s), self.spacing * self.scale, pixel,
                                                seed=self.cfg.seed)
        self.rim_offset = world / self.scale

    def _refresh_identity_terms(self) -> None:
        """Canonical normals and albedo (at the surface points) of the (frozen or current)
        identity, detached."""
        with torch.enable_grad():
            x = self.x_s.detach().requires_grad_(True)
            f, rgb = self.prior.sdf_and_color(x, self.z_geo, self.z_app)
            (g,) = torch.autograd.grad(f.sum(), x)
        self.n_c = F.normalize(g.detach(), dim=-1)
        self.albedo = ((rgb.detach() + 1) * 0.5).clamp(0, 1)

    def _identity_step(self, z_geo: torch.Tensor, z_app: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One differentiable Newton step of the surface points onto the level set of z_geo, and
        their albedo: (x_c (N, 3) = the surfel centres below them, albedo (N, 3)); stores the
        detached points and normals."""
        with torch.enable_grad():
            x0 = self.x_s.detach().requires_grad_(True)
            f, rgb = self.prior.sdf_and_color(x0, z_geo, z_app)
            (g,) = torch.autograd.grad(f.sum(), x0, retain_graph=True)
        g = g.detach()
        x_s = x0.detach() - (f / g.square().sum(-1).clamp_min(1e-6))[:, None] * g
        self.x_s = x_s.detach()
        self.n_c = F.normalize(g, dim=-1)
        return x_s - self.rim_offset * self.n_c, ((rgb + 1) * 0.5).clamp(0, 1)

    def _newton_roots(self, x_p: torch.Tensor, x_c: torch.Tensor, z_exp: torch.Tensor, z_geo: torch.Tensor,
                      differentiable: bool, jac: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One Newton step of B(x_p) = x_c: (new x_p (N, 3), Jacobian (N, 3, 3) detached).

        With ``differentiable`` the result carries the implicit gradient -J^-1 ∂(B - x_c)/∂θ.
        ``jac``: a recent Jacobian to reuse (a quasi-Newton step; saves three backward passes)."""
        with torch.enable_grad():
            x = x_p.detach().requires_grad_(jac is None)
            y = self.prior.backward(x, z_exp, z_geo)
            if jac is None:
                rows = []
                for i in range(3):
                    (g,) = torch.autograd.grad(y[:, i].sum(), x, retain_graph=True)
                    rows.append(g)
                jac = torch.stack(rows, 1).detach()
        eye = torch.eye(3, dtype=jac.dtype)
        r = y - x_c if differentiable else (y - x_c).detach()
        step = torch.linalg.solve(jac + 1e-6 * eye, r.unsqueeze(-1)).squeeze(-1)
        step = torch.where(torch.isfinite(step), step, torch.zeros_like(step))
        return x.detach() - step, jac

    # ---- pose initialisation
    def _initial_pose(self, data: FrameData) -> None:
        """Rotation and translation before the first frame's fit (module docstring, "Initial pose")."""
        cams = self.cameras
        centers = np.stack([c.center().double().numpy() for c in cams])
        if len(cams) > 1:
            R0 = np.eye(3)
        else:  # face the camera, the camera's up as the head's up
            R = cams[0].viewmat[:3, :3].double().numpy()
            R0 = _look_rotation(-R[2], -R[1])
        self.rot = torch.tensor(R0, dtype=torch.float32)
        c_proxy = self.x_c.mean(0).double().numpy()
        offset = self.scale * (R0 @ c_proxy)
        if data.mattes is not None and float(data.mattes.sum()) > 0:
            origins, dirs, areas = [], [], []
            for v, cam in enumerate(cams):
                m = data.mattes[v, :, :, 0].double()
                if float(m.sum()) < 4:
                    continue
                ii, jj = torch.meshgrid(torch.arange(m.shape[0], dtype=torch.float64) + 0.5,
                                        torch.arange(m.shape[1], dtype=torch.float64) + 0.5, indexing="ij")
                uv = np.array([float((m * jj).sum() / m.sum()), float((m * ii).sum() / m.sum())])
                o, d = _pixel_ray(cam, uv)
                origins.append(o)
                dirs.append(d)
                areas.append(float(m.sum()))
            if len(origins) > 1:
                point = _triangulate(np.stack(origins), np.stack(dirs))
            else:
                # depth where the proxy's silhouette area matches the matte's (area ~ 1 / depth²)
                depth0 = self.cfg.init_distance
                o, d = origins[0], dirs[0]
                self.trans = torch.tensor(o + depth0 * d - offset, dtype=torch.float32)
                self.calibrate_rim(self.rot, self.trans)
                with torch.no_grad():
                    alpha = self._render_view(0, self.x_c, self.rot, self.trans, self.albedo,
                                              torch.zeros(3), self.n_c @ self.rot.T)[1]
                ratio = float(alpha.sum()) / max(areas[0], 1.0)
                depth = depth0 * math.sqrt(max(ratio, 1e-4))
                point = o + depth * d
        else:
            R = cams[0].viewmat[:3, :3].double().numpy()
            point = centers[0] + self.cfg.init_distance * R[2]
        self.trans = torch.tensor(point - offset, dtype=torch.float32)
        if data.landmarks is not None and self.lmk_c is not None and \
                self._pose_from_landmarks(data.landmarks, self.lmk_c, np.arange(-90.0, 91.0, 30.0)):
            return
        if len(cams) == 1 and data.mattes is not None and self.cfg.init_search_degrees > 0:
            self._search_rotation(data, point)

    def _pose_from_landmarks(self, landmarks: torch.Tensor, points: torch.Tensor, yaws: Iterable[float],
                             subset: Sequence[int] | None = None) -> bool:
        """Rigid pose (scale fixed) that best reprojects the landmark points (L, 3) (posed
        space) onto the given ones (V, L, 2) in all views: robust least squares (scipy, soft-L1 on
        pixels) over axis-angle and translation, started from the current pose turned by each of
        ``yaws`` (degrees) about the head's up axis; the lowest cost wins. ``subset``: indices of
        the landmarks to use (default all). False (pose unchanged) with fewer than 4 landmarks seen."""
        from scipy.optimize import least_squares

        lmk = points.double().numpy()
        obs = [(cam, landmarks[v].double().numpy()) for v, cam in enumerate(self.cameras)]
        if subset is not None:
            keep = np.zeros(len(lmk), bool)
            keep[list(subset)] = True
            obs = [(cam, np.where(keep[:, None], o, np.nan)) for cam, o in obs]
        obs = [(cam, o, np.isfinite(o).all(-1)) for cam, o in obs]
        if sum(int(ok.sum()) for _, _, ok in obs) < 4:
            return False
        views = [(cam.viewmat[:3, :3].double().numpy(), cam.viewmat[:3, 3].double().numpy(),
                  cam.K.double().numpy(), o[ok]) for cam, o, ok in obs if ok.any()]
        idx = [np.flatnonzero(ok) for _, _, ok in obs if ok.any()]
        R0 = self.rot.double().numpy()
        centre = self.scale * lmk.mean(0)

        def rotation(w):
            return axis_angle_to_matrix(torch.as_tensor(w, dtype=torch.float64)).numpy()

        def residuals(p, R_start):
            R = rotation(p[:3]) @ R_start
            world = self.scale * lmk @ R.T + p[3:]
            out = []
            for (Rv, tv, K, o), i in zip(views, idx):
                cam_pts = world[i] @ Rv.T + tv
                z = np.maximum(cam_pts[:, 2:3], 1e-6)
                uv = (cam_pts @ K.T)[:, :2] / z
                out.append((uv - o).ravel())
            return np.concatenate(out)

        best = None
        for yaw in np.radians(np.asarray(list(yaws), np.float64)):
            R_start = R0 @ rotation(np.array([0.0, yaw, 0.0]))
            # keep the landmarks' centre where it was: t = c_world − s R_start c
            t_start = self.trans.double().numpy() + R0 @ centre - R_start @ centre
            sol = least_squares(residuals, np.concatenate([np.zeros(3), t_start]), args=(R_start,),
                                loss="soft_l1", f_scale=2.0, max_nfev=200)
            if best is None or sol.cost < best[0]:
                best = (sol.cost, rotation(sol.x[:3]) @ R_start, sol.x[3:])
        self.rot = torch.tensor(best[1], dtype=torch.float32)
        self.trans = torch.tensor(best[2], dtype=torch.float32)
        return True

    def _search_rotation(self, data: FrameData, point: np.ndarray) -> None:
        """Monocular without landmarks: the yaw (±``init_search_degrees``, 10° steps) and pitch
        (−10°, 0°, 10°) about the head's own axes whose render best matches the first frame
        (silhouette + L1 of the albedo-coloured proxy); each candidate is first shifted so that
        its silhouette's centroid lands on the matte's."""
        R0 = self.rot.double()
        c_proxy = self.x_c.mean(0).double()
        limit = self.cfg.init_search_degrees
        cam, target, matte, mask = self._views(data, self.rot, self.trans, margin=12)[0]
        if float(matte.sum()) < 4:
            return
        Kinv = torch.linalg.inv(cam.K.double())
        R_cam = cam.viewmat[:3, :3].double()

        def centroid(a):
            a = a[..., 0].double()
            ii, jj = torch.meshgrid(torch.arange(a.shape[0], dtype=torch.float64) + 0.5,
                                    torch.arange(a.shape[1], dtype=torch.float64) + 0.5, indexing="ij")
            return torch.stack([(a * jj).sum(), (a * ii).sum()]) / a.sum().clamp_min(1e-9)

        target_uv = centroid(matte)
        best = None
        with torch.no_grad():
            for pitch in (-10.0, 0.0, 10.0):
                for yaw in np.arange(-limit, limit + 1e-6, 10.0):
                    R = R0 @ axis_angle_to_matrix(torch.tensor([0.0, math.radians(yaw), 0.0], dtype=torch.float64)) \
                        @ axis_angle_to_matrix(torch.tensor([math.radians(pitch), 0.0, 0.0], dtype=torch.float64))
                    rot = R.float()
                    trans = torch.as_tensor(point, dtype=torch.float64) - self.scale * (R @ c_proxy)
                    n_w = self.n_c @ rot.T
                    for _ in range(2):  # align the silhouettes' centroids, then score
                        image, alpha = self._render_view(cam, self.x_c, rot, trans.float(), self.albedo,
                                                         torch.zeros(3), n_w)
                        if float(alpha.sum()) < 4:
                            break
                        depth = float(cam.world_to_camera(trans.float()[None])[0, 2])
                        shift = target_uv - centroid(alpha)
                        trans = trans + R_cam.T @ (depth * (Kinv @ torch.cat([shift, torch.zeros(1, dtype=torch.float64)])))
                    cost = float((mask * (alpha - matte).abs()).mean() + (mask * (image - target).abs()).mean())
                    if best is None or cost < best[0]:
                        best = (cost, rot, trans.float())
        self.rot, self.trans = best[1], best[2]

    # ---- rendering
    def _shade(self, jac: torch.Tensor, rot: torch.Tensor, albedo: torch.Tensor, light: torch.Tensor,
               affine: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """World normals (N, 3) (detached: Jᵀ n_c rotated) and lit colours (N, 3) of the posed proxy."""
        n_p = F.normalize(torch.einsum("nji,nj->ni", jac, self.n_c), dim=-1)
        n_w = n_p @ rot.detach().T
        colors = (albedo * (sh2_basis(n_w) @ light)) @ affine[:, :3].T + affine[:, 3]
        return n_w, colors.clamp(0.0, 1.0)

    def _render_view(self, cam: Camera | int, x_p, rot, trans, colors, background, n_w):
        """Image (H, W, 3) and alpha (H, W, 1) in camera ``cam`` (or view index): surfels at posed
        points x_p (N, 3) with world normals n_w (N, 3) and colours (N, 3) over ``background`` (3,)."""
        cam = self.cameras[cam] if isinstance(cam, int) else cam
        return _splat(posed_to_world(x_p, rot, trans, self.scale), n_w, colors,
                      self.cfg.surfel_radius * self.spacing * self.scale, self.cfg, cam, background)

    def _valid_mask(self, cam: Camera, rot: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
        """(H, W, 1) 1 above the posed neck cut, 0 below (see the module docstring)."""
        rot, trans = rot.detach(), trans.detach()
        up = rot[:, 1]
        origin = posed_to_world(torch.tensor([[0.0, self.cfg.neck_cut, 0.0]]), rot, trans, self.scale)[0]
        # each pixel's ray is cut at the depth of the neck's axis at the cut, where the neck's
        # outline is (the head centre's depth, 5–7 % nearer for the cameras above the head, put
        # the line ~8 px below the proxy's end there: the matte's neck in between pulled the head
        # 2 mm down on identity 4242's FREE); the neck's front, nearer still, is cut conservatively
        depth = float(cam.world_to_camera(origin[None])[0, 2])
        H, W = cam.height, cam.width
        ii, jj = torch.meshgrid(torch.arange(H, dtype=torch.float32) + 0.5,
                                torch.arange(W, dtype=torch.float32) + 0.5, indexing="ij")
        pix = torch.stack([jj, ii, torch.ones_like(ii)], -1)  # (H, W, 3)
        d_cam = pix @ torch.linalg.inv(cam.K).T
        pts_cam = d_cam / d_cam[..., 2:3] * depth
        R = cam.viewmat[:3, :3]
        pts_w = (pts_cam - cam.viewmat[:3, 3]) @ R  # camera -> world
        return (((pts_w - origin) @ up) > 0).float()[..., None]

    def _views(self, data: FrameData, rot: torch.Tensor, trans: torch.Tensor, margin: int = 6) -> list[tuple]:
        """Per view (camera, target (h, w, 3), matte (h, w, 1) or None, mask (h, w, 1)) cropped to
        the box around the matte and the posed proxy (+ ``margin`` pixels): pixels farther out
        would only add zeros to every loss, at the price of rendering them."""
        out = []
        world = posed_to_world(self.x_p, rot, trans, self.scale)
        for v, cam in enumerate(self.cameras):
            H, W = cam.height, cam.width
            uv, z = cam.project(world)
            uv = uv[z > 0]
            boxes = []
            if len(uv):
                boxes.append((float(uv[:, 0].min()), float(uv[:, 1].min()), float(uv[:, 0].max()), float(uv[:, 1].max())))
            if data.mattes is not None:
                ii, jj = torch.nonzero(data.mattes[v, :, :, 0] > 0.01, as_tuple=True)
                if len(ii):
                    boxes.append((float(jj.min()), float(ii.min()), float(jj.max()) + 1, float(ii.max()) + 1))
            if data.mattes is None or not boxes:
                x0, y0, x1, y1 = 0, 0, W, H
            else:
                x0 = max(0, int(math.floor(min(b[0] for b in boxes))) - margin)
                y0 = max(0, int(math.floor(min(b[1] for b in boxes))) - margin)
                x1 = min(W, int(math.ceil(max(b[2] for b in boxes))) + margin)
                y1 = min(H, int(math.ceil(max(b[3] for b in boxes))) + margin)
                if x1 - x0 < 16 or y1 - y0 < 16:  # nothing seen: the whole image
                    x0, y0, x1, y1 = 0, 0, W, H
            K = cam.K.clone()
            K[0, 2] -= x0
            K[1, 2] -= y0
            crop = Camera(cam.serial, cam.viewmat, K, x1 - x0, y1 - y0)
            mask = self._valid_mask(crop, rot, trans)
            target = data.images[v, y0:y1, x0:x1]
            matte = None if data.mattes is None else data.mattes[v, y0:y1, x0:x1]
            out.append((crop, target if matte is None else target * matte, matte, mask))
        return out

    # ---- one frame
    def fit_frame(self, data: FrameData, first: bool) -> float:
        """Fit one frame; returns the final masked L1 (x 1000) over all views."""
        cfg = self.cfg
        if self.rot is None:
            self._initial_pose(data)
        elif data.landmarks is not None and self.lmk_p is not None:
            # the head may turn faster than the few steps per frame follow: re-place it rigidly
            # from the landmarks, from the previous pose. Only those expressions barely move:
            # the mouth and chin points are posed with the previous frame's expression, so an
            # opening jaw spread them and one camera read the spread as the head coming closer
            # (10–45 mm on identity 4242's FREE; the fit below never recovered the depth).
            self._pose_from_landmarks(data.landmarks, self.lmk_p, (0.0,), RIGID_LANDMARKS)
        self.calibrate_rim(self.rot, self.trans)
        fit_identity = first and not self.identity_fixed
        fit_light = first and not self.lighting_fixed
        prev_exp = self.z_exp.clone()
        prev_rot, prev_trans = self.rot.clone(), self.trans.clone()
        # warm start: re-root B for the previous code (the canonical points may have moved)
        with torch.no_grad():
            for _ in range(cfg.newton_warm_iters):
                self.x_p, _ = self._newton_roots(self.x_p, self.x_c, self.z_exp, self.z_geo, False)
                if self.lmk_p is not None:
                    self.lmk_p, _ = self._newton_roots(self.lmk_p, self.lmk_c, self.z_exp, self.z_geo, False)
        z_exp = self.z_exp.clone().requires_grad_(True)
        omega = torch.zeros(3, requires_grad=True)
        d_trans = torch.zeros(3, requires_grad=True)
        # One view: the translation step lives in the camera's axes (image plane x, y; depth z).
        # Adam scales each coordinate on its own, so in world axes (a camera 35° off the face)
        # every large, well-seen image-plane correction also moved the poorly-seen depth —
        # measured on identity 4242's FREE: 9.8 mm mean depth error, 2.8 mm in camera axes.
        to_world = self.cameras[0].viewmat[:3, :3].float().T if len(self.cameras) == 1 else torch.eye(3)
        z_geo = self.z_geo.clone().requires_grad_(fit_identity)
        z_app = self.z_app.clone().requires_grad_(fit_identity)
        light = self.light.clone().requires_grad_(fit_light)
        affine = self.affine.clone().requires_grad_(fit_light)
        background = self.background.clone().requires_grad_(fit_light and data.mattes is None)
        groups = [{"params": [z_exp], "lr": cfg.lr_exp, "name": "exp"},
                  {"params": [omega], "lr": cfg.lr_rot, "name": "pose"},
                  {"params": [d_trans], "lr": cfg.lr_trans, "name": "pose"}]
        if fit_identity:
            groups += [{"params": [z_geo], "lr": cfg.lr_geo, "name": "id"},
                       {"params": [z_app], "lr": cfg.lr_app, "name": "id"}]
        if fit_light:
            groups += [{"params": [light, affine], "lr": cfg.lr_light, "name": "light"}]
            if data.mattes is None:
                groups += [{"params": [background], "lr": cfg.lr_light, "name": "light"}]
        opt = torch.optim.Adam(groups)
        base = [g["lr"] for g in opt.param_groups]
        long = first
        steps = cfg.first_frame_steps if long else cfg.steps_per_frame
        pose_only = int(cfg.pose_only_fraction * steps) if long and self.frames_done == 0 else 0
        views = self._views(data, prev_rot, prev_trans)
        exp_w = cfg.w_reg_exp * (cfg.first_frame_exp_reg_mult if first else 1.0)
        x_c, albedo = self.x_c, self.albedo
        jac = None
        for step in range(steps):
            if long:
                f = 0.5 * (1 + math.cos(math.pi * step / steps))
                for g, lr in zip(opt.param_groups, base):
                    g["lr"] = lr * (0.1 + 0.9 * f)
                    if step < pose_only and g["name"] != "pose":
                        g["lr"] = 0.0
                if step == pose_only and pose_only:
                    views = self._views(data, self.rot, self.trans)
            if fit_identity and step >= pose_only:
                x_c, albedo = self._identity_step(z_geo, z_app)
            rot = axis_angle_to_matrix(omega) @ prev_rot
            trans = prev_trans + to_world @ d_trans
            x_p, jac = self._newton_roots(self.x_p, x_c, z_exp, z_geo, True,
                                          None if step % cfg.jacobian_every == 0 else jac)
            self.x_p = x_p.detach()
            n_w, colors = self._shade(jac, rot, albedo, light, affine)
            loss = self._image_loss(views, x_p, n_w, rot, trans, colors, background)
            if data.landmarks is not None and self.lmk_p is not None and cfg.w_landmarks > 0:
                lmk_p, _ = self._newton_roots(self.lmk_p, self._landmarks_canonical(z_geo), z_exp, z_geo, True)
                self.lmk_p = lmk_p.detach()
                loss = loss + cfg.w_landmarks * self._landmark_loss(data.landmarks, lmk_p, rot, trans)
            loss = loss + exp_w * z_exp.square().sum()
            if fit_identity:
                loss = loss + cfg.w_reg_geo * z_geo.square().sum() + cfg.w_reg_app * z_app.square().sum()
            if not first:
                loss = loss + cfg.w_smooth_exp * (z_exp - prev_exp).square().sum()
                loss = loss + cfg.w_smooth_pose * (omega.square().sum() + (d_trans / self.scale).square().sum())
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                self.rot = axis_angle_to_matrix(omega) @ prev_rot
                self.trans = prev_trans + to_world @ d_trans
        with torch.no_grad():
            self.z_exp = z_exp.detach().clone()
            self.rot = axis_angle_to_matrix(omega.detach()) @ prev_rot
            self.trans = prev_trans + to_world @ d_trans.detach()
            if fit_identity:
                self.z_geo = z_geo.detach().clone()
                self.z_app = z_app.detach().clone()
                self._identity_step(self.z_geo, self.z_app)
                self._refresh_identity_terms()
                if self.lmk_c is not None:
                    self.lmk_c = self._landmarks_canonical(self.z_geo).detach()
            if fit_light:
                self.light, self.affine = light.detach().clone(), affine.detach().clone()
                self.background = background.detach().clone()
        self.frames_done += 1
        if self.frames_done >= cfg.identity_frames:
            self.identity_fixed = True
            self.lighting_fixed = True
        return self.residual(data)

    def _landmarks_canonical(self, z_geo: torch.Tensor) -> torch.Tensor:
        """Canonical landmark points; while the identity moves, one differentiable Newton step
        keeps them on its level set (a cheap stand-in for re-casting the rays)."""
        if not z_geo.requires_grad:
            return self.lmk_c
        with torch.enable_grad():
            x0 = self.lmk_c.detach().requires_grad_(True)
            f = self.prior.sdf(x0, z_geo)
            (g,) = torch.autograd.grad(f.sum(), x0, retain_graph=True)
        g = g.detach()
        x = x0.detach() - (f / g.square().sum(-1).clamp_min(1e-6))[:, None] * g
        self.lmk_c = x.detach()
        return x

    def _image_loss(self, views: list[tuple], x_p, n_w, rot, trans, colors, background) -> torch.Tensor:
        """Mean over ``views_per_step`` views (cycled) of L1 + D-SSIM + silhouette (module docstring)."""
        cfg = self.cfg
        V = len(views)
        k = min(cfg.views_per_step, V)
        chosen = [(self.view_cursor + i) % V for i in range(k)]
        self.view_cursor = (self.view_cursor + k) % V
        total = 0.0
        for v in chosen:
            cam, target, matte, mask = views[v]
            image, alpha = self._render_view(cam, x_p, rot, trans, colors,
                                             torch.zeros(3) if matte is not None else background, n_w)
            if matte is not None:
                sil = (mask * (alpha - matte).abs()).sum() / mask.sum().clamp_min(1.0)
                total = total + cfg.w_silhouette * sil
            l1 = (mask * (image - target).abs()).sum() / (3 * mask.sum().clamp_min(1.0))
            total = total + cfg.w_l1 * l1
            if cfg.w_dssim > 0:
                total = total + cfg.w_dssim * (1.0 - ssim(image * mask, target * mask))
        return total / k

    def _landmark_loss(self, landmarks: torch.Tensor, lmk_p: torch.Tensor, rot, trans) -> torch.Tensor:
        world = posed_to_world(lmk_p, rot, trans, self.scale)
        total, count = 0.0, 0
        for v, cam in enumerate(self.cameras):
            obs = landmarks[v]
            ok = torch.isfinite(obs).all(-1)
            if not bool(ok.any()):
                continue
            uv, _ = cam.project(world)
            total = total + (uv[ok] - obs[ok]).norm(dim=-1).mean() / cam.height
            count += 1
        return total / max(count, 1)

    @torch.no_grad()
    def residual(self, data: FrameData) -> float:
        """L1 (x 1000) of the fitted frame over all views: inside the matte (matte-weighted) when
        there are mattes, else over the image; pixels below the neck cut excluded."""
        jac = self._newton_roots(self.x_p, self.x_c, self.z_exp, self.z_geo, False)[1]
        n_w, colors = self._shade(jac, self.rot, self.albedo, self.light, self.affine)
        errs = []
        for cam, target, matte, mask in self._views(data, self.rot, self.trans):
            image, _ = self._render_view(cam, self.x_p, self.rot, self.trans, colors,
                                         torch.zeros(3) if matte is not None else self.background, n_w)
            w = mask * (matte if matte is not None else 1.0)
            errs.append(float((w * (image - target).abs()).sum() / (3 * w.sum().clamp_min(1.0))))
        return 1000.0 * float(np.mean(errs))

    def lighting(self) -> dict:
        """The fitted lighting as plain lists (stored in the tracking's meta)."""
        return {"sh": self.light.reshape(-1).tolist(), "affine": self.affine.reshape(-1).tolist(),
                "background": self.background.tolist()}

    def render_views(self) -> list[torch.Tensor]:
        """Renders (H, W, 4) (RGB + alpha) of the current state (codes, pose, rim offset) in every
        view, the posed points re-rooted first (for inspection and tests)."""
        with torch.no_grad():
            for _ in range(max(1, self.cfg.newton_warm_iters)):
                self.x_p, jac = self._newton_roots(self.x_p, self.x_c, self.z_exp, self.z_geo, False)
            n_w, colors = self._shade(jac, self.rot, self.albedo, self.light, self.affine)
            out = []
            for v in range(len(self.cameras)):
                image, alpha = self._render_view(v, self.x_p, self.rot, self.trans, colors, torch.zeros(3), n_w)
                out.append(torch.cat([image, alpha], -1))
        return out


# ------------------------------------------------------------------------------------ sequences
def _prepare_frame(images, mattes, landmarks, cameras: Sequence[Camera], tracker_cams: Sequence[Camera],
                   where: str) -> FrameData:
    """Check one frame's arrays against the cameras and resample them to the fitting size."""
    images = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images).float()
    V = len(cameras)
    if images.dim() != 4 or images.shape[0] != V or images.shape[-1] != 3:
        raise ValueError(f"{where}: images must be (V={V}, H, W, 3), got {tuple(images.shape)}")
    for v, cam in enumerate(cameras):
        if tuple(images.shape[1:3]) != (cam.height, cam.width):
            raise ValueError(f"{where}: view {v} is {images.shape[2]}x{images.shape[1]}, its camera "
                             f"{cam.serial} is {cam.width}x{cam.height}")
    if not torch.isfinite(images).all():
        raise ValueError(f"{where}: images hold NaN/Inf")
    H, W = tracker_cams[0].height, tracker_cams[0].width
    img = _resample(images, H, W).clamp(0, 1)
    mat = None
    if mattes is not None:
        mattes = torch.as_tensor(np.asarray(mattes) if not isinstance(mattes, torch.Tensor) else mattes).float()
        if mattes.dim() == 4 and mattes.shape[-1] == 1:
            mattes = mattes[..., 0]
        if tuple(mattes.shape) != tuple(images.shape[:3]):
            raise ValueError(f"{where}: mattes must be (V, H, W) = {tuple(images.shape[:3])}, got {tuple(mattes.shape)}")
        if not torch.isfinite(mattes).all():
            raise ValueError(f"{where}: mattes hold NaN/Inf")
        mat = _resample(mattes[..., None], H, W).clamp(0, 1)
    lmk = None
    if landmarks is not None:
        lmk = torch.as_tensor(np.asarray(landmarks) if not isinstance(landmarks, torch.Tensor) else landmarks).float()
        if lmk.dim() != 3 or lmk.shape[0] != V or lmk.shape[1] != len(LANDMARK_NAMES) or lmk.shape[2] != 2:
            raise ValueError(f"{where}: landmarks must be (V={V}, L={len(LANDMARK_NAMES)}, 2), got {tuple(lmk.shape)}")
        sx = W / cameras[0].width
        sy = H / cameras[0].height
        lmk = lmk * torch.tensor([sx, sy])
    return FrameData(img, mat, lmk)


def track_frames(prior: MonoNPHM, cameras: Sequence[Camera], load_frame: Callable[[int], tuple],
                 timesteps: Sequence[int], config: PhotometricConfig | None = None, sequence: str = "VIDEO",
                 identity: tuple[torch.Tensor, torch.Tensor, float] | None = None, lighting: dict | None = None,
                 progress: bool = True, frame_source: Callable[[int], str] | None = None) -> Tracking:
    """Track one sequence; ``load_frame(t)`` -> (images (V, H, W, 3), mattes (V, H, W) or None,
    landmarks (V, L, 2) or None) at the cameras' resolution. ``identity`` (z_geo, z_app, scale)
    and ``lighting`` (a previous track's ``meta["lighting"]``) are reused frozen when given.
    ValueError naming the frame for bad arrays or a fit that turns non-finite."""
    config = (config or PhotometricConfig()).validate()
    timesteps = list(timesteps)
    if not timesteps:
        raise ValueError(f"sequence {sequence} has no frames")
    tracker = PhotometricTracker(prior, cameras, config, identity, lighting)
    z_exp, rots, transs, residuals = [], [], [], []
    t0 = time.time()
    for i, t in enumerate(tqdm(timesteps, desc=f"track {sequence} (photometric)", disable=not progress, leave=False)):
        where = frame_source(t) if frame_source is not None else f"sequence {sequence} frame {t}"
        images, mattes, landmarks = load_frame(t)
        data = _prepare_frame(images, mattes, landmarks, tracker.input_cameras, tracker.cameras, where)
        residual = tracker.fit_frame(data, first=i < config.identity_frames)
        row = (tracker.z_exp.numpy().copy(), tracker.rot.numpy().copy(), tracker.trans.numpy().copy())
        if not (math.isfinite(residual) and all(np.isfinite(a).all() for a in row)
                and np.isfinite(tracker.z_geo.numpy()).all()):
            raise ValueError(f"{where}: the photometric fit diverged (non-finite codes or pose); nothing was written")
        residuals.append(residual)
        z_exp.append(row[0])
        rots.append(row[1])
        transs.append(row[2])
    seconds = time.time() - t0
    meta = {"source": "npga photometric tracking", "residual": "photometric L1 x 1000",
            "views": len(cameras), "seconds_per_frame": seconds / len(timesteps),
            "lighting": tracker.lighting(), "config": config.to_dict()}
    return Tracking(sequence, np.asarray(timesteps, np.int64), np.stack(z_exp), tracker.z_geo.numpy(),
                    tracker.z_app.numpy(), np.stack(rots), np.stack(transs), tracker.scale,
                    np.asarray(residuals, np.float32), meta)


def track_video(frames, cameras: Sequence[Camera], prior: MonoNPHM, *, mattes=None, landmarks=None,
                config: PhotometricConfig | None = None, sequence: str = "VIDEO", progress: bool = True,
                identity: tuple[torch.Tensor, torch.Tensor, float] | None = None) -> Tracking:
    """Track a video seen by V calibrated cameras (V = 1: monocular).

    frames: float32 tensor/array (T, V, H, W, 3) in [0, 1] or a list of T (V, H, W, 3);
    cameras: V :class:`Camera` at the frames' resolution; mattes: (T, V, H, W) in [0, 1] or None;
    landmarks: (T, V, L, 2) pixel coordinates of :data:`LANDMARK_NAMES` (NaN = missing) or None.
    Returns a :class:`Tracking` (timesteps 0..T-1). ValueError for inconsistent inputs.
    """
    T = len(frames)
    if T == 0:
        raise ValueError("track_video: no frames")
    for name, arr in (("mattes", mattes), ("landmarks", landmarks)):
        if arr is not None and len(arr) != T:
            raise ValueError(f"track_video: {name} has {len(arr)} frames, the video {T}")
    return track_frames(prior, cameras,
                        lambda t: (frames[t], None if mattes is None else mattes[t],
                                   None if landmarks is None else landmarks[t]),
                        range(T), config, sequence, identity=identity, progress=progress)


# ------------------------------------------------------------------------------------ captures
def select_views(serials: Sequence[str], max_views: int | None) -> list[str]:
    """``max_views`` serials spread evenly over the list (all when None or >= len)."""
    serials = list(serials)
    if max_views is None or max_views >= len(serials):
        return serials
    idx = np.unique(np.round(np.linspace(0, len(serials) - 1, max_views)).astype(int))
    return [serials[i] for i in idx]


def track_capture_photometric(data, prior_dir, participant: str | None = None,
                              sequences: Iterable[str] | None = None, per_sequence_identity: bool = False,
                              config: PhotometricConfig | None = None, views: int | None = None,
                              evaluate: bool = False, force: bool = False, progress: bool = True,
                              on_sequence: Callable[[str, dict], None] | None = None) -> dict:
    """``npga track DATA --photometric``: like :func:`npga_taichi.prior.tracking.track_capture`
    (same files, same folder, same return value) but fitted to the images and alpha mattes (when
    the capture has them; NeRSemble v2 videos have none) through
    :class:`PhotometricTracker`; point clouds are never read.

    ``views``: cameras used (spread evenly over the calibration order; default all).
    The identity and lighting of the first tracked sequence are reused for the others unless
    ``per_sequence_identity``.
    """
    from npga_taichi.checkpoint import ensure_output_dir
    from npga_taichi.data.nersemble import NersembleCapture, resolve_participant
    from npga_taichi.prior.model import load_prior

    config = (config or PhotometricConfig()).validate()
    if views is not None and int(views) < 1:
        raise ValueError(f"--views must be >= 1, got {views}")
    root, pid = resolve_participant(data, participant)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        capture = NersembleCapture(root, pid)
    notes = list(capture.skipped)
    available = capture.sequences()
    if isinstance(sequences, str):
        sequences = sequences.split(",")
    chosen = available if sequences is None else [s.strip() for s in sequences if s.strip()]
    if not chosen:
        raise ValueError("--sequences names no sequence")
    for s in chosen:
        if s not in available:
            capture.timesteps(s)  # raises naming the sequence
    if prior_dir is None:
        raise ValueError("--prior: a prior folder is required")
    gt = load_groundtruth(capture.pdir) if evaluate else None
    out_dir = ensure_output_dir(tracking_dir(capture.pdir), "tracking folder")
    prior = load_prior(prior_dir)
    chosen = sorted(chosen, key=lambda s: (s == "FREE", available.index(s)))
    identity, lighting = None, None
    summary: dict[str, dict] = {}
    t0 = time.time()
    for seq in chosen:
        path = out_dir / f"{seq}.npz"
        if path.exists() and not force:
            tracking = load_track_of_prior(path, prior)
            summary[seq] = {**_summary(tracking), "skipped": "exists"}
        else:
            t_seq = time.time()
            timesteps = capture.timesteps(seq)
            serials = select_views(capture.available_serials(seq), views)
            cams = [capture.cameras[s] for s in serials]

            def load(t, s=seq, serials=serials):
                images = np.stack([capture.load_image(s, t, c) for c in serials])
                alphas = [capture.load_alpha(s, t, c) for c in serials]
                mattes = None if any(a is None for a in alphas) else np.stack(alphas)[..., 0]
                return images, mattes, None

            tracking = track_frames(prior, cams, load, timesteps, config, seq,
                                    identity=None if per_sequence_identity else identity,
                                    lighting=None if per_sequence_identity else lighting, progress=progress,
                                    frame_source=lambda t, s=seq: f"{capture.pdir}/sequences/{s} frame {t}")
            tracking.meta["seconds"] = time.time() - t_seq
            tracking.meta["prior"] = str(prior_dir)
            tracking.meta["serials"] = ",".join(serials)
            save_tracking(tracking, path)
            summary[seq] = _summary(tracking)
        if identity is None and not per_sequence_identity:
            identity = (torch.as_tensor(tracking.z_geo), torch.as_tensor(tracking.z_app), tracking.scale)
            lighting = tracking.meta.get("lighting")
        if gt is not None:
            try:
                summary[seq]["evaluation"] = evaluate_against_groundtruth(prior, tracking, gt)
            except (KeyError, TypeError, IndexError) as err:
                raise ValueError(f"{capture.pdir / 'groundtruth' / 'groundtruth.json'}: malformed ground truth "
                                 f"({type(err).__name__}: {err})") from None
        if on_sequence is not None:
            on_sequence(seq, summary[seq])
    return {"tracking_dir": str(out_dir), "seconds": time.time() - t0, "sequences": summary, "warnings": notes}


def _summary(tracking: Tracking) -> dict:
    """Tracking.summary() with the residual named for what it is in a photometric track
    (photometric L1 x 1000); other tracks' summaries unchanged."""
    s = tracking.summary()
    if tracking.meta.get("residual") != "photometric L1 x 1000":
        return s
    s["photometric_l1_x1000_mean"] = s.pop("residual_mm_mean")
    s["photometric_l1_x1000_max"] = s.pop("residual_mm_max")
    return s


# ------------------------------------------------------------------------------------ videos
def video_eye_closure(labels, camera: Camera, rot, trans, scale, source: str = "labels") -> np.ndarray:
    """(T, 2) float32 eye closure (left, right; 0 open, 1 closed) of a monocular video from its
    label maps ``labels`` (T, H, W) uint8 and the head poses tracked with ``camera`` (rot (T, 3, 3),
    trans (T, 3), scale: ``x_world = scale rot x + trans`` in that camera's world).

    :func:`npga_taichi.eye_closure.count_eye_pixels` per frame, then
    :func:`~npga_taichi.eye_closure.closure_from_counts` with the video as its one camera: the open
    eye is the video's own :data:`~npga_taichi.eye_closure.OPEN_PERCENTILE`-th percentile frame,
    so no neutral frame is needed (a video that blinks in most frames reads as less closed).
    ValueError naming ``source`` when no frame shows an eye."""
    from npga_taichi.eye_closure import closure_from_counts, count_eye_pixels, eye_centres_world

    labels = np.asarray(labels)
    rot, trans = np.asarray(rot), np.asarray(trans)
    if labels.ndim != 3 or len(labels) != len(rot) or len(trans) != len(rot):
        raise ValueError(f"{source}: {labels.shape} label maps for {len(rot)} tracked frames")
    counts = np.array([[count_eye_pixels(labels[t], camera, eye_centres_world(rot[t], trans[t], scale))]
                       for t in range(len(labels))], np.float64)  # (T, 1 camera, 2)
    try:
        return closure_from_counts({"video": counts})["video"]
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


def add_video_labels(tracking: Tracking, labels, camera: Camera, source: str = "labels") -> Tracking:
    """Set ``tracking.eye_closure`` (:func:`video_eye_closure`) and ``tracking.part_motion``
    (:func:`npga_taichi.part_motion.video_part_motion`) from a monocular video's label maps
    (T, H, W) uint8, measured at the track's head poses seen by ``camera``; returns the track."""
    from npga_taichi.part_motion import video_part_motion

    tracking.eye_closure = video_eye_closure(labels, camera, tracking.rot, tracking.trans, tracking.scale, source=source)
    tracking.part_motion = video_part_motion(labels, camera, tracking.rot, tracking.trans, tracking.scale)
    return tracking


def track_video_file(video, prior_dir, out, *, mattes=None, landmarks=None, labels=None, fov: float | None = None,
                     K=None, config: PhotometricConfig | None = None, sequence: str | None = None,
                     max_frames: int | None = None, avatar=None, avatar_config=None, force: bool = False,
                     progress: bool = True) -> dict:
    """``npga track-video``: track a monocular video file or image folder with a prior and write
    the tracking file ``out`` (``.npz`` + ``.json``, :func:`npga_taichi.prior.tracking.save_tracking`).

    ``mattes``: video/folder of the same frames' mattes; ``landmarks``: ``.npy``/JSON file;
    ``labels``: folder of the frames' label maps, which adds the eye closure
    (``Tracking.eye_closure``, :func:`video_eye_closure`) and the brows' and mouth corners' motion
    (``Tracking.part_motion``, :func:`npga_taichi.part_motion.video_part_motion`)
    (:mod:`npga_taichi.data.video_input`); camera from ``fov`` (horizontal degrees) or ``K`` (a 3x3
    ``.npy``/JSON file), exactly one of them. ``max_frames``: track only the first frames.
    ``avatar``: a run folder whose avatar shows the video's person: the proxy's track is then
    refined through it (:func:`npga_taichi.avatar_tracking.track_through_avatar` with
    ``avatar_config``; the codes and poses are that avatar's own). Existing outputs are kept
    unless ``force`` (FileExistsError). Returns the summary dict (``tracking`` path, ``frames``,
    ``seconds``, ``seconds_per_frame`` …).
    """
    from npga_taichi.data import video_input as vi
    from npga_taichi.prior.model import load_prior

    config = (config or PhotometricConfig()).validate()
    out = Path(out).with_suffix(".npz")
    if not force:
        for p in (out, out.with_suffix(".json")):
            if p.exists():
                raise FileExistsError(f"{p} exists; use --force to overwrite")
    if (fov is None) == (K is None):
        raise ValueError("give the camera by exactly one of --fov (degrees) or --K (a 3x3 .npy/.json file)")
    if max_frames is not None and int(max_frames) < 1:
        raise ValueError(f"--max-frames must be >= 1, got {max_frames}")
    frames = vi.read_frames(video)
    T_all, H, W = frames.shape[:3]
    # mattes and landmarks must match the whole video; --max-frames cuts all three alike
    matte_arr = None if mattes is None else vi.read_mattes(mattes, T_all, H, W)
    lmk = None if landmarks is None else vi.read_landmarks(landmarks, T_all, len(LANDMARK_NAMES))
    label_arr = None if labels is None else vi.read_labels(labels, T_all, H, W)
    T = T_all if max_frames is None else min(T_all, int(max_frames))
    frames = frames[:T]
    matte_arr = None if matte_arr is None else matte_arr[:T]
    lmk = None if lmk is None else lmk[:T]
    Kmat = vi.camera_from_fov(float(fov), W, H) if fov is not None else vi.read_intrinsics(K)
    camera = vi.video_camera(Kmat, W, H)
    prior = load_prior(prior_dir)
    run = None
    if avatar is not None:  # loaded before the long tracking: a wrong folder fails at once
        from npga_taichi.reenactment import LoadedRun

        run = LoadedRun(avatar)
    name = sequence or Path(video).stem
    t0 = time.time()
    tracking = track_video(torch.from_numpy(frames)[:, None], [camera], prior,
                           mattes=None if matte_arr is None else torch.from_numpy(matte_arr)[:, None],
                           landmarks=None if lmk is None else torch.from_numpy(lmk)[:, None],
                           config=config, sequence=name, progress=progress)
    if label_arr is not None:
        add_video_labels(tracking, label_arr[:T], camera, source=f"labels {labels}")
    if run is not None:
        from npga_taichi.avatar_tracking import track_through_avatar

        tracking = track_through_avatar(run, frames, camera, tracking, matte_arr, avatar_config, progress=progress)
    seconds = time.time() - t0
    tracking.meta.update({"video": str(video), "prior": str(prior_dir), "seconds": seconds,
                          "seconds_per_frame": seconds / T, "K": json.dumps(Kmat.tolist())})
    path = save_tracking(tracking, out)
    return {**_summary(tracking), "tracking": str(path), "seconds": seconds, "width": W, "height": H,
            "mattes": mattes is not None, "landmarks": landmarks is not None, "labels": labels is not None,
            "avatar": None if avatar is None else str(avatar),
            "eye_closure_mean": None if tracking.eye_closure is None else tracking.eye_closure.mean(0).tolist()}
