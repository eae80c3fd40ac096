"""``npga distill``: train the forward field F from the prior's backward field B.

Cycle consistency: for canonical points x on and near the prior's zero level set (tracked
identity, hyper coordinates 0) and expression codes z (tracked codes plus Gaussian jitter),
minimise mean ‖B(F(x, z), z) − x‖ (3-D part of B). Held-out codes (the ``FREE`` sequence if
tracked, else every 10th frame) measure generalisation; F is also compared with B inverted by
damped Newton root finding (the slow ground truth MonoNPHM itself uses).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from npga_taichi.conventions import MM_PER_UNIT
from npga_taichi.checkpoint import write_text_atomic
from npga_taichi.prior.forward_field import (ForwardDeformationField, ForwardFieldConfig,
                                             load_forward_field, save_forward_field)
from npga_taichi.prior.model import MonoNPHM
from npga_taichi.prior.root_finding import invert_pointwise
from npga_taichi.prior.surface import sample_level_set
from npga_taichi.prior.tracking import Tracking



@dataclass
class DistillConfig:
    """Settings of ``npga distill``."""

    hidden_dim: int = 128          # F's MLP width
    n_layers: int = 4              # F's hidden layers
    n_freqs: int = 4               # Fourier frequencies of x in F's input
    steps: int = 1500              # optimisation steps (2500: held-out cycle error p95 0.27 mm instead of 0.34)
    batch_points: int = 4096       # (point, code) samples per step
    lr: float = 1e-3               # Adam learning rate (halved every lr_decay_every)
    lr_decay_every: int = 480      # steps between learning-rate halvings
    surface_points: int = 20000    # canonical points on the zero level set (pool)
    near_fraction: float = 0.3     # share of each batch perturbed off the surface
    near_sigma: float = 0.01       # std of that perturbation (canonical units)
    jitter: float = 0.3            # code jitter std, relative to the per-dimension std of codes
    heldout_sequence: str = "FREE"  # tracked sequence whose codes are held out (if present)
    heldout_every: int = 10        # otherwise hold out every n-th frame
    eval_points: int = 1000        # surface points for the cycle-error evaluation
    eval_codes: int = 24           # held-out codes evaluated (evenly spaced)
    root_points: int = 200         # points for the root-finding comparison per code
    root_codes: int = 4            # codes for the root-finding comparison
    root_iters: int = 30           # Newton iterations
    checkpoint_every: int = 500    # steps between resumable checkpoints
    seed: int = 0                  # sampling seed

    def to_dict(self) -> dict:
        return asdict(self)


def split_codes(trackings: list[Tracking], cfg: DistillConfig) -> tuple[np.ndarray, np.ndarray, str]:
    """Training and held-out expression codes from tracking results; returns a description."""
    names = [t.sequence for t in trackings]
    if cfg.heldout_sequence in names and len(trackings) > 1:
        train = np.concatenate([t.z_exp for t in trackings if t.sequence != cfg.heldout_sequence])
        held = np.concatenate([t.z_exp for t in trackings if t.sequence == cfg.heldout_sequence])
        return train, held, f"sequence {cfg.heldout_sequence}"
    codes = np.concatenate([t.z_exp for t in trackings])
    mask = np.zeros(len(codes), bool)
    mask[cfg.heldout_every // 2::cfg.heldout_every] = True
    if mask.all() or not mask.any():
        raise ValueError("need at least 2 tracked frames to hold out codes")
    return codes[~mask], codes[mask], f"every {cfg.heldout_every}th frame"


def canonical_box(prior: MonoNPHM, z_geo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A box around the identity's anchors (face and cranium; the neck is cut short)."""
    with torch.no_grad():
        anchors = prior.anchors(z_geo)
    lo = anchors.min(0).values - torch.tensor([0.25, 0.35, 0.3])
    hi = anchors.max(0).values + torch.tensor([0.25, 0.25, 0.25])
    return lo, hi


def cycle_errors(prior: MonoNPHM, field: ForwardDeformationField, x: torch.Tensor,
                 codes: torch.Tensor, z_geo: torch.Tensor) -> torch.Tensor:
    """‖B(F(x, z), z) − x‖ in mm for every code (rows) and point: (C * N,)."""
    errs = []
    with torch.no_grad():
        for z in codes:
            errs.append((prior.backward(field(x, z), z, z_geo) - x).norm(dim=-1))
    return torch.cat(errs) * MM_PER_UNIT


def root_finding_errors(prior: MonoNPHM, field: ForwardDeformationField, x: torch.Tensor,
                        codes: torch.Tensor, z_geo: torch.Tensor, iters: int) -> dict:
    """F(x, z) against the Newton inverse of B started at x (the slow ground truth)."""
    errs, converged, t_root, t_f = [], [], 0.0, 0.0
    for z in codes:
        t0 = time.time()
        root, _, ok = invert_pointwise(lambda y: prior.backward(y, z, z_geo), x, init=x,
                                       max_iters=iters, tol=1e-5)
        t_root += time.time() - t0
        t0 = time.time()
        with torch.no_grad():
            pred = field(x, z)
        t_f += time.time() - t0
        errs.append((pred - root).norm(dim=-1)[ok])
        converged.append(ok.float().mean())
    err = torch.cat(errs) * MM_PER_UNIT
    n = x.shape[0] * len(codes)
    return {"f_vs_root_median_mm": float(err.median()) if err.numel() else float("nan"),
            "f_vs_root_p95_mm": float(torch.quantile(err, 0.95)) if err.numel() else float("nan"),
            "root_converged_fraction": float(torch.stack(converged).mean()),
            "root_seconds_per_1k_points": 1000 * t_root / n,
            "f_seconds_per_1k_points": 1000 * t_f / n}


