"""The one preset registry: what ``tiny``, ``quick``, ``default`` and ``long`` mean for every stage.

A preset is a set of overrides of each stage's configuration dataclass (the dataclasses keep
every field's default and meaning; ``long`` overrides nothing of the avatar's configs, the
``default`` pipeline shortens their schedule):

    capture  -> npga_taichi.data.capture.CaptureConfig.preset(name, **overrides)
    prior    -> npga_taichi.prior.config.PriorTrainConfig
    track    -> npga_taichi.prior.tracking.track_capture keyword arguments
    distill  -> npga_taichi.prior.distill.DistillConfig
    avatar   -> npga_taichi.avatar.config.AvatarConfig
    train    -> npga_taichi.avatar.config.TrainConfig
    demo     -> what ``npga demo`` changes on top, per stage (e.g. fewer frames and steps)

``npga demo --preset``, ``npga fit --preset`` and ``npga fit --all-stages`` all read it here;
``npga track`` and ``npga distill`` take the default pipeline's settings from their configs.
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
    # A recognisable avatar in under 5 minutes on 2 cores from a fresh clone (the README's main
    # job): 3 training sequences + FREE x 8 frames at 220 x 320 (downscale 10) and 4 samples per
    # pixel, the shipped prior, tracking with 50 steps per later frame, a 400-step distillation
    # and 250 fit steps of 2 views (one process per core) at twice the default learning rates.
    # Measured 11-30 (idle 2-core machine): from a fresh clone with an empty kernel cache, 4 min
    # 39 s for identity 0 (31.16 dB held out, masked 25.86, eyes 19.74, mouth 21.49, blink 0.79);
    # 31337 30.45 dB (masked 25.26, jaw 0.56) in 3 min 56 s with a warm cache. The 800-step
    # one-view fit of 4 sequences at 275 x 401 it replaces: 31.56 dB for identity 0 in 7 min 36 s.
    # On a 10-frame version of this capture: 300 fit steps 31.59 dB, 250 steps 31.33, G 64 x 2
    # (300 steps) 31.29; at 275 x 401, 400 steps of 2 views matched 800 of one (31.52 vs 31.56 dB);
    # a 300-step distillation cost the mouth 1.2 dB (README, *Time to an avatar*).
    "quick": {
        "capture": dict(preset="default", sequences=("EXP-2", "EXP-4", "EMO-2", "FREE"),
                        frames_per_sequence=8, downscale=10),
        # The default prior: `npga demo` copies the shipped one (npga_taichi.prior.pretrained).
        "prior": dict(preset="small"),
        # 50 steps per later frame: its 8 frames per sequence lie far apart, so the warm start from
        # the previous frame is far off. 31337's FREE tracked alone: 0.76 deg / 0.89 mm mean error
        # (1.87 deg max) at 15 steps, 0.49 deg / 0.34 mm (0.55 deg max) at 50; the held-out PSNR
        # of the whole quick demo rose 4.3 dB (4242) / 1.7 dB (31337) for ~60 CPU s more tracking.
        "track": dict(steps_first=200, steps=50),
        "distill": dict(steps=400, lr_decay_every=160, eval_codes=8, checkpoint_every=200),
        "avatar": dict(num_init_gaussians=5000, max_gaussians=8000),
        "train": dict(steps=250, views_per_step=2, densify_from=35, densify_interval=35, opacity_reset_interval=0,
                      val_interval=125, checkpoint_interval=125, lr_means=8e-4, lr_quats=2e-3,
                      lr_scales=1e-2, lr_colors=5e-3),
        "demo": {},
    },
    # The default pipeline (`npga demo OUT`, `npga fit` without --preset): 1400 fit steps of 2
    # views (each from its own frame; on a CPU the two run in two processes, one per core:
    # npga_taichi.avatar.fitting.local_ranks), G 64 x 2 (a quarter of its cost per Gaussian),
    # densification from step 110 every 55, one opacity reset at step 450 (off the validation
    # steps); tracking and distillation take their configs' defaults (35 cosine-decayed steps per
    # later frame, a 1500-step distillation). Measured 11-30 (9th session, idle 2-core machine,
    # with the Gaussians started down the neck: AvatarConfig.init_neck_extension): the whole demo
    # in 11 min 1 s for 31337 (32.04 dB held out, masked 26.63; three fit seeds 31.92-32.43, mean
    # 32.25) and 10 min 56 s for 4242 (33.60 dB, masked 27.67), against the `long` pipeline's
    # 31.70 (26.33) and 33.15 (27.21); on 31337's tracks and F of this preset the 6000-step fit
    # (before the neck) gave 32.62 dB in 3x the fit's time. README, *Time to an avatar*.
    "default": {
        "capture": dict(preset="default"),
        "prior": dict(preset="small"),
        "track": {},
        "distill": {},
        "avatar": dict(detail_hidden=64, detail_layers=2),
        "train": dict(steps=1400, views_per_step=2, densify_from=110, densify_interval=55,
                      opacity_reset_interval=450, val_interval=250, checkpoint_interval=250),
        "demo": {},
    },
    # The schedule before issue 16, which the README's older tables and ablations come from: the
    # avatar configs' own defaults (6000 fit steps of one view, G 128 x 3), 25 tracking steps per
    # later frame, a 2500-step distillation. About 45 minutes for the whole demo on the slower
    # 2-core machine of the sessions before 11-30's 8th (which ran the default demo in 22).
    "long": {
        "capture": dict(preset="default"),
        "prior": dict(preset="small"),
        "track": dict(steps=25),
        "distill": dict(steps=2500, lr_decay_every=800),
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
