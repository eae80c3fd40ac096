"""Our Taichi rasterizer against a reference on one scene (the library behind ``npga compare``).

Renders the same scene with :func:`npga_taichi.render.rasterize` (our kernels) and a reference:

* ``reference="torch"`` -- our pure-PyTorch oracle (:func:`npga_taichi.reference.rasterize`),
  the exact contract; errors should be at rounding level.
* ``reference="gsplat"`` -- gsplat's own PyTorch projection and SH
  (``gsplat.cuda._torch_impl._fully_fused_projection`` / ``_spherical_harmonics``) feeding the
  oracle's compositing (with radii from our contract rule: gsplat's 3σ radius is not
  opacity-aware and its compositing thresholds differ). On a CUDA device gsplat's own fused
  ``gsplat.rasterization`` is used instead, so small differences there are expected.

:func:`run_comparison` returns a JSON-serialisable report: image / alpha / depth errors (max abs,
mean abs, PSNR), per-input gradient errors (relative L2 and cosine similarity) for means, quats,
scales, opacities and colours with the same random upstream gradient pushed through both, and
forward / backward times (ours cold = first call incl. Taichi compilation, ours warm = second
call); :func:`format_report` renders it as a table. Bad configurations raise ValueError naming
the field (``CompareConfig``) or the file.
"""
from __future__ import annotations

import importlib.util
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

GRAD_NAMES = ("means", "quats", "scales", "opacities", "colors")

# Default tolerances per (reference on this device, dtype): (image max abs, gradient relative L2).
# float32 allows for threshold flips (a fragment whose alpha rounds across 1/255, or T across
# 1e-4) between two correct implementations; gsplat's fused CUDA path composites differently.
DEFAULT_TOLERANCES = {
    ("exact", "float32"): (5e-3, 2e-2),
    ("exact", "float64"): (1e-8, 1e-6),
    ("gsplat-cuda", "float32"): (3e-2, 1e-1),
}


@dataclass
class CompareConfig:
    """Everything that defines one comparison (echoed in the ``--json`` output)."""

    reference: str = "torch"             # "torch" (our oracle) or "gsplat"
    seed: int = 0                        # seed of the random scene, subsampling and upstream gradient
    n: int = 2000                        # Gaussians of the random scene; with --ply the most taken (0 = all)
    width: int = 128                     # image width in pixels
    height: int = 128                    # image height in pixels
    channels: int = 3                    # colour channels of the random scene without SH
    sh_degree: int | None = None         # SH degree (random scene: None = plain colours; --ply: <= file's)
    dtype: str = "float32"               # float32 or float64 for both renderers
    arch: str = "auto"                   # Taichi arch: auto, cpu or cuda (tensors live there too)
    ply: str | None = None               # 3DGS PLY to render instead of a random scene
    camera_distance: float | None = None  # camera distance to the scene centre (None = automatic)
    image_tol: float | None = None       # image max-abs tolerance for --strict (None = default)
    grad_tol: float | None = None        # gradient relative-L2 tolerance for --strict (None = default)


# ------------------------------------------------------------------------------------------
# Scene and camera
# ------------------------------------------------------------------------------------------
FOV_DEGREES = 60.0  # field of view along the longer image side


def look_at_camera(center, distance: float, width: int, height: int, dtype, device):
    """A pinhole camera at ``center - distance·ẑ`` looking along +z at ``center`` (OpenCV axes,
    world y down in the image). Returns (viewmat (4, 4) world→camera, K (3, 3))."""
    import numpy as np
    import torch

    from npga_taichi.cameras import look_at

    center = np.asarray(torch.as_tensor(center).detach().cpu(), np.float64)
    viewmat = look_at(center - np.array([0.0, 0.0, distance]), center, up=(0.0, -1.0, 0.0))
    focal = 0.5 * max(width, height) / math.tan(math.radians(FOV_DEGREES / 2))
    K = [[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]]
    return (torch.as_tensor(viewmat, dtype=dtype, device=device), torch.tensor(K, dtype=dtype, device=device))


