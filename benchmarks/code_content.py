"""What do the tracked expression codes carry? Per expression parameter, how much of the true
motion the distilled forward field F reproduces with them (JSON out).

    python benchmarks/code_content.py --capture CAP/<pid> --field DISTILL [--tracking DIR] --out F.json

For a synthetic capture (``npga synth``: its ground truth knows every frame's expression) with
tracked codes (``npga track``) and F (``npga distill``). Canonical surface points of the true
head; for each expression parameter p its region, the points a full p (= 1, all else 0) moves
by more than 1 mm. For every frame t of the training sequences and every region, in mm:

* truth: mean |B_gt(x, e_t) - x| over the region (the analytic backward offset at the canonical
  point; for motions of a few mm it is the forward motion's magnitude);
* F: mean |F(x, z_t) - F(x, z_0)| over the region, z_0 the code of the sequence's first frame
  (every training sequence starts neutral).

Per parameter, over the frames of the sequences that move it: ``share`` = the least-squares
slope of F's motion on the truth's (1: F moves that region as much as the truth does, 0: not at
all), ``correlation`` of the two over frames, and ``drift_mm`` = F's motion in the region on
frames whose true expression is neutral again (t > 0): motion the codes carry without any
expression. ``code_drift`` is |z_t - z_0| on those neutral frames against its value on active
ones: how far the codes wander while nothing changes (what a code-conditioned detail network G
can take for expression; README, *What G should see*).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from npga_taichi.conventions import MM_PER_UNIT  # noqa: E402
from npga_taichi.data import synthetic as syn  # noqa: E402

MOVES_MM = 1.0  # a point is in a parameter's region when a full parameter moves it this far


def measure(plan: dict, head, field, codes: dict, points: int = 20000, device: str = "cpu") -> dict:
    """The module docstring's numbers. ``plan``: the capture's ``groundtruth.json``; ``head``: its
    SyntheticHead; ``field``: F, called as ``field(x (N, 3), z (E,)) -> (N, 3)``; ``codes``:
    sequence -> tracked codes (T, E) (FREE and sequences without codes are skipped); ``device``:
    where the points, the head's queries and F run."""
    names = list(plan["expression_names"])
    x = head.sample_surface(points, seed=0, device=device)

    def true_motion(expr) -> torch.Tensor:  # (N,) mm
        e = torch.as_tensor(np.asarray(expr, np.float32), device=x.device)
        return (head.backward(x, e) - x).norm(dim=-1) * MM_PER_UNIT

    regions = {}
    for i, name in enumerate(names):
        full = np.zeros(len(names), np.float32)
        full[i] = 1.0
        regions[name] = true_motion(full) > MOVES_MM

    rows = {name: {"truth": [], "field": []} for name in names}
    drift = {name: [] for name in names}
    dz_neutral, dz_active = [], []
    for seq, seq_plan in plan["sequences"].items():
        expr = np.asarray(seq_plan["expression"], np.float32)
        if seq == "FREE" or seq not in codes or expr[0].any():  # the reference frame must be neutral
            continue
        z = torch.as_tensor(np.asarray(codes[seq], np.float32), device=x.device)
        with torch.no_grad():
            f0 = field(x, z[0])
            for t in range(1, len(z)):
                moved = (field(x, z[t]) - f0).norm(dim=-1) * MM_PER_UNIT
                neutral = not expr[t].any()
                truth_t = None if neutral else true_motion(expr[t])  # neutral frames score drift only
                (dz_neutral if neutral else dz_active).append(float((z[t] - z[0]).norm()))
                for i, name in enumerate(names):
                    region = regions[name]
                    if not region.any():
                        continue
                    if neutral:
                        drift[name].append(float(moved[region].mean()))
                    elif expr[:, i].max() > 0:  # a sequence that moves this parameter
                        rows[name]["truth"].append(float(truth_t[region].mean()))
                        rows[name]["field"].append(float(moved[region].mean()))

    result = {"points": int(points), "parameters": {},
              "code_drift": {"neutral_frames_mean": float(np.mean(dz_neutral)) if dz_neutral else None,
                             "active_frames_mean": float(np.mean(dz_active)) if dz_active else None,
                             "neutral_frames": len(dz_neutral)}}
    for name in names:
        a, b = np.asarray(rows[name]["truth"]), np.asarray(rows[name]["field"])
        result["parameters"][name] = {
            "region_points": int(regions[name].sum()), "frames": len(a),
            "truth_max_mm": float(a.max()) if len(a) else None,
            "share": float((a * b).sum() / (a * a).sum()) if len(a) and (a * a).sum() > 0 else None,
            "correlation": float(np.corrcoef(a, b)[0, 1]) if len(a) > 2 and a.std() > 0 and b.std() > 0 else None,
            "drift_mm": float(np.mean(drift[name])) if drift[name] else None}
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--capture", required=True, help="synthetic capture participant folder CAP/<pid>")
    ap.add_argument("--field", required=True, help="forward field folder (npga distill's output)")
    ap.add_argument("--tracking", help="folder of <SEQ>.npz [default: CAP/<pid>/annotations/tracking]")
    ap.add_argument("--points", type=int, default=20000, help="canonical surface points")
    ap.add_argument("--device", default="cpu", help="torch device of the points and F (cpu, cuda)")
    ap.add_argument("--out", required=True, help="JSON file to write")
    args = ap.parse_args(argv)

    from npga_taichi.prior.forward_field import load_forward_field
    from npga_taichi.prior.tracking import load_tracking

    pdir = Path(args.capture)
    plan = json.loads((pdir / "groundtruth" / "groundtruth.json").read_text())
    head = syn.SyntheticHead(np.asarray(plan["identity"], np.float32))
    tracking_dir = Path(args.tracking) if args.tracking else pdir / "annotations" / "tracking"
    codes = {seq: load_tracking(tracking_dir / f"{seq}.npz").z_exp for seq in plan["sequences"]
             if (tracking_dir / f"{seq}.npz").is_file()}
    result = {"capture": str(pdir), "field": str(args.field), "tracking": str(tracking_dir),
              **measure(plan, head, load_forward_field(args.field, map_location=args.device), codes,
                        args.points, args.device)}
    Path(args.out).write_text(json.dumps(result, indent=2))
    fmt = lambda v, d: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    for name, e in result["parameters"].items():
        print(f"{name:16s} share {fmt(e['share'], 3):>6}  corr {fmt(e['correlation'], 2):>5}  "
              f"truth max {fmt(e['truth_max_mm'], 2):>5} mm  drift {fmt(e['drift_mm'], 3):>6} mm")
    drift = result["code_drift"]
    print(f"code drift |z_t - z_0|: neutral frames {fmt(drift['neutral_frames_mean'], 3)}, "
          f"active frames {fmt(drift['active_frames_mean'], 3)}")
    return result


if __name__ == "__main__":
    main()
