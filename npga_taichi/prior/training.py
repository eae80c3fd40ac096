"""``npga prior fit``: train MonoNPHM as an auto-decoder on synthetic identities × expressions.

Supervision comes from the analytic head (:class:`npga_taichi.data.synthetic.SyntheticHead`):
for every (identity, expression) pair we store posed points on, near and away from the posed
surface with their analytic canonical correspondences B_gt(x), SDF values and (on the surface)
albedo. Losses per batch of pairs:

* SDF: |clamp(SDF(B(x))) − clamp(sdf_gt)| near the surface and in space, |SDF| on the surface,
* eikonal (|∇_canonical SDF| − 1)² on near-surface points,
* albedo |albedo − albedo_gt| on surface points,
* backward offsets |B(x) − B_gt(x)| (3-D part) and hyper coordinates → 0,
* code L2 regularisers, anchor offsets mirrored across x = 0 and small.

The model is an identity *space*: training identities come from seeds ``identity_seed_base + i``;
the evaluation identity (``heldout_identity_seed``) is never trained on. Evaluation fits its codes
with the network frozen and reports SDF and deformation errors in millimetres.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from npga_taichi.conventions import MM_PER_UNIT
from npga_taichi.checkpoint import write_text_atomic
from npga_taichi.prior.anchors import symmetric_anchor_layout
from npga_taichi.prior.config import PriorTrainConfig, dumps, preset
from npga_taichi.prior.model import MonoNPHM, load_prior, save_prior



@dataclass
class ShapeSamples:
    """Supervision for S (identity, expression) pairs, points stored per pair.

    points: (S, P, 3) posed; canonical: (S, P, 3) B_gt(points); sdf: (S, P) at the points;
    albedo: (S, Ps, 3) at the first Ps (surface) points; identity: (S,) long row of the identity
    codebook; kinds: (P,) long 0 = surface, 1 = near, 2 = space (same layout for every pair).
    """

    points: torch.Tensor
    canonical: torch.Tensor
    sdf: torch.Tensor
    albedo: torch.Tensor
    identity: torch.Tensor
    kinds: torch.Tensor
    expressions: np.ndarray     # (S, NUM_EXPRESSION_PARAMS) the analytic expression parameters


# What a posed surface point shows when it belongs to a small, fast-moving part of the face:
# the parts whose motion is what people look at (blinks, lips, the opened mouth) yet cover only
# ~3 % of a head's surface (eyelids alone ~0.7 %). Uniform samples barely teach B their motion.
EXPRESSIVE_LABELS = ("eyelids", "lips", "teeth", "mouth_interior")


def expressive_points(head, expr, seeds: torch.Tensor, n: int, cfg: PriorTrainConfig,
                      gen: torch.Generator) -> torch.Tensor:
    """(n, 3) posed surface points on the small, fast-moving parts of ``head`` under ``expr``.

    ``seeds`` (M, 3): posed surface points (a uniform sample). Candidates are the seeds on an
    :data:`EXPRESSIVE_LABELS` part or moved by more than ``cfg.moving_threshold_mm`` (|B_gt(x) −
    x|), jittered by ``cfg.moving_jitter`` and Newton-projected back onto the posed surface (so a
    handful of seeds covers the whole region). The n points are split equally among the
    categories that have candidates (each label, and "moved elsewhere", e.g. jaw and cheeks) so
    the 0.7 % eyelids weigh as much as the large jaw; inside a category a point is drawn with
    probability ∝ its displacement + threshold, so the part of a lid that a blink moves wins.
    Falls back to the seeds themselves when no category has a candidate.
    """
    from npga_taichi.data.synthetic import LABEL_NAMES

    thr = cfg.moving_threshold_mm / MM_PER_UNIT
    label_ids = torch.tensor([LABEL_NAMES.index(name) for name in EXPRESSIVE_LABELS])

    def categorise(x: torch.Tensor):
        can = head.backward(x, expr)
        disp = (can - x).norm(dim=-1)
        label = head.surface_label(can)
        cat = torch.full((len(x),), -1, dtype=torch.long)
        cat[disp > thr] = len(label_ids)  # "moved elsewhere" unless a label claims it below
        for k, lab in enumerate(label_ids.tolist()):
            cat[label == lab] = k
        return cat, disp

    cat, _ = categorise(seeds)
    base = seeds[cat >= 0]
    if len(base) == 0:
        return seeds[torch.randint(len(seeds), (n,), generator=gen)]
    reps = max(1, (4 * n) // len(base) + 1)
    cand = base.repeat(reps, 1)
    cand = cand + cfg.moving_jitter * torch.randn(cand.shape, generator=gen)
    proj, res, _ = head.project_to_surface(cand.contiguous(), expr)
    proj = torch.cat([base, proj[res < 1e-4]])
    cat, disp = categorise(proj)
    present = [k for k in range(len(label_ids) + 1) if bool((cat == k).any())]
    counts = [n // len(present) + (1 if j < n % len(present) else 0) for j in range(len(present))]
    out = []
    for k, count in zip(present, counts):
        rows = (cat == k).nonzero(as_tuple=True)[0]
        prob = disp[rows] + thr
        out.append(proj[rows[torch.multinomial(prob, count, replacement=True, generator=gen)]])
    return torch.cat(out)


def sample_shapes(heads: list, expressions: list[list[np.ndarray]], cfg: PriorTrainConfig,
                  seed: int, progress: bool = True) -> ShapeSamples:
    """Build :class:`ShapeSamples` for ``expressions[i]`` of ``heads[i]``.

    Surface and near samples are uniform on the posed surface except a share
    ``cfg.moving_share`` drawn by :func:`expressive_points` (eyelids, lips, mouth, points the
    expression moves): the first ``round(moving_share * points_surface)`` surface rows and the
    first ``round(moving_share * points_near)`` near rows of each pair.
    """
    from npga_taichi.data.synthetic import BOUNDS_MAX, BOUNDS_MIN

    gen = torch.Generator().manual_seed(seed)
    lo = torch.tensor(BOUNDS_MIN)
    hi = torch.tensor(BOUNDS_MAX)
    lo[1] = max(lo[1].item(), -0.9)  # the neck below -0.9 is not worth capacity
    n_ms = int(round(cfg.moving_share * cfg.points_surface))
    n_mn = int(round(cfg.moving_share * cfg.points_near))
    pts_all, can_all, sdf_all, alb_all, ident, exprs = [], [], [], [], [], []
    pairs = [(i, e) for i, ex in enumerate(expressions) for e in ex]
    for k, (i, expr) in enumerate(tqdm(pairs, desc="sampling shapes", disable=not progress,
                                       leave=False)):
        head = heads[i]
        surface = head.sample_surface(cfg.points_surface + cfg.points_near, expr=expr,
                                      seed=seed * 100003 + k, device="cpu")
        if n_ms + n_mn:
            moving = expressive_points(head, expr, surface, n_ms + n_mn, cfg, gen)
            surface = torch.cat([moving[:n_ms], surface[:cfg.points_surface - n_ms],
                                 moving[n_ms:], surface[cfg.points_surface:-n_mn or None]])
        surf = surface[:cfg.points_surface]
        near = surface[cfg.points_surface:] + cfg.near_sigma * torch.randn(
            cfg.points_near, 3, generator=gen)
        space = lo + (hi - lo) * torch.rand(cfg.points_space, 3, generator=gen)
        pts = torch.cat([surf, near, space])
        can = head.backward(pts, expr)
        pts_all.append(pts)
        can_all.append(can)
        sdf_all.append(head.sdf(can))
        alb_all.append(head.albedo(can[:cfg.points_surface]))
        ident.append(i)
        exprs.append(np.asarray(expr, np.float32))
    kinds = torch.cat([torch.zeros(cfg.points_surface), torch.ones(cfg.points_near),
                       torch.full((cfg.points_space,), 2.0)]).long()
    return ShapeSamples(torch.stack(pts_all), torch.stack(can_all), torch.stack(sdf_all),
                        torch.stack(alb_all), torch.tensor(ident), kinds, np.stack(exprs))


def training_set(cfg: PriorTrainConfig, progress: bool = True):
    """Training heads, their expressions (neutral first) and the stored samples."""
    from npga_taichi.data.synthetic import SyntheticHead

    heads = [SyntheticHead.from_seed(cfg.identity_seed_base + i) for i in range(cfg.n_identities)]
    rng = np.random.default_rng(cfg.seed)
    expressions = [[SyntheticHead.neutral_expression()]
                   + [SyntheticHead.random_expression(rng) for _ in range(cfg.n_expressions)]
                   for _ in heads]
    return heads, expressions, sample_shapes(heads, expressions, cfg, cfg.seed, progress)


def heldout_set(cfg: PriorTrainConfig, progress: bool = True):
    """The held-out identity with neutral + ``n_heldout_expressions`` unseen expressions."""
    from npga_taichi.data.synthetic import SyntheticHead

    if cfg.identity_seed_base <= cfg.heldout_identity_seed < cfg.identity_seed_base + cfg.n_identities:
        raise ValueError("heldout_identity_seed is one of the training identities")
    head = SyntheticHead.from_seed(cfg.heldout_identity_seed)
    rng = np.random.default_rng(cfg.seed + 7919)
    expressions = [[SyntheticHead.neutral_expression()]
                   + [SyntheticHead.random_expression(rng) for _ in range(cfg.n_heldout_expressions)]]
    small = PriorTrainConfig.from_dict({**cfg.to_dict(), "points_surface": cfg.eval_points // 2,
                                        "points_near": cfg.eval_points // 2,
                                        "points_space": cfg.eval_points // 4,
                                        # uniform samples: the held-out errors are surface means
                                        "moving_share": 0.0})
    return head, sample_shapes([head], expressions, small, cfg.seed + 1, progress)


def initial_anchors(heads: list, n_anchors: int, n_symm_pairs: int, seed: int = 0) -> torch.Tensor:
    """Symmetric anchor means on the pooled neutral surfaces of the training heads."""
    pts = torch.cat([h.sample_surface(2000, None, seed=seed + i, device="cpu")
                     for i, h in enumerate(heads)]).numpy()
    pts = pts[pts[:, 1] > -0.55]  # the face and cranium, not the neck
    return torch.from_numpy(symmetric_anchor_layout(pts, n_anchors, n_symm_pairs, seed=seed))


def batch_indices(samples: ShapeSamples, n_points: int, gen: torch.Generator) -> torch.Tensor:
    """(n_points,) indices into a pair's points: 40 % surface, 40 % near, 20 % space."""
    kinds = samples.kinds
    counts = [int(n_points * 0.4), int(n_points * 0.4)]
    counts.append(n_points - sum(counts))
    out = []
    for kind, count in enumerate(counts):
        pool = (kinds == kind).nonzero(as_tuple=True)[0]
        out.append(pool[torch.randint(len(pool), (count,), generator=gen)])
    return torch.cat(out)


