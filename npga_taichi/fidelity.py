"""Region-aware evaluation and expression fidelity (where people look: eyes and mouth).

Whole-image PSNR hides the eyes and the mouth (the eyes are < 1 % of the pixels), so an avatar
that never blinks can score 32 dB. Two measures make them visible:

* **Region metrics** from the label maps a synthetic capture writes (``labels/cam_<serial>.png``,
  uint8 ids into :data:`npga_taichi.data.synthetic.LABEL_NAMES`; see
  :mod:`npga_taichi.data.capture`). A region is a union of labels (:data:`REGIONS`); its mask
  is area-resampled to the evaluated resolution (a weight in [0, 1] per pixel). Region PSNR is
  the mask-weighted MSE (``metrics.masked_mse``) in dB; region SSIM is the mask-weighted mean
  of ``metrics.ssim_map`` (whose valid window drops a 5-pixel border, so the mask is cropped
  alike). A real capture has no label maps: it gets whole-image numbers only, and says so.

* **Expression fidelity** (synthetic captures only, whose generator can be re-run). For a frame
  where an expression feature is active (:data:`FEATURES`, a parameter > :data:`ACTIVE`), the
  head is re-rendered with the frame's pose, camera and sample seed twice: with its true
  expression ("on") and with the feature's parameters set to 0 ("off"). The pixels where the
  two differ (any channel by more than :data:`DIFF_THRESHOLD`), dilated by :data:`DILATE_PX`
  pixels, are the feature's region; inside it
  ``ratio = mean|avatar - on| / mean|avatar - off|``. An avatar that shows the feature scores
  well below 1, one that ignores it (renders the neutral eyes while the truth blinks) above 1.
  The summary reports the median over the (frame, camera) pairs where the feature is active.

All images here are ``(H, W, 3)`` float tensors in [0, 1] already composited over the
evaluation background; masks and weights are ``(H, W, 1)``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from npga_taichi import metrics

# region name -> the label names it unites
REGIONS: dict[str, tuple[str, ...]] = {
    "eyes": ("eyelids", "eyes"),
    "mouth": ("lips", "teeth", "mouth_interior"),
}
# expression feature -> the synthetic expression parameters it switches off
FEATURES: dict[str, tuple[str, ...]] = {
    "blink": ("blink_left", "blink_right"),
    "jaw": ("jaw_open",),
    "brows": ("brow_raise_left", "brow_raise_right", "frown_left", "frown_right"),
}
ACTIVE = 0.5            # a feature is active in a frame when one of its parameters exceeds this
DIFF_THRESHOLD = 2.0 / 255.0  # "the two truths differ": more than 8-bit rounding in some channel
DILATE_PX = 2           # the feature region is the differing pixels dilated by this many pixels
# The "core" of a feature: the pixels it changes by more than this in some channel (undilated),
# where the eye actually opens or closes; the dilated region above is mostly surroundings the
# feature shades by a few levels, where any avatar's ordinary error (or the truth moved by a
# quarter pixel) outweighs the feature (benchmarks/blink_floor.py).
CORE_THRESHOLD = 0.1


# ------------------------------------------------------------------------------- label maps

def label_path(frame_dir: str | Path, serial: str) -> Path:
    """Where a capture keeps the label map of camera ``serial`` in a frame folder."""
    from npga_taichi.data.capture import LABEL_FOLDER

    return Path(frame_dir) / LABEL_FOLDER / f"cam_{serial}.png"


def load_labels(path: str | Path) -> np.ndarray:
    """(H, W) uint8 label ids from a label PNG; FileNotFoundError / ValueError name the file."""
    import imageio.v3 as iio

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no label map at {path}")
    try:
        labels = iio.imread(path)
    except Exception as err:  # imageio raises several types for unreadable files
        raise ValueError(f"{path}: not a readable label PNG ({err})") from None
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"{path}: a label map must be a single-channel uint8 PNG, "
                         f"got shape {labels.shape} dtype {labels.dtype}")
    return labels


def resize_area(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(H, W, C) -> (size[0], size[1], C) by area averaging (unchanged when the size matches)."""
    if tuple(image.shape[:2]) == tuple(size):
        return image
    return torch.nn.functional.interpolate(image.permute(2, 0, 1)[None], size=tuple(size),
                                           mode="area")[0].permute(1, 2, 0)