def random_scene(n: int, seed: int, channels: int, sh_degree: int | None, dtype, device) -> dict:
    """A random cloud in a ball of radius 1.6 around the origin (partly outside the default
    view, so frustum clamping and culling are exercised): scales ~ 0.05·e^N(0, 0.5),
    opacities U(0.05, 1), random rotations, colours U(0, 1) or SH with a random DC colour."""
    import torch

    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=-1)
    means = direction * 1.6 * torch.rand(n, 1, generator=g, dtype=torch.float64) ** (1 / 3)
    scene = {
        "means": means,
        "quats": torch.randn(n, 4, generator=g, dtype=torch.float64),
        "scales": 0.05 * torch.exp(0.5 * torch.randn(n, 3, generator=g, dtype=torch.float64)),
        "opacities": 0.05 + 0.95 * torch.rand(n, generator=g, dtype=torch.float64),
    }
    if sh_degree is None:
        scene["colors"] = torch.rand(n, channels, generator=g, dtype=torch.float64)
    else:
        from npga_taichi.conventions import SH_C0

        sh = 0.2 * torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g, dtype=torch.float64)
        sh[:, 0] = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) / SH_C0
        scene["colors"] = sh
    return {k: v.to(dtype=dtype, device=device) for k, v in scene.items()}


