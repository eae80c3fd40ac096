"""What blink ratio can an avatar reach at all? Floors of issue 18's expression ratio (JSON out).

    python benchmarks/blink_floor.py --run RUN --out floor.json [--sequence FREE] [--max-frames N]

The ratio is ``npga eval``'s (:func:`npga_taichi.fidelity.expression_ratio`): inside the pixels
where the blinking truth and the open-eyed truth differ (dilated 2 px),
``mean|image - blinking truth| / mean|image - open-eyed truth|``. For every held-out
(frame, camera) of the run's held-out sequence with an active blink it scores:

* ``avatar``: the run as ``npga eval`` renders it (its measured eye closure);
* ``avatar_open``: the same avatar with open eyes (closure 0): an avatar that never blinks;
* ``avatar_open_plus_true_blink``: the avatar rendered with open eyes (closure 0) plus the exact
  change the blink makes in the truth (blinking - open-eyed truth): a perfect blink on top of
  the avatar's own error in the eye region - the best this avatar could score by blinking better;
* ``truth_other_seed``: the exact truth re-rendered with another sample seed - the capture
  renderer's own sampling noise, which no avatar reproduces (training images carry other noise);
* ``truth_shift_<s>px``: the exact truth moved by s px in x and in y (bilinear) - misalignment;
* ``truth_blur_<s>px``: the exact truth blurred by a Gaussian of sigma s px - softness.

An avatar cannot score below ``truth_other_seed`` except by chance; the shifts and blurs show how
little misalignment or softness the ratio tolerates. Each is also scored as a ``core`` ratio:
the same quotient over only the pixels the blink changes by more than
:data:`npga_taichi.fidelity.CORE_THRESHOLD` (undilated; ``npga eval`` reports it too) - where
the eye actually opens or closes, not the lid surroundings it shades by a few levels.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from npga_taichi import fidelity  # noqa: E402
from npga_taichi.reenactment import LoadedRun, ground_truth  # noqa: E402

SHIFTS_PX = (0.1, 0.25, 0.5, 1.0)
BLURS_PX = (0.5, 0.75, 1.0)
OTHER_SEED = 7919  # added to the frame's own sample seed


def shifted(image: torch.Tensor, px: float) -> torch.Tensor:
    """(H, W, 3) ``image`` moved by ``px`` pixels in x and in y, bilinear, edges repeated."""
    h, w = image.shape[:2]
    theta = torch.tensor([[[1.0, 0.0, 2.0 * px / w], [0.0, 1.0, 2.0 * px / h]]])
    grid = F.affine_grid(theta, (1, 3, h, w), align_corners=False)
    out = F.grid_sample(image.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out[0].permute(1, 2, 0)


def blurred(image: torch.Tensor, sigma_px: float) -> torch.Tensor:
    from scipy.ndimage import gaussian_filter

    return torch.from_numpy(gaussian_filter(image.numpy(), (sigma_px, sigma_px, 0)))


def region_strip(on: torch.Tensor, off: torch.Tensor, avatar: torch.Tensor, pad: int = 8) -> np.ndarray:
    """(h, 5w, 3) uint8 crop around the blink: open-eyed truth | blinking truth | avatar |
    the ratio's region (red over the truth) | its core (red over the truth)."""
    from npga_taichi.video import to_uint8

    region = fidelity.feature_region(on, off)
    core = fidelity.feature_region(on, off, fidelity.CORE_THRESHOLD, 0)
    ys, xs = np.nonzero(region)
    r0, r1 = max(ys.min() - pad, 0), ys.max() + pad + 1
    c0, c1 = max(xs.min() - pad, 0), xs.max() + pad + 1

    def marked(mask):
        out = on.clone()
        out[torch.from_numpy(mask)] = out[torch.from_numpy(mask)] * 0.4 + torch.tensor([0.6, 0.0, 0.0])
        return out

    tiles = [off, on, avatar, marked(region), marked(core)]
    return np.concatenate([to_uint8(t[r0:r1, c0:c1]) for t in tiles], axis=1)


