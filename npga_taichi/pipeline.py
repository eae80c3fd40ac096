"""The demo's stage runner: synth -> prior -> track -> distill -> fit -> eval -> render.

Every stage calls the library function behind the corresponding ``npga`` command (the one that
command calls, so the demo exercises what users run by hand), prints and records the equivalent
command line, and owns one folder under the demo directory::

    OUT/capture   npga synth          (the synthetic multi-view capture, NeRSemble layout)
    OUT/prior     npga prior fit      (the MonoNPHM prior; ``npga prior pretrained``, a copy of
                                       the shipped one, where that was trained with the same settings)
    OUT/capture/<pid>/annotations/tracking   npga track  (codes and poses per frame)
    OUT/distill   npga distill        (the forward deformation field F)
    OUT/run       npga fit            (the avatar)
    OUT/eval      npga eval           (metrics.csv, summary.json, worst.png)
    OUT/render    npga render         (video.mp4: held-out sequence, ground truth beside it)

A stage is *done* when its final output file exists (the capture's synthetic_capture.json must
say ``complete``, the run's summary.json ``finished``); done stages are skipped, so an
interrupted demo resumes where it stopped (each stage resumes from its own checkpoints; the fit
with ``resume`` when ``OUT/run/checkpoints/latest.pt`` exists). ``force`` reruns every stage.
Wall times, CPU seconds and command lines per stage are recorded in ``OUT/pipeline.json``.

Stage settings come from the one preset registry :mod:`npga_taichi.presets`: the preset's entry
for the stage, with the preset's ``demo`` entry on top (tiny: 1 sample per pixel, 3 frames per
sequence, 100 fit steps). The library never imports click or :mod:`npga_taichi.cli`.
"""
from __future__ import annotations

import contextlib
import json
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from npga_taichi.checkpoint import write_text_atomic
from npga_taichi.presets import PRESETS as PRESET_REGISTRY, preset_overrides
from npga_taichi.prior.config import PriorTrainConfig
from npga_taichi.prior.pretrained import obtain_prior, shipped_prior_for
from npga_taichi.processes import worker_pool

PRESETS = tuple(PRESET_REGISTRY)  # "tiny", "quick", "default", "long"


@dataclass
class DemoConfig:
    """What the demo builds."""

    out: str                      # demo folder (stage folders live inside it)
    preset: str = "default"       # see npga_taichi.presets: "tiny" (CI, tests), "quick", "default", "long"
    identity: int = 0             # seed of the synthetic person (npga synth --identity)
    render_frames: int | None = None  # frames in the final video (None: the whole held-out sequence)
    force: bool = False           # rerun every stage even if its output exists
    train_prior: bool = False     # train the prior here even where the shipped one has the preset's settings
    device: str = "cpu"           # torch device for the avatar stages

    def validate(self) -> "DemoConfig":
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {PRESETS}")
        if self.identity < 0:
            raise ValueError(f"identity must be a non-negative seed, got {self.identity}")
        return self


@dataclass
class DemoPaths:
    config: DemoConfig
    root: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.config.out)

    capture = property(lambda self: self.root / "capture")
    prior = property(lambda self: self.root / "prior")
    distill = property(lambda self: self.root / "distill")
    run = property(lambda self: self.root / "run")
    eval = property(lambda self: self.root / "eval")
    render = property(lambda self: self.root / "render")

    @property
    def participant(self) -> str:
        """``npga synth`` files identity SEED under participant SEED mod 1000."""
        return f"{self.config.identity % 1000:03d}"

    @property
    def participant_dir(self) -> Path:
        return self.capture / self.participant

    @property
    def tracking_dir(self) -> Path:
        return self.participant_dir / "annotations" / "tracking"


def _json_flag(path: Path, key: str) -> bool:
    """True when ``path`` is a JSON object whose ``key`` is truthy (an unfinished run's file says no)."""
    try:
        return bool(json.loads(path.read_text()).get(key))
    except (OSError, ValueError, AttributeError):
        return False


def _capture_done(p: DemoPaths) -> bool:
    return _json_flag(p.participant_dir / "synthetic_capture.json", "complete")


