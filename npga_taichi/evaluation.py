"""Evaluate an avatar: per-frame PSNR / SSIM / LPIPS, a CSV, a summary and the worst frames.

Masking (as NPGA and GaussianAvatars evaluate): the ground-truth alpha matte ``a`` decides what
counts as the head. Both images are composited over the same background with it,
``gt' = a*gt + (1-a)*bg`` and ``pred' = a*pred + (1-a)*bg``, so neither the capture's background
nor anything the avatar renders outside the matte (torso, floaters) changes the score; PSNR,
SSIM and LPIPS are computed on these full images. ``psnr_masked`` additionally averages the
squared error over the matte only (alpha-weighted), a stricter number for small heads.
``psnr_unmasked`` compares the render as drawn (over the evaluation background, which
:func:`evaluate_run` renders onto) with the composited truth: it also counts what the avatar
draws outside the matte — silhouette spill, floaters — which the masked numbers forgive (an
avatar whose Gaussians are all 5 % larger scores ~1 dB *higher* on ``psnr``: it covers the matte's
edge and its spill is free). Where the matte is the whole subject (a synthetic capture) it is the
stricter whole-image number; on a real capture it also counts the torso the matte cuts away.

Metrics: PSNR and SSIM come from :mod:`npga_taichi.metrics` (SSIM = scikit-image's
Gaussian-window SSIM). LPIPS is computed only when the ``lpips`` package *and* the AlexNet
backbone weights are already on disk (``<torch hub>/checkpoints/alexnet-owt-*.pth``) - they are
never downloaded; otherwise every LPIPS value is reported as unavailable (empty / null), never
guessed. The identical images give PSNR = inf and SSIM = 1.

Regions and expressions (:mod:`npga_taichi.fidelity`): where the capture has label maps (a
synthetic capture), PSNR / SSIM are also reported inside the eye and mouth regions, on the same
composited images; for a synthetic capture, the blink / jaw / brow ratios measure whether the
avatar shows those expressions at all. A capture without label maps (a real one) gets the
whole-image numbers only, and the summary says so.

:func:`evaluate_run` is the whole ``npga eval`` command: it renders an avatar run's held-out
frames, scores them and writes ``metrics.csv``, ``summary.json`` and ``worst.png``.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from npga_taichi import fidelity, metrics

CSV_COLUMNS = ("sequence", "timestep", "camera", "psnr", "psnr_masked", "psnr_unmasked", "ssim", "lpips",
               *(f"{m}_{r}" for r in fidelity.REGIONS for m in ("psnr", "ssim")),
               *(f"ratio_{f}" for f in fidelity.FEATURES), *(f"core_ratio_{f}" for f in fidelity.FEATURES))
OUTPUT_NAMES = ("metrics.csv", "summary.json", "worst.png", "expressions.png")


# ------------------------------------------------------------------------------ per-image metrics

def psnr_value(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """PSNR in dB as a float; exactly ``inf`` for identical images (no epsilon clamp)."""
    return metrics.psnr_report(float(metrics.mse(pred, gt)))


def masked_psnr_value(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> float:
    """Alpha-weighted PSNR as a float (``inf`` when identical inside the mask, nan if mask empty)."""
    if float(mask.sum()) <= 0:
        return math.nan
    return metrics.psnr_report(float(metrics.masked_mse(pred, gt, mask)))


def composite(image: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """``alpha * image + (1 - alpha) * background``; image (H,W,C), alpha (H,W,1), background (C,)."""
    if alpha.dim() == 2:
        alpha = alpha.unsqueeze(-1)
    return alpha * image + (1.0 - alpha) * background.to(image.dtype).view(1, 1, -1)


# ------------------------------------------------------------------------------------- LPIPS

def torch_hub_checkpoints() -> Path:
    """Where torchvision keeps downloaded weights (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def lpips_status() -> tuple[bool, str]:
    """(available, reason). Available only if ``lpips`` imports and every weight file is on disk."""
    try:
        import lpips  # noqa: F401
    except ImportError:
        return False, "the 'lpips' package is not installed"
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return False, "the 'torchvision' package (LPIPS backbone) is not installed"
    linear = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
    if not linear.is_file():
        return False, f"LPIPS linear weights missing: {linear}"
    backbone = sorted(glob.glob(str(torch_hub_checkpoints() / "alexnet-owt-*.pth")))
    if not backbone:
        return False, (f"AlexNet backbone weights not on disk ({torch_hub_checkpoints()}/alexnet-owt-*.pth); "
                       "they are never downloaded")
    return True, backbone[0]


class LpipsMetric:
    """LPIPS (AlexNet, v0.1) built from weights on disk only; call with (H, W, 3) images in [0, 1]."""

    def __init__(self, device="cpu") -> None:
        ok, where = lpips_status()
        if not ok:
            raise RuntimeError(f"LPIPS unavailable: {where}")
        import lpips
        import torchvision

        # pnet_rand=True: lpips must not fetch the backbone itself; we load it from disk below.
        self.model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
        alexnet = torchvision.models.alexnet(weights=None)
        alexnet.load_state_dict(torch.load(where, map_location="cpu", weights_only=True))
        features = alexnet.features
        for slice_name in ("slice1", "slice2", "slice3", "slice4", "slice5"):
            for idx, module in getattr(self.model.net, slice_name).named_children():
                module.load_state_dict(features[int(idx)].state_dict())
        self.model = self.model.to(device).eval()
        self.device = device

    @torch.no_grad()
    def __call__(self, pred: torch.Tensor, gt: torch.Tensor) -> float:
        to = lambda x: (x.permute(2, 0, 1)[None].float().to(self.device) * 2.0 - 1.0)  # noqa: E731
        return float(self.model(to(pred), to(gt)).mean())


# ---------------------------------------------------------------------------------- the loop

@dataclass
class EvalItem:
    """One (frame, camera) to score: the rendered image and its ground truth.

    pred:  (H, W, 3) float rendered image in [0, 1]
    gt:    (H, W, 3) float ground-truth image in [0, 1]
    alpha: (H, W, 1) ground-truth matte in [0, 1] (all ones when the capture has none)
    labels: (H0, W0) uint8 label map at the capture's resolution, or None (no region metrics)
    truths: feature -> (on, off) (H, W, 3) re-rendered truths composited over the evaluation
            background (see :mod:`npga_taichi.fidelity`), or None / {} (no expression ratios)
    """

    sequence: str
    timestep: int
    camera: str
    pred: torch.Tensor
    gt: torch.Tensor
    alpha: torch.Tensor
    labels: np.ndarray | None = None
    truths: dict | None = None


@dataclass
class FrameScore:
    sequence: str
    timestep: int
    camera: str
    psnr: float
    psnr_masked: float
    psnr_unmasked: float  # the render as drawn against the composited truth (module docstring)
    ssim: float
    lpips: float | None  # None = LPIPS unavailable
    regions: dict = field(default_factory=dict)  # region -> {"psnr", "ssim", "pixels"}; {} = no labels
    ratios: dict = field(default_factory=dict)   # feature -> (ratio, region pixels); {} = none active
    core_ratios: dict = field(default_factory=dict)  # feature -> (ratio, pixels) over the feature's core

    def csv_row(self) -> dict:
        """The row of metrics.csv (see CSV_COLUMNS); region / ratio cells None when unavailable."""
        row = {k: getattr(self, k) for k in CSV_COLUMNS[:8]}
        for region in fidelity.REGIONS:
            for m in ("psnr", "ssim"):
                row[f"{m}_{region}"] = self.regions.get(region, {}).get(m)
        for feature in fidelity.FEATURES:
            row[f"ratio_{feature}"] = self.ratios[feature][0] if feature in self.ratios else None
            row[f"core_ratio_{feature}"] = self.core_ratios[feature][0] if feature in self.core_ratios else None
        return row


@dataclass
class EvalResult:
    rows: list[FrameScore]
    lpips_available: bool
    lpips_reason: str
    background: list[float]
    worst: list[tuple[FrameScore, np.ndarray]] = field(default_factory=list)  # (score, comparison row)
    # feature -> (score, region pixels, truth | avatar | truth-without crop) of the image where
    # the feature is most visible (its region largest)
    feature_crops: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """Means (and counts) over all rows; LPIPS null when unavailable."""
        def mean(values):
            vals = [v for v in values if v is not None and not math.isnan(v)]
            return float(np.mean(vals)) if vals else None

        return {
            "num_images": len(self.rows),
            "sequences": sorted({r.sequence for r in self.rows}),
            "cameras": sorted({r.camera for r in self.rows}),
            "psnr": mean([r.psnr for r in self.rows]),
            "psnr_masked": mean([r.psnr_masked for r in self.rows]),
            "psnr_unmasked": mean([r.psnr_unmasked for r in self.rows]),
            "ssim": mean([r.ssim for r in self.rows]),
            "lpips": mean([r.lpips for r in self.rows]) if self.lpips_available else None,
            "lpips_available": self.lpips_available,
            "lpips_note": "" if self.lpips_available else f"LPIPS unavailable: {self.lpips_reason}",
            **self.region_summary(),
            "masking": "prediction and ground truth composited over the background with the "
                       "ground-truth alpha matte",
            "background": self.background,
        }


    def region_summary(self) -> dict:
        """"regions" (per region: mean PSNR / SSIM over the images that show it) and "fidelity"
        (per feature: median ratio over the images where it is active), each with a note."""
        def mean(values):
            vals = [v for v in values if v is not None and not math.isnan(v)]
            return float(np.mean(vals)) if vals else None

        labelled = [r for r in self.rows if r.regions]
        regions = None
        note = "no label maps in this capture (e.g. a real capture): whole-image metrics only"
        if labelled:
            note = ""
            regions = {}
            for name in fidelity.REGIONS:
                shown = [r.regions[name] for r in labelled if not math.isnan(r.regions[name]["psnr"])]
                regions[name] = {"psnr": mean([s["psnr"] for s in shown]), "ssim": mean([s["ssim"] for s in shown]),
                                 "num_images": len(shown)}
        scored = [r for r in self.rows if r.ratios]
        result = {"regions": regions, "regions_note": note}
        if scored:
            result["fidelity"] = {
                f: {**fidelity.summarise_ratios([r.ratios[f] for r in scored if f in r.ratios]),
                    **{f"core_{k}": v for k, v in fidelity.summarise_ratios(
                        [r.core_ratios[f] for r in scored if f in r.core_ratios]).items()}}
                for f in fidelity.FEATURES}
            result["fidelity_note"] = ("ratio = mean|avatar - truth| / mean|avatar - truth without the feature| "
                                       "inside the pixels the feature changes (dilated 2 px); << 1: the avatar "
                                       "shows it, > 1: it does not. core = the same over the pixels it changes by "
                                       f"more than {fidelity.CORE_THRESHOLD:g} (not dilated)")
        else:
            result["fidelity"] = None
            result["fidelity_note"] = ("no expression fidelity: it needs a synthetic capture (npga synth) "
                                       "with frames where blink, jaw or brows are active")
        return result


def score_item(item: EvalItem, background: torch.Tensor, lpips_metric: LpipsMetric | None) -> FrameScore:
    """Metrics of one (frame, camera), masked as described in the module docstring."""
    for name, t in (("pred", item.pred), ("gt", item.gt)):
        if t.dim() != 3 or t.shape[-1] != 3:
            raise ValueError(f"{name} image must be (H, W, 3), got {tuple(t.shape)}")
    if item.pred.shape != item.gt.shape:
        raise ValueError(f"rendered {tuple(item.pred.shape)} and ground truth {tuple(item.gt.shape)} "
                         f"differ in size ({item.sequence} t={item.timestep} cam {item.camera})")
    drawn = item.pred.double().clamp(0, 1)  # the render as drawn (psnr_unmasked, psnr_masked)
    truth, alpha = item.gt.double(), item.alpha.double()
    pred = composite(drawn, alpha, background.double())
    gt = composite(truth, alpha, background.double())
    ssim_map = metrics.ssim_map(pred, gt)  # one for the whole image and its regions (float64: slow)
    regions = {}
    if item.labels is not None:
        regions = fidelity.region_scores(pred, gt, fidelity.region_weights(item.labels, tuple(gt.shape[:2])),
                                         ssim_map)
    truths = {f: (on.to(pred), off.to(pred)) for f, (on, off) in (item.truths or {}).items()}
    ratios = {f: fidelity.expression_ratio(pred, on, off) for f, (on, off) in truths.items()}
    core_ratios = {f: fidelity.core_ratio(pred, on, off) for f, (on, off) in truths.items()}
    return FrameScore(
        sequence=item.sequence, timestep=int(item.timestep), camera=str(item.camera),
        psnr=psnr_value(pred, gt),
        psnr_masked=masked_psnr_value(drawn, truth, alpha),
        psnr_unmasked=psnr_value(drawn, gt),
        ssim=float(ssim_map.mean()),
        lpips=lpips_metric(pred, gt) if lpips_metric is not None else None,
        regions=regions, ratios=ratios, core_ratios=core_ratios,
    )


def comparison_row(item: EvalItem, background: torch.Tensor) -> np.ndarray:
    """(H, 3W, 3) float: masked ground truth | masked prediction | 4x absolute error."""
    pred = composite(item.pred.float().clamp(0, 1), item.alpha.float(), background.float())
    gt = composite(item.gt.float(), item.alpha.float(), background.float())
    err = ((pred - gt).abs() * 4.0).clamp(0, 1)
    return torch.cat([gt, pred, err], dim=1).cpu().numpy()


def evaluate(items: Iterable[EvalItem], background: Sequence[float] = (1.0, 1.0, 1.0),
             use_lpips: bool = True, n_worst: int = 4, progress: bool = True,
             total: int | None = None) -> EvalResult:
    """Score every item; keep comparison rows of the ``n_worst`` lowest-PSNR images."""
    from tqdm import tqdm

    bg = torch.as_tensor(background, dtype=torch.float64)
    available, reason = lpips_status() if use_lpips else (False, "disabled (--no-lpips)")
    lpips_metric = LpipsMetric() if available else None
    rows: list[FrameScore] = []
    worst: list[tuple[FrameScore, np.ndarray]] = []
    crops: dict = {}
    for item in tqdm(items, total=total, desc="eval", unit="img", disable=not progress):
        score = score_item(item, bg, lpips_metric)
        rows.append(score)
        for feature, (on, off) in (item.truths or {}).items():
            pixels = score.ratios[feature][1]
            if pixels > 0 and (feature not in crops or pixels > crops[feature][1]):
                pred = composite(item.pred.float().clamp(0, 1), item.alpha.float(), bg.float())
                crops[feature] = (score, pixels, fidelity.feature_crop(pred, on.to(pred), off.to(pred)))
        if n_worst > 0:
            worst.append((score, comparison_row(item, bg)))
            worst.sort(key=lambda pair: pair[0].psnr)
            del worst[n_worst:]
    if not rows:
        raise ValueError("nothing to evaluate: no (frame, camera) pairs were selected")
    return EvalResult(rows, available, reason, [float(x) for x in bg], worst, crops)


# ---------------------------------------------------------------------------------- outputs

def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "inf" if math.isinf(value) else ("nan" if math.isnan(value) else f"{value:.6f}")
    return str(value)


def write_csv(result: EvalResult, path: str | os.PathLike) -> Path:
    """Per-image metrics, one row per (sequence, timestep, camera); LPIPS empty when unavailable."""
    from npga_taichi.checkpoint import write_text_atomic

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    for r in result.rows:
        row = r.csv_row()
        writer.writerow([_fmt(row[k]) for k in CSV_COLUMNS])
    return write_text_atomic(buf.getvalue(), path)


def read_csv(path: str | os.PathLike) -> list[dict]:
    """Rows of a metrics CSV with floats parsed (``inf`` kept, empty -> None)."""
    out = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            parsed = dict(row)
            for key in CSV_COLUMNS[3:]:
                if key in row:  # files written before the region columns existed lack them
                    parsed[key] = float(row[key]) if row[key] != "" else None
            parsed["timestep"] = int(row["timestep"])
            out.append(parsed)
    return out


def json_safe(obj):
    """Replace non-finite floats by strings ("inf", "nan") so the JSON is standard."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "inf" if obj > 0 else ("-inf" if obj < 0 else "nan")
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_summary(summary: dict, path: str | os.PathLike) -> Path:
    from npga_taichi.checkpoint import write_text_atomic

    return write_text_atomic(json.dumps(json_safe(summary), indent=2) + "\n", path)


def write_worst_image(result: EvalResult, path: str | os.PathLike) -> Path | None:
    """Stack the worst frames' comparison rows (GT | render | 4x error) into one PNG."""
    from npga_taichi.video import write_png

    if not result.worst:
        return None
    rows = [row for _, row in result.worst]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return write_png(path, np.concatenate(rows, axis=0))


def write_feature_crops(result: EvalResult, path: str | os.PathLike) -> Path | None:
    """One row per expression feature (blink, jaw, brows order): truth | avatar | truth without
    the feature, cropped to where the feature changes the image; None when there is none."""
    from npga_taichi.video import write_png

    rows = [result.feature_crops[f][2] for f in fidelity.FEATURES if f in result.feature_crops]
    if not rows:
        return None
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0)), constant_values=1.0) for r in rows]
    return write_png(path, np.concatenate(rows, axis=0))


