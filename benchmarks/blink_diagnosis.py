"""Where is the blink lost? Stage-by-stage numbers for issue 18 (JSON out).

    python benchmarks/blink_diagnosis.py --capture CAP/<pid> [--prior PRIOR] [--tracking DIR] --out diag.json

Stages measured (each only when its input is given):

* ``data``: what the prior is trained on (``npga prior fit``'s sampling, re-run on two
  identities): the share of posed surface samples on the eyelids, and of the points whose
  backward offset is large - the signal that teaches B to close the lids.
* ``capture``: the point clouds tracking fits (``--capture``): per frame, how many of the
  tracker's ``points_per_frame`` subsampled points land on the eyelids (labelled with the
  generator's own surface labels at the true pose and expression).
* ``prior`` (``--prior``): does B close the lids? For training (identity, expression) pairs
  with a blink > 0.8, the prior's posed SDF |f(x; z_pair)| at the true closed-lid surface
  points that cover the open eye's slit (eyelid label, moved > 1 mm by the blink and > 1 mm
  from the open-eyed surface: the rest of the lid shell is a sphere the blink maps onto
  itself), against the open-eyed truth's distance at the same points (a head that never
  blinks) and the prior's own |f| on ordinary surface points (its noise floor); and the error
  of B on those points against the analytic offsets (and the "doing nothing" error).
  The same for both parts (``lids``: blinks, ``mouth``: jaw_open on lips / teeth / mouth
  interior): the median error of B with the pair's own training code on the points the part
  moves (``*_B_error_mm``) against doing nothing (``*_doing_nothing_mm``).
* ``tracking`` (``--tracking``, a folder of ``<SEQ>.npz``; ``--sequences`` to choose): per frame
  and part, the closure of the tracked prior at the points the fully active part covers (1 =
  closed lids / open mouth, 0 = not) against the truth's own closure at that frame, their
  correlation over the frames (``*_closure_correlation``: do tracked codes follow blinks and the
  jaw?), and B's error with the tracked code and pose on the part's points of active frames.
  Tracks that carry the measured eye closure (:mod:`npga_taichi.eye_closure`) also get its
  correlation with the true blink parameters (``eye_closure_correlation``).

"closure" = 1 - median|f_prior| / median|f_open| at the closed-lid points: 1 = the prior's
surface passes through the closed lids, 0 = it stays where open lids are.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from npga_taichi.data import synthetic as syn  # noqa: E402

MM = syn.UNIT_METRES * 1000.0  # mm per canonical unit
E = {n: i for i, n in enumerate(syn.EXPRESSION_NAMES)}
LIDS = syn.LABEL_NAMES.index("eyelids")
MOVES = 1.0 / MM  # a point "moves with the blink" when its backward offset exceeds 1 mm
LID_WEIGHT = 50.0  # the eyelid weight of the region-weighted tracking loss the diagnosis tries


def blink_of(expr) -> float:
    return float(max(expr[E["blink_left"]], expr[E["blink_right"]]))


def without_blink(expr) -> np.ndarray:
    e = np.array(expr, np.float32)
    e[[E["blink_left"], E["blink_right"]]] = 0.0
    return e


def blink_moves(head, posed, expr) -> torch.Tensor:
    """(N,) bool: the blink itself moves these posed points' canonical position by > 1 mm."""
    return (head.backward(posed, expr) - head.backward(posed, without_blink(expr))).norm(dim=1) > MOVES


def closed_lid_points(head, expr, n=20000, seed=0):
    """Posed surface points where the closed lid covers the open eye's slit: eyelid label, moved
    > 1 mm by the blink, and > 1 mm from the open-eyed truth's surface (the lid shell is a sphere
    about the eye centre that the blink maps onto itself: only the slit it closes changes)."""
    pts = head.sample_surface(n, expr=expr, seed=seed)
    can = head.backward(pts, expr)
    open_abs = head.posed_sdf(pts, without_blink(expr)).abs()
    keep = (head.surface_label(can) == LIDS) & blink_moves(head, pts, expr) & (open_abs > MOVES)
    return pts[keep], can[keep], open_abs[keep], pts


# The two expressive parts measured: expression parameters that drive them, and the surface
# labels of their points (the jaw opens the mouth: lips, teeth and mouth interior).
PARTS = {"lids": (("blink_left", "blink_right"), ("eyelids",)),
         "mouth": (("jaw_open",), ("lips", "teeth", "mouth_interior"))}