def distill(prior: MonoNPHM, trackings: list[Tracking], out: str | os.PathLike, cfg: DistillConfig,
            force: bool = False, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Train F into directory ``out`` (resuming an unfinished run); return the metrics."""
    out = Path(out)
    t_start = time.time()
    if not trackings:
        raise ValueError("no tracking results given")
    z_geo = torch.as_tensor(trackings[0].z_geo, dtype=torch.float32)
    if z_geo.shape[0] != prior.config.lat_dim_geo:
        raise ValueError(f"tracking z_geo has {z_geo.shape[0]} dims; the prior expects "
                         f"{prior.config.lat_dim_geo} (tracked with another prior?)")
    for t in trackings:
        if t.z_exp.shape[1] != prior.config.lat_dim_exp:
            raise ValueError(f"tracking {t.sequence}: z_exp has {t.z_exp.shape[1]} dims, prior "
                             f"expects {prior.config.lat_dim_exp}")
    train_np, held_np, held_desc = split_codes(trackings, cfg)
    train_codes = torch.as_tensor(train_np, dtype=torch.float32)
    held_codes = torch.as_tensor(held_np, dtype=torch.float32)
    code_std = train_codes.std(0) if len(train_codes) > 1 else torch.full_like(train_codes[0], 0.01)
    code_std = code_std.clamp_min(1e-4)
    for p in prior.parameters():
        p.requires_grad_(False)

    field_cfg = ForwardFieldConfig(lat_dim_exp=prior.config.lat_dim_exp, hidden_dim=cfg.hidden_dim,
                                   n_layers=cfg.n_layers, n_freqs=cfg.n_freqs)
    start = 0
    field = None
    opt_state = None
    if (out / "forward_field.pt").exists():
        old, extra = load_forward_field(out, with_extra=True)
        if force:
            pass
        elif extra.get("step", 0) >= cfg.steps and (out / "metrics.json").exists():
            raise ValueError(f"{out} already holds a distilled forward field; use --force")
        elif extra.get("distill_config") != cfg.to_dict():
            raise ValueError(f"{out} holds an unfinished run with other settings; use --force")
        else:
            field, start, opt_state = old, int(extra.get("step", 0)), extra.get("optimizer")
            log(f"resuming distillation at step {start}")
    if field is None:
        field = ForwardDeformationField(field_cfg)
    field.train()

    gen = torch.Generator().manual_seed(cfg.seed)
    lo, hi = canonical_box(prior, z_geo)
    sdf_fn = lambda x: prior.sdf(x, z_geo)  # noqa: E731 - the canonical SDF of the identity
    pool = sample_level_set(sdf_fn, cfg.surface_points + cfg.eval_points, lo, hi, gen)
    eval_x = pool[cfg.surface_points:]
    pool = pool[:cfg.surface_points]

    opt = torch.optim.Adam(field.parameters(), lr=cfg.lr)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    step_gen = torch.Generator().manual_seed(cfg.seed + 1 + start)
    n_near = int(cfg.batch_points * cfg.near_fraction)
    bar = tqdm(range(start, cfg.steps), desc="distill F", disable=not progress, initial=start,
               total=cfg.steps)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cfg.lr * 0.5 ** (step // cfg.lr_decay_every)
        x = pool[torch.randint(len(pool), (cfg.batch_points,), generator=step_gen)]
        x = torch.cat([x[:n_near] + cfg.near_sigma * torch.randn(n_near, 3, generator=step_gen),
                       x[n_near:]])
        z = train_codes[torch.randint(len(train_codes), (cfg.batch_points,), generator=step_gen)]
        z = z + cfg.jitter * code_std * torch.randn(z.shape, generator=step_gen)
        cycle = prior.backward(field(x, z), z, z_geo)
        loss = (cycle - x).norm(dim=-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            bar.set_postfix(cycle_mm=f"{loss.item() * MM_PER_UNIT:.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            save_forward_field(field, out, extra={"step": step + 1, "optimizer": opt.state_dict(),
                                                  "distill_config": cfg.to_dict()})
    bar.close()
    field.eval()
    train_seconds = time.time() - t_start

    pick = lambda codes, k: codes[torch.linspace(0, len(codes) - 1, min(k, len(codes))).long()]  # noqa: E731
    held_eval = pick(held_codes, cfg.eval_codes)
    held_err = cycle_errors(prior, field, eval_x, held_eval, z_geo)
    train_err = cycle_errors(prior, field, eval_x, pick(train_codes, cfg.eval_codes), z_geo)
    root = root_finding_errors(prior, field, eval_x[:cfg.root_points], pick(held_codes, cfg.root_codes),
                               z_geo, cfg.root_iters)
    metrics = {
        "heldout_codes": held_desc,
        "n_train_codes": int(len(train_codes)), "n_heldout_codes": int(len(held_codes)),
        "cycle_heldout_median_mm": float(held_err.median()),
        "cycle_heldout_p95_mm": float(torch.quantile(held_err, 0.95)),
        "cycle_heldout_mean_mm": float(held_err.mean()),
        "cycle_train_median_mm": float(train_err.median()),
        "cycle_train_p95_mm": float(torch.quantile(train_err, 0.95)),
        **root,
        "steps": cfg.steps, "train_seconds": train_seconds, "seconds": time.time() - t_start,
    }
    save_forward_field(field, out, extra={"step": cfg.steps, "distill_config": cfg.to_dict(),
                                          "z_geo": z_geo, "sequences": [t.sequence for t in trackings]})
    write_text_atomic(json.dumps({"field": field.config.to_dict(), "distill": cfg.to_dict()}, indent=2),
                      out / "distill_config.json")
    write_text_atomic(json.dumps(metrics, indent=2), out / "metrics.json")
    return metrics