def region_weights(labels: np.ndarray, size: tuple[int, int], label_names=None) -> dict[str, torch.Tensor]:
    """Region name -> (H, W, 1) float64 weight in [0, 1] at ``size`` (area fraction of the region)."""
    if label_names is None:
        from npga_taichi.data.synthetic import LABEL_NAMES as label_names
    ids = {name: i for i, name in enumerate(label_names)}
    lab = torch.from_numpy(np.asarray(labels).astype(np.int64))
    out = {}
    for region, names in REGIONS.items():
        mask = torch.zeros(lab.shape, dtype=torch.float64)
        for name in names:
            mask += (lab == ids[name]).double()
        out[region] = resize_area(mask[..., None], size)
    return out


def region_psnr(pred: torch.Tensor, gt: torch.Tensor, weight: torch.Tensor) -> float:
    """PSNR (dB) over the weighted region; inf when identical there, nan when the region is empty."""
    if float(weight.sum()) < 1.0:  # less than one pixel of the region in view
        return math.nan
    return metrics.psnr_report(float(metrics.masked_mse(pred, gt, weight.to(pred.dtype))))


def region_ssim(ssim_map: torch.Tensor, weight: torch.Tensor) -> float:
    """Weighted mean of an image pair's SSIM map (1, C, H - 10, W - 10), :func:`metrics.ssim_map`,
    over the region (H, W, 1) (nan when it lies in the 5-pixel border)."""
    ssim = ssim_map[0].mean(0)  # (H - 10, W - 10)
    r = metrics.SSIM_RADIUS
    w = weight[r:-r, r:-r, 0].to(ssim.dtype)
    if float(w.sum()) < 1.0:
        return math.nan
    return float((ssim * w).sum() / w.sum())


def region_scores(pred: torch.Tensor, gt: torch.Tensor, weights: dict[str, torch.Tensor],
                  ssim_map: torch.Tensor | None = None) -> dict[str, dict]:
    """Region name -> {"psnr", "ssim", "pixels"} for composited (H, W, 3) images; ``ssim_map``:
    the pair's :func:`metrics.ssim_map` where the caller has it already (one map serves every
    region and the whole image)."""
    if ssim_map is None:
        ssim_map = metrics.ssim_map(pred, gt)
    return {name: {"psnr": region_psnr(pred, gt, w), "ssim": region_ssim(ssim_map, w),
                   "pixels": float(w.sum())} for name, w in weights.items()}


# ------------------------------------------------------------------------ expression fidelity

def feature_region(on: torch.Tensor, off: torch.Tensor, threshold: float = DIFF_THRESHOLD,
                   dilate_px: int = DILATE_PX) -> np.ndarray:
    """(H, W) bool: pixels where two renders differ by more than ``threshold``, dilated."""
    from scipy.ndimage import binary_dilation

    differ = ((on - off).abs().amax(dim=-1) > threshold).cpu().numpy()
    if dilate_px > 0 and differ.any():
        differ = binary_dilation(differ, structure=np.ones((3, 3), bool), iterations=dilate_px)
    return differ


def expression_ratio(pred: torch.Tensor, on: torch.Tensor, off: torch.Tensor,
                     threshold: float = DIFF_THRESHOLD, dilate_px: int = DILATE_PX) -> tuple[float, int]:
    """(mean|pred - on| / mean|pred - off| inside the feature region, region pixel count).

    nan when the feature changes no pixel in this view (or the avatar equals both there)."""
    region = torch.from_numpy(feature_region(on, off, threshold, dilate_px)).to(pred.device)
    count = int(region.sum())
    if count == 0:
        return math.nan, 0
    num = float((pred - on).abs()[region].mean())
    den = float((pred - off).abs()[region].mean())
    if den == 0.0:
        return (math.inf if num > 0 else math.nan), count
    return num / den, count


