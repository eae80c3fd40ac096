"""Configuration of the MonoNPHM head prior: network sizes (presets) and training settings.

Two presets:

* ``mononphm`` — the published sizes (65 anchors, 30 symmetric pairs, 12 neighbours, codes
  64 + 66×32, local MLPs 4×200, backward MLP 6×400, 100-d expression codes, 2 hyper dims).
  Loading an official checkpoint produces this configuration.
* ``small`` — the same architecture scaled down so that prior fit + tracking + distillation
  of the default synthetic capture run in minutes on a 2-core CPU.

Everything is a dataclass saved as JSON beside every checkpoint (``config.json``).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from npga_taichi.config_io import DictConfig


@dataclass
class PriorConfig(DictConfig):
    """Sizes of the MonoNPHM networks (identity field + backward deformation field)."""

    n_anchors: int = 65            # facial anchor points (the local MLPs' centres)
    n_symm_pairs: int = 30         # the first 2*n_symm_pairs anchors are (left, mirrored-right) pairs
    n_neighbors: int = 12          # nearest anchors blended per query point (+ the global MLP)
    n_blend_std_neighbors: int = 8  # kernel width = max distance among this many nearest / blend_std
    blend_std: float = 3.75        # divisor of that max distance (MonoNPHM's `blend_std`)
    global_distance: float = 0.75  # fixed "distance" of the global MLP in the blending kernel
    lat_dim_glob: int = 64         # global identity code size (geometry and appearance each)
    lat_dim_loc: int = 32          # local code size per anchor (+1 for the global MLP), each modality
    hidden_dim_geo: int = 200      # width of each local geometry MLP
    n_layers_geo: int = 4          # hidden layers of each local geometry MLP
    hidden_dim_app: int = 200      # width of each local colour MLP
    n_layers_app: int = 4          # hidden layers of each local colour MLP
    communication_dim: int = 16    # geometry -> colour bottleneck width (200 -> 16 -> 16)
    pos_mlp_dim: int = 64          # hidden width of the anchor-offset MLP fed by the global code
    lat_dim_exp: int = 100         # expression code size
    lat_dim_id_compressed: int = 16  # identity code compressed for the backward field
    hidden_dim_ex: int = 400       # width of the backward deformation MLP
    n_layers_ex: int = 6           # hidden layers of the backward MLP (skip concat at n/2)
    n_hyper: int = 2               # hyper (ambient) dimensions predicted by the backward field
    softplus_beta: float = 100.0   # Softplus sharpness of geometry and deformation MLPs

    def __post_init__(self) -> None:
        if self.n_anchors < 1 or self.n_symm_pairs < 0 or 2 * self.n_symm_pairs > self.n_anchors:
            raise ValueError(f"invalid anchors: n_anchors={self.n_anchors}, "
                             f"n_symm_pairs={self.n_symm_pairs} (need 2*pairs <= anchors)")
        if not 1 <= self.n_neighbors <= self.n_anchors:
            raise ValueError(f"n_neighbors={self.n_neighbors} must lie in [1, n_anchors]")
        if not 1 <= self.n_blend_std_neighbors <= self.n_neighbors + 1:
            raise ValueError("n_blend_std_neighbors must lie in [1, n_neighbors + 1]")

    # Derived sizes ---------------------------------------------------------------------------
    @property
    def n_mlp_types(self) -> int:
        """Distinct local MLPs: one per pair, one per middle anchor, plus the global MLP."""
        return self.n_anchors - self.n_symm_pairs + 1

    @property
    def lat_dim_geo(self) -> int:
        """Full geometry identity code: global + (anchors + 1) local codes."""
        return self.lat_dim_glob + (self.n_anchors + 1) * self.lat_dim_loc

    @property
    def lat_dim_app(self) -> int:
        """Full appearance identity code (same layout as geometry)."""
        return self.lat_dim_glob + (self.n_anchors + 1) * self.lat_dim_loc



PRESETS: dict[str, PriorConfig] = {
    "mononphm": PriorConfig(),
    # Scaled for a 2-core CPU: 17 anchors (6 pairs + 5 middle -> 12 local MLPs incl. global),
    # 6 neighbours, 2x64 local MLPs, 4x96 backward MLP, 16-d expression codes.
    "small": PriorConfig(
        n_anchors=17, n_symm_pairs=6, n_neighbors=6, n_blend_std_neighbors=4,
        blend_std=2.5, global_distance=0.6,
        lat_dim_glob=16, lat_dim_loc=8, hidden_dim_geo=64, n_layers_geo=2,
        hidden_dim_app=32, n_layers_app=2, communication_dim=8, pos_mlp_dim=32,
        lat_dim_exp=16, lat_dim_id_compressed=8, hidden_dim_ex=96, n_layers_ex=4, n_hyper=2,
    ),
    # Tests only: the smallest network that still has every part of the architecture.
    "tiny": PriorConfig(
        n_anchors=7, n_symm_pairs=2, n_neighbors=4, n_blend_std_neighbors=3,
        blend_std=2.5, global_distance=0.6,
        lat_dim_glob=8, lat_dim_loc=4, hidden_dim_geo=32, n_layers_geo=2,
        hidden_dim_app=16, n_layers_app=2, communication_dim=4, pos_mlp_dim=16,
        lat_dim_exp=8, lat_dim_id_compressed=4, hidden_dim_ex=48, n_layers_ex=2, n_hyper=2,
    ),
}


def preset(name: str) -> PriorConfig:
    """A fresh copy of the named preset (``mononphm``, ``small`` or ``tiny``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown prior preset {name!r}; choose from {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name])