def _tracking_done(p: DemoPaths) -> bool:
    """Every sequence of the capture has its tracking file (``npga track`` skips finished ones)."""
    seq_root = p.participant_dir / "sequences"
    if not seq_root.is_dir():
        return False
    seqs = [d.name for d in seq_root.iterdir() if d.is_dir()]
    return bool(seqs) and all((p.tracking_dir / f"{s}.npz").is_file() for s in seqs)


# How a stage's settings read as `npga` options, for the equivalent command line that the demo
# prints and records (config field -> option). Settings without an option are listed beside it.
CLI_FLAGS: dict[str, dict[str, str]] = {
    "capture": {"preset": "--preset", "samples_per_side": "--samples", "frames_per_sequence": "--frames",
                "downscale": "--downscale", "sequences": "--sequences"},
    "prior": {"preset": "--preset", "steps": "--steps", "n_identities": "--identities",
              "n_expressions": "--expressions", "seed": "--seed"},
    "track": {"steps_first": "--steps-first", "steps": "--steps", "points": "--points"},
    "distill": {"steps": "--steps", "hidden_dim": "--hidden", "n_layers": "--layers", "seed": "--seed"},
}


def stage_settings(preset: str, stage: str) -> dict:
    """Preset ``preset``'s overrides for ``stage`` (:mod:`npga_taichi.presets`) with what the demo
    changes on top (the preset's ``demo`` entry)."""
    return {**preset_overrides(preset, stage), **preset_overrides(preset, "demo").get(stage, {})}


def _flag_value(value) -> str:
    """An option value as typed: sequences comma-separated."""
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def _as_flags(settings: dict, flags: dict[str, str] | None) -> tuple[list[str], list[str]]:
    """(npga options, names of settings that have none); ``flags=None``: fields are options."""
    argv, missing = [], []
    for name, value in settings.items():
        if flags is not None:
            flag = flags.get(name)
            if flag is None:
                missing.append(name)
            else:
                argv += [flag, _flag_value(value)]
        elif isinstance(value, bool):  # `npga fit`'s switches: --x / --no-x (use_x -> x)
            base = (name[4:] if name.startswith("use_") else name).replace("_", "-")
            argv.append(("--" if value else "--no-") + base)
        else:
            argv += ["--" + name.replace("_", "-"), _flag_value(value)]
    return argv, missing


@dataclass
class Stage:
    """One pipeline step: a library call, the ``npga`` command line it is equivalent to, its output."""

    name: str
    argv: list[str]                            # the equivalent npga arguments (after "npga")
    output: Callable[["DemoPaths"], Path]      # final output file
    run: Callable[["DemoPaths"], object]       # the library call that does the work
    done: Callable[["DemoPaths"], bool] | None = None  # finished? [default: output exists]
    not_in_cli: list[str] = field(default_factory=list)  # settings the command line cannot express

    def is_done(self, paths: "DemoPaths") -> bool:
        return self.done(paths) if self.done is not None else self.output(paths).exists()


def _compile_render_kernels(width: int, height: int, sh_degree: int | None, channels: int, device: str) -> None:
    """The job :func:`render_kernels_compiling` runs in its worker process."""
    from npga_taichi.render import compile_kernels

    compile_kernels(width, height, sh_degree, channels, device=device)


@contextlib.contextmanager
def render_kernels_compiling(width: int, height: int, avatar_cfg, device: str) -> Iterator[None]:
    """Compile the rasterizer kernels an avatar of ``avatar_cfg`` renders (width x height) images
    with in a worker process while the block runs; waits for it at the end, or stops it when the
    block raises. Only the kernel cache profits from it, so its result (an error included) is
    never collected: the fit compiles whatever is missing itself and reports its own errors."""
    sh_degree, channels = (None, avatar_cfg.cnn_feature_dim) if avatar_cfg.use_cnn else (avatar_cfg.sh_degree, 3)
    with worker_pool(1) as pool:
        pool.apply_async(_compile_render_kernels, (width, height, sh_degree, channels, device))
        yield