def format_table(summary: dict) -> str:
    """A small fixed-width metrics table for the terminal."""
    def cell(v, digits):
        if v is None:
            return "n/a"
        if isinstance(v, float) and math.isinf(v):
            return "inf"
        return f"{v:.{digits}f}"

    lines = [
        f"{'images':>8} {'PSNR dB':>9} {'PSNR(mask)':>11} {'PSNR(all)':>10} {'SSIM':>7} {'LPIPS':>7}",
        f"{summary['num_images']:>8} {cell(summary['psnr'], 2):>9} {cell(summary['psnr_masked'], 2):>11} "
        f"{cell(summary.get('psnr_unmasked'), 2):>10} {cell(summary['ssim'], 4):>7} {cell(summary['lpips'], 4):>7}",
    ]
    if not summary.get("lpips_available"):
        lines.append(summary.get("lpips_note", "LPIPS unavailable"))
    if summary.get("regions"):
        lines.append(f"{'region':>8} {'PSNR dB':>9} {'SSIM':>7} {'images':>7}")
        for name, r in summary["regions"].items():
            lines.append(f"{name:>8} {cell(r['psnr'], 2):>9} {cell(r['ssim'], 4):>7} {r['num_images']:>7}")
    elif "regions_note" in summary:
        lines.append(summary["regions_note"])
    if summary.get("fidelity"):
        lines.append(f"{'feature':>8} {'ratio':>9} {'core':>7} {'images':>7}   (median; < 1: the avatar shows it)")
        for name, f in summary["fidelity"].items():
            lines.append(f"{name:>8} {cell(f['median_ratio'], 2):>9} {cell(f.get('core_median_ratio'), 2):>7} "
                         f"{f['num_images']:>7}")
    elif "fidelity_note" in summary:
        lines.append(summary["fidelity_note"])
    return "\n".join(lines)


