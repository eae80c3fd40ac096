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
* ``tracking`` (``--tracking``, a folder of ``<SEQ>.npz``): the same closed-lid test with the
  tracked codes and tracked pose of each blink frame: do tracked codes decode to closed lids?

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


def data_stats(n_heads=2, seed=0):
    """Share of the prior's surface samples on the lids / moving with a blink."""
    from npga_taichi.prior.config import PriorTrainConfig

    cfg = PriorTrainConfig()
    rng = np.random.default_rng(cfg.seed)
    out = {"pairs": 0, "pairs_blink_gt_0.5": 0, "surface_points": 0, "lid_points": 0,
           "moving_lid_points": 0, "moving_points": 0}
    for i in range(n_heads):
        head = syn.SyntheticHead.from_seed(cfg.identity_seed_base + i)
        exprs = [syn.SyntheticHead.neutral_expression()] + [syn.SyntheticHead.random_expression(rng)
                                                            for _ in range(cfg.n_expressions)]
        for k, e in enumerate(exprs):
            pts = head.sample_surface(cfg.points_surface, expr=e, seed=seed * 100003 + k)
            can = head.backward(pts, e)
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
    """B with training blink codes: does the prior's posed surface pass through closed lids?"""
    from npga_taichi.prior.config import PriorTrainConfig
    from npga_taichi.prior.model import load_prior

    model = load_prior(prior_dir)
    cfg = PriorTrainConfig.from_dict(json.loads((Path(prior_dir) / "train_config.json").read_text())["training"])
    rng = np.random.default_rng(cfg.seed)
    rows = []
    k = 0
    for i in range(cfg.n_identities):
        head = syn.SyntheticHead.from_seed(cfg.identity_seed_base + i)
        exprs = [syn.SyntheticHead.neutral_expression()] + [syn.SyntheticHead.random_expression(rng)
                                                            for _ in range(cfg.n_expressions)]
        for e in exprs:
            if blink_of(e) > 0.8 and len(rows) < n_pairs:
                z_exp, z_geo = model.codes_exp.weight[k], model.codes_geo.weight[i]
                lid, lid_can, open_abs, surface = closed_lid_points(head, e, seed=k)
                f = model.posed_sdf(lid, z_exp, z_geo).abs()
                floor = model.posed_sdf(surface, z_exp, z_geo).abs()
                b_err = (model.backward(lid, z_exp, z_geo) - lid_can).norm(dim=1)
                rows.append({"pair": k, "identity": i, "blink": blink_of(e), "lid_points": len(lid),
                             **closure(f, open_abs, floor),
                             "B_error_on_lid_points_mm": float(b_err.median()) * MM,
                             "doing_nothing_error_mm": float((lid - lid_can).norm(dim=1).median()) * MM})
            k += 1
    return {"pairs": rows,
            "median_closure": float(np.median([r["closure"] for r in rows])) if rows else None}


@torch.no_grad()
def tracking_stats(prior_dir: Path, tracking_dir: Path, pdir: Path):
    """Tracked codes and pose of blink frames: do they decode to closed lids?"""
    from npga_taichi.fidelity import SyntheticTruth
    from npga_taichi.prior.model import load_prior
    from npga_taichi.prior.tracking import load_tracking, world_to_posed

    model = load_prior(prior_dir)
    truth = SyntheticTruth(pdir)
    out = {}
    for path in sorted(Path(tracking_dir).glob("*.npz")):
        seq = path.stem
        if seq not in truth.plan["sequences"]:
            continue
        tr = load_tracking(path)
        data = truth.plan["sequences"][seq]
        rows = []
        for row, t in enumerate(np.asarray(tr.timesteps).tolist()):
            k = data["timesteps"].index(int(t))
            e = np.asarray(data["expression"][k], np.float32)
            if blink_of(e) <= 0.5:
                continue
            lid, _, open_abs, surface = closed_lid_points(truth.head, e, seed=int(t))
            R = torch.tensor(data["rotation"][k], dtype=torch.float32)
            tt = torch.tensor(data["translation"][k], dtype=torch.float32)
            to_tracked = lambda x: world_to_posed(truth.scale * x @ R.T + tt, torch.as_tensor(tr.rot[row]).float(),  # noqa: E731
                                                  torch.as_tensor(tr.trans[row]).float(),
                                                  float(np.asarray(tr.scale).reshape(-1)[0]))
            z_exp = torch.as_tensor(tr.z_exp[row]).float().reshape(-1)
            z_geo = torch.as_tensor(tr.z_geo).float().reshape(-1)
            f = model.posed_sdf(to_tracked(lid), z_exp, z_geo).abs()
            floor = model.posed_sdf(to_tracked(surface), z_exp, z_geo).abs()
            rows.append({"t": int(t), "blink": blink_of(e), "lid_points": len(lid), **closure(f, open_abs, floor)})
        if rows:
            out[seq] = {"blink_frames": rows, "median_closure": float(np.median([r["closure"] for r in rows]))}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--capture", type=Path, help="synthetic capture participant folder (CAP/<pid>)")
    ap.add_argument("--prior", type=Path, help="prior directory (npga prior fit --out)")
    ap.add_argument("--tracking", type=Path, help="folder of tracked <SEQ>.npz (needs --prior and --capture)")
    ap.add_argument("--no-data", action="store_true", help="skip the prior-training-data statistics")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    result = {}
    if not args.no_data:
        result["data"] = data_stats()
    if args.capture:
        result["capture"] = capture_stats(args.capture)
    if args.prior:
        result["prior"] = prior_stats(args.prior)
    if args.tracking and args.prior and args.capture:
        result["tracking"] = tracking_stats(args.prior, args.tracking, args.capture)
    args.out.write_text(json.dumps(result, indent=1))
    def brief(v):
        if isinstance(v, dict):
            return {k: brief(x) for k, x in v.items() if k not in ("per_frame", "pairs", "blink_frames")}
        return v

    print(json.dumps(brief(result), indent=1, default=str))


if __name__ == "__main__":
    main()
