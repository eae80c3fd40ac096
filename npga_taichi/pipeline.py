"""The demo's stage runner: synth -> prior -> track -> distill -> fit -> eval -> render.

Every stage is the corresponding ``npga`` command run in-process (so the demo exercises exactly
what users run by hand) and owns one folder under the demo directory::

    OUT/capture   npga synth          (the synthetic multi-view capture, NeRSemble layout)
    OUT/prior     npga prior fit      (the MonoNPHM prior)
    OUT/capture/<pid>/annotations/tracking   npga track  (codes and poses per frame)
    OUT/distill   npga distill        (the forward deformation field F)
    OUT/run       npga fit            (the avatar)
    OUT/eval      npga eval           (metrics.csv, summary.json, worst.png)
    OUT/render    npga render         (video.mp4: held-out sequence, ground truth beside it)

A stage is *done* when its final output file exists (the capture's synthetic_capture.json must
say ``complete``, the run's summary.json ``finished``); done stages are skipped, so an
interrupted demo resumes where it stopped (each command resumes from its own checkpoints).
``force`` reruns every stage. Wall times per stage are recorded in ``OUT/pipeline.json``.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from npga_taichi.checkpoint import write_text_atomic

PRESETS = ("tiny", "default")


@dataclass
class DemoConfig:
    """What the demo builds."""

    out: str                      # demo folder (stage folders live inside it)
    preset: str = "default"       # "tiny": minutes, for CI and tests; "default": the README numbers
    identity: int = 0             # seed of the synthetic person (npga synth --identity)
    render_frames: int | None = None  # frames in the final video (None: the whole held-out sequence)
    force: bool = False           # rerun every stage even if its output exists
    device: str = "cpu"           # torch device for the avatar stages

    def validate(self) -> "DemoConfig":
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {PRESETS}")
        if self.identity < 0:
            raise ValueError(f"identity must be a non-negative seed, got {self.identity}")
        return self


@dataclass
class Stage:
    """One pipeline step: an ``npga`` command line (or an in-process API call) and its output."""

    name: str
    argv: Callable[["DemoPaths"], list[str]]   # npga arguments (after "npga"), shown and recorded
    output: Callable[["DemoPaths"], Path]      # final output file
    done: Callable[["DemoPaths"], bool] | None = None  # finished? [default: output exists]
    call: Callable[["DemoPaths", bool], None] | None = None  # run via the Python API instead (force)

    def is_done(self, paths: "DemoPaths") -> bool:
        return self.done(paths) if self.done is not None else self.output(paths).exists()


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


def _fit_args(p: DemoPaths) -> list[str]:
    # An interrupted fit continues from its last checkpoint instead of refusing to start.
    return ["--resume"] if (p.run / "checkpoints" / "latest.pt").is_file() else []


# Per-preset arguments of every stage. "default" is the schedule the README's numbers come from;
# "tiny" is sized for CI and the test suite (a few minutes on a busy 2-core machine).
STAGE_OPTIONS: dict[str, dict[str, list[str]]] = {
    "tiny": {
        "synth": ["--preset", "tiny", "--samples", "1", "--frames", "3"],
        "prior": ["--preset", "tiny", "--steps", "100", "--identities", "2", "--expressions", "4"],
        "track": ["--steps-first", "40", "--steps", "5", "--points", "400"],
        "distill": ["--steps", "60", "--hidden", "32", "--layers", "2"],
        "fit": ["--preset", "tiny", "--steps", "100"],
    },
    "default": {
        "synth": ["--preset", "default"],
        "prior": ["--preset", "small"],
        "track": [],
        "distill": [],
        "fit": ["--preset", "default"],
    },
}

# The tiny preset's prior and F also shrink the sample pools and the final evaluations, which
# the CLIs do not expose (with the CLI defaults those evaluations take most of the time: ~10x).
TINY_PRIOR = dict(preset="tiny", n_identities=2, n_expressions=4, n_heldout_expressions=1, points_surface=400,
                  points_near=400, points_space=150, batch_shapes=2, batch_points=400, steps=100,
                  eval_points=400, eval_fit_steps=10, checkpoint_every=50, lr=3e-3)
TINY_DISTILL = dict(steps=60, hidden_dim=32, n_layers=2, batch_points=1024, surface_points=3000, eval_points=300,
                    eval_codes=4, root_points=50, root_codes=2, root_iters=15, checkpoint_every=30)


def _tiny_prior(p: "DemoPaths", force: bool) -> None:
    from npga_taichi.prior.config import PriorTrainConfig
    from npga_taichi.prior.training import fit_prior

    fit_prior(p.prior, PriorTrainConfig(**TINY_PRIOR), force=force, progress=True, log=print)


def _tiny_distill(p: "DemoPaths", force: bool) -> None:
    from npga_taichi.prior.distill import DistillConfig, distill
    from npga_taichi.prior.model import load_prior
    from npga_taichi.prior.tracking import load_tracking

    trackings = [load_tracking(f) for f in sorted(p.tracking_dir.glob("*.npz"))]
    distill(load_prior(p.prior), trackings, p.distill, DistillConfig(**TINY_DISTILL), force=force, progress=True,
            log=print)


def stages(cfg: DemoConfig) -> list[Stage]:
    """The demo's stages for ``cfg``: the command lines every stage runs."""
    opt = STAGE_OPTIONS[cfg.preset]
    render_limit = ["--max-frames", str(cfg.render_frames)] if cfg.render_frames else []
    return [
        Stage("capture", lambda p: ["synth", str(p.capture), "--identity", str(cfg.identity), *opt["synth"]],
              lambda p: p.participant_dir / "synthetic_capture.json", _capture_done),
        Stage("prior", lambda p: ["prior", "fit", "--out", str(p.prior), *opt["prior"]],
              lambda p: p.prior / "metrics.json", call=_tiny_prior if cfg.preset == "tiny" else None),
        Stage("track", lambda p: ["track", str(p.participant_dir), "--prior", str(p.prior), *opt["track"]],
              lambda p: p.tracking_dir, _tracking_done),
        Stage("distill", lambda p: ["distill", "--prior", str(p.prior), "--tracking", str(p.tracking_dir),
                                    "--out", str(p.distill), *opt["distill"]],
              lambda p: p.distill / "metrics.json", call=_tiny_distill if cfg.preset == "tiny" else None),
        Stage("fit", lambda p: ["fit", str(p.capture), "--out", str(p.run), "--prior", str(p.prior),
                                "--field", str(p.distill), *opt["fit"], "--device", cfg.device,
                                *([] if cfg.force else _fit_args(p))],
              lambda p: p.run / "summary.json", lambda p: _json_flag(p.run / "summary.json", "finished")),
        Stage("eval", lambda p: ["eval", str(p.run), "--out", str(p.eval), "--force", "--device", cfg.device],
              lambda p: p.eval / "summary.json"),
        Stage("render", lambda p: ["render", str(p.run), "--side-by-side", "--out", str(p.render), "--force",
                                   "--device", cfg.device, *render_limit],
              lambda p: p.render / "video.mp4"),
    ]


