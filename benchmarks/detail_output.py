"""How much of the detail network G's output changes with the expression (JSON out).

    python benchmarks/detail_output.py RUN [RUN ...] [--tracking DIR] [--stride 5] --out F.json

For each avatar run (``npga fit``) and every ``stride``-th tracked frame of its capture, G's
outputs per Gaussian: the position offset (mm), the rotation change (quaternion, added to the
identity), the log-scale change, the colour change (SH DC) and the opacity-logit change. Per
output and split (the training sequences / the held-out ones, FREE by default):

* ``rms``: over Gaussians, output channels and frames;
* ``static_rms``: of each Gaussian's mean over the frames: what G adds on every frame alike, a
  correction of the canonical (neutral) Gaussians that they could hold themselves;
* ``dynamic_rms``: about that mean: what changes with the expression, the detail G is for;
* ``dynamic_share`` = dynamic_rms / rms.

For the position offsets also ``translation``: their mean over the Gaussians on each frame, a
shift of the whole head (mm): ``rms`` over frames of its length and ``dynamic_rms`` about its mean
over frames. A G that moves the whole head from frame to frame is correcting each training
frame's tracked pose, which does not carry over to codes it never saw (README, *G that
generalises*).

An unconstrained G (``--no-detail-relative-to-rest``) learns mostly a static correction; one
relative to rest is zero at a zero code (README, *G relative to rest*).
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

# G's outputs and the factor that brings each to the unit the JSON reports.
OUTPUTS = {"d_means": MM_PER_UNIT, "d_quats": 1.0, "d_log_scales": 1.0, "d_colors": 1.0, "d_opacity": 1.0}


@torch.no_grad()
def measure(avatar, trackings: dict, holdout: tuple[str, ...] = ("FREE",), stride: int = 5) -> dict:
    """The module docstring's numbers for one avatar (an NPGAAvatar with G). ``trackings``:
    sequence -> Tracking (:func:`npga_taichi.prior.tracking.load_trackings`)."""
    from npga_taichi.avatar.trainer import frame_code

    if avatar.detail is None:
        raise ValueError("this avatar has no detail network G (fitted with --no-detail or --static)")
    device = avatar.gaussians.means.device
    result = {}
    for split in ("train", "held_out"):
        outputs: dict[str, list[torch.Tensor]] = {name: [] for name in OUTPUTS}
        for sequence, tracking in trackings.items():
            if (sequence in holdout) != (split == "held_out"):
                continue
            for i in range(0, len(tracking.timesteps), stride):
                detail = avatar.deform(frame_code(tracking, i).to(device)).detail
                for name, unit in OUTPUTS.items():
                    outputs[name].append(detail[name].reshape(len(detail[name]), -1).double() * unit)
        if not outputs["d_means"]:
            continue
        rows = {}
        for name, frames in outputs.items():
            stack = torch.stack(frames)  # (F, N, C)
            mean = stack.mean(0)
            rms = float(stack.pow(2).mean().sqrt())
            dynamic = float((stack - mean).pow(2).mean().sqrt())
            rows[name] = {"rms": rms, "static_rms": float(mean.pow(2).mean().sqrt()),
                          "dynamic_rms": dynamic, "dynamic_share": dynamic / rms if rms > 0 else 0.0}
            if name == "d_means":
                shift = stack.mean(1)  # (F, 3): the whole head's shift per frame
                rows[name]["translation"] = {"rms": float(shift.pow(2).sum(1).mean().sqrt()),
                                             "dynamic_rms": float((shift - shift.mean(0)).pow(2).sum(1).mean().sqrt())}
        result[split] = {"frames": len(outputs["d_means"]), "outputs": rows}
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders written by npga fit")
    ap.add_argument("--tracking", help="folder of <SEQ>.npz [default: the run's own, from its config.json]")
    ap.add_argument("--stride", type=int, default=5, help="every k-th tracked frame")
    ap.add_argument("--device", default="cpu", help="torch device of the avatar (cpu, cuda)")
    ap.add_argument("--out", required=True, help="JSON file to write")
    args = ap.parse_args(argv)
    if args.stride < 1:
        ap.error(f"--stride must be >= 1, got {args.stride}")

    from npga_taichi.avatar.model import load_avatar
    from npga_taichi.prior.tracking import load_trackings

    result = {}
    for run in args.runs:
        avatar, _, (avatar_cfg, train_cfg, extra) = load_avatar(run, args.device)
        folder = args.tracking or extra.get("tracking")
        if not folder:
            ap.error(f"{run}: its config.json names no tracking folder; pass --tracking")
        result[run] = {"detail_relative_to_rest": avatar_cfg.detail_relative_to_rest,
                       "detail_conditioning": avatar_cfg.detail_conditioning,
                       **measure(avatar, load_trackings(folder), tuple(train_cfg.holdout_sequences), args.stride)}
    Path(args.out).write_text(json.dumps(result, indent=2))
    for run, rows in result.items():
        for name, row in rows.get("held_out", rows.get("train", {})).get("outputs", {}).items():
            print(f"{run} {name}: rms {row['rms']:.4g}, static {row['static_rms']:.4g}, "
                  f"dynamic {row['dynamic_rms']:.4g} ({100 * row['dynamic_share']:.1f} %)")
            if "translation" in row:
                print(f"{run} {name} whole-head shift: rms {row['translation']['rms']:.4g} mm, "
                      f"changing {row['translation']['dynamic_rms']:.4g} mm")
    return result


if __name__ == "__main__":
    main()
