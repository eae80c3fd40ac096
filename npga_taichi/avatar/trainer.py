"""Training loop of an NPGA avatar: data sampling, losses, Adam, ADC, validation, checkpoints.

Run directory layout (everything a later ``npga render / eval / export`` needs)::

    RUN/config.json                 AvatarConfig + TrainConfig + extra (data root, participant, inputs)
    RUN/checkpoints/step_<k>.pt     full training state at step k (the last few are kept)
    RUN/checkpoints/latest.pt       the newest of them (written atomically)
    RUN/val/step_<k>.png            held-out views: rendered | ground truth, one row per view
    RUN/log.jsonl                   one JSON record per log interval / validation / ADC pass
    RUN/summary.json                final numbers (steps, wall time, steps/s, PSNRs, counts)
    RUN/curve.png                   held-out PSNR against wall time and step (redrawn at each validation)

A checkpoint holds the avatar as configs + state dict (:func:`~npga_taichi.avatar.model.avatar_state`,
any Gaussian count), the Adam state, the ADC gradient statistics, the step, the skipped-step
count, and the torch / numpy / python RNG states plus the view sampler's state, all as tensors and
plain values (loaded with ``weights_only=True``): ``resume`` continues exactly where the run
stopped, and cuts ``log.jsonl`` back to the checkpoint's step.

A step whose loss or gradients are not finite changes nothing (no Adam update, no ADC
statistics); it is counted in ``skipped_steps`` and reported in the log and summary.
"""
from __future__ import annotations

import json
import os
import random
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F_nn
from tqdm import tqdm

from npga_taichi import metrics
from npga_taichi.avatar.config import AvatarConfig, TrainConfig, configs_to_json
from npga_taichi.avatar.deformation import FrameCode
from npga_taichi.avatar.density_control import GradientStats, densify_and_prune, reset_opacity
from npga_taichi.avatar.model import (NPGAAvatar, avatar_from_state, avatar_state, get_rasterizer,
                                     render_frame, render_posed)
from npga_taichi.avatar.distributed import DistContext, all_reduce_sum, check_replicas
from npga_taichi.cameras import Camera
from npga_taichi.training_curve import plot_runs
from npga_taichi.checkpoint import load_checkpoint, save_checkpoint, write_text_atomic

CHECKPOINT_FORMAT = "npga-avatar-train-v2"
# Loss terms a training step reports (summed over views and ranks, each divided by the view count).
STEP_TERMS = ("loss", "mse", "l1", "dssim", "lap_latent", "lap_dynamics", "detail_l2", "silhouette", "nonfinite")
IMAGE_CACHE_ENTRIES = 4096  # decoded training images kept in memory (uint8)


# ------------------------------------------------------------------------------------------ data
@dataclass(frozen=True)
class View:
    """One training / validation sample: a frame of a sequence seen by one camera."""

    sequence: str
    frame_index: int   # row in the sequence's tracking arrays
    timestep: int      # capture timestep (folder frame_<t>)
    serial: str


def frame_code(tracking: Any, index: int) -> FrameCode:
    """FrameCode of row ``index`` of a Tracking (scale per sequence or per frame)."""
    scale = np.asarray(tracking.scale, dtype=np.float64).reshape(-1)
    s = float(scale[index] if scale.size > 1 else scale[0])
    def row(name: str) -> torch.Tensor | None:  # a measurement the track may not have
        values = getattr(tracking, name, None)
        return None if values is None else torch.as_tensor(np.asarray(values[index]), dtype=torch.float32)

    return FrameCode(torch.as_tensor(np.asarray(tracking.z_exp[index]), dtype=torch.float32).reshape(-1),
                     torch.as_tensor(np.asarray(tracking.rot[index]), dtype=torch.float32),
                     torch.as_tensor(np.asarray(tracking.trans[index]), dtype=torch.float32), s,
                     row("eye_closure"), row("part_motion"))


