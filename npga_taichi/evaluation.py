"""Evaluate an avatar: per-frame PSNR / SSIM / LPIPS, a CSV, a summary and the worst frames.

Masking (as NPGA and GaussianAvatars evaluate): the ground-truth alpha matte ``a`` decides what
counts as the head. Both images are composited over the same background with it,
``gt' = a*gt + (1-a)*bg`` and ``pred' = a*pred + (1-a)*bg``, so neither the capture's background
nor anything the avatar renders outside the matte (torso, floaters) changes the score; PSNR,
SSIM and LPIPS are computed on these full images. ``psnr_masked`` additionally averages the
squared error over the matte only (alpha-weighted), a stricter number for small heads.

Metrics: PSNR and SSIM come from :mod:`npga_taichi.metrics` (SSIM = scikit-image's
Gaussian-window SSIM). LPIPS is computed only when the ``lpips`` package *and* the AlexNet
backbone weights are already on disk (``<torch hub>/checkpoints/alexnet-owt-*.pth``) - they are
never downloaded; otherwise every LPIPS value is reported as unavailable (empty / null), never
guessed. The identical images give PSNR = inf and SSIM = 1.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from npga_taichi import metrics

CSV_COLUMNS = ("sequence", "timestep", "camera", "psnr", "psnr_masked", "ssim", "lpips")


# ------------------------------------------------------------------------------ per-image metrics

def psnr_value(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """PSNR in dB as a float; exactly ``inf`` for identical images (no epsilon clamp)."""
    err = float(metrics.mse(pred, gt))
    return math.inf if err == 0.0 else 10.0 * math.log10(1.0 / err)


def masked_psnr_value(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> float:
    """Alpha-weighted PSNR as a float (``inf`` when identical inside the mask, nan if mask empty)."""
    if float(mask.sum()) <= 0:
        return math.nan
    err = float(metrics.masked_mse(pred, gt, mask))
    return math.inf if err == 0.0 else 10.0 * math.log10(1.0 / err)


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
    """

    sequence: str
    timestep: int
    camera: str
    pred: torch.Tensor
    gt: torch.Tensor
    alpha: torch.Tensor


@dataclass
class FrameScore:
    sequence: str
    timestep: int
    camera: str
    psnr: float
    psnr_masked: float
    ssim: float
    lpips: float | None  # None = LPIPS unavailable


@dataclass
class EvalResult:
    rows: list[FrameScore]
    lpips_available: bool
    lpips_reason: str
    background: list[float]
    worst: list[tuple[FrameScore, np.ndarray]] = field(default_factory=list)  # (score, comparison row)

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
            "ssim": mean([r.ssim for r in self.rows]),
            "lpips": mean([r.lpips for r in self.rows]) if self.lpips_available else None,
            "lpips_available": self.lpips_available,
            "lpips_note": "" if self.lpips_available else f"LPIPS unavailable: {self.lpips_reason}",
            "masking": "prediction and ground truth composited over the background with the "
                       "ground-truth alpha matte",
            "background": self.background,
        }


def score_item(item: EvalItem, background: torch.Tensor, lpips_metric: LpipsMetric | None) -> FrameScore:
    """Metrics of one (frame, camera), masked as described in the module docstring."""
    for name, t in (("pred", item.pred), ("gt", item.gt)):
        if t.dim() != 3 or t.shape[-1] != 3:
            raise ValueError(f"{name} image must be (H, W, 3), got {tuple(t.shape)}")
    if item.pred.shape != item.gt.shape:
        raise ValueError(f"rendered {tuple(item.pred.shape)} and ground truth {tuple(item.gt.shape)} "
                         f"differ in size ({item.sequence} t={item.timestep} cam {item.camera})")
    pred = composite(item.pred.double().clamp(0, 1), item.alpha.double(), background.double())
    gt = composite(item.gt.double(), item.alpha.double(), background.double())
    return FrameScore(
        sequence=item.sequence, timestep=int(item.timestep), camera=str(item.camera),
        psnr=psnr_value(pred, gt),
        psnr_masked=masked_psnr_value(item.pred.double().clamp(0, 1), item.gt.double(), item.alpha.double()),
        ssim=float(metrics.ssim(pred, gt)),
        lpips=lpips_metric(pred, gt) if lpips_metric is not None else None,
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
    for item in tqdm(items, total=total, desc="eval", unit="img", disable=not progress):
        score = score_item(item, bg, lpips_metric)
        rows.append(score)
        if n_worst > 0:
            worst.append((score, comparison_row(item, bg)))
            worst.sort(key=lambda pair: pair[0].psnr)
            del worst[n_worst:]
    if not rows:
        raise ValueError("nothing to evaluate: no (frame, camera) pairs were selected")
    return EvalResult(rows, available, reason, [float(x) for x in bg], worst)


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
        writer.writerow([_fmt(v) for v in asdict(r).values()])
    return write_text_atomic(buf.getvalue(), path)


def read_csv(path: str | os.PathLike) -> list[dict]:
    """Rows of a metrics CSV with floats parsed (``inf`` kept, empty -> None)."""
    out = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            parsed = dict(row)
            for key in ("psnr", "psnr_masked", "ssim", "lpips"):
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


def format_table(summary: dict) -> str:
    """A small fixed-width metrics table for the terminal."""
    def cell(v, digits):
        if v is None:
            return "n/a"
        if isinstance(v, float) and math.isinf(v):
            return "inf"
        return f"{v:.{digits}f}"

    lines = [
        f"{'images':>8} {'PSNR dB':>9} {'PSNR(mask)':>11} {'SSIM':>7} {'LPIPS':>7}",
        f"{summary['num_images']:>8} {cell(summary['psnr'], 2):>9} {cell(summary['psnr_masked'], 2):>11} "
        f"{cell(summary['ssim'], 4):>7} {cell(summary['lpips'], 4):>7}",
    ]
    if not summary.get("lpips_available"):
        lines.append(summary.get("lpips_note", "LPIPS unavailable"))
    return "\n".join(lines)