def ply_scene(path: str, n: int, seed: int, sh_degree: int | None, dtype, device) -> tuple[dict, int]:
    """Gaussians of a 3DGS PLY, activated; a seeded random subset of ``n`` when n > 0 and the
    file holds more. Returns (scene, sh degree used)."""
    import torch

    from npga_taichi.ply import read_ply

    cloud = read_ply(path)  # ValueError / FileNotFoundError naming the file
    if len(cloud) == 0:
        raise ValueError(f"{path}: the PLY holds no Gaussians")
    degree = cloud.sh_degree if sh_degree is None else sh_degree
    if degree > cloud.sh_degree:
        raise ValueError(f"sh_degree: {path} stores SH degree {cloud.sh_degree}, cannot render degree {degree}")
    means, quats, scales, opacities, sh = cloud.activated(dtype=dtype, device=device)
    scene = {"means": means, "quats": quats, "scales": scales, "opacities": opacities,
             "colors": sh[:, :(degree + 1) ** 2].contiguous()}
    if 0 < n < len(cloud):
        keep = torch.randperm(len(cloud), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        scene = {k: v[keep.to(device)] for k, v in scene.items()}
    return scene, degree


def auto_distance(means) -> float:
    """Distance at which the cloud (90th percentile radius about its mean) fills ~80% of the view."""
    import torch

    radius = float(torch.quantile((means - means.mean(0)).norm(dim=-1).double().cpu(), 0.9))
    return max(radius, 1e-6) / math.tan(math.radians(FOV_DEGREES / 2)) / 0.8 + radius


# ------------------------------------------------------------------------------------------
# Renderers: each maps (scene, viewmat, K, width, height, sh_degree) -> (image, alpha, depth, radii)
# ------------------------------------------------------------------------------------------
def _ours(scene, viewmat, K, width, height, sh_degree):
    from npga_taichi.render import rasterize

    out = rasterize(scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["colors"],
                    viewmat, K, width, height, sh_degree=sh_degree)
    return out.image, out.alpha, out.depth, out.radii


def _torch_oracle(scene, viewmat, K, width, height, sh_degree):
    from npga_taichi import reference

    out = reference.rasterize(scene["means"], scene["quats"], scene["scales"], scene["opacities"],
                              scene["colors"], viewmat, K, width, height, sh_degree=sh_degree)
    return out.image, out.alpha, out.depth, out.radii


def _gsplat_torch(scene, viewmat, K, width, height, sh_degree):
    """gsplat's PyTorch projection + SH, composited by our oracle with contract radii."""
    import torch
    from gsplat.cuda._torch_impl import (_fully_fused_projection, _quat_scale_to_covar_preci,
                                         _spherical_harmonics)

    from npga_taichi import reference
    from npga_taichi.cameras import camera_center
    from npga_taichi.contract import validate_inputs

    validate_inputs(scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["colors"],
                    viewmat, K, width, height, sh_degree)
    covars, _ = _quat_scale_to_covar_preci(scene["quats"], scene["scales"], compute_preci=False)
    _, means2d, depths, conics, _ = _fully_fused_projection(scene["means"], covars, viewmat[None], K[None],
                                                            width, height)
    means2d, depths, conics = means2d[0], depths[0], conics[0]
    colors = scene["colors"]
    if sh_degree is not None:
        dirs = scene["means"] - camera_center(viewmat)
        colors = torch.clamp(_spherical_harmonics(sh_degree, dirs, colors) + 0.5, min=0.0)
    radii = reference.radii_from_conics(means2d, conics, depths, scene["opacities"], width, height)
    image, alpha, depth = reference.rasterize_projected(means2d, conics, depths, radii, scene["opacities"],
                                                        colors, width, height)
    return image, alpha, depth, radii


def _gsplat_cuda(scene, viewmat, K, width, height, sh_degree):
    """gsplat's fused CUDA rasterizer (3σ radii, its own tile culling)."""
    import gsplat

    colors, alphas, meta = gsplat.rasterization(
        scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["colors"],
        viewmat[None], K[None], width, height, sh_degree=sh_degree, render_mode="RGB+D",
        packed=False)
    radii = meta["radii"][0]
    radii = radii.amax(-1) if radii.dim() == 2 else radii
    return colors[0, ..., :-1], alphas[0], colors[0, ..., -1:], radii


def _timed(render: Callable, scene: dict, upstream: tuple, camera: tuple, sync: Callable) -> dict:
    """Render once with fresh leaf tensors, backprop the upstream gradient, time both halves."""
    import torch

    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in scene.items()}
    sync()
    t0 = time.perf_counter()
    image, alpha, depth, radii = render(leaves, *camera)
    sync()
    t1 = time.perf_counter()
    loss = (image * upstream[0]).sum() + (alpha * upstream[1]).sum() + (depth * upstream[2]).sum()
    loss.backward()
    sync()
    t2 = time.perf_counter()
    grads = {k: (v.grad if v.grad is not None else torch.zeros_like(v)).detach() for k, v in leaves.items()}
    return {"image": image.detach(), "alpha": alpha.detach(), "depth": depth.detach(), "radii": radii.detach(),
            "grads": grads, "forward_s": t1 - t0, "backward_s": t2 - t1}


def compare_renders(ours: dict, ref: dict) -> dict:
    """Error metrics between two renders (dicts from :func:`_timed`)."""
    import torch

    from npga_taichi.metrics import psnr_from_mse

    diff = (ours["image"] - ref["image"]).double()
    depth_scale = float(ref["depth"].abs().max().clamp_min(1e-12))
    result = {
        "image": {"max_abs": float(diff.abs().max()), "mean_abs": float(diff.abs().mean()),
                  "psnr_db": psnr_from_mse(float((diff ** 2).mean()))},
        "alpha_max_abs": float((ours["alpha"] - ref["alpha"]).abs().max()),
        "depth_max_rel": float((ours["depth"] - ref["depth"]).abs().max()) / depth_scale,
        "visible": {"ours": int((ours["radii"] > 0).sum()), "reference": int((ref["radii"] > 0).sum()),
                    "visibility_mismatches": int(((ours["radii"] > 0) != (ref["radii"] > 0)).sum())},
        "gradients": {},
    }
    for name in GRAD_NAMES:
        a, b = ours["grads"][name].double().flatten(), ref["grads"][name].double().flatten()
        nb, na = float(b.norm()), float(a.norm())
        rel = float((a - b).norm()) / nb if nb > 0 else (0.0 if na == 0 else math.inf)
        cos = float(torch.dot(a, b)) / (na * nb) if na > 0 and nb > 0 else (1.0 if na == nb else 0.0)
        result["gradients"][name] = {"rel_l2": rel, "cosine": cos}
    return result