def shape_losses(model: MonoNPHM, samples: ShapeSamples, pairs: torch.Tensor,
                 point_idx: torch.Tensor, z_geo: torch.Tensor, z_app: torch.Tensor,
                 z_exp: torch.Tensor, cfg: PriorTrainConfig) -> dict[str, torch.Tensor]:
    """Loss terms for the given pairs (S,) evaluated at ``point_idx`` (P,) of each pair.

    z_geo/z_app: (S, G) codes of the pairs' identities; z_exp: (S, E) the pairs' codes.
    """
    s, p = pairs.shape[0], point_idx.shape[0]
    x = samples.points[pairs][:, point_idx].reshape(s * p, 3)
    can_gt = samples.canonical[pairs][:, point_idx].reshape(s * p, 3)
    sdf_gt = samples.sdf[pairs][:, point_idx].reshape(-1)
    kinds = samples.kinds[point_idx].repeat(s)
    shape_index = torch.arange(s).repeat_interleave(p)
    can = model.backward_with_hyper(x, z_exp[shape_index], z_geo, shape_index)
    sdf, rgb = model.sdf_and_color(can, z_geo, z_app, shape_index)
    clamp = cfg.sdf_clamp
    surf = kinds == 0
    near = kinds == 1
    losses = {
        "sdf": (sdf[~surf].clamp(-clamp, clamp) - sdf_gt[~surf].clamp(-clamp, clamp)).abs().mean(),
        "surface": sdf[surf].abs().mean(),
        "deform": (can[:, :3] - can_gt).norm(dim=-1).mean(),
        "hyper": can[:, 3:].square().sum(dim=-1).mean() if can.shape[1] > 3 else sdf.new_zeros(()),
    }
    if cfg.w_eikonal > 0:
        grad = torch.autograd.grad(sdf[near].sum(), can, create_graph=True)[0][near, :3]
        losses["eikonal"] = (grad.norm(dim=-1) - 1.0).square().mean()
    ps = samples.albedo.shape[1]
    surf_rows = (point_idx < ps)
    if bool(surf_rows.any()):
        alb_idx = point_idx[surf_rows]
        alb_gt = samples.albedo[pairs][:, alb_idx].reshape(-1, 3)
        pred = ((rgb.view(s, p, 3)[:, surf_rows].reshape(-1, 3)) + 1.0) * 0.5
        losses["albedo"] = (pred - alb_gt).abs().mean()
    return losses