@dataclass
class PriorTrainConfig:
    """Settings of ``npga prior fit`` (auto-decoder training on synthetic identities)."""

    preset: str = "small"          # network size preset (see PRESETS)
    n_identities: int = 8          # synthetic training identities
    n_expressions: int = 24        # random expressions per training identity (+ the neutral one)
    identity_seed_base: int = 1000  # training identities are SyntheticHead.from_seed(base + i)
    n_heldout_expressions: int = 4  # random expressions of a held-out identity for evaluation
    heldout_identity_seed: int = 999  # seed of the held-out identity (never trained on)
    points_surface: int = 1500     # posed surface samples stored per (identity, expression)
    points_near: int = 1500        # posed near-surface samples (surface + normal noise)
    points_space: int = 500        # posed uniform samples in the bounding box
    near_sigma: float = 0.02       # std of the near-surface perturbation (canonical units)
    # Share of the surface and near samples drawn on the small, fast-moving parts (eyelids, lips,
    # teeth, mouth interior, points the expression moves; training.expressive_points): uniform
    # samples put 0.26 % of a blink pair's points on the moving lid and B never learns a blink.
    moving_share: float = 0.2
    moving_threshold_mm: float = 1.0  # |B_gt(x) - x| above this counts as "moved"
    moving_jitter: float = 0.02    # jitter (canonical units) that spreads expressive seeds over their part
    batch_shapes: int = 4          # (identity, expression) pairs per step
    batch_points: int = 600        # points per pair and step (split surface/near/space)
    steps: int = 3000              # optimisation steps
    lr: float = 2e-3               # network learning rate
    lr_codes: float = 5e-3         # latent code learning rate
    # Learning rate of the backward deformation MLP. At 2e-3 its last Softplus(beta=100) layer
    # dies early in training (every unit negative: B becomes a constant map and never recovers).
    lr_deform: float = 5e-4
    lr_decay_every: int = 0        # halve both learning rates every this many steps (0: steps // 3)
    w_sdf: float = 2.0             # |SDF - SDF_gt| (near surface and space, clamped)
    w_surface: float = 4.0         # |SDF| on surface samples
    w_eikonal: float = 0.1         # (|grad SDF| - 1)^2 on near samples
    w_albedo: float = 1.0          # |albedo - albedo_gt| on surface samples
    w_deform: float = 5.0          # |B(x) - B_gt(x)| backward-offset supervision
    w_hyper: float = 0.05          # hyper coordinates -> 0 (keeps the canonical space 3D)
    w_reg_geo: float = 1e-4        # identity code L2
    w_reg_exp: float = 1e-4        # expression code L2
    w_anchor: float = 1.0          # anchor offsets: mirror symmetry and smallness
    sdf_clamp: float = 0.1         # clamp of SDF targets and predictions (canonical units)
    eval_points: int = 4000        # points per shape for the held-out evaluation
    eval_fit_steps: int = 200      # code-fitting steps for the held-out identity
    seed: int = 0                  # torch / numpy seed
    checkpoint_every: int = 250    # steps between resumable checkpoints

    def __post_init__(self) -> None:
        if not 0.0 <= self.moving_share < 1.0:
            raise ValueError(f"moving_share={self.moving_share} must lie in [0, 1)")
        if self.moving_threshold_mm <= 0 or self.moving_jitter < 0:
            raise ValueError("moving_threshold_mm must be > 0 and moving_jitter >= 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PriorTrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def dumps(obj: Any) -> str:
    """JSON text of a dataclass (or dict of dataclasses) for ``config.json`` files."""
    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return dataclasses.asdict(value)
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value
    return json.dumps(convert(obj), indent=2, sort_keys=True)


__all__ = ["PriorConfig", "PriorTrainConfig", "PRESETS", "preset", "dumps"]
