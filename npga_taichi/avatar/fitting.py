"""Assemble a training run from files on disk: capture, splits, prior, F, avatar, trainer.

Shared by ``npga fit`` and the tests / benchmark so all of them train the same way.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from npga_taichi.avatar.config import AvatarConfig, TrainConfig, configs_to_json
from npga_taichi.avatar.model import NPGAAvatar, create_avatar, get_rasterizer
from npga_taichi.avatar.trainer import AvatarData, Trainer, View, build_views
from npga_taichi.checkpoint import write_text_atomic


def split_views(capture: Any, trackings: dict[str, Any], cfg: TrainConfig) -> tuple[list[View], list[View]]:
    """Training views (training cameras x training sequences) and a few held-out views
    (held-out cameras x held-out sequences, falling back to held-out cameras x training
    sequences when no held-out sequence is tracked)."""
    from npga_taichi.data.nersemble import split_cameras, split_sequences

    serials = sorted(capture.cameras)
    train_cams, held_cams = split_cameras(serials, holdout=cfg.camera_holdout)
    train_seqs, held_seqs = split_sequences(list(capture.sequences()), holdout=tuple(cfg.holdout_sequences))
    train_views = build_views(capture, trackings, list(train_seqs), list(train_cams), cfg.frame_stride)
    val_pool = build_views(capture, trackings, list(held_seqs), list(held_cams))
    if not val_pool:
        val_pool = build_views(capture, trackings, list(train_seqs), list(held_cams))
    if not val_pool or cfg.val_views <= 0:
        return train_views, []
    idx = np.linspace(0, len(val_pool) - 1, min(cfg.val_views, len(val_pool))).round().astype(int)
    # Interleave cameras: consecutive views of the pool share a frame, so stride over them.
    return train_views, [val_pool[i] for i in sorted(set(idx.tolist()))]


def identity_codes(trackings: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(z_geo, z_app, expression size) of the tracked identity (first sequence's codes)."""
    first = trackings[sorted(trackings)[0]]
    z_exp = np.asarray(first.z_exp)
    return (torch.as_tensor(np.asarray(first.z_geo), dtype=torch.float32).reshape(-1),
            torch.as_tensor(np.asarray(first.z_app), dtype=torch.float32).reshape(-1), int(z_exp.shape[-1]))


def prepare_training(run_dir: str | os.PathLike, root: str | os.PathLike, participant: str,
                     trackings: dict[str, Any], avatar_cfg: AvatarConfig, train_cfg: TrainConfig,
                     extra: dict[str, Any], prior_dir: str | os.PathLike | None = None,
                     field_dir: str | os.PathLike | None = None, device: str = "cpu", resume: bool = False,
                     rasterizer: str | None = None, progress: bool = True,
                     prior: Any = None, field: torch.nn.Module | None = None) -> Trainer:
    """A ready :class:`Trainer` (fresh avatar from the prior, or resumed from RUN).

    ``prior`` / ``field`` objects may be passed directly instead of ``prior_dir`` / ``field_dir``.
    """
    from npga_taichi.data.nersemble import NersembleCapture

    run_dir = Path(run_dir)
    capture = NersembleCapture(root, participant)
    train_views, val_views = split_views(capture, trackings, train_cfg)
    data = AvatarData(capture, trackings, train_views, val_views, tuple(train_cfg.background),
                      train_cfg.image_scale, device)
    avatar: NPGAAvatar | None = None
    z_geo, z_app, exp_dim = identity_codes(trackings)
    if not resume:
        if prior is None:
            from npga_taichi.prior.model import load_prior

            if prior_dir is None:
                raise ValueError("a prior is needed to initialise the avatar (prior_dir)")
            prior = load_prior(prior_dir)
        if field is None and avatar_cfg.use_prior_field and not avatar_cfg.static:
            from npga_taichi.prior.forward_field import load_forward_field

            if field_dir is None:
                raise ValueError("a distilled forward field is needed (field_dir), or use --no-prior")
            field = load_forward_field(field_dir)
        if not avatar_cfg.use_prior_field:
            field = None
        avatar_cfg = avatar_cfg.__class__(**{**avatar_cfg.__dict__, "exp_dim": exp_dim})
        torch.manual_seed(train_cfg.seed)
        avatar = create_avatar(avatar_cfg, prior, z_geo, z_app, exp_dim, field,
                               tuple(train_cfg.background), seed=train_cfg.seed).to(device)
    trainer = Trainer(run_dir, avatar, data, avatar_cfg, train_cfg, extra, resume=resume,
                      rasterizer=get_rasterizer(rasterizer), progress=progress)
    if resume:
        # A resumed run may extend the schedule (--steps): keep config.json truthful.
        write_text_atomic(configs_to_json(avatar_cfg, train_cfg, extra), run_dir / "config.json")
    return trainer