def stages(cfg: DemoConfig, paths: DemoPaths, log: Callable[[str], None] = print) -> list[Stage]:
    """The demo's stages for ``cfg``: each a library call with ``cfg.preset``'s settings
    (:func:`stage_settings`), recorded as its equivalent ``npga`` command line."""
    p, force, device = paths, cfg.force, cfg.device
    settings = {s: stage_settings(cfg.preset, s) for s in ("capture", "prior", "track", "distill")}
    flags = {s: _as_flags(settings[s], CLI_FLAGS[s]) for s in settings}
    prior_cfg = PriorTrainConfig(**settings["prior"])
    # The prior never sees the captured person: where the shipped one was trained with these
    # settings, training it again would only repeat it (npga_taichi.prior.pretrained).
    use_shipped = not cfg.train_prior and shipped_prior_for(prior_cfg) is not None
    prior_argv = ["prior", "pretrained", "--out", str(p.prior)] if use_shipped else \
        ["prior", "fit", "--out", str(p.prior), *flags["prior"][0]]
    # `npga fit` applies the preset itself; the demo's own changes (e.g. fewer steps) go on top.
    demo = preset_overrides(cfg.preset, "demo")
    fit_overrides = {part: demo.get(part, {}) for part in ("avatar", "train")}
    fit_flags = _as_flags({**fit_overrides["avatar"], **fit_overrides["train"]}, None)[0]
    # An interrupted fit continues from its last checkpoint instead of refusing to start.
    resume = not force and (p.run / "checkpoints" / "latest.pt").is_file()
    render_limit = ["--max-frames", str(cfg.render_frames)] if cfg.render_frames else []

    def fit_avatar_config():
        from npga_taichi.avatar.config import AvatarConfig

        return AvatarConfig(**{**preset_overrides(cfg.preset, "avatar"), **fit_overrides["avatar"]})

    def capture(p: DemoPaths):
        from npga_taichi.data.capture import CaptureConfig, image_size, write_capture

        capture_cfg = dict(settings["capture"])
        config = CaptureConfig.preset(capture_cfg.pop("preset"), identity_seed=cfg.identity,
                                      participant=cfg.identity % 1000, **capture_cfg)
        # The capture's kernel compiles on one core for ~30 s on a fresh machine: meanwhile a
        # second process compiles the avatar's render kernels for the fit (~16 s saved there).
        with render_kernels_compiling(*image_size(config.downscale), fit_avatar_config(), device):
            return write_capture(p.capture, config, force=force, progress=True)

    def prior(p: DemoPaths):
        return obtain_prior(p.prior, prior_cfg, train=cfg.train_prior, force=force, progress=True, log=log)

    def track(p: DemoPaths):
        from npga_taichi.prior.tracking import track_capture

        return track_capture(p.participant_dir, p.prior, force=force, progress=True, **settings["track"])

    def distill(p: DemoPaths):
        from npga_taichi.prior.distill import DistillConfig, distill
        from npga_taichi.prior.model import load_prior
        from npga_taichi.prior.tracking import load_trackings

        trackings = list(load_trackings(p.tracking_dir).values())
        return distill(load_prior(p.prior), trackings, p.distill, DistillConfig(**settings["distill"]),
                       force=force, progress=True, log=log)

    def fit(p: DemoPaths):
        from npga_taichi.avatar.fitting import fit_avatar

        return fit_avatar(p.capture, p.run, prior=p.prior, field=p.distill, preset=cfg.preset,
                          avatar_overrides=fit_overrides["avatar"], train_overrides=fit_overrides["train"],
                          resume=resume, force=force, device=device, progress=True, log=log)

    def evaluate(p: DemoPaths):
        from npga_taichi.evaluation import evaluate_run

        return evaluate_run(p.run, p.eval, device=device, force=True)

    def render(p: DemoPaths):
        from npga_taichi.render_run import render_run

        return render_run(p.run, p.render, side_by_side=True, device=device, force=True,
                          max_frames=cfg.render_frames)

    return [
        Stage("capture", ["synth", str(p.capture), "--identity", str(cfg.identity), *flags["capture"][0]],
              lambda p: p.participant_dir / "synthetic_capture.json", capture, _capture_done, flags["capture"][1]),
        Stage("prior", prior_argv, lambda p: p.prior / "metrics.json", prior,
              not_in_cli=[] if use_shipped else flags["prior"][1]),
        Stage("track", ["track", str(p.participant_dir), "--prior", str(p.prior), *flags["track"][0]],
              lambda p: p.tracking_dir, track, _tracking_done, flags["track"][1]),
        Stage("distill", ["distill", "--prior", str(p.prior), "--tracking", str(p.tracking_dir),
                          "--out", str(p.distill), *flags["distill"][0]],
              lambda p: p.distill / "metrics.json", distill, not_in_cli=flags["distill"][1]),
        Stage("fit", ["fit", str(p.capture), "--out", str(p.run), "--prior", str(p.prior), "--field", str(p.distill),
                      "--preset", cfg.preset, *fit_flags, "--device", device, *(["--resume"] if resume else [])],
              lambda p: p.run / "summary.json", fit, lambda p: _json_flag(p.run / "summary.json", "finished")),
        Stage("eval", ["eval", str(p.run), "--out", str(p.eval), "--force", "--device", device],
              lambda p: p.eval / "summary.json", evaluate),
        Stage("render", ["render", str(p.run), "--side-by-side", "--out", str(p.render), "--force",
                         "--device", device, *render_limit],
              lambda p: p.render / "video.mp4", render),
    ]


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished (reaped) children: a stage's
    difference over its wall time says how many cores it kept busy (its worker processes end
    with it)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_pipeline(cfg: DemoConfig, echo: Callable[[str], None] = print) -> dict:
    """Run (or skip) every stage; returns the record written to ``OUT/pipeline.json``.

    ``echo`` receives one line per stage (its equivalent command, its wall time) and the stages'
    own log lines. A stage that fails raises RuntimeError naming the stage and the reason.
    """
    cfg.validate()
    paths = DemoPaths(cfg)
    paths.root.mkdir(parents=True, exist_ok=True)
    record_path = paths.root / "pipeline.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    old = record.get("config", {})
    if old and not cfg.force and (old.get("preset"), old.get("identity")) != (cfg.preset, cfg.identity):
        raise ValueError(f"{paths.root} holds a demo with preset={old.get('preset')} identity={old.get('identity')}; "
                         f"use another OUT or --force to rebuild it with preset={cfg.preset} identity={cfg.identity}")
    record["config"] = asdict(cfg)
    record.setdefault("stages", {})
    total_start = time.perf_counter()
    for stage in stages(cfg, paths, log=echo):
        output = stage.output(paths)
        if stage.is_done(paths) and not cfg.force:
            echo(f"[{stage.name}] done already ({output}), skipping")
            record["stages"].setdefault(stage.name, {})["skipped"] = True
            continue
        argv = list(stage.argv)
        if cfg.force and "--force" not in argv and "--resume" not in argv:
            argv.append("--force")
        beyond = f" (+ {cfg.preset} settings without an option: {', '.join(stage.not_in_cli)})" \
            if stage.not_in_cli else ""
        echo(f"[{stage.name}] npga {' '.join(argv)}{beyond}")
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        try:
            stage.run(paths)
        except (ValueError, FileNotFoundError, FileExistsError) as err:
            raise RuntimeError(f"stage {stage.name} (`npga {' '.join(argv)}`) failed: {err}") from err
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
        if not stage.is_done(paths):
            raise RuntimeError(f"stage {stage.name} finished but its output {output} is missing or incomplete")
        record["stages"][stage.name] = {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "argv": argv,
                                        "skipped": False, "output": str(output)}
        echo(f"[{stage.name}] finished in {seconds:.1f} s ({cpu / max(seconds, 1e-9):.2f} cores busy)")
        write_text_atomic(json.dumps(record, indent=2) + "\n", record_path)
    record["total_seconds_this_call"] = round(time.perf_counter() - total_start, 2)
    summary_path = paths.eval / "summary.json"
    record["metrics"] = json.loads(summary_path.read_text())
    record["video"] = str(paths.render / "video.mp4")
    write_text_atomic(json.dumps(record, indent=2) + "\n", record_path)
    return record