class AvatarData:
    """Views, frame codes and (cached, composited) target images of one capture.

    capture: a NersembleCapture (cameras, load_image, load_alpha); trackings: sequence ->
    Tracking; train/val views are lists of :class:`View`. Targets are composited onto
    ``background`` and downscaled by ``image_scale``; cameras follow the same scale.
    """

    def __init__(self, capture: Any, trackings: dict[str, Any], train_views: list[View],
                 val_views: list[View], background: tuple[float, float, float], image_scale: float = 1.0,
                 device: torch.device | str = "cpu"):
        if not train_views:
            raise ValueError("no training views: check the sequences, cameras and tracking files")
        self.capture, self.trackings = capture, trackings
        self.train_views, self.val_views = train_views, val_views
        self.background = torch.tensor(background, dtype=torch.float32, device=device)
        self.image_scale, self.device = image_scale, torch.device(device)
        self._cache: dict[View, tuple[torch.Tensor, torch.Tensor]] = {}
        self._regions: dict[View, torch.Tensor | None] = {}
        self._cameras: dict[str, Camera] = {}

    def camera(self, serial: str) -> Camera:
        """The capture camera ``serial`` at the training resolution, on the training device."""
        if serial not in self._cameras:
            self._cameras[serial] = self.capture.cameras[serial].scaled(self.image_scale).to(
                self.device, torch.float32)
        return self._cameras[serial]

    def frames(self) -> list[list[View]]:
        """Training views grouped by frame (sequence, frame index), in view order."""
        if not hasattr(self, "_frames"):
            groups: dict[tuple[str, int], list[View]] = {}
            for view in self.train_views:
                groups.setdefault((view.sequence, view.frame_index), []).append(view)
            self._frames = list(groups.values())
        return self._frames

    def frame(self, view: View) -> FrameCode:
        return frame_code(self.trackings[view.sequence], view.frame_index).to(self.device)

    def _eye_closed(self, view: View) -> bool:
        closure = getattr(self.trackings[view.sequence], "eye_closure", None)
        return closure is not None and float(np.max(closure[view.frame_index])) > 0.5

    def closed_eye_views(self) -> list[int]:
        """Indices into ``train_views`` whose frame has an eye closure > 0.5 ([] without closure)."""
        if not hasattr(self, "_closed_views"):
            self._closed_views = [k for k, view in enumerate(self.train_views) if self._eye_closed(view)]
        return self._closed_views

    def closed_eye_frames(self) -> list[int]:
        """Indices into :meth:`frames` of the frames with an eye closure > 0.5."""
        if not hasattr(self, "_closed_frames"):
            self._closed_frames = [k for k, group in enumerate(self.frames()) if self._eye_closed(group[0])]
        return self._closed_frames

    def pixel_weight(self, view: View, region_weight: float) -> torch.Tensor | None:
        """(H, W, 1) L1 weight: ``region_weight`` on the eye and mouth pixels of the view's label
        map (:data:`npga_taichi.fidelity.REGIONS`, area-resampled), 1 elsewhere; None when the
        capture has no label map for the view or the weight is 1."""
        if region_weight == 1.0:
            return None
        if view not in self._regions:
            from npga_taichi.fidelity import label_path, load_labels, region_weights

            frame_dir = getattr(self.capture, "frame_dir", None)  # in-memory captures have no files
            path = None if frame_dir is None else label_path(frame_dir(view.sequence, view.timestep), view.serial)
            mask = None
            if path is not None and path.is_file():
                cam = self.camera(view.serial)
                regions = region_weights(load_labels(path), (cam.height, cam.width))
                mask = (sum(regions.values()).clamp(0, 1) * 255).round().to(torch.uint8)
            if len(self._regions) < IMAGE_CACHE_ENTRIES:
                self._regions[view] = mask
        else:
            mask = self._regions[view]
        if mask is None:
            return None
        return 1.0 + (region_weight - 1.0) * mask.to(self.device, torch.float32) / 255

    def target(self, view: View) -> tuple[torch.Tensor, torch.Tensor]:
        """(image (H, W, 3) composited on the background, alpha (H, W, 1)), float32 in [0, 1]."""
        if view not in self._cache:
            img = torch.as_tensor(np.asarray(self.capture.load_image(view.sequence, view.timestep, view.serial)),
                                  dtype=torch.float32)
            matte = self.capture.load_alpha(view.sequence, view.timestep, view.serial)
            # Captures without mattes (NeRSemble v2) count every pixel as foreground.
            alpha = (torch.ones(img.shape[:2] + (1,)) if matte is None
                     else torch.as_tensor(np.asarray(matte), dtype=torch.float32))
            if alpha.dim() == 2:
                alpha = alpha[..., None]
            cam = self.camera(view.serial)
            if img.shape[:2] != (cam.height, cam.width):
                # Area averaging = the box filter of a lower-resolution sensor.
                img = F_nn.interpolate(img.permute(2, 0, 1)[None], size=(cam.height, cam.width),
                                       mode="area")[0].permute(1, 2, 0)
                alpha = F_nn.interpolate(alpha.permute(2, 0, 1)[None], size=(cam.height, cam.width),
                                         mode="area")[0].permute(1, 2, 0)
            entry = ((img * 255).round().clamp(0, 255).to(torch.uint8),
                     (alpha * 255).round().clamp(0, 255).to(torch.uint8))
            if len(self._cache) < IMAGE_CACHE_ENTRIES:
                self._cache[view] = entry
        else:
            entry = self._cache[view]
        img = entry[0].to(self.device, torch.float32) / 255
        alpha = entry[1].to(self.device, torch.float32) / 255
        bg = self.background.to(img)
        return img * alpha + bg * (1 - alpha), alpha


