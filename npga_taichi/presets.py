"""The one preset registry: what ``tiny`` and ``default`` mean for every stage of the pipeline.

A preset is a set of overrides of each stage's configuration dataclass (the dataclasses keep
every field's default and meaning; ``default`` overrides nothing but the prior's size):

    capture  -> npga_taichi.data.capture.CaptureConfig.preset(name, **overrides)
    prior    -> npga_taichi.prior.config.PriorTrainConfig
    track    -> npga_taichi.prior.tracking.track_capture keyword arguments
    distill  -> npga_taichi.prior.distill.DistillConfig
    avatar   -> npga_taichi.avatar.config.AvatarConfig
    train    -> npga_taichi.avatar.config.TrainConfig
    demo     -> what ``npga demo`` changes on top, per stage (e.g. fewer frames and steps)

``npga demo --preset``, ``npga fit --preset`` and ``npga fit --all-stages`` all read it here.
"""
from __future__ import annotations

import copy
from typing import Any

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # Minutes on a busy 2-core machine: CI, the tests and smoke runs. A blurry avatar.
    "tiny": {
        "capture": dict(preset="tiny"),
        # The tiny prior and F also shrink the sample pools and the final evaluations (with the
        # full-size evaluations those take most of the time: ~10x).
        "prior": dict(preset="tiny", n_identities=2, n_expressions=4, n_heldout_expressions=1,
                      points_surface=400, points_near=400, points_space=150, batch_shapes=2,
                      batch_points=400, steps=100, eval_points=400, eval_fit_steps=10,
                      checkpoint_every=50, lr=3e-3),
        "track": dict(steps_first=40, steps=5, points=400),
        "distill": dict(steps=60, hidden_dim=32, n_layers=2, batch_points=1024, surface_points=3000,
                        eval_points=300, eval_codes=4, root_points=50, root_codes=2, root_iters=15,
                        checkpoint_every=30),
        "avatar": dict(num_init_gaussians=1500, max_gaussians=3000, latent_dim=8, sh_degree=1,
                       detail_hidden=32, detail_layers=2, detail_pos_freqs=2,
                       scratch_field_hidden=32, scratch_field_layers=2, knn_k=6,
                       cnn_feature_dim=8, cnn_hidden=16, cnn_layers=2),
        "train": dict(steps=300, densify_from=100, densify_interval=50, opacity_reset_interval=0,
                      val_interval=100, val_views=2, checkpoint_interval=100, log_interval=10),
        # What `npga demo --preset tiny` shrinks further: 1 sample per pixel, 3 frames, 100 steps.
        "demo": dict(capture=dict(samples_per_side=1, frames_per_sequence=3), train=dict(steps=100)),
    },
    # A recognisable avatar in minutes (goal: <= 5 min from a fresh clone at >= 28 dB; the time
    # is not met): 4 training sequences + FREE x 8 frames at the default image size and 4 samples
    # per pixel, the shipped prior, a short tracking / distillation, 800 fit steps at twice the default
    # learning rates. Measured 11-29 at 1 thread on a loaded 2-core machine: `npga demo OUT
    # --preset quick --identity 4242` 28.14 dB held out (masked 22.71, eyes 19.24, mouth 19.87,
    # blink 0.85) in 832 s wall / 651 CPU s from an empty kernel cache (CPU s: capture 190, prior
    # 110, track 54, distill 50, fit 231, eval 15); identity 31337 26.96 dB (masked 21.94, blink
    # 0.90, jaw 0.51) in 689 s wall / 678 CPU s, and 27.79 / 28.30 dB (seeds 0 / 1) for the fit
    # alone on another demo's inputs (fit seed: ~0.5 dB). Every cut tried cost PSNR on 31337:
    # 1 sample per pixel 25.6 dB; 6 frames per sequence 25.1-27.1 dB (with shorter prior /
    # tracking / distillation, or a longer prior); 2 cameras per frame, 600 steps, G 64 x 2 26.0 dB.
    # (10 sequences x 4 frames tracked the later sequences 3 degrees off with the short prior this
    # preset trained then.) 11-30, with the shipped default prior instead of a 600-step one
    # (same captures, 1 thread, loaded machine): 4242 28.29 dB (masked 22.87), 31337 26.97 dB
    # (masked 21.92) - the prior does not limit its PSNR - in 399 / 412 CPU s after the capture
    # with a warm kernel cache (the runs above: 461 / 494 with an empty one, 110 / 116 the prior).
    "quick": {
        "capture": dict(preset="default", sequences=("EXP-1", "EXP-2", "EXP-4", "EMO-2", "FREE"),
                        frames_per_sequence=8),
        # The default prior: `npga demo` copies the shipped one (npga_taichi.prior.pretrained).
        "prior": dict(preset="small"),
        "track": dict(steps_first=200, steps=15),
        "distill": dict(steps=800, lr_decay_every=300, eval_codes=8, checkpoint_every=400),
        "avatar": dict(num_init_gaussians=5000, max_gaussians=8000),
        "train": dict(steps=800, densify_from=100, densify_interval=100, opacity_reset_interval=0,
                      val_interval=200, checkpoint_interval=200, lr_means=8e-4, lr_quats=2e-3,
                      lr_scales=1e-2, lr_colors=5e-3),
        "demo": {},
    },
    # The default pipeline with a 2.4x shorter avatar fit: 2500 steps, G 64 x 2 (a quarter of its
    # cost per Gaussian), densification from step 200, one opacity reset at step 800 (off the
    # validation steps). Identity 4242: 32.62 dB held out vs 33.15 for the default fit on the same
    # inputs (README, *Time to an avatar*).
    "fast": {
        "capture": dict(preset="default"),
        "prior": dict(preset="small"),
        "track": {},
        "distill": {},
        "avatar": dict(detail_hidden=64, detail_layers=2),
        "train": dict(steps=2500, densify_from=200, opacity_reset_interval=800, val_interval=250,
                      checkpoint_interval=250),
        "demo": {},
    },
    # The schedule the README's numbers come from (default synthetic capture, 2-core CPU).
    "default": {
        "capture": dict(preset="default"),
        "prior": dict(preset="small"),
        "track": {},
        "distill": {},
        "avatar": {},
        "train": {},
        "demo": {},
    },
}

STAGES = ("capture", "prior", "track", "distill", "avatar", "train", "demo")


def preset_overrides(name: str, stage: str) -> dict[str, Any]:
    """A copy of preset ``name``'s overrides for ``stage``; ValueError naming what is unknown."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {STAGES}")
    return copy.deepcopy(PRESETS[name][stage])