def floors(run_dir: Path, sequence: str | None = None, max_frames: int | None = None,
           figure: Path | None = None) -> dict:
    run = LoadedRun(run_dir)
    truth = fidelity.SyntheticTruth.find(run.capture.pdir)
    if truth is None:
        raise ValueError(f"{run_dir}: its capture is not synthetic (no groundtruth/): no floors")
    sequence = sequence or run.heldout_sequences()[0]
    drive = run.drive(sequence)
    if drive.eye_closure is None:
        raise ValueError(f"{run_dir}: the {sequence} track carries no eye closure")
    rows, strip = [], None
    frames = [i for i, t in enumerate(drive.timesteps) if "blink" in truth.active_features(sequence, int(t))]
    for i in frames[:max_frames]:
        t = int(drive.timesteps[i])
        frame = drive.frame(i)
        with torch.no_grad():
            g = run.gaussians(frame)
            g_open = run.gaussians({**frame, "eye_closure": torch.zeros_like(frame["eye_closure"])})
        for serial in run.heldout_cameras():
            camera = run.capture.cameras[serial]
            gt, _ = ground_truth(run, sequence, t, serial)
            size = tuple(gt.shape[:2])
            on, off = truth.feature_truths(sequence, t, camera, size, run.background)["blink"]
            with torch.no_grad():
                avatar = run.render(g, run.camera(serial)).cpu()
                avatar_open = run.render(g_open, run.camera(serial)).cpu()
            other = truth.composited(sequence, t, camera, size, run.background, truth.expression(sequence, t),
                                     seed=t + OTHER_SEED)
            candidates = {"avatar": avatar, "avatar_open": avatar_open,
                          "avatar_open_plus_true_blink": avatar_open + (on - off),
                          "truth_other_seed": other,
                          **{f"truth_shift_{s}px": shifted(on, s) for s in SHIFTS_PX},
                          **{f"truth_blur_{s}px": blurred(on, s) for s in BLURS_PX}}
            ratios = {k: fidelity.expression_ratio(v, on, off) for k, v in candidates.items()}
            cores = {k: fidelity.core_ratio(v, on, off) for k, v in candidates.items()}
            row = {"timestep": t, "camera": serial,  # the regions depend on the truths alone
                   "region_pixels": ratios["avatar"][1], "core_pixels": cores["avatar"][1],
                   **{k: r for k, (r, _) in ratios.items()}, **{f"core_{k}": r for k, (r, _) in cores.items()}}
            rows.append(row)
            if figure is not None and (strip is None or row["core_pixels"] > strip[0]):
                strip = (row["core_pixels"], region_strip(on, off, avatar))
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    if figure is not None and strip is not None:
        import imageio.v3 as iio

        figure.parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(figure, strip[1].repeat(3, 0).repeat(3, 1))
    keys = [k for k in rows[0] if k not in ("timestep", "camera", "region_pixels", "core_pixels")] if rows else []
    return {"run": str(run_dir), "sequence": sequence, "cameras": run.heldout_cameras(), "images": len(rows),
            "median_ratio": {k: float(np.nanmedian([r[k] for r in rows])) for k in keys}, "per_image": rows}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="run directory (npga fit --out) on a synthetic capture")
    ap.add_argument("--sequence", help="held-out sequence (default: the run's first held-out sequence)")
    ap.add_argument("--max-frames", type=int, help="at most this many blink frames")
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    ap.add_argument("--figure", type=Path, help="PNG: open truth | blinking truth | avatar | region | core "
                                                "of the image with the largest core")
    args = ap.parse_args(argv)
    result = floors(args.run, args.sequence, args.max_frames, args.figure)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["median_ratio"], indent=2))


if __name__ == "__main__":
    main()