def check_config(cfg: CompareConfig) -> None:
    """Raise ValueError naming the first field of ``cfg`` that cannot be run."""
    from npga_taichi.contract import MAX_SH_DEGREE, is_int

    choices = {"reference": ("torch", "gsplat"), "dtype": ("float32", "float64"), "arch": ("auto", "cpu", "cuda")}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(cfg, name)!r}")
    for name, low in (("seed", None), ("n", 0), ("width", 1), ("height", 1), ("channels", 1)):
        value = getattr(cfg, name)
        if not is_int(value) or (low is not None and value < low):
            raise ValueError(f"{name} must be an integer" + (f" >= {low}" if low is not None else "") +
                             f", got {value!r}")
    if cfg.sh_degree is not None and not (is_int(cfg.sh_degree) and 0 <= cfg.sh_degree <= MAX_SH_DEGREE):
        raise ValueError(f"sh_degree must be None or an integer in 0..{MAX_SH_DEGREE}, got {cfg.sh_degree!r}")
    if cfg.ply is None and cfg.n == 0:
        raise ValueError("n: the random scene needs at least one Gaussian")
    if cfg.camera_distance is not None and not cfg.camera_distance > 0:
        raise ValueError(f"camera_distance must be positive, got {cfg.camera_distance!r}")


