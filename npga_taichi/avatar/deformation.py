"""Per-frame deformation of the canonical Gaussians into world space.

For one frame with expression code z and tracked rigid pose (s, R, t):

    x_posed = F(x_can, z, f) + dx_G              canonical units (F = distilled forward field)
    q       = q_can * (1 + dq_G)  (normalised)    wxyz
    log s   = log s_can + dlog_G;  colour/opacity logits + G's changes
    x_world = s R x_posed + t;   q_world = q(R) * q;   scales_world = s * scales   (metres)

The rigid pose is applied *after* the non-rigid deformation, exactly like the tracking's
"world point = scale * R * x_posed + t". ``dynamics`` is the per-Gaussian motion the avatar
predicted for this frame (F + G displacement and G's other outputs); the dynamics Laplacian
regularises it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from npga_taichi.avatar.detail_network import ConditionedMLP, DetailNetwork, fourier_features
from npga_taichi.avatar.gaussians import CanonicalGaussians
from npga_taichi.avatar.rotations import quat_multiply, rotmat_to_quat
from npga_taichi.eye_closure import closure_weights
from npga_taichi.part_motion import part_displacement


@dataclass
class FrameCode:
    """Everything that drives one frame: expression code and the tracked rigid head pose.

    z_exp: (E,) expression code; rot: (3, 3) rotation; trans: (3,) metres; scale: canonical
    units -> metres (about 0.25); eye_closure: (2,) left, right in [0, 1] (0 open) or None
    (:mod:`npga_taichi.eye_closure`; avatars that take it read None as open eyes); part_motion:
    (8,) brows' and mouth corners' motion, canonical units, or None
    (:mod:`npga_taichi.part_motion`; avatars that take it read None as rest).
    """

    z_exp: torch.Tensor
    rot: torch.Tensor
    trans: torch.Tensor
    scale: float
    eye_closure: torch.Tensor | None = None
    part_motion: torch.Tensor | None = None

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> "FrameCode":
        move = lambda x: None if x is None else x.to(device, dtype)  # noqa: E731
        return FrameCode(self.z_exp.to(device, dtype), self.rot.to(device, dtype),
                         self.trans.to(device, dtype), float(self.scale), move(self.eye_closure),
                         move(self.part_motion))


class ScratchForwardField(nn.Module):
    """A forward field learned from scratch (ablation ``--no-prior``), F's call signature.

    x_posed = x_can + MLP([fourier(x_can), f]; z_exp); zero-initialised last layer, so it
    starts as the identity rather than as random motion.
    """

    def __init__(self, exp_dim: int, feature_dim: int = 0, hidden: int = 128, layers: int = 4,
                 pos_freqs: int = 4):
        super().__init__()
        self.exp_dim, self.feature_dim, self.pos_freqs = exp_dim, feature_dim, pos_freqs
        self.mlp = ConditionedMLP(3 + 6 * pos_freqs + feature_dim, exp_dim, 3, hidden, layers)

    def expand_feature_input(self, feature_dim: int) -> None:
        """API parity with the distilled field; the scratch field is built with its features."""
        if feature_dim != self.feature_dim:
            raise ValueError(f"ScratchForwardField was built for {self.feature_dim} features, not {feature_dim}")

    def forward(self, x_can: torch.Tensor, z_exp: torch.Tensor, features: torch.Tensor | None = None
                ) -> torch.Tensor:
        inputs = [fourier_features(x_can, self.pos_freqs)]
        if self.feature_dim > 0:
            if features is None:
                raise ValueError("ScratchForwardField was built with features but got none")
            inputs.append(features)
        return x_can + self.mlp(torch.cat(inputs, dim=-1), z_exp)


@dataclass
class PosedGaussians:
    """Gaussians of one frame (canonical-posed or world space) in rasterizer-ready raw form."""

    means: torch.Tensor            # (N, 3)
    quats: torch.Tensor            # (N, 4) wxyz, unit
    scales: torch.Tensor           # (N, 3) activated
    opacities: torch.Tensor        # (N,) activated
    colors: torch.Tensor           # (N, C) SH DC or features
    sh_rest: torch.Tensor | None   # (N, K - 1, 3) or None
    dynamics: torch.Tensor | None  # (N, M) predicted per-Gaussian motion (None when static)
    detail: dict[str, torch.Tensor] | None  # G's outputs (DetailNetwork.forward; None without G)


def deform_canonical(gaussians: CanonicalGaussians, field: nn.Module | None, detail: DetailNetwork | None,
                     z_exp: torch.Tensor, use_latents: bool, detail_code: torch.Tensor | None = None,
                     eye_closure: torch.Tensor | None = None, part_motion: torch.Tensor | None = None,
                     displaced_parts: int = 0) -> PosedGaussians:
    """Apply F (+ latents) and G to the canonical cloud; output stays in canonical units.

    F sees the expression code ``z_exp`` (E,); G sees ``detail_code`` (its per-frame code:
    :meth:`NPGAAvatar.detail_code`, None for none) and, when built for it, F's displacement of
    each Gaussian. With F, the measured ``part_motion`` (8,) of the first ``displaced_parts``
    parts adds :func:`npga_taichi.part_motion.part_displacement` to F's motion: the brows move
    several millimetres, which the codes do not carry and which photometric gradients do not
    find for G (a brow band is narrower than its motion). A cloud with closure blend shapes adds
    ``w_i * closure_colors_i`` and ``w_i * closure_opacity_i``, w_i = how closed the Gaussian's eye is
    (:func:`npga_taichi.eye_closure.closure_weights` of ``eye_closure`` (2,), None = open): a
    blink is a large, local change of appearance that a per-Gaussian parameter learns from the
    closed frames alone, where G would have to carve it out of its shared weights."""
    x_can = gaussians.means
    latents = gaussians.latents if use_latents else None
    quats = gaussians.quats
    log_scales = gaussians.log_scales
    opacity_logits = gaussians.opacity_logits
    colors = gaussians.colors
    dynamics: list[torch.Tensor] = []
    d = None
    x = x_can
    if field is not None:
        x = field(x_can, z_exp, features=latents) if latents is not None else field(x_can, z_exp)
        if part_motion is not None and displaced_parts > 0:
            x = x + part_displacement(x_can.detach(), part_motion, displaced_parts)
    if detail is not None:
        d = detail(x_can, latents, detail_code, x - x_can if detail.deformation_input else None)
        x = x + d["d_means"]
        identity = torch.zeros(4, dtype=quats.dtype, device=quats.device)
        identity[0] = 1
        quats = quat_multiply(quats, identity + d["d_quats"])
        log_scales = log_scales + d["d_log_scales"]
        opacity_logits = opacity_logits + d["d_opacity"]
        colors = colors + d["d_colors"]
        dynamics += [d["d_quats"], d["d_log_scales"], d["d_colors"], d["d_opacity"][:, None]]
    if eye_closure is not None and "closure_colors" in gaussians.names:
        w = closure_weights(x_can.detach(), eye_closure)
        colors = colors + w[:, None] * gaussians.closure_colors
        opacity_logits = opacity_logits + w * gaussians.closure_opacity
    if field is not None or detail is not None:
        dynamics.insert(0, x - x_can)
    quats = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    sh_rest = gaussians.sh_rest if "sh_rest" in gaussians.names else None
    return PosedGaussians(means=x, quats=quats, scales=torch.exp(log_scales),
                          opacities=torch.sigmoid(opacity_logits), colors=colors, sh_rest=sh_rest,
                          dynamics=torch.cat(dynamics, dim=-1) if dynamics else None, detail=d)


def apply_rigid_pose(posed: PosedGaussians, rot: torch.Tensor, trans: torch.Tensor, scale: float
                     ) -> PosedGaussians:
    """World-space Gaussians: means s R x + t, quats q(R) * q, scales s * scales."""
    rot = rot.to(posed.means)
    q_rot = rotmat_to_quat(rot).to(posed.quats)
    return PosedGaussians(
        means=scale * posed.means @ rot.T + trans.to(posed.means),
        quats=quat_multiply(q_rot.expand_as(posed.quats), posed.quats),
        scales=posed.scales * scale,
        opacities=posed.opacities, colors=posed.colors, sh_rest=posed.sh_rest,
        dynamics=posed.dynamics, detail=posed.detail)