def part_amount(expr, part) -> float:
    return float(max(expr[E[n]] for n in PARTS[part][0]))


def part_off(expr, part) -> np.ndarray:
    """``expr`` with the part's parameters set to 0 (open eyes / closed jaw)."""
    e = np.array(expr, np.float32)
    e[[E[n] for n in PARTS[part][0]]] = 0.0
    return e


def part_full(expr, part) -> np.ndarray:
    """``expr`` with the part's parameters set to 1 (closed eyes / fully open jaw)."""
    e = np.array(expr, np.float32)
    e[[E[n] for n in PARTS[part][0]]] = 1.0
    return e


def part_points(head, expr, part, n=20000, seed=0):
    """Posed surface points of ``expr`` on the part (its labels) that the part's parameters move
    by > 1 mm and that lie > 1 mm from the surface without the part's motion (the slit a blink
    covers, the opening of the mouth). Returns (points, B_gt(points), |sdf| of the part-off head)."""
    labels = torch.tensor([syn.LABEL_NAMES.index(x) for x in PARTS[part][1]])
    pts = head.sample_surface(n, expr=expr, seed=seed)
    can = head.backward(pts, expr)
    off = part_off(expr, part)
    moved = (can - head.backward(pts, off)).norm(dim=1) > MOVES
    off_abs = head.posed_sdf(pts, off).abs()
    keep = torch.isin(head.surface_label(can), labels) & moved & (off_abs > MOVES)
    return pts[keep], can[keep], off_abs[keep]


