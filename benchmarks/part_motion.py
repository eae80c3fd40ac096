"""How well does the brows' and mouth corners' motion measured from label maps follow the true
expression? (JSON out.)

    python benchmarks/part_motion.py --capture CAP/<pid> [--tracking DIR] --out P.json

For a synthetic capture (``npga synth``: its ground truth knows every frame's expression) whose
tracks (``npga track``) carry ``part_motion`` (:mod:`npga_taichi.part_motion`; measured again
here from the label maps when they do not). Over every tracked frame of every sequence:

* ``correlation[measurement][parameter]``: Pearson correlation of each of the 8 measurements with
  each true expression parameter;
* ``r2[parameter]``: the share of a parameter's variance that a linear function of the 8
  measurements explains (least squares with an intercept; 1 = the measurement determines it);
* ``std_mm[measurement]``: how far the measurement moves, in mm.

Set beside ``benchmarks/code_content.py`` (what the tracked codes carry: brows 0.00, smiles
0.10-0.39), it says what the avatar gains by reading the label maps as well.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from npga_taichi.conventions import MM_PER_UNIT  # noqa: E402
from npga_taichi.part_motion import PART_MOTION_NAMES  # noqa: E402


def score(motion: np.ndarray, expression: np.ndarray, names: list[str]) -> dict:
    """The module docstring's numbers from ``motion`` (F, 8) canonical units and the true
    ``expression`` (F, P) of the same frames (``names``: the P parameter names)."""
    motion, expression = np.asarray(motion, np.float64), np.asarray(expression, np.float64)
    varied = [i for i in range(len(names)) if expression[:, i].std() > 0]
    corr = {m: {names[i]: float(np.corrcoef(motion[:, j], expression[:, i])[0, 1]) if motion[:, j].std() > 0
                else None for i in varied}
            for j, m in enumerate(PART_MOTION_NAMES)}  # None: a measurement that never moved
    design = np.c_[motion, np.ones(len(motion))]
    r2 = {}
    for i in varied:
        w, *_ = np.linalg.lstsq(design, expression[:, i], rcond=None)
        r2[names[i]] = float(1 - ((design @ w - expression[:, i]) ** 2).mean() / expression[:, i].var())
    return {"frames": int(len(motion)), "r2": r2, "correlation": corr,
            "std_mm": {m: float(motion[:, j].std() * MM_PER_UNIT) for j, m in enumerate(PART_MOTION_NAMES)}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capture", required=True, help="a synthetic capture's participant folder (CAP/<pid>)")
    parser.add_argument("--tracking", help="tracking folder (default: CAP/<pid>/annotations/tracking)")
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    from npga_taichi.data.nersemble import NersembleCapture
    from npga_taichi.eye_closure import measuring_cameras
    from npga_taichi.part_motion import motion_from_measurements, part_measurements
    from npga_taichi.prior.tracking import load_trackings

    capture_dir = Path(args.capture)
    plan = json.loads((capture_dir / "groundtruth" / "groundtruth.json").read_text())
    trackings = load_trackings(args.tracking or capture_dir / "annotations" / "tracking")
    t0 = time.time()
    if all(t.part_motion is not None for t in trackings.values()):
        motion, source = {s: t.part_motion for s, t in trackings.items()}, "tracks"
    else:
        capture = NersembleCapture(capture_dir)
        serials = measuring_cameras(capture)
        motion = motion_from_measurements({s: part_measurements(capture, t, serials) for s, t in trackings.items()})
        source = "measured here"
    seconds = time.time() - t0
    expression = np.concatenate([np.asarray(plan["sequences"][s]["expression"])[np.asarray(t.timesteps)]
                                 for s, t in trackings.items()])
    result = {"capture": str(capture_dir), "motion_from": source, "seconds": seconds,
              **score(np.concatenate([motion[s] for s in trackings]), expression, list(plan["expression_names"]))}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({"r2": {k: round(v, 2) for k, v in result["r2"].items()}, "frames": result["frames"]}))
    return result


if __name__ == "__main__":
    main()