def anchor_loss(model: MonoNPHM, z_geo: torch.Tensor) -> torch.Tensor:
    """Anchor offsets of pairs mirrored across x = 0, middle anchors on the plane, small."""
    c = model.config
    offsets = model.id_decoder.anchors(z_geo) - model.id_decoder.anchors_mean   # (S, A, 3)
    mirror = torch.tensor([-1.0, 1.0, 1.0])
    pairs = 2 * c.n_symm_pairs
    symm = (offsets[:, 1:pairs:2] - offsets[:, 0:pairs:2] * mirror).norm(dim=-1).mean() if pairs else 0.0
    middle = offsets[:, pairs:, 0].abs().mean() if c.n_anchors > pairs else 0.0
    return symm + middle + 0.1 * offsets.norm(dim=-1).mean()


def weighted_total(losses: dict[str, torch.Tensor], cfg: PriorTrainConfig) -> torch.Tensor:
    weights = {"sdf": cfg.w_sdf, "surface": cfg.w_surface, "eikonal": cfg.w_eikonal,
               "albedo": cfg.w_albedo, "deform": cfg.w_deform, "hyper": cfg.w_hyper,
               "reg_geo": cfg.w_reg_geo, "reg_exp": cfg.w_reg_exp, "anchor": cfg.w_anchor}
    return sum(weights[k] * v for k, v in losses.items())