def pearson(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def data_stats(n_heads=2, seed=0):
    """Share of the prior's surface samples on the lids / moving with a blink (the samples of
    ``npga prior fit``'s own sampler, :func:`npga_taichi.prior.training.sample_shapes`)."""
    from npga_taichi.prior.config import PriorTrainConfig
    from npga_taichi.prior.training import sample_shapes

    cfg = PriorTrainConfig()
    rng = np.random.default_rng(cfg.seed)
    out = {"moving_share": cfg.moving_share, "pairs": 0, "pairs_blink_gt_0.5": 0, "surface_points": 0,
           "lid_points": 0, "moving_lid_points": 0, "moving_points": 0}
    for i in range(n_heads):
        head = syn.SyntheticHead.from_seed(cfg.identity_seed_base + i)
        exprs = [syn.SyntheticHead.neutral_expression()] + [syn.SyntheticHead.random_expression(rng)
                                                            for _ in range(cfg.n_expressions)]
        samples = sample_shapes([head], [exprs], cfg, seed + i, progress=False)
        for k, e in enumerate(exprs):
            pts = samples.points[k, :cfg.points_surface]
            can = samples.canonical[k, :cfg.points_surface]
            lid = head.surface_label(can) == LIDS
            moving = blink_moves(head, pts, e)
            out["pairs"] += 1
            out["pairs_blink_gt_0.5"] += int(blink_of(e) > 0.5)
            out["surface_points"] += len(pts)
            out["lid_points"] += int(lid.sum())
            out["moving_points"] += int(moving.sum())
            if blink_of(e) > 0.5:
                out["moving_lid_points"] += int((lid & moving).sum())
    out["lid_share_of_surface_samples"] = out["lid_points"] / out["surface_points"]
    out["moving_lid_share_of_surface_samples_in_blink_pairs"] = (
        out["moving_lid_points"] / (cfg.points_surface * max(out["pairs_blink_gt_0.5"], 1)))
    out["note"] = (f"prior batches draw {cfg.batch_points} points per pair, 40 % from the surface; "
                   f"lids in a batch ~ {0.4 * cfg.batch_points * out['lid_share_of_surface_samples']:.1f} points")
    return out


def capture_stats(pdir: Path, points_per_frame=1500):
    """Eyelid share of each frame's point cloud (at the true pose), per sequence."""
    from npga_taichi.data.nersemble import NersembleCapture
    from npga_taichi.fidelity import SyntheticTruth
    from npga_taichi.prior.tracking import TrackingConfig, pseudo_huber

    truth = SyntheticTruth(pdir)
    cap = NersembleCapture(pdir)
    head = truth.head
    out = {}
    for seq, data in truth.plan["sequences"].items():
        rows = []
        for k, t in enumerate(data["timesteps"]):
            cloud = torch.as_tensor(np.asarray(cap.load_pointcloud(seq, t))[:, :3], dtype=torch.float32)
            R = torch.tensor(data["rotation"][k], dtype=torch.float32)
            tr = torch.tensor(data["translation"][k], dtype=torch.float32)
            posed = (cloud - tr) @ R / truth.scale
            e = np.asarray(data["expression"][k], np.float32)
            can = head.backward(posed, e)
            proj, _, _ = head.project_to_surface(can)  # the cloud is noisy (1 mm): label its surface
            lid = (head.surface_label(proj) == LIDS).float().mean().item()
            moved = blink_moves(head, posed, e)
            moving = moved.float().mean().item()
            # the tracker's data term (mean pseudo-Huber |SDF| / delta) at the true expression and
            # at the same expression with open eyes: how much a closed lid lowers the loss
            delta = TrackingConfig().robust_delta
            ph_true = pseudo_huber(head.posed_sdf(posed, e), delta) / delta
            ph_open = pseudo_huber(head.posed_sdf(posed, without_blink(e)), delta) / delta
            loss_true, loss_open = ph_true.mean().item(), ph_open.mean().item()
            # the same with eyelid points weighted LID_WEIGHT x (what a region-weighted tracker sees)
            w = 1.0 + (LID_WEIGHT - 1.0) * (head.surface_label(proj) == LIDS).float()
            wloss_true, wloss_open = (w * ph_true).sum().item(), (w * ph_open).sum().item()
            rows.append({"t": t, "blink": blink_of(e), "lid_share": lid,
                         "lid_points_in_subsample": lid * points_per_frame,
                         "blink_moved_share": moving, "blink_moved_points_in_subsample": moving * points_per_frame,
                         "tracking_loss_true": loss_true, "tracking_loss_open_eyes": loss_open,
                         "weighted_loss_true": wloss_true, "weighted_loss_open_eyes": wloss_open})
        blink_rows = [r for r in rows if r["blink"] > 0.5]
        out[seq] = {"frames": len(rows), "blink_frames": len(blink_rows),
                    "median_lid_points_in_subsample": float(np.median([r["lid_points_in_subsample"] for r in rows])),
                    "median_lid_points_in_subsample_blink_frames":
                        float(np.median([r["lid_points_in_subsample"] for r in blink_rows])) if blink_rows else None,
                    "median_blink_moved_points_in_subsample_blink_frames":
                        float(np.median([r["blink_moved_points_in_subsample"] for r in blink_rows]))
                        if blink_rows else None,
                    "median_relative_tracking_loss_increase_open_eyes_blink_frames":
                        float(np.median([r["tracking_loss_open_eyes"] / r["tracking_loss_true"] - 1.0
                                         for r in blink_rows])) if blink_rows else None,
                    f"same_with_eyelid_points_weighted_x{LID_WEIGHT:g}":
                        float(np.median([r["weighted_loss_open_eyes"] / r["weighted_loss_true"] - 1.0
                                         for r in blink_rows])) if blink_rows else None,
                    "per_frame": rows}
    return out


def closure(prior_sdf_abs, open_abs, floor_abs):
    med_p, med_o = float(prior_sdf_abs.median()) * MM, float(open_abs.median()) * MM
    return {"median_abs_sdf_prior_mm": med_p, "median_abs_sdf_open_truth_mm": med_o,
            "prior_noise_floor_mm": float(floor_abs.median()) * MM,
            "closure": 1.0 - med_p / med_o if med_o > 0 else None}


@torch.no_grad()
def prior_stats(prior_dir: Path, n_pairs=6):
    """B with its own training codes: does the prior's posed surface pass through closed lids,
    and does B map lid (blink pairs) and mouth (jaw-open pairs) points to their true canonical
    positions? ``B_error_*`` vs ``doing_nothing_*``: a B that learned nothing scores equal."""
    from npga_taichi.prior.config import PriorTrainConfig
    from npga_taichi.prior.model import load_prior

    model = load_prior(prior_dir)
    cfg = PriorTrainConfig.from_dict(json.loads((Path(prior_dir) / "train_config.json").read_text())["training"])
    rng = np.random.default_rng(cfg.seed)
    rows = []
    part_rows = {part: [] for part in PARTS}
    k = 0
    for i in range(cfg.n_identities):
        head = syn.SyntheticHead.from_seed(cfg.identity_seed_base + i)
        exprs = [syn.SyntheticHead.neutral_expression()] + [syn.SyntheticHead.random_expression(rng)
                                                            for _ in range(cfg.n_expressions)]
        for e in exprs:
            z_exp, z_geo = model.codes_exp.weight[k], model.codes_geo.weight[i]
            if blink_of(e) > 0.8 and len(rows) < n_pairs:
                lid, lid_can, open_abs, surface = closed_lid_points(head, e, seed=k)
                f = model.posed_sdf(lid, z_exp, z_geo).abs()
                floor = model.posed_sdf(surface, z_exp, z_geo).abs()
                b_err = (model.backward(lid, z_exp, z_geo) - lid_can).norm(dim=1)
                # every lid point the blink moves (> 1 mm), not only those over the slit
                surface_can = head.backward(surface, e)
                moving = blink_moves(head, surface, e) & (head.surface_label(surface_can) == LIDS)
                m_err = (model.backward(surface[moving], z_exp, z_geo) - surface_can[moving]).norm(dim=1)
                rows.append({"pair": k, "identity": i, "blink": blink_of(e), "lid_points": len(lid),
                             **closure(f, open_abs, floor),
                             "B_error_on_lid_points_mm": float(b_err.median()) * MM,
                             "doing_nothing_error_mm": float((lid - lid_can).norm(dim=1).median()) * MM,
                             "moving_lid_points": int(moving.sum()),
                             "B_error_on_moving_lid_points_mm": float(m_err.median()) * MM,
                             "doing_nothing_on_moving_lid_points_mm":
                                 float((surface[moving] - surface_can[moving]).norm(dim=1).median()) * MM})
            for part, prow in part_rows.items():
                if part_amount(e, part) > 0.8 and len(prow) < n_pairs:
                    pts, can, _ = part_points(head, e, part, seed=k)
                    if len(pts):
                        err = (model.backward(pts, z_exp, z_geo) - can).norm(dim=1)
                        prow.append({"pair": k, "amount": part_amount(e, part), "points": len(pts),
                                     "B_error_mm": float(err.median()) * MM,
                                     "doing_nothing_mm": float((pts - can).norm(dim=1).median()) * MM})
            k += 1
    out = {"pairs": rows,
           "median_closure": float(np.median([r["closure"] for r in rows])) if rows else None,
           "moving_lids_B_error_mm_median": float(np.median([r["B_error_on_moving_lid_points_mm"] for r in rows]))
           if rows else None,
           "moving_lids_doing_nothing_mm_median":
               float(np.median([r["doing_nothing_on_moving_lid_points_mm"] for r in rows])) if rows else None}
    for part, prow in part_rows.items():
        out[f"{part}_pairs"] = prow
        out[f"{part}_B_error_mm_median"] = float(np.median([r["B_error_mm"] for r in prow])) if prow else None
        out[f"{part}_doing_nothing_mm_median"] = (float(np.median([r["doing_nothing_mm"] for r in prow]))
                                                  if prow else None)
    return out


@torch.no_grad()
def tracking_stats(prior_dir: Path, tracking_dir: Path, pdir: Path, sequences=None):
    """Tracked codes and pose of every frame: do they decode to closed lids / an open mouth?

    Per frame and part: ``closure`` at the points the part covers when fully active (blinks = 1,
    jaw_open = 1): 1 − median|f_tracked| / median|f_part-off truth| for the tracked prior, and the
    same for the truth itself at the frame's expression; their correlation over the frames says
    whether the tracked codes follow the part. Frames with the part > 0.5 also report the error
    of tracked B on the frame's own part points (vs. doing nothing)."""
    from npga_taichi.fidelity import SyntheticTruth
    from npga_taichi.prior.model import load_prior
    from npga_taichi.prior.tracking import load_tracking, world_to_posed

    model = load_prior(prior_dir)
    truth = SyntheticTruth(pdir)
    head = truth.head
    out = {}
    for path in sorted(Path(tracking_dir).glob("*.npz")):
        seq = path.stem
        if seq not in truth.plan["sequences"] or (sequences and seq not in sequences):
            continue
        tr = load_tracking(path)
        data = truth.plan["sequences"][seq]
        rows = []
        for row, t in enumerate(np.asarray(tr.timesteps).tolist()):
            k = data["timesteps"].index(int(t))
            e = np.asarray(data["expression"][k], np.float32)
            R = torch.tensor(data["rotation"][k], dtype=torch.float32)
            tt = torch.tensor(data["translation"][k], dtype=torch.float32)
            to_tracked = lambda x: world_to_posed(truth.scale * x @ R.T + tt, torch.as_tensor(tr.rot[row]).float(),  # noqa: E731
                                                  torch.as_tensor(tr.trans[row]).float(),
                                                  float(np.asarray(tr.scale).reshape(-1)[0]))
            z_exp = torch.as_tensor(tr.z_exp[row]).float().reshape(-1)
            z_geo = torch.as_tensor(tr.z_geo).float().reshape(-1)
            r = {"t": int(t)}
            for part in PARTS:
                r[part] = part_amount(e, part)
                full = part_full(e, part)
                pts, _, off_abs = part_points(head, full, part, seed=int(t))
                if len(pts) >= 3:
                    med_off = float(off_abs.median())
                    f_tr = model.posed_sdf(to_tracked(pts), z_exp, z_geo).abs()
                    f_true = head.posed_sdf(pts, e).abs()
                    r[f"{part}_closure_tracked"] = 1.0 - float(f_tr.median()) / med_off
                    r[f"{part}_closure_true"] = 1.0 - float(f_true.median()) / med_off
                if r[part] > 0.5:
                    pts, can, _ = part_points(head, e, part, seed=int(t) + 1)
                    if len(pts):
                        err = (model.backward(to_tracked(pts), z_exp, z_geo) - can).norm(dim=1)
                        r[f"{part}_B_error_mm"] = float(err.median()) * MM
                        r[f"{part}_doing_nothing_mm"] = float((pts - can).norm(dim=1).median()) * MM
            rows.append(r)
        summ = {"frames": rows}
        if tr.eye_closure is not None:  # npga_taichi/eye_closure.py: measured from label maps
            true_blinks = np.array([[data["expression"][data["timesteps"].index(int(t))][E[n]]
                                     for n in ("blink_left", "blink_right")] for t in tr.timesteps])
            summ["eye_closure_correlation"] = pearson(np.asarray(tr.eye_closure).reshape(-1), true_blinks.reshape(-1))
        for part in PARTS:
            have = [r for r in rows if f"{part}_closure_tracked" in r]
            summ[f"{part}_closure_correlation"] = pearson([r[f"{part}_closure_tracked"] for r in have],
                                                          [r[f"{part}_closure_true"] for r in have])
            summ[f"{part}_amount_correlation"] = pearson([r[f"{part}_closure_tracked"] for r in have],
                                                         [r[part] for r in have])
            errs = [r for r in rows if f"{part}_B_error_mm" in r]
            summ[f"{part}_active_frames"] = len(errs)
            if errs:
                summ[f"{part}_B_error_mm_median"] = float(np.median([r[f"{part}_B_error_mm"] for r in errs]))
                summ[f"{part}_doing_nothing_mm_median"] = float(np.median([r[f"{part}_doing_nothing_mm"]
                                                                           for r in errs]))
        out[seq] = summ
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--capture", type=Path, help="synthetic capture participant folder (CAP/<pid>)")
    ap.add_argument("--prior", type=Path, help="prior directory (npga prior fit --out)")
    ap.add_argument("--tracking", type=Path, help="folder of tracked <SEQ>.npz (needs --prior and --capture)")
    ap.add_argument("--sequences", help="comma-separated sequences for --tracking (default: all tracked)")
    ap.add_argument("--no-data", action="store_true", help="skip the prior-training-data statistics")
    ap.add_argument("--no-capture", action="store_true", help="skip the capture point-cloud statistics")
    ap.add_argument("--no-prior-stats", action="store_true",
                    help="with --prior: skip the prior's own statistics (e.g. only --tracking)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    result = {}
    if not args.no_data:
        result["data"] = data_stats()
    if args.capture and not args.no_capture:
        result["capture"] = capture_stats(args.capture)
    if args.prior and not args.no_prior_stats:
        result["prior"] = prior_stats(args.prior)
    if args.tracking and args.prior and args.capture:
        result["tracking"] = tracking_stats(args.prior, args.tracking, args.capture,
                                           args.sequences.split(",") if args.sequences else None)
    args.out.write_text(json.dumps(result, indent=1))
    def brief(v):
        if isinstance(v, dict):
            return {k: brief(x) for k, x in v.items()
                    if k not in ("per_frame", "pairs", "frames", "lids_pairs", "mouth_pairs")}
        return v

    print(json.dumps(brief(result), indent=1, default=str))


if __name__ == "__main__":
    main()