def build_views(capture: Any, trackings: dict[str, Any], sequences: list[str], serials: list[str],
                frame_stride: int = 1) -> list[View]:
    """Every (tracked frame, camera) pair of ``sequences`` x ``serials`` (every stride-th frame)."""
    views = []
    for seq in sequences:
        if seq not in trackings:
            continue
        timesteps = np.asarray(trackings[seq].timesteps).reshape(-1)
        for i in range(0, len(timesteps), frame_stride):
            for serial in serials:
                views.append(View(seq, i, int(timesteps[i]), serial))
    return views


# ---------------------------------------------------------------------------------- optimiser
def build_optimizer(avatar: NPGAAvatar, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam with one named group per parameter kind (learning rates from ``cfg``)."""
    g = avatar.gaussians
    groups = [
        {"name": "means", "params": [g.means], "lr": cfg.lr_means},
        {"name": "quats", "params": [g.quats], "lr": cfg.lr_quats},
        {"name": "log_scales", "params": [g.log_scales], "lr": cfg.lr_scales},
        {"name": "opacity_logits", "params": [g.opacity_logits], "lr": cfg.lr_opacities},
        {"name": "colors", "params": [g.colors], "lr": cfg.lr_colors},
    ]
    if "sh_rest" in g.names:
        groups.append({"name": "sh_rest", "params": [g.sh_rest], "lr": cfg.lr_sh_rest})
    if "latents" in g.names:
        groups.append({"name": "latents", "params": [g.latents], "lr": cfg.lr_latents})
    if "closure_colors" in g.names:
        groups.append({"name": "closure_colors", "params": [g.closure_colors], "lr": cfg.lr_colors})
        groups.append({"name": "closure_opacity", "params": [g.closure_opacity], "lr": cfg.lr_opacities})
    if avatar.field is not None:
        lr = cfg.lr_field if avatar.config.use_prior_field else cfg.lr_scratch_field
        groups.append({"name": "field", "params": list(avatar.field.parameters()), "lr": lr})
    if avatar.detail is not None:
        groups.append({"name": "detail", "params": list(avatar.detail.parameters()), "lr": cfg.lr_detail})
    if avatar.cnn is not None:
        groups.append({"name": "cnn", "params": list(avatar.cnn.parameters()), "lr": cfg.lr_cnn})
    for group in groups:
        group["base_lr"] = group["lr"]
    # eps 1e-15 as in 3DGS: tiny per-Gaussian gradients must still move their parameters.
    return torch.optim.Adam(groups, lr=0.0, eps=1e-15)


# Final LR as a fraction of the initial one (log-linear decay over the schedule).
LR_FINAL_FRACTION = {"means": 0.01, "field": 0.1, "detail": 0.1, "cnn": 0.1}


def learning_rate(group: dict, step: int, total: int) -> float:
    """Stateless schedule: base_lr * final_fraction ** (step / total) (constant for the rest)."""
    frac = LR_FINAL_FRACTION.get(group["name"], 1.0)
    return group["base_lr"] * frac ** min(step / max(total, 1), 1.0)


# --------------------------------------------------------------------------------------- losses
def photometric_loss(pred: torch.Tensor, target: torch.Tensor, alpha: torch.Tensor,
                     cfg: TrainConfig, weight: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L1 (optionally alpha-masked, optionally a weighted mean with ``weight`` (H, W, 1)) +
    lambda * D-SSIM on (H, W, 3) images; parts detached (tensors, so logging them costs no host
    synchronisation)."""
    mask = alpha if cfg.mask_loss else None
    if weight is not None:
        mask = weight if mask is None else mask * weight
    l1 = metrics.l1_loss(pred, target, mask)
    dssim = metrics.dssim_loss(pred, target) if cfg.lambda_dssim > 0 else pred.new_zeros(())
    return l1 + cfg.lambda_dssim * dssim, {"l1": l1.detach(), "dssim": dssim.detach()}


def regularizers(avatar: NPGAAvatar, posed, raster_alpha: torch.Tensor, alpha: torch.Tensor,
                 cfg: TrainConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Laplacians (latents, dynamics), G offset L2, silhouette L1; returns total and (detached) parts."""
    total = raster_alpha.new_zeros(())
    parts: dict[str, torch.Tensor] = {}
    if cfg.use_laplacian and avatar.neighbors.shape[0] == len(avatar.gaussians):
        if "latents" in avatar.gaussians.names and cfg.lambda_lap_latent > 0:
            lap = avatar.graph_laplacian.loss(avatar.gaussians.latents)
            total = total + cfg.lambda_lap_latent * lap
            parts["lap_latent"] = lap.detach()
        if posed.dynamics is not None and cfg.lambda_lap_dynamics > 0:
            lap = avatar.graph_laplacian.loss(posed.dynamics)
            total = total + cfg.lambda_lap_dynamics * lap
            parts["lap_dynamics"] = lap.detach()
    if posed.detail is not None and cfg.lambda_detail_l2 > 0:
        l2 = posed.detail["d_means"].pow(2).sum(-1).mean()
        total = total + cfg.lambda_detail_l2 * l2
        parts["detail_l2"] = l2.detach()
    if cfg.lambda_alpha > 0:
        sil = (raster_alpha - alpha).abs().mean()
        total = total + cfg.lambda_alpha * sil
        parts["silhouette"] = sil.detach()
    return total, parts


# -------------------------------------------------------------------------------------- trainer
def _or_closed(sampler: np.random.Generator, share: float, index, closed: list[int]) -> int:
    """``index``, or with probability ``share`` a random entry of ``closed`` (none when empty)."""
    if closed and sampler.random() < share:
        return closed[int(sampler.integers(0, len(closed)))]
    return int(index)


def _nonfinite_grads(params, device) -> torch.Tensor:
    """1.0 when any gradient holds NaN or Inf, else 0.0, as a float64 tensor on ``device`` (a
    tensor, so the check joins the step's one host synchronisation)."""
    flags = [(~torch.isfinite(p.grad)).any() for p in params if p.grad is not None]
    if not flags:
        return torch.zeros((), dtype=torch.float64, device=device)
    return torch.stack(flags).any().to(device, torch.float64)


def _posed_finite(posed) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in
               (posed.means, posed.quats, posed.scales, posed.opacities, posed.colors))


class Trainer:
    """Owns one run directory; ``train()`` runs (or continues) the schedule.

    avatar: an initialised NPGAAvatar (ignored when resuming: the checkpoint's is used);
    data: the AvatarData; rasterizer: rasterize function (default: ours).
    """

    def __init__(self, run_dir: str | os.PathLike, avatar: NPGAAvatar | None, data: AvatarData,
                 avatar_cfg: AvatarConfig, train_cfg: TrainConfig, extra: dict | None = None,
                 resume: bool = False, rasterizer: Callable | None = None, progress: bool = True,
                 dist: DistContext | None = None):
        self.dist = dist or DistContext(device=data.device)
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.data, self.cfg, self.avatar_cfg = data, train_cfg.validate(), avatar_cfg
        self.rasterize = rasterizer or get_rasterizer()
        self.progress = progress and self.dist.is_main
        self.device = data.device
        self.extra = extra or {}
        if train_cfg.num_threads > 0:
            torch.set_num_threads(train_cfg.num_threads)
        latest = self.ckpt_dir / "latest.pt"
        # A process killed while writing leaves only its temporaries behind (".step_*.pt.*.tmp.pt",
        # ".latest.*.tmp"): every dot-file with ".tmp" in its name here is one of ours.
        for stale in self.ckpt_dir.glob(".*.tmp*") if self.ckpt_dir.is_dir() and self.dist.is_main else ():
            stale.unlink(missing_ok=True)
        if resume:
            if not latest.is_file():
                raise ValueError(f"--resume: no checkpoint to resume from in {self.ckpt_dir} "
                                 "(start the run without --resume)")
            self._load(latest)
            if self.dist.is_main:
                self._truncate_log(self.step)
        else:
            if avatar is None:
                raise ValueError("no avatar given and nothing to resume in " + str(self.run_dir))
            self.avatar = avatar.to(self.device)
            if self.avatar.neighbors.shape[0] != len(self.avatar.gaussians):
                self.avatar.rebuild_graph()
            self.optimizer = build_optimizer(self.avatar, self.cfg)
            self.stats = GradientStats(len(self.avatar.gaussians), self.device)
            self.step = 0
            self.skipped_steps = 0
            self.elapsed = 0.0
            self._seed_everything(self.cfg.seed)
            if self.dist.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                write_text_atomic(configs_to_json(avatar_cfg, train_cfg, self.extra), self.run_dir / "config.json")
        self.timings: dict[str, float] = {}

    # ----------------------------------------------------------------------------- state
    def _seed_everything(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.sampler = np.random.Generator(np.random.PCG64(seed))

    def state(self) -> dict:
        """The training state as tensors and plain values (see the module docstring)."""
        np_state = np.random.get_state()
        return {
            "format": CHECKPOINT_FORMAT,
            "avatar": avatar_state(self.avatar),
            "optimizer": self.optimizer.state_dict(),
            "stats": self.stats.state_dict(),
            "step": self.step,
            "skipped_steps": self.skipped_steps,
            "elapsed": self.elapsed,
            # numpy's legacy state as (name, key tensor, pos, has_gauss, cached_gaussian).
            "rng": {"torch": torch.get_rng_state(),
                    "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                              *[float(x) if isinstance(x, float) else int(x) for x in np_state[2:]]],
                    "python": random.getstate(), "sampler": self.sampler.bit_generator.state},
        }

    def _load(self, path: Path) -> None:
        state = load_checkpoint(path, map_location=self.device,
                                required_keys=("format", "avatar", "optimizer", "stats", "step", "rng"))
        if state["format"] != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not an avatar training checkpoint (format {state['format']!r})")
        self.avatar = avatar_from_state(state["avatar"], path, self.device)
        self.optimizer = build_optimizer(self.avatar, self.cfg)
        self.optimizer.load_state_dict(state["optimizer"])
        self.stats = GradientStats(len(self.avatar.gaussians), self.device)
        self.stats.load_state_dict(state["stats"])
        self.step = int(state["step"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.elapsed = float(state.get("elapsed", 0.0))
        rng = state["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        name, key, *rest = rng["numpy"]
        np.random.set_state((name, key.numpy().astype(np.uint32), *rest))
        random.setstate(rng["python"])
        self.sampler = np.random.Generator(np.random.PCG64())
        self.sampler.bit_generator.state = rng["sampler"]

    def save(self) -> Path | None:
        """Write checkpoints/step_<k>.pt and checkpoints/latest.pt (both atomically; rank 0 only)."""
        if not self.dist.is_main:
            return None
        state = self.state()
        path = save_checkpoint(state, self.ckpt_dir / f"step_{self.step:07d}.pt")
        tmp = self.ckpt_dir / f".latest.{secrets.token_hex(8)}.tmp"
        try:
            os.link(path, tmp)             # same bytes, no second serialisation
            os.replace(tmp, self.ckpt_dir / "latest.pt")
        except OSError:
            if tmp.exists():
                tmp.unlink()
            save_checkpoint(state, self.ckpt_dir / "latest.pt")
        numbered = sorted(self.ckpt_dir.glob("step_*.pt"))
        for old in numbered[: max(len(numbered) - self.cfg.keep_checkpoints, 0)]:
            old.unlink()
        return path

    def _truncate_log(self, step: int) -> None:
        """Drop log records written after ``step`` (the steps a killed run did past its last
        checkpoint are run again after resuming and would otherwise appear twice)."""
        log = self.run_dir / "log.jsonl"
        if not log.is_file():
            return
        kept = []
        for line in log.read_text().splitlines():
            try:
                if int(json.loads(line).get("step", 0)) > step:
                    continue
            except (ValueError, AttributeError, TypeError):
                continue  # a line torn by the kill
            kept.append(line + "\n")
        write_text_atomic("".join(kept), log)

    def log(self, record: dict) -> None:
        if not self.dist.is_main:
            return
        with open(self.run_dir / "log.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------------------ step
    def _time(self, key: str, start: float) -> float:
        now = time.perf_counter()
        self.timings[key] = self.timings.get(key, 0.0) + now - start
        return now

    def sample_views(self) -> list[list[View]]:
        """The step's views in frame groups, drawn identically on every rank by the view sampler.

        ``cameras_per_frame`` = 1: views uniformly at random, one group each. Otherwise
        views_per_step / cameras_per_frame frames, each seen by that many distinct training
        cameras (one group: one deformation serves them all). With ``closed_eye_share`` > 0 and
        tracks that carry the eye closure, each draw is replaced by one from the closed-eye
        frames with that probability: blinks are a few % of the frames and < 1 % of the pixels.
        """
        cfg, views = self.cfg, self.data.train_views
        if cfg.cameras_per_frame == 1:
            closed = self.data.closed_eye_views() if cfg.closed_eye_share > 0 else []
            return [[views[_or_closed(self.sampler, cfg.closed_eye_share, i, closed)]]
                    for i in self.sampler.integers(0, len(views), size=cfg.views_per_step)]
        frames = self.data.frames()
        closed = self.data.closed_eye_frames() if cfg.closed_eye_share > 0 else []
        groups = []
        for i in self.sampler.integers(0, len(frames), size=cfg.views_per_step // cfg.cameras_per_frame):
            frame_views = frames[_or_closed(self.sampler, cfg.closed_eye_share, i, closed)]
            take = self.sampler.choice(len(frame_views), size=min(cfg.cameras_per_frame, len(frame_views)),
                                       replace=False)
            groups.append([frame_views[int(j)] for j in take])
        return groups

    def detail_code_noise(self, count: int) -> list[torch.Tensor | None]:
        """Noise on G's z_exp for each of the step's ``count`` frame groups (Nones when off).

        Drawn from the view sampler on every rank alike, like the views: any number of ranks
        takes the step one process would, and a resumed run continues the same stream."""
        std = self.cfg.detail_code_noise
        if std == 0 or not self.avatar.detail_sees_code:
            return [None] * count
        draws = torch.from_numpy(self.sampler.standard_normal((count, self.avatar.exp_dim))).float()
        return list((std * draws).to(self.device).unbind(0))

    def train_step(self) -> dict[str, Any]:
        """One optimisation step over ``views_per_step`` training views (this rank's share of them).

        Each view's loss is divided by the step's total view count; gradients, ADC statistics and
        loss terms are summed over ranks in one collective (see :mod:`.distributed`), so any
        number of ranks takes the step a single process would (ranks take whole frame groups).
        """
        cfg, avatar, dist_ctx = self.cfg, self.avatar, self.dist
        self.optimizer.zero_grad(set_to_none=True)
        record: dict[str, Any] = {"step": self.step + 1}
        all_groups = self.sample_views()
        total = sum(len(g) for g in all_groups)
        share = dist_ctx.share(len(all_groups))
        groups = all_groups[share]
        code_noise = self.detail_code_noise(len(all_groups))[share]
        n = len(avatar.gaussians)
        grad_sum = torch.zeros(n, dtype=torch.float64, device=self.device)
        grad_count = torch.zeros(n, dtype=torch.float64, device=self.device)
        terms: dict[str, torch.Tensor] = {}
        collect_stats = self.step + 1 < cfg.densify_until
        for group, noise in zip(groups, code_noise):
            t0 = time.perf_counter()
            posed = avatar.deform(self.data.frame(group[0]), noise)
            t0 = self._time("deform_forward", t0)
            if not _posed_finite(posed):  # the rasterizer rejects non-finite input: skip the step
                terms["nonfinite"] = terms.get("nonfinite", 0.0) + 1.0
                break
            loss = posed.means.new_zeros(())
            rendered_views = []
            for view in group:
                t0 = time.perf_counter()
                target, alpha = self.data.target(view)
                camera = self.data.camera(view.serial)
                t0 = self._time("data", t0)
                rendered = render_posed(avatar, posed, camera, self.data.background, self.rasterize)
                t0 = self._time("raster_forward", t0)
                photo, parts = photometric_loss(rendered.image, target, alpha, cfg,
                                                self.data.pixel_weight(view, cfg.region_weight))
                reg, reg_parts = regularizers(avatar, posed, rendered.raster.alpha, alpha, cfg)
                loss = loss + (photo + reg) / total
                for k, v in {**parts, **reg_parts, "mse": metrics.mse(rendered.image.detach(), target)}.items():
                    terms[k] = terms.get(k, 0.0) + v.detach().to(torch.float64) / total
                self._time("losses", t0)
                rendered_views.append((rendered.raster, camera))
            t0 = time.perf_counter()
            loss.backward()
            self._time("backward", t0)
            terms["loss"] = terms.get("loss", 0.0) + loss.detach().to(torch.float64)
            for raster, camera in rendered_views:
                if collect_stats and raster.means2d.grad is not None:
                    # means2d.grad carries the 1/total loss weight: undo it (3DGS's per-view norm).
                    d_sum, d_count = GradientStats.increments(raster.means2d.grad * total, raster.radii,
                                                              camera.width, camera.height)
                    grad_sum += d_sum
                    grad_count += d_count
        t0 = time.perf_counter()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        # Every rank sends every term (absent ones as 0 with a presence flag), so the buffers match
        # even when a rank stopped early at a non-finite frame.
        values_local = [torch.as_tensor(terms.get(k, 0.0), dtype=torch.float64, device=self.device)
                        for k in STEP_TERMS]
        present = torch.tensor([k in terms for k in STEP_TERMS], dtype=torch.float64, device=self.device)
        scalars = torch.cat([torch.stack(values_local), present])
        names = STEP_TERMS
        if dist_ctx.active:
            # Two collectives per step. The gradients and which parameters have one (Adam skips a
            # parameter without a gradient, but would step a zero one with its momentum) in their
            # own float32: two ranks' sum is the correctly rounded one a single process adds up,
            # in half the bytes of float64 (6 vs 10 ms for 850k values, gloo). The ADC statistics
            # and loss terms in float64, as one process accumulates them (a NaN on any rank stays
            # NaN in the sum).
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=self.device)
            flat = all_reduce_sum(dist_ctx, torch.cat([g.reshape(-1).float() for g in grads] + [has_grad]))
            offset = 0
            for p, g, used in zip(params, grads, (flat[-len(params):] > 0).tolist()):
                p.grad = flat[offset:offset + g.numel()].view_as(g).to(g.dtype) if used else None
                offset += g.numel()
            rest = all_reduce_sum(dist_ctx, torch.cat([grad_sum, grad_count, scalars]))
            grad_sum, grad_count, scalars = rest[:n], rest[n:2 * n], rest[2 * n:]
        # The step's one host synchronisation (besides the per-frame check of the deformation).
        reduced = torch.cat([scalars, _nonfinite_grads(params, self.device).reshape(1)]).tolist()
        values = {k: v for k, v, here in zip(names, reduced, reduced[len(names):2 * len(names)]) if here > 0}
        finite = (reduced[-1] == 0 and values.pop("nonfinite", 0.0) == 0
                  and all(np.isfinite(v) for v in values.values()))
        self._time("sync", t0)
        if not finite:
            # Nothing of this step reaches the parameters, the Adam moments or the ADC statistics.
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            self.step += 1
            record.update(skipped=True, skipped_steps=self.skipped_steps)
            return record
        t0 = time.perf_counter()
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(group, self.step, cfg.steps)
        self.optimizer.step()
        t0 = self._time("optimizer", t0)
        self.step += 1
        if collect_stats:
            self.stats.add(grad_sum, grad_count)
        self._density_control(record)
        self._time("adc", t0)
        mse = values.pop("mse")
        record.update({k: v for k, v in values.items() if k != "loss"})
        record.update(loss=values["loss"], psnr=metrics.psnr_from_mse(mse), gaussians=len(avatar.gaussians))
        return record

    def _density_control(self, record: dict) -> None:
        cfg, step = self.cfg, self.step
        if step >= cfg.densify_until:
            return
        if step > cfg.densify_from and step % cfg.densify_interval == 0:
            result = densify_and_prune(
                self.avatar.gaussians, self.optimizer, self.stats, grad_threshold=cfg.densify_grad_threshold,
                extent=self.avatar.extent, percent_dense=cfg.percent_dense, prune_opacity=cfg.prune_opacity,
                max_scale_frac=cfg.prune_max_scale_frac, max_gaussians=self.avatar_cfg.max_gaussians)
            self.stats.reset()
            self.avatar.rebuild_graph()
            record["adc"] = asdict(result)
            check_replicas(self.dist, self.checksum(), f"the densification of step {step}")
        if cfg.opacity_reset_interval > 0 and step % cfg.opacity_reset_interval == 0:
            reset_opacity(self.avatar.gaussians, self.optimizer)
            record["opacity_reset"] = True

    def checksum(self) -> torch.Tensor:
        """A few numbers that differ when two ranks' Gaussians do (count, sums of every parameter)."""
        g = self.avatar.gaussians
        return torch.stack([torch.tensor(float(len(g)), dtype=torch.float64)]
                           + [p.detach().to(torch.float64).sum().cpu() for p in g.per_gaussian().values()])

    # ------------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self, write_image: bool = True) -> dict[str, float]:
        """Masked / full PSNR on the validation views; writes RUN/val/step_<k>.png."""
        views = self.data.val_views
        if not views or not self.dist.is_main:
            return {}
        rows, psnrs, masked = [], [], []
        for view in views:
            target, alpha = self.data.target(view)
            out = render_frame(self.avatar, self.data.camera(view.serial), self.data.frame(view),
                               self.data.background, self.rasterize)
            pred = out.image.clamp(0, 1)
            psnrs.append(float(metrics.psnr(pred, target)))
            if float(alpha.sum()) > 0:
                masked.append(float(metrics.masked_psnr(pred, target, alpha)))
            rows.append(torch.cat([pred, target], dim=1))
        if write_image:
            width = max(r.shape[1] for r in rows)
            rows = [F_nn.pad(r, (0, 0, 0, width - r.shape[1])) for r in rows]
            grid = (torch.cat(rows, dim=0).cpu().numpy() * 255).round().astype(np.uint8)
            (self.run_dir / "val").mkdir(parents=True, exist_ok=True)
            iio.imwrite(self.run_dir / "val" / f"step_{self.step:07d}.png", grid)
        return {"val_psnr": float(np.mean(psnrs)),
                "val_masked_psnr": float(np.mean(masked)) if masked else float("nan")}

    # ------------------------------------------------------------------------------ loop
    def train(self, stop_at: int | None = None) -> dict[str, Any]:
        """Run until the schedule ends (or ``stop_at`` steps, for tests); return the summary."""
        cfg = self.cfg
        end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not self.progress, desc="fit",
                   dynamic_ncols=True)
        start_step, t_start = self.step, time.perf_counter()
        last: dict[str, Any] = {}
        recent_psnr: list[float] = []
        val: dict[str, float] = {}
        try:
            while self.step < end:
                t_step = time.perf_counter()
                record = self.train_step()
                self.elapsed += time.perf_counter() - t_step
                bar.update(1)
                if "psnr" in record:
                    recent_psnr = (recent_psnr + [record["psnr"]])[-50:]
                    bar.set_postfix(loss=f"{record['loss']:.4f}", psnr=f"{np.mean(recent_psnr):.2f}",
                                    n=record["gaussians"], skipped=self.skipped_steps)
                last = record
                if self.step % cfg.val_interval == 0 or self.step == cfg.steps:
                    val = self.validate()
                    record.update(val)
                if (self.step % cfg.log_interval == 0 or "adc" in record or record.get("skipped")
                        or "val_psnr" in record):
                    self.log({**record, "elapsed": round(self.elapsed, 3)})
                if "val_psnr" in record and self.dist.is_main:
                    plot_runs({self.run_dir.name: self.run_dir}, self.run_dir / "curve.png",
                              title=f"{self.run_dir}: held-out PSNR")
                if self.step % cfg.checkpoint_interval == 0 or self.step == end:
                    self.save()
        finally:
            bar.close()
        steps_done = self.step - start_step
        wall = time.perf_counter() - t_start
        summary = {
            "step": self.step, "steps_total": cfg.steps, "finished": self.step >= cfg.steps,
            "skipped_steps": self.skipped_steps, "gaussians": len(self.avatar.gaussians),
            "train_time_s": round(self.elapsed, 2),
            "steps_per_s_this_session": round(steps_done / wall, 3) if wall > 0 else None,
            "views_per_s_this_session": round(steps_done * cfg.views_per_step / wall, 3) if wall > 0 else None,
            "ranks": self.dist.world, "rank": self.dist.rank,
            "train_psnr_recent": float(np.mean(recent_psnr)) if recent_psnr else None,
            "last_loss": last.get("loss"), **val,
            "time_breakdown_s": {k: round(v, 3) for k, v in self.timings.items()},
        }
        if self.dist.is_main:
            write_text_atomic(json.dumps(summary, indent=2), self.run_dir / "summary.json")
        return summary


def upgrade_legacy_checkpoint(path: str | os.PathLike, trust: bool = False) -> Path:
    """Rewrite an avatar checkpoint of npga-taichi 0.1 (pickled ``NPGAAvatar`` module, numpy RNG
    state) in the current form (configs + state dict, plain values), in place and atomically.

    Reading the old file *unpickles* it, which can run code: ``trust`` must say that the file
    is the user's own. Returns the path; ValueError naming the file if it is not such a checkpoint.
    """
    path = Path(path)
    if not trust:
        raise ValueError(f"upgrading {path} unpickles it, which runs any code it contains; pass --trust "
                         "only for checkpoints you made yourself")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # corrupt, truncated, or not a torch file
        raise ValueError(f"cannot read {path}: {type(err).__name__}: {err}") from None
    if not isinstance(state, dict) or not isinstance(state.get("avatar"), NPGAAvatar):
        raise ValueError(f"{path} is not an npga-taichi 0.1 avatar checkpoint (no pickled 'avatar')")
    state["avatar"] = avatar_state(state["avatar"])
    if state.get("format") == "npga-avatar-train-v1":
        state["format"] = CHECKPOINT_FORMAT
    rng = state.get("rng", {})
    if isinstance(rng.get("numpy"), tuple):
        name, key, *rest = rng["numpy"]
        rng["numpy"] = [name, torch.from_numpy(np.asarray(key).astype(np.int64)),
                        *[float(x) if isinstance(x, float) else int(x) for x in rest]]
    save_checkpoint(state, path)
    load_checkpoint(path)  # proves the new file loads without unpickling code
    return path
