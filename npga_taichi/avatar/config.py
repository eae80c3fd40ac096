"""Configuration of an NPGA avatar (model) and of its training run (presets: npga_taichi.presets).

Both dataclasses are saved as JSON into every run directory (``RUN/config.json``) and read back
by :func:`npga_taichi.avatar.model.load_avatar`, so a run is fully described by its folder.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from npga_taichi.config_io import DictConfig
from npga_taichi.part_motion import DISPLACED_PARTS


DETAIL_CONDITIONINGS = ("code", "deformation")

@dataclass
class AvatarConfig(DictConfig):
    """What the avatar is: its Gaussians, latent features and networks."""

    SAVED_BEFORE = {"detail_relative_to_rest": False}

    num_init_gaussians: int = 6000      # Gaussians sampled on the prior's zero level set at init
    max_gaussians: int = 16000          # hard cap on the count during densification
    latent_dim: int = 32                # per-Gaussian latent feature f_i (paper: "lifting" input of F and G)
    use_latents: bool = True            # per-Gaussian latent features f_i in F and G (off: the --no-latents ablation)
    sh_degree: int = 3                  # SH degree of view-dependent colour (ignored with use_cnn)
    use_cnn: bool = False               # render features and turn them into RGB with a screen-space CNN
    cnn_feature_dim: int = 16           # rendered feature channels when use_cnn
    cnn_hidden: int = 32                # hidden channels of the screen-space CNN
    cnn_layers: int = 3                 # 3x3 conv layers of the screen-space CNN
    use_detail: bool = True             # the detail network G (off: the --no-detail ablation)
    detail_hidden: int = 128            # hidden width of G
    detail_layers: int = 3              # hidden layers of G
    detail_pos_freqs: int = 4           # sin/cos frequencies of the canonical position fed to G
    detail_conditioning: str = "code"   # what G sees of the expression: "code" = z_exp (the paper's G), "deformation" = F's displacement of each Gaussian (better where the tracked codes carry little but the jaw; README, *What G should see*)
    detail_relative_to_rest: bool = True  # G's output minus G at rest (zero code, open eyes, parts at rest): G carries only what the expression changes, the neutral face stays in the canonical Gaussians (off: an unconstrained G, mostly a correction common to every frame)
    use_prior_field: bool = True        # F distilled from the prior (off, --no-prior: F learned from scratch)
    scratch_field_hidden: int = 128     # hidden width of F when learned from scratch
    scratch_field_layers: int = 4       # hidden layers of F when learned from scratch
    static: bool = False                # the --static ablation: no F, no G, only the rigid head pose moves
    knn_k: int = 8                      # neighbours per Gaussian in the canonical Laplacian graph
    init_opacity: float = 0.1           # opacity of freshly initialised Gaussians
    init_scale_mult: float = 1.0        # initial scale = mult * mean distance to the 3 nearest neighbours
    init_latent_std: float = 0.05       # std of the random initial latents (zero would be a saddle)
    init_surface_band: float = 0.002    # |SDF| tolerance (canonical units, 0.5 mm) for accepted surface samples
    init_neck_extension: float = 0.25   # how far (canonical units; 0.25 = 6 cm) the initial Gaussians reach down the neck below F's distillation box
    init_colors_from_images: bool = True  # initial colours read from the first training frame's images (off: prior albedo)
    exp_dim: int = 0                    # expression code size (filled from the tracking at init)
    use_eye_closure: bool = True        # the blink input: each frame's eye closure (label maps, npga track) into G and per-Gaussian closure blend shapes, when every track has it
    eye_closure_dim: int = 0            # eye-closure inputs: 2 (left, right) or 0 (filled at init)
    use_part_motion: bool = True        # the brows' and mouth corners' motion (label maps, npga track), which the codes barely carry, into G and part_displacement, when every track has it
    part_displacement: str = "brows_corners"  # parts whose measured motion moves their canonical neighbourhood directly: "none", "brows", "brows_corners" (npga_taichi.part_motion)
    part_motion_dim: int = 0            # part-motion inputs: 8 (npga_taichi.part_motion) or 0 (filled at init)

    def validate(self) -> "AvatarConfig":
        """Raise ValueError naming the offending field; return self."""
        if self.num_init_gaussians < 8:
            raise ValueError(f"num_init_gaussians must be >= 8, got {self.num_init_gaussians}")
        if self.max_gaussians < self.num_init_gaussians:
            raise ValueError(f"max_gaussians ({self.max_gaussians}) must be >= num_init_gaussians "
                             f"({self.num_init_gaussians})")
        if not 0 <= self.sh_degree <= 3:
            raise ValueError(f"sh_degree must be in 0..3, got {self.sh_degree}")
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if self.knn_k < 1:
            raise ValueError(f"knn_k must be >= 1, got {self.knn_k}")
        if self.init_neck_extension < 0:
            raise ValueError(f"init_neck_extension must be >= 0, got {self.init_neck_extension}")
        if self.part_displacement not in DISPLACED_PARTS:
            raise ValueError(f"part_displacement must be one of {tuple(DISPLACED_PARTS)}, "
                             f"got {self.part_displacement!r}")
        if self.detail_conditioning not in DETAIL_CONDITIONINGS:
            raise ValueError(f"detail_conditioning must be one of {DETAIL_CONDITIONINGS}, "
                             f"got {self.detail_conditioning!r}")
        if not 0 < self.init_opacity < 1:
            raise ValueError(f"init_opacity must be in (0, 1), got {self.init_opacity}")
        return self

    @property
    def feature_dim(self) -> int:
        """Latent size actually used (0 when latents are ablated)."""
        return self.latent_dim if self.use_latents else 0


@dataclass
class TrainConfig(DictConfig):
    """How the avatar is trained."""

    SAVED_BEFORE = {"detail_code_noise": 0.0}

    steps: int = 6000                   # optimisation steps of the schedule
    views_per_step: int = 1             # (camera, frame) pairs rendered and averaged per step (split over ranks)
    cameras_per_frame: int = 1          # views of a step that share one sampled frame (one deformation, several cameras)
    image_scale: float = 1.0            # extra downscale of the loaded images (1 = as stored)
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)  # colour the targets are composited onto
    mask_loss: bool = False             # restrict L1 to the alpha matte (SSIM always uses the whole image)
    region_weight: float = 5.0          # L1 weight of eye and mouth pixels (capture label maps) vs the rest; 1 = uniform
    closed_eye_share: float = 0.25      # share of steps drawn from frames with an eye closure > 0.5 (tracks that carry it)
    lambda_dssim: float = 0.2           # weight of D-SSIM = 1 - SSIM in the loss L1 + lambda * D-SSIM
    lambda_lap_latent: float = 1e-2     # Laplacian regulariser on the latent features
    lambda_lap_dynamics: float = 1e-1   # Laplacian regulariser on the predicted per-Gaussian dynamics
    lambda_detail_l2: float = 1e-3      # small L2 pull of G's position offsets towards 0 (F explains motion)
    detail_code_noise: float = 0.05     # std of Gaussian noise on the z_exp G sees (not F) in training: G learns a smooth function of the code, not the training frames' own codes (README, *G that generalises*); 0 = off
    lambda_alpha: float = 0.05          # L1 between rendered alpha and the matte (keeps the silhouette)
    use_laplacian: bool = True          # Laplacian regularisers on the kNN graph (off: the --no-laplacian ablation)
    lr_means: float = 4e-4              # Adam LR of canonical positions (canonical units), decays to 1%
    lr_quats: float = 1e-3              # Adam LR of canonical rotations
    lr_scales: float = 5e-3             # Adam LR of log-scales
    lr_opacities: float = 5e-2          # Adam LR of opacity logits
    lr_colors: float = 2.5e-3           # Adam LR of SH DC / rendered features
    lr_sh_rest: float = 1.25e-4         # Adam LR of higher SH bands
    lr_latents: float = 1e-3            # Adam LR of latent features
    lr_detail: float = 1e-3             # Adam LR of G, decays to 10%
    lr_field: float = 1e-4              # Adam LR of F (fine-tuning a distilled field), decays to 10%
    lr_scratch_field: float = 1e-3      # Adam LR of F when learned from scratch (--no-prior)
    lr_cnn: float = 1e-3                # Adam LR of the screen-space CNN
    densify_from: int = 300             # first step of adaptive density control
    densify_until_frac: float = 0.6     # ADC stops after this fraction of the schedule
    densify_interval: int = 100         # steps between densification passes
    densify_grad_threshold: float = 2e-4  # mean |d loss / d means2d| in NDC units (3DGS) that triggers densify
    percent_dense: float = 0.01         # scale (fraction of extent) separating clone (small) from split (large)
    prune_opacity: float = 0.005        # Gaussians below this opacity are pruned
    prune_max_scale_frac: float = 0.1   # Gaussians larger than this fraction of the extent are pruned
    opacity_reset_interval: int = 2000  # steps between opacity resets while densifying (0 = never)
    val_interval: int = 500             # steps between validation images / PSNR on held-out data
    val_views: int = 4                  # held-out (camera, frame) pairs per validation
    checkpoint_interval: int = 500      # steps between checkpoints
    keep_checkpoints: int = 3           # numbered checkpoints kept (latest.pt always kept)
    log_interval: int = 10              # steps between log.jsonl records
    seed: int = 0                       # seeds torch, numpy and python RNGs
    frame_stride: int = 1               # use every k-th frame of the training sequences
    holdout_sequences: tuple[str, ...] = ("FREE",)  # never seen in training (self-reenactment test)
    camera_holdout: str = "nersemble"   # held-out camera set (see npga_taichi.data.nersemble.split_cameras)
    num_threads: int = 0                # torch intra-op threads (0 = torch default; 1 in each of several processes)
    processes: int = 0                  # CPU processes training data-parallel on this machine, each taking whole frame groups of a step (the step is the same for any count); 0 = one per core, at most the step's frame groups

    def validate(self) -> "TrainConfig":
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.views_per_step < 1:
            raise ValueError(f"views_per_step must be >= 1, got {self.views_per_step}")
        if self.cameras_per_frame < 1 or self.views_per_step % self.cameras_per_frame:
            raise ValueError(f"cameras_per_frame ({self.cameras_per_frame}) must be >= 1 and divide "
                             f"views_per_step ({self.views_per_step})")
        if not self.region_weight >= 1.0:
            raise ValueError(f"region_weight must be >= 1, got {self.region_weight}")
        if not 0.0 <= self.closed_eye_share < 1.0:
            raise ValueError(f"closed_eye_share must be in [0, 1), got {self.closed_eye_share}")
        if not 0 < self.image_scale <= 1:
            raise ValueError(f"image_scale must be in (0, 1], got {self.image_scale}")
        if len(self.background) != 3:
            raise ValueError(f"background must have 3 values, got {self.background}")
        if not self.detail_code_noise >= 0:
            raise ValueError(f"detail_code_noise must be >= 0, got {self.detail_code_noise}")
        if self.processes < 0:
            raise ValueError(f"processes must be >= 0 (0 = one per core), got {self.processes}")
        for name in ("densify_interval", "checkpoint_interval", "val_interval", "log_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        return self

    @property
    def densify_until(self) -> int:
        return int(self.densify_until_frac * self.steps)


def preset(name: str) -> tuple[AvatarConfig, TrainConfig]:
    """Configs of a named preset (:mod:`npga_taichi.presets`: "tiny", "quick", "default", "long")."""
    from npga_taichi.presets import preset_overrides

    return (AvatarConfig(**preset_overrides(name, "avatar")).validate(),
            TrainConfig(**preset_overrides(name, "train")).validate())


def configs_to_json(avatar: AvatarConfig, train: TrainConfig, extra: dict[str, Any] | None = None) -> str:
    """JSON text of both configs (+ free-form ``extra`` such as input paths)."""
    return json.dumps({"avatar": asdict(avatar), "train": asdict(train), "extra": extra or {}},
                      indent=2, sort_keys=True)


def configs_from_json(text: str, source: str = "config.json") -> tuple[AvatarConfig, TrainConfig, dict]:
    """Inverse of :func:`configs_to_json`; ValueError naming ``source`` on bad content."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{source} is not valid JSON: {err}") from err
    if not isinstance(data, dict) or "avatar" not in data or "train" not in data:
        raise ValueError(f"{source} lacks the 'avatar' and 'train' sections")
    return (AvatarConfig.from_dict(data["avatar"], source).validate(),
            TrainConfig.from_dict(data["train"], source).validate(), data.get("extra", {}))


def load_configs(run_dir: str | Path) -> tuple[AvatarConfig, TrainConfig, dict]:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ValueError(f"no config.json in run directory {run_dir}")
    return configs_from_json(path.read_text(), str(path))