def run_comparison(cfg: CompareConfig) -> dict:
    """Build the scene, render with both, return the full report (JSON-serialisable).

    Raises ValueError naming the field of ``cfg`` (or the PLY file) that cannot be run, and
    FileNotFoundError for a missing PLY.
    """
    import torch

    check_config(cfg)
    if cfg.arch == "cuda" and not torch.cuda.is_available():
        raise ValueError("arch: CUDA is not available to torch on this machine")
    from npga_taichi.kernels import runtime

    arch = runtime.init(cfg.arch)  # ValueError if Taichi already runs on another arch
    device = torch.device("cuda" if arch == "cuda" else "cpu")
    dtype = {"float32": torch.float32, "float64": torch.float64}[cfg.dtype]

    if cfg.ply is not None:
        scene, sh_degree = ply_scene(cfg.ply, cfg.n, cfg.seed, cfg.sh_degree, dtype, device)
    else:
        scene, sh_degree = random_scene(cfg.n, cfg.seed, cfg.channels, cfg.sh_degree, dtype, device), cfg.sh_degree
    center = scene["means"].mean(0)
    if cfg.camera_distance is not None:
        distance = cfg.camera_distance
    elif cfg.ply is not None:
        distance = auto_distance(scene["means"])
    else:
        distance = 3.0
    viewmat, K = look_at_camera(center, distance, cfg.width, cfg.height, dtype, device)
    camera = (viewmat, K, cfg.width, cfg.height, sh_degree)

    if cfg.reference == "torch":
        reference, ref_name, tol_key = _torch_oracle, "torch oracle", "exact"
    else:
        if importlib.util.find_spec("gsplat") is None:
            raise ValueError("reference: gsplat needs the gsplat package (pip install gsplat)")
        if device.type == "cuda":
            if dtype != torch.float32:
                raise ValueError("dtype: gsplat's CUDA rasterizer is float32 only; use float32 or the CPU")
            reference, ref_name, tol_key = _gsplat_cuda, "gsplat (CUDA rasterization)", "gsplat-cuda"
        else:
            reference, ref_name, tol_key = _gsplat_torch, "gsplat projection + oracle compositing", "exact"

    channels = scene["colors"].shape[1] if sh_degree is None else 3
    g = torch.Generator().manual_seed(cfg.seed + 1)
    hw = (cfg.height, cfg.width)
    upstream = tuple(torch.randn(shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
                     for shape in (hw + (channels,), hw + (1,), hw + (1,)))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    try:
        ours_cold = _timed(_ours, scene, upstream, camera, sync)
        ours = _timed(_ours, scene, upstream, camera, sync)
        ref = _timed(reference, scene, upstream, camera, sync)
    except ValueError as err:  # rejected inputs (e.g. non-finite values in a PLY)
        source = cfg.ply if cfg.ply is not None else "random scene"
        raise ValueError(f"{source}: {err}") from None

    image_tol_default, grad_tol_default = DEFAULT_TOLERANCES[(tol_key, cfg.dtype)]
    image_tol = cfg.image_tol if cfg.image_tol is not None else image_tol_default
    grad_tol = cfg.grad_tol if cfg.grad_tol is not None else grad_tol_default
    errors = compare_renders(ours, ref)
    failures = []
    if not errors["image"]["max_abs"] <= image_tol:
        failures.append(f"image max abs {errors['image']['max_abs']:.3g} > {image_tol:.3g}")
    for name, e in errors["gradients"].items():
        if not e["rel_l2"] <= grad_tol:
            failures.append(f"{name} gradient rel L2 {e['rel_l2']:.3g} > {grad_tol:.3g}")
    return {
        "config": asdict(cfg),
        "reference": ref_name,
        "arch": arch,
        "scene": {"gaussians": int(scene["means"].shape[0]), "width": cfg.width, "height": cfg.height,
                  "channels": channels, "sh_degree": sh_degree, "camera_distance": distance},
        **errors,
        "timings_s": {
            "ours_cold": {"forward": ours_cold["forward_s"], "backward": ours_cold["backward_s"]},
            "ours": {"forward": ours["forward_s"], "backward": ours["backward_s"]},
            "reference": {"forward": ref["forward_s"], "backward": ref["backward_s"]},
        },
        "tolerances": {"image_max_abs": image_tol, "grad_rel_l2": grad_tol},
        "failures": failures,
        "passed": not failures,
    }


def format_report(report: dict) -> str:
    """Human-readable table of a :func:`run_comparison` report."""
    s, img, t = report["scene"], report["image"], report["timings_s"]
    sh = f", SH degree {s['sh_degree']}" if s["sh_degree"] is not None else f", {s['channels']} channels"
    lines = [
        f"ours (Taichi, {report['arch']}) vs {report['reference']}  [{report['config']['dtype']}]",
        f"scene: {s['gaussians']} Gaussians, {s['width']}x{s['height']}{sh}, camera distance "
        f"{s['camera_distance']:.3g}; visible ours {report['visible']['ours']} / reference "
        f"{report['visible']['reference']} ({report['visible']['visibility_mismatches']} mismatches)",
        "",
        f"image   max abs {img['max_abs']:.3e}   mean abs {img['mean_abs']:.3e}   PSNR {img['psnr_db']:.1f} dB",
        f"alpha   max abs {report['alpha_max_abs']:.3e}   depth max rel {report['depth_max_rel']:.3e}",
        "",
        f"{'gradient':<12}{'rel L2':>12}{'cosine':>12}",
    ]
    for name, e in report["gradients"].items():
        lines.append(f"{name:<12}{e['rel_l2']:>12.3e}{e['cosine']:>12.6f}")
    lines += [
        "",
        f"{'time (s)':<22}{'forward':>10}{'backward':>10}",
        f"{'ours, first call':<22}{t['ours_cold']['forward']:>10.3f}{t['ours_cold']['backward']:>10.3f}",
        f"{'ours':<22}{t['ours']['forward']:>10.3f}{t['ours']['backward']:>10.3f}",
        f"{'reference':<22}{t['reference']['forward']:>10.3f}{t['reference']['backward']:>10.3f}",
        "",
        "PASS (within tolerances: image max abs {image_max_abs:.1e}, gradient rel L2 {grad_rel_l2:.1e})"
        .format(**report["tolerances"]) if report["passed"] else "FAIL: " + "; ".join(report["failures"]),
    ]
    return "\n".join(lines)