def fit_codes(model: MonoNPHM, samples: ShapeSamples, cfg: PriorTrainConfig, steps: int,
              seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Auto-decoder inference: fit identity + per-pair expression codes with the net frozen.

    All pairs of ``samples`` must share one identity. Returns z_geo (1, G), z_app (1, G),
    z_exp (S, E).
    """
    for p in model.parameters():
        p.requires_grad_(False)
    z_geo0, z_app0 = model.mean_codes()
    z_geo = z_geo0[None].clone().requires_grad_(True)
    z_app = z_app0[None].clone().requires_grad_(True)
    z_exp = model.codes_exp.weight.mean(0, keepdim=True).repeat(len(samples.identity), 1)
    z_exp = z_exp.clone().requires_grad_(True)
    opt = torch.optim.Adam([z_geo, z_app, z_exp], lr=cfg.lr_codes * 2)
    gen = torch.Generator().manual_seed(seed)
    pairs = torch.arange(len(samples.identity))
    eval_cfg = PriorTrainConfig.from_dict({**cfg.to_dict(), "w_eikonal": 0.0})
    try:
        for step in range(steps):
            idx = batch_indices(samples, cfg.batch_points, gen)
            losses = shape_losses(model, samples, pairs, idx, z_geo.expand(len(pairs), -1),
                                  z_app.expand(len(pairs), -1), z_exp, eval_cfg)
            losses.pop("deform")  # not observable at test time: fit to the surface only
            losses["reg_geo"] = z_geo.square().sum(-1).mean()
            losses["reg_exp"] = z_exp.square().sum(-1).mean()
            opt.zero_grad()
            weighted_total(losses, cfg).backward()
            opt.step()
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    return z_geo.detach(), z_app.detach(), z_exp.detach()


@torch.no_grad()
def shape_errors(model: MonoNPHM, samples: ShapeSamples, z_geo: torch.Tensor,
                 z_exp: torch.Tensor, pair_identity_rows: torch.Tensor | None = None) -> dict[str, float]:
    """SDF and deformation errors (mm) of pairs: near-surface |SDF − SDF_gt| and |B − B_gt|.

    z_geo: (n_id, G) codes indexed by ``samples.identity`` (or rows given); z_exp: (S, E).
    """
    sdf_err, def_err, surf_err, still_err = [], [], [], []
    for k in range(len(samples.identity)):
        row = samples.identity[k] if pair_identity_rows is None else pair_identity_rows[k]
        zg = z_geo[int(row)]
        x = samples.points[k]
        can = model.backward_with_hyper(x, z_exp[k], zg)
        sdf = model.sdf(can, zg)
        near = samples.kinds <= 1
        surf = samples.kinds == 0
        sdf_err.append((sdf[near] - samples.sdf[k][near]).abs())
        surf_err.append(sdf[surf].abs())
        def_err.append((can[surf, :3] - samples.canonical[k][surf]).norm(dim=-1))
        still_err.append((x[surf] - samples.canonical[k][surf]).norm(dim=-1))
    sdf_err, def_err, surf_err, still_err = (torch.cat(e) for e in (sdf_err, def_err, surf_err, still_err))
    return {"sdf_mae_mm": float(sdf_err.mean()) * MM_PER_UNIT,
            "surface_sdf_mae_mm": float(surf_err.mean()) * MM_PER_UNIT,
            "surface_sdf_median_mm": float(surf_err.median()) * MM_PER_UNIT,
            "deform_mae_mm": float(def_err.mean()) * MM_PER_UNIT,
            "deform_p95_mm": float(torch.quantile(def_err, 0.95)) * MM_PER_UNIT,
            # the error of B = identity (no deformation): a B that learned nothing scores this
            "deform_identity_mae_mm": float(still_err.mean()) * MM_PER_UNIT}


def fit_prior(out: str | os.PathLike, cfg: PriorTrainConfig, force: bool = False,
              progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Train a prior into directory ``out`` (resuming an unfinished run there); return metrics."""
    out = Path(out)
    ckpt = out / "checkpoint.pt"
    metrics_path = out / "metrics.json"
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    model = None
    start_step = 0
    opt_state = None
    if ckpt.exists():
        model, extra = load_prior(out, with_extra=True)
        done = extra.get("step", 0) >= cfg.steps and metrics_path.exists()
        saved_cfg = extra.get("train_config")
        if force:
            model = None
        elif done:
            raise ValueError(f"{out} already holds a finished prior; use --force to retrain")
        elif saved_cfg is not None and saved_cfg != cfg.to_dict():
            raise ValueError(f"{out} holds an unfinished run with different settings; "
                             "use --force to start over")
        else:
            start_step = int(extra.get("step", 0))
            opt_state = extra.get("optimizer")
            log(f"resuming prior fit at step {start_step}")
    heads, expressions, samples = training_set(cfg, progress)
    net_cfg = preset(cfg.preset)
    if model is None:
        anchors = initial_anchors(heads, net_cfg.n_anchors, net_cfg.n_symm_pairs, cfg.seed)
        model = MonoNPHM(net_cfg, anchors, n_identities=len(heads),
                         n_expressions=len(samples.identity))
        model.meta = {"identity_seeds": [cfg.identity_seed_base + i for i in range(len(heads))],
                      "heldout_identity_seed": cfg.heldout_identity_seed,
                      "pair_identity": samples.identity.tolist(),
                      "pair_expressions": samples.expressions.tolist(),
                      "preset": cfg.preset}
    model.train()
    net_params = [p for n, p in model.named_parameters() if not n.startswith(("codes_", "ex_decoder."))]
    deform_params = list(model.ex_decoder.parameters())
    code_params = [model.codes_geo.weight, model.codes_app.weight, model.codes_exp.weight]
    group_lrs = (cfg.lr, cfg.lr_codes, cfg.lr_deform)
    opt = torch.optim.Adam([{"params": params, "lr": lr} for params, lr in
                            zip((net_params, code_params, deform_params), group_lrs)])
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    gen = torch.Generator().manual_seed(cfg.seed + start_step)
    n_pairs = len(samples.identity)
    bar = tqdm(range(start_step, cfg.steps), desc="prior fit", disable=not progress,
               initial=start_step, total=cfg.steps)
    running = None
    decay_every = cfg.lr_decay_every or max(1, cfg.steps // 3)
    for step in bar:
        decay = 0.5 ** (step // decay_every)
        for group, lr in zip(opt.param_groups, group_lrs):
            group["lr"] = lr * decay
        pairs = torch.randperm(n_pairs, generator=gen)[:cfg.batch_shapes]
        idx = batch_indices(samples, cfg.batch_points, gen)
        ids = samples.identity[pairs]
        z_geo = model.codes_geo(ids)
        z_app = model.codes_app(ids)
        z_exp = model.codes_exp(pairs)
        losses = shape_losses(model, samples, pairs, idx, z_geo, z_app, z_exp, cfg)
        losses["reg_geo"] = z_geo.square().sum(-1).mean()
        losses["reg_exp"] = z_exp.square().sum(-1).mean()
        losses["anchor"] = anchor_loss(model, z_geo)
        total = weighted_total(losses, cfg)
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(net_params + deform_params, 1.0)
        opt.step()
        running = total.item() if running is None else 0.95 * running + 0.05 * total.item()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{running:.4f}", sdf_mm=f"{losses['surface'].item() * MM_PER_UNIT:.2f}",
                            def_mm=f"{losses['deform'].item() * MM_PER_UNIT:.2f}")
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            save_prior(model, out, extra={"step": step + 1, "optimizer": opt.state_dict(),
                                          "train_config": cfg.to_dict()})
    bar.close()
    train_seconds = time.time() - t0
    model.eval()
    # Held-out identity and expressions: fit codes with the network frozen, then measure.
    _, held = heldout_set(cfg, progress)
    zg, _, ze = fit_codes(model, held, cfg, cfg.eval_fit_steps, seed=cfg.seed)
    heldout = shape_errors(model, held, zg, ze, torch.zeros(len(held.identity), dtype=torch.long))
    sub = torch.arange(0, n_pairs, max(1, n_pairs // 16))
    train_sub = ShapeSamples(samples.points[sub], samples.canonical[sub], samples.sdf[sub],
                             samples.albedo[sub], samples.identity[sub], samples.kinds,
                             samples.expressions[sub.numpy()])
    train_err = shape_errors(model, train_sub, model.codes_geo.weight, model.codes_exp.weight[sub])
    metrics = {"heldout": heldout, "train": train_err, "steps": cfg.steps,
               "n_identities": cfg.n_identities, "n_pairs": n_pairs, "preset": cfg.preset,
               "seconds": time.time() - t0, "train_seconds": train_seconds}
    save_prior(model, out, extra={"step": cfg.steps, "train_config": cfg.to_dict()})
    write_text_atomic(dumps({"network": model.config, "training": cfg}), out / "train_config.json")
    write_text_atomic(json.dumps(metrics, indent=2), metrics_path)
    return metrics
