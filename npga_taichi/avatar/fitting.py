"""Assemble a training run from files on disk: capture, splits, prior, F, avatar, trainer.

:func:`fit_avatar` is ``npga fit``; :func:`prepare_training` is shared with the tests and the
benchmark so all of them train the same way.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from npga_taichi.avatar.config import AvatarConfig, TrainConfig, configs_to_json
from npga_taichi.avatar.model import NPGAAvatar, create_avatar, get_rasterizer
from npga_taichi.avatar.trainer import AvatarData, Trainer, View, build_views
from npga_taichi.checkpoint import write_text_atomic
from npga_taichi.part_motion import PART_MOTION_DIM
from npga_taichi.prior.tracking import load_trackings


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
                     prior: Any = None, field: torch.nn.Module | None = None, dist: Any = None) -> Trainer:
    """A ready :class:`Trainer` (fresh avatar from the prior, or resumed from RUN).

    ``prior`` / ``field`` objects may be passed directly instead of ``prior_dir`` / ``field_dir``.
    """
    from npga_taichi.data.nersemble import NersembleCapture, validate_capture

    run_dir = Path(run_dir)
    capture = NersembleCapture(root, participant)
    train_views, val_views = split_views(capture, trackings, train_cfg)
    if not train_views:
        raise ValueError(f"no training views in {Path(root) / participant}: check the sequences, cameras and "
                         "tracking files")
    # Fail now, naming the file, rather than at the step that first reads a broken image.
    validate_capture(capture, train_views + val_views)
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
        closure_dim = 2 if avatar_cfg.use_eye_closure and all(
            t.eye_closure is not None for t in trackings.values()) else 0
        part_dim = PART_MOTION_DIM if avatar_cfg.use_part_motion and all(
            t.part_motion is not None for t in trackings.values()) else 0
        avatar_cfg = avatar_cfg.__class__(**{**avatar_cfg.__dict__, "exp_dim": exp_dim,
                                             "eye_closure_dim": closure_dim, "part_motion_dim": part_dim})
        torch.manual_seed(train_cfg.seed)
        avatar = create_avatar(avatar_cfg, prior, z_geo, z_app, exp_dim, field,
                               tuple(train_cfg.background), seed=train_cfg.seed).to(device)
        if avatar_cfg.init_colors_from_images:
            paint_from_first_frame(avatar, data)
    trainer = Trainer(run_dir, avatar, data, avatar_cfg, train_cfg, extra, resume=resume,
                      rasterizer=get_rasterizer(rasterizer), progress=progress, dist=dist)
    if trainer.dist.active:
        from npga_taichi.avatar.distributed import check_replicas

        check_replicas(trainer.dist, trainer.checksum(), "initialisation")
    if resume and trainer.dist.is_main:
        # A resumed run may extend the schedule (--steps): keep config.json truthful.
        write_text_atomic(configs_to_json(avatar_cfg, train_cfg, extra), run_dir / "config.json")
    return trainer


# Files `npga fit` writes into RUN; `--force` removes these and nothing else.
RUN_OUTPUTS = ("checkpoints", "val", "config.json", "log.jsonl", "summary.json", "curve.png")


@torch.no_grad()
def paint_from_first_frame(avatar: NPGAAvatar, data: AvatarData) -> int:
    """Colour the Gaussians the first training frame's cameras see as those images show them
    (:func:`.color_init.colors_from_views`); returns how many were repainted."""
    from npga_taichi.avatar.color_init import colors_from_views

    views = data.frames()[0]
    posed = avatar.deform(data.frame(views[0]))
    targets = [data.target(v) for v in views]
    rgb, seen = colors_from_views(posed.means, [data.camera(v.serial) for v in views],
                                  [t[0] for t in targets], [t[1] for t in targets])
    avatar.gaussians.set_rgb(rgb[seen], seen, tuple(data.background.tolist()))
    return int(seen.sum())


def _find_prior(pdir: Path, prior: str | os.PathLike | None, trackings: dict[str, Any]) -> Path | None:
    """The prior to initialise from: given, recorded by the tracking, or ``<pid>/annotations/prior``."""
    if prior:
        return Path(prior)
    for tr in trackings.values():  # a tracking file records the prior it was fitted with
        path = (tr.meta or {}).get("prior")
        if path and Path(path).exists():
            return Path(path)
    cand = pdir / "annotations" / "prior"
    return cand if cand.exists() else None


def _clear_run(run_dir: Path) -> None:
    """Remove what an earlier ``npga fit`` wrote into ``run_dir`` (``--force``), nothing else."""
    import shutil

    for name in RUN_OUTPUTS:
        target = run_dir / name
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)


def _prepare_run_dir(run_dir: Path, resume: bool, force: bool) -> None:
    """Check (and with ``force`` clear) the run folder before a fit writes into it."""
    from npga_taichi.checkpoint import ensure_output_dir

    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out {run_dir} exists and is not a folder")
    if resume and force:
        raise ValueError("--resume and --force contradict each other: pick one")
    if resume and not (run_dir / "checkpoints" / "latest.pt").is_file():
        raise ValueError(f"--resume: no checkpoint to resume from in {run_dir / 'checkpoints'} "
                         "(start the run without --resume)")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not resume:
        if not force:
            raise ValueError(f"{run_dir} already holds files; use --resume to continue or --force to start over")
        _clear_run(run_dir)
    ensure_output_dir(run_dir, "--out")


def run_missing_stages(root: Path, pid: str, run_dir: Path, prior_dir: Path | None, tracking_dir: Path,
                       field_dir: Path, avatar_cfg: AvatarConfig, preset: str, progress: bool = True,
                       log=print) -> Path:
    """``npga fit --all-stages``: obtain the prior (the shipped one where it has the preset's
    settings: :func:`~npga_taichi.prior.pretrained.obtain_prior`), track and distill F where
    they are missing, with ``preset``'s settings (:mod:`npga_taichi.presets`); returns the
    prior folder."""
    from npga_taichi.presets import preset_overrides

    if prior_dir is None or not prior_dir.exists():
        from npga_taichi.prior.config import PriorTrainConfig
        from npga_taichi.prior.pretrained import obtain_prior

        prior_dir = run_dir / "stages" / "prior"
        log(f"[fit --all-stages] prior -> {prior_dir}")
        obtain_prior(prior_dir, PriorTrainConfig(**preset_overrides(preset, "prior")), progress=progress, log=log)
    if not load_trackings(tracking_dir):
        from npga_taichi.prior.tracking import track_capture

        log(f"[fit --all-stages] track -> {tracking_dir}")
        track_capture(root / pid, prior_dir, progress=progress, **preset_overrides(preset, "track"))
    if avatar_cfg.use_prior_field and not avatar_cfg.static and not field_dir.exists():
        from npga_taichi.prior.distill import DistillConfig, distill
        from npga_taichi.prior.model import load_prior

        log(f"[fit --all-stages] distill -> {field_dir}")
        distill(load_prior(prior_dir), list(load_trackings(tracking_dir).values()), field_dir,
                DistillConfig(**preset_overrides(preset, "distill")), progress=progress, log=log)
    return prior_dir


def _input_dirs(pdir: Path, prior, tracking, field) -> tuple[Path, Path, Path | None]:
    """(tracking, field, prior) folders of a fit: the given ones, else the participant's
    ``annotations/`` (the prior: see :func:`_find_prior`)."""
    tracking_dir = Path(tracking) if tracking else pdir / "annotations" / "tracking"
    field_dir = Path(field) if field else pdir / "annotations" / "forward_field"
    return tracking_dir, field_dir, _find_prior(pdir, prior, load_trackings(tracking_dir))


def local_ranks(train_cfg: TrainConfig, device: str) -> int:
    """How many processes :func:`fit_avatar` trains in on this machine (1: in the caller's).

    ``processes`` 0 picks one per available core, at most the step's frame groups and a divisor
    of them (each rank takes whole groups). Under torchrun, or on a GPU unless asked, 1.
    """
    from npga_taichi.avatar.distributed import launched_by_torchrun
    from npga_taichi.processes import available_cores

    groups = train_cfg.views_per_step // train_cfg.cameras_per_frame
    wanted = train_cfg.processes
    if wanted == 1 or launched_by_torchrun():
        return 1
    if torch.device(device).type != "cpu":
        if wanted == 0:
            return 1
        raise ValueError(f"--processes {wanted} starts CPU processes; on GPUs start one process per GPU "
                         "with torchrun (see `npga fit --help`)")
    if wanted == 0:
        return max(d for d in range(1, min(available_cores(), groups) + 1) if groups % d == 0)
    if groups % wanted:
        raise ValueError(f"--processes {wanted} must divide the step's {groups} frame groups "
                         "(--views-per-step / --cameras-per-frame)")
    return wanted


def _log_to_stderr(message: str) -> None:
    import sys

    print(message, file=sys.stderr)


def _fit_rank(rank: int, world: int, port: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """One local rank (in a worker process of :func:`_fit_in_local_ranks`)."""
    from npga_taichi.avatar.distributed import torchrun_environment

    os.environ.update(torchrun_environment(rank, world, port))
    return fit_avatar(**kwargs, log=_log_to_stderr)


def _fit_in_local_ranks(world: int, kwargs: dict[str, Any], avatar_cfg: AvatarConfig | None, log) -> dict[str, Any]:
    """:func:`fit_avatar` as ``world`` data-parallel processes on this machine (one torch thread
    each); returns rank 0's summary. The run folder is checked (and with ``force`` cleared) and
    missing stages run here, once, before the ranks start. Ctrl-C or a rank's error stops all
    of them at once; checkpoints are written atomically, so ``--resume`` continues."""
    import time

    from npga_taichi.avatar.distributed import free_local_port
    from npga_taichi.data.nersemble import resolve_participant
    from npga_taichi.processes import worker_pool

    run_dir, resume = Path(kwargs["run_dir"]), kwargs["resume"]
    root, pid = resolve_participant(kwargs["data"], kwargs["participant"])
    _prepare_run_dir(run_dir, resume, kwargs["force"])
    if kwargs["all_stages"] and not resume:
        tracking_dir, field_dir, prior_dir = _input_dirs(root / pid, kwargs["prior"], kwargs["tracking"],
                                                         kwargs["field"])
        prior_dir = run_missing_stages(root, pid, run_dir, prior_dir, tracking_dir, field_dir, avatar_cfg,
                                       kwargs["preset"], kwargs["progress"], log)
        kwargs = {**kwargs, "prior": prior_dir, "tracking": tracking_dir, "field": field_dir}
    # the folder is checked: the ranks start on it as it is now (force: a --all-stages prior stays)
    kwargs = {**kwargs, "data": root / pid, "participant": None, "all_stages": False, "force": not resume}
    log(f"[fit] {world} processes on this machine, one torch thread each")
    port = free_local_port()
    with worker_pool(world) as pool:
        jobs = [pool.apply_async(_fit_rank, (rank, world, port, kwargs)) for rank in range(world)]
        while not all(job.ready() for job in jobs):
            for job in jobs:
                if job.ready() and not job.successful():
                    job.get()  # raises that rank's error here: the pool stops the others
            time.sleep(0.2)
        return [job.get() for job in jobs][0]


def fit_avatar(data: str | os.PathLike, run_dir: str | os.PathLike, participant: str | None = None,
               prior: str | os.PathLike | None = None, tracking: str | os.PathLike | None = None,
               field: str | os.PathLike | None = None, preset: str = "default",
               avatar_overrides: dict[str, Any] | None = None, train_overrides: dict[str, Any] | None = None,
               all_stages: bool = False, resume: bool = False, force: bool = False, device: str = "cpu",
               rasterizer: str = "taichi", progress: bool = True, log=print) -> dict[str, Any]:
    """``npga fit``: train an avatar on capture ``data`` into ``run_dir``; returns the summary.

    data: capture root or participant folder; prior / tracking / field default to the
    participant's ``annotations/`` (prior, tracking, forward_field). ``preset`` names a
    :mod:`npga_taichi.presets` entry; ``*_overrides`` replace single config fields on top of it
    (a resumed run keeps its saved configs; only ``steps`` may be extended). A run folder that
    holds an earlier run needs ``resume`` or ``force`` (which removes only what ``fit`` wrote).
    The capture is validated (every image and matte a view uses) before step 0. Raises
    ValueError / FileNotFoundError naming the file or argument.

    With ``processes`` > 1 (``TrainConfig``; 0 = one per core where a step has several frame
    groups) the fit runs as that many data-parallel processes here (:func:`local_ranks`); the
    steps are the single process's.
    """
    from npga_taichi.avatar.config import load_configs, preset as preset_configs
    from npga_taichi.avatar.distributed import agree, init_from_env, shutdown
    from npga_taichi.data.nersemble import resolve_participant

    run_dir = Path(run_dir)
    root, pid = resolve_participant(data, participant)
    pdir = root / pid
    if not resume:  # bad options fail before anything is written
        avatar_cfg, train_cfg = preset_configs(preset)
        a_over = dict(avatar_overrides or {})
        if "max_gaussians" in a_over and a_over["max_gaussians"] < avatar_cfg.num_init_gaussians:
            a_over.setdefault("num_init_gaussians", a_over["max_gaussians"])
        avatar_cfg = dataclasses.replace(avatar_cfg, **a_over).validate()
        train_cfg = dataclasses.replace(train_cfg, **(train_overrides or {})).validate()
        extra = {}
        world = local_ranks(train_cfg, device)
    elif (run_dir / "config.json").is_file():  # the saved run's schedule; any process count takes its steps
        saved = load_configs(run_dir)[1]
        if (train_overrides or {}).get("processes") is not None:
            saved = dataclasses.replace(saved, processes=int(train_overrides["processes"])).validate()
        world = local_ranks(saved, device)
    else:
        world = 1  # nothing to resume: fails below with the usual message
    if world > 1:
        return _fit_in_local_ranks(world, dict(
            data=data, run_dir=run_dir, participant=participant, prior=prior, tracking=tracking, field=field,
            preset=preset, avatar_overrides=avatar_overrides, train_overrides=train_overrides,
            all_stages=all_stages, resume=resume, force=force, device=device, rasterizer=rasterizer,
            progress=progress), None if resume else avatar_cfg, log)
    ctx = init_from_env(device)  # torchrun: join the process group, one device per rank
    device = str(ctx.device)
    try:
        if ctx.is_main:
            _prepare_run_dir(run_dir, resume, force)
    except BaseException:
        agree(ctx, False, "the run folder check")
        raise
    agree(ctx, True, "the run folder check")
    if resume:
        avatar_cfg, train_cfg, extra = load_configs(run_dir)
        steps = (train_overrides or {}).get("steps")
        if steps is not None:
            train_cfg = dataclasses.replace(train_cfg, steps=int(steps)).validate()
    tracking_dir, field_dir, prior_dir = _input_dirs(pdir, prior or extra.get("prior"), tracking, field)
    if all_stages and not resume:
        if ctx.active:
            raise ValueError("--all-stages runs the prior, tracking and distillation stages: run them in one "
                             "process first, then start the distributed fit")
        prior_dir = run_missing_stages(root, pid, run_dir, prior_dir, tracking_dir, field_dir, avatar_cfg,
                                       preset, progress, log)
    trackings = load_trackings(tracking_dir)
    if not trackings:
        raise FileNotFoundError(f"no tracking files (*.npz) in {tracking_dir}; run `npga track` first, "
                                "pass --tracking, or use --all-stages")
    if not resume and prior_dir is None:
        raise FileNotFoundError(f"no prior found for {pdir}; pass --prior or use --all-stages")
    if not resume and avatar_cfg.use_prior_field and not avatar_cfg.static and not field_dir.exists():
        raise FileNotFoundError(f"no forward field at {field_dir}; pass --field, run `npga distill`, "
                                "use --all-stages, or train F from scratch with --no-prior")
    extra = {**extra, "data": str(root.resolve()), "participant": pid,
             "prior": str(Path(prior_dir).resolve()) if prior_dir else extra.get("prior"),
             "tracking": str(tracking_dir.resolve()), "field": str(field_dir.resolve()),
             "preset": extra.get("preset", preset), "rasterizer": rasterizer}
    try:
        trainer = prepare_training(run_dir, root, pid, trackings, avatar_cfg, train_cfg, extra, prior_dir=prior_dir,
                                   field_dir=field_dir, device=device, resume=resume, rasterizer=rasterizer,
                                   progress=progress, dist=ctx)
        return trainer.train()
    finally:
        shutdown(ctx)