def run_cli(argv: list[str]) -> None:
    """Run one ``npga`` command in this process; a failing command raises RuntimeError."""
    import click

    from npga_taichi.cli.main import cli

    try:
        cli.main(args=argv, prog_name="npga", standalone_mode=False)
    except click.ClickException as err:
        raise RuntimeError(f"`npga {' '.join(argv)}` failed: {err.format_message()}") from err
    except SystemExit as err:  # click exits on --help or usage errors even outside standalone mode
        if err.code not in (0, None):
            raise RuntimeError(f"`npga {' '.join(argv)}` exited with status {err.code}") from err


def run_pipeline(cfg: DemoConfig, echo: Callable[[str], None] = print,
                 runner: Callable[[list[str]], None] = run_cli) -> dict:
    """Run (or skip) every stage; returns the record written to ``OUT/pipeline.json``."""
    cfg.validate()
    paths = DemoPaths(cfg)
    paths.root.mkdir(parents=True, exist_ok=True)
    record_path = paths.root / "pipeline.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    record["config"] = asdict(cfg)
    record.setdefault("stages", {})
    total_start = time.perf_counter()
    for stage in stages(cfg):
        output = stage.output(paths)
        if stage.is_done(paths) and not cfg.force:
            echo(f"[{stage.name}] done already ({output}), skipping")
            record["stages"].setdefault(stage.name, {})["skipped"] = True
            continue
        argv = stage.argv(paths)
        if cfg.force and "--force" not in argv and "--resume" not in argv:
            argv.append("--force")
        start = time.perf_counter()
        if stage.call is not None:
            echo(f"[{stage.name}] (Python API, {cfg.preset} settings) like: npga {' '.join(argv)}")
            try:
                stage.call(paths, cfg.force)
            except ValueError as err:
                raise RuntimeError(f"stage {stage.name} failed: {err}") from err
        else:
            echo(f"[{stage.name}] npga {' '.join(argv)}")
            runner(argv)
        seconds = time.perf_counter() - start
        if not stage.is_done(paths):
            raise RuntimeError(f"stage {stage.name} finished but its output {output} is missing or incomplete")
        record["stages"][stage.name] = {"seconds": round(seconds, 2), "argv": argv, "skipped": False,
                                        "output": str(output)}
        echo(f"[{stage.name}] finished in {seconds:.1f} s")
        write_text_atomic(json.dumps(record, indent=2) + "\n", record_path)
    record["total_seconds_this_call"] = round(time.perf_counter() - total_start, 2)
    summary_path = paths.eval / "summary.json"
    record["metrics"] = json.loads(summary_path.read_text())
    record["video"] = str(paths.render / "video.mp4")
    write_text_atomic(json.dumps(record, indent=2) + "\n", record_path)
    return record