# ---------------------------------------------------------------------------- `npga eval` run

def _frame_labels(run, sequence: str, timestep: int, serial: str) -> np.ndarray | None:
    """The capture's label map of this image, or None when it has none (a real capture)."""
    try:
        frame_dir = run.capture.frame_dir(sequence, timestep)
    except ValueError:
        return None
    path = fidelity.label_path(frame_dir, serial)
    return fidelity.load_labels(path) if path.is_file() else None


def eval_items(run, sequences: list[str], serials: list[str], stride: int, max_frames: int | None,
               truth: "fidelity.SyntheticTruth | None" = None):
    """Yield :class:`EvalItem` per (frame, camera); each frame's Gaussians are built once.
    With ``truth`` (a synthetic capture), frames with an active expression feature carry the
    re-rendered truths for the expression ratios."""
    from npga_taichi.reenactment import ground_truth

    for seq in sequences:
        drive = run.drive(seq)
        for i in list(range(0, len(drive), stride))[:max_frames]:
            g = run.gaussians(drive.frame(i))
            t = int(drive.timesteps[i])
            for serial in serials:
                gt, alpha = ground_truth(run, seq, t, serial)
                truths = None
                if truth is not None:
                    truths = truth.feature_truths(seq, t, run.capture.cameras[serial], tuple(gt.shape[:2]),
                                                  run.background)
                yield EvalItem(seq, t, serial, run.render(g, run.camera(serial)), gt, alpha,
                               labels=_frame_labels(run, seq, t, serial), truths=truths)