def core_ratio(pred: torch.Tensor, on: torch.Tensor, off: torch.Tensor) -> tuple[float, int]:
    """:func:`expression_ratio` over the feature's core only (CORE_THRESHOLD, no dilation)."""
    return expression_ratio(pred, on, off, CORE_THRESHOLD, 0)


def feature_crop(pred: torch.Tensor, on: torch.Tensor, off: torch.Tensor, height: int = 96,
                 pad: int = 3) -> np.ndarray | None:
    """(h, 3w, 3) float image: truth | avatar | truth without the feature, cropped to the
    feature region's bounding box (+ ``pad`` pixels) and enlarged (nearest) to about ``height``
    pixels; None when the feature changes no pixel."""
    region = feature_region(on, off)
    if not region.any():
        return None
    rows, cols = np.nonzero(region)
    r0, r1 = max(rows.min() - pad, 0), min(rows.max() + pad + 1, region.shape[0])
    c0, c1 = max(cols.min() - pad, 0), min(cols.max() + pad + 1, region.shape[1])
    k = max(1, height // (r1 - r0))
    crops = [x[r0:r1, c0:c1].float().cpu().numpy().repeat(k, 0).repeat(k, 1) for x in (on, pred, off)]
    return np.concatenate(crops, axis=1)


class SyntheticTruth:
    """Re-renders the procedural head of a capture written by ``npga synth``.

    Reads ``groundtruth/groundtruth.json`` (identity seed, per-frame expression and pose) and
    ``synthetic_capture.json`` (samples per pixel, lighting) of the participant folder.
    """

    def __init__(self, participant_dir: str | Path):
        from npga_taichi.data import synthetic as syn
        from npga_taichi.data.head_render import Lighting

        pdir = Path(participant_dir)
        gt_path = pdir / "groundtruth" / "groundtruth.json"
        cfg_path = pdir / "synthetic_capture.json"
        for path in (gt_path, cfg_path):
            if not path.is_file():
                raise FileNotFoundError(f"not a synthetic capture: {path} is missing")
        try:
            self.plan = json.loads(gt_path.read_text())
            self.config = json.loads(cfg_path.read_text())
            names = list(self.plan["expression_names"])
            self.head = syn.SyntheticHead(np.asarray(self.plan["identity"], np.float32))
            self.scale = float(self.plan["scale"])
            self.lighting = Lighting(**self.config["lighting"])
            self.samples_per_side = int(self.config["samples_per_side"])
            # the writer renders all cameras in one call, in calibration order; a camera's sample
            # jitter depends on its index there
            calib = json.loads((pdir / "calibration" / "camera_params.json").read_text())
            self.camera_order = [str(s) for s in calib["world_2_cam"]]
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{gt_path} / {cfg_path}: malformed synthetic ground truth ({err})") from None
        if names != list(syn.EXPRESSION_NAMES):
            raise ValueError(f"{gt_path}: expression names {names} differ from this generator's "
                             f"{list(syn.EXPRESSION_NAMES)}")
        self.index = {n: i for i, n in enumerate(names)}

    @classmethod
    def find(cls, participant_dir: str | Path) -> "SyntheticTruth | None":
        """The truth of a synthetic capture, or None for any other capture (e.g. a real one)."""
        pdir = Path(participant_dir)
        if not (pdir / "groundtruth" / "groundtruth.json").is_file() or not (pdir / "synthetic_capture.json").is_file():
            return None
        return cls(pdir)

    def _frame(self, sequence: str, timestep: int) -> tuple[dict, int]:
        seqs = self.plan.get("sequences", {})
        if sequence not in seqs:
            raise ValueError(f"sequence {sequence!r} is not in the synthetic ground truth ({sorted(seqs)})")
        seq = seqs[sequence]
        steps = list(seq["timesteps"])
        if int(timestep) not in steps:
            raise ValueError(f"timestep {timestep} is not in the ground truth of {sequence}")
        return seq, steps.index(int(timestep))

    def expression(self, sequence: str, timestep: int) -> np.ndarray:
        """(E,) float32 true expression parameters of a frame."""
        seq, k = self._frame(sequence, timestep)
        return np.asarray(seq["expression"][k], np.float32)

    def active_features(self, sequence: str, timestep: int) -> list[str]:
        """Features (keys of FEATURES) with a parameter above ACTIVE in this frame."""
        e = self.expression(sequence, timestep)
        return [f for f, names in FEATURES.items() if max(e[self.index[n]] for n in names) > ACTIVE]

    def without(self, expression: np.ndarray, feature: str) -> np.ndarray:
        """A copy of ``expression`` with the feature's parameters set to 0."""
        e = np.array(expression, np.float32, copy=True)
        for name in FEATURES[feature]:
            e[self.index[name]] = 0.0
        return e

    def render(self, sequence: str, timestep: int, camera, expression: np.ndarray, seed: int | None = None):
        """(rgb (H, W, 3), alpha (H, W, 1)) float32 of the head with the frame's pose and sample
        seed, seen by ``camera`` (a Camera of the capture at its stored resolution, whose serial
        names it in the calibration), over the capture's backdrop - exactly how the capture
        writer rendered that frame. Another ``seed`` draws other sample jitter (the renderer's
        own noise, e.g. to measure what no avatar can reproduce)."""
        from npga_taichi.data.head_render import render_head

        seq, k = self._frame(sequence, timestep)
        if str(camera.serial) not in self.camera_order:
            raise ValueError(f"camera {camera.serial!r} is not in the capture's calibration ({self.camera_order})")
        vm = torch.as_tensor(camera.viewmat, dtype=torch.float32)[None]
        K = torch.as_tensor(camera.K, dtype=torch.float32)[None]
        rgba, _, _ = render_head(self.head, expression, vm, K, int(camera.width), int(camera.height),
                                 rotation=seq["rotation"][k], translation=seq["translation"][k], scale=self.scale,
                                 samples_per_side=self.samples_per_side, lighting=self.lighting,
                                 seed=int(timestep) if seed is None else int(seed),
                                 first_camera=self.camera_order.index(str(camera.serial)))
        return rgba[0, ..., :3], rgba[0, ..., 3:]

    def feature_truths(self, sequence: str, timestep: int, camera, size: tuple[int, int],
                       background: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Feature -> (on, off) (H, W, 3) truths at ``size``, composited over ``background`` (3,)
        with their own mattes, for every feature active in this frame (empty when none is)."""
        features = self.active_features(sequence, timestep)
        if not features:
            return {}
        e = self.expression(sequence, timestep)
        on = self.composited(sequence, timestep, camera, size, background, e)
        return {f: (on, self.composited(sequence, timestep, camera, size, background, self.without(e, f)))
                for f in features}

    def composited(self, sequence: str, timestep: int, camera, size: tuple[int, int],
                   background: torch.Tensor, expression: np.ndarray, seed: int | None = None) -> torch.Tensor:
        """(H, W, 3) :meth:`render` at ``size`` composited over ``background`` (3,) with its own matte."""
        rgb, alpha = self.render(sequence, timestep, camera, expression, seed)
        rgb, alpha = rgb.cpu(), alpha.cpu()
        backdrop = torch.as_tensor(self.lighting.background, dtype=torch.float32)
        premultiplied = rgb - (1.0 - alpha) * backdrop  # the writer composited over the backdrop
        bg = torch.as_tensor(background, dtype=torch.float32).cpu()
        return resize_area(premultiplied + (1.0 - alpha) * bg, size).clamp(0, 1)


def summarise_ratios(values: list[tuple[float, int]]) -> dict:
    """{"median_ratio", "num_images", "mean_region_pixels"} of (ratio, region pixels) pairs
    (nan ratios - the feature not visible in that view - are left out)."""
    finite = [(r, n) for r, n in values if not math.isnan(r)]
    return {
        "median_ratio": float(np.median([r for r, _ in finite])) if finite else None,
        "num_images": len(finite),
        "mean_region_pixels": float(np.mean([n for _, n in finite])) if finite else None,
    }