def evaluate_run(run_dir, out, sequences=None, camera_spec="holdout", stride=1, max_frames=None,
                   use_lpips=True, n_worst=4, device="cpu", force=False, progress=True,
                   expression_fidelity=True, compare_runs=()) -> dict:
    """Evaluate avatar run ``run_dir``; write metrics.csv, summary.json, worst.png into ``out``.

    Returns the summary (also in summary.json). Raises FileExistsError (outputs exist and not
    ``force``), and ValueError / FileNotFoundError naming the file or argument (an unknown
    ``camera_spec`` serial, a missing capture, ...) for anything else wrong.
    ``expression_fidelity=False`` skips the re-rendered expression ratios of synthetic captures.
    ``compare_runs``: further run folders whose training curves are drawn beside this run's
    into ``out/curves.png`` (held-out PSNR against wall time and step).
    """
    from npga_taichi.data.nersemble import select_cameras
    from npga_taichi.reenactment import LoadedRun

    run_dir, out = Path(run_dir), Path(out)
    existing = [str(out / n) for n in OUTPUT_NAMES if (out / n).exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)} already exist(s); pass force (--force) to overwrite")
    try:
        run = LoadedRun(run_dir, device=device)
        serials = select_cameras(sorted(run.cameras), camera_spec, run.heldout_cameras())
        if not sequences:
            sequences = run.heldout_sequences()
            if not sequences:
                raise ValueError("the capture has no held-out sequence; pass --sequence")
        truth = fidelity.SyntheticTruth.find(run.capture.pdir) if expression_fidelity else None
        total_frames = 0
        for seq in sequences:
            total_frames += len(list(range(0, len(run.drive(seq)), stride))[:max_frames])
        result = evaluate(eval_items(run, list(sequences), serials, stride, max_frames, truth),
                          background=run.background.tolist(), use_lpips=use_lpips, n_worst=n_worst,
                          progress=progress, total=total_frames * len(serials))
    except KeyError as err:  # a malformed config / tracking file names no file itself
        raise ValueError(f"evaluating {run_dir}: missing entry {err}") from None
    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary()
    if summary["fidelity"] is None and truth is None:
        summary["fidelity_note"] = ("no expression fidelity: skipped" if not expression_fidelity else
                                    "no expression fidelity: not a synthetic capture (no groundtruth/)")
    summary["run"] = str(run_dir)
    summary["stride"] = stride
    write_csv(result, out / "metrics.csv")
    worst = write_worst_image(result, out / "worst.png")
    crops = write_feature_crops(result, out / "expressions.png")
    summary["outputs"] = {"csv": str(out / "metrics.csv"), "summary": str(out / "summary.json"),
                          "worst": str(worst) if worst else None, "expressions": str(crops) if crops else None}
    if compare_runs:
        from npga_taichi.training_curve import plot_runs

        runs = {Path(r).name if Path(r).name not in ("", ".") else str(r): Path(r)
                for r in [run_dir, *compare_runs]}
        if len(runs) != 1 + len(compare_runs):  # two runs with the same folder name: full paths
            runs = {str(r): Path(r) for r in [run_dir, *compare_runs]}
        summary["outputs"]["curves"] = str(plot_runs(runs, out / "curves.png", "held-out PSNR"))
    summary["expression_crops"] = [
        {"feature": f, "sequence": s.sequence, "timestep": s.timestep, "camera": s.camera, "ratio": s.ratios[f][0]}
        for f in fidelity.FEATURES if f in result.feature_crops for s in [result.feature_crops[f][0]]]
    summary["worst_frames"] = [{"sequence": s.sequence, "timestep": s.timestep, "camera": s.camera,
                                "psnr": s.psnr} for s, _ in result.worst]
    write_summary(summary, out / "summary.json")
    return summary
