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

A stage is *done* when its final output file exists; done stages are skipped, so an
interrupted demo resumes where it stopped (each command itself checkpoints atomically).
``force`` reruns every stage. Wall times per stage are recorded in ``OUT/pipeline.json``.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

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
    """One pipeline step: a command line and the file that proves it finished."""

    name: str
    argv: Callable[["DemoPaths"], list[str]]   # npga arguments (after "npga")
    output: Callable[["DemoPaths"], Path]      # final output file; exists => stage done


@dataclass
class DemoPaths:
    config: DemoConfig
    root: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.config.out)

    @property
    def capture(self) -> Path:
        return self.root / "capture"

    @property
    def prior(self) -> Path:
        return self.root / "prior"

    @property
    def distill(self) -> Path:
        return self.root / "distill"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def render(self) -> Path:
        return self.root / "render"

    def participant_dir(self) -> Path:
        """``OUT/capture/<pid>`` (the synthetic capture holds exactly one participant)."""
        dirs = sorted(p.parent.parent for p in self.capture.glob("*/calibration/camera_params.json"))
        if len(dirs) != 1:
            raise ValueError(f"expected one participant in {self.capture}, found {[d.name for d in dirs]}")
        return dirs[0]

    def tracking_dir(self) -> Path:
        return self.participant_dir() / "annotations" / "tracking"


def _tracking_done(p: DemoPaths) -> Path:
    """The last sequence's tracking file: tracking writes sequences in order, FREE included."""
    try:
        pdir = p.participant_dir()
    except ValueError:
        return p.capture / "__no_capture_yet__"
    seqs = sorted(d.name for d in (pdir / "sequences").iterdir() if d.is_dir())
    missing = [s for s in seqs if not (pdir / "annotations" / "tracking" / f"{s}.npz").is_file()]
    return pdir / "annotations" / "tracking" / (f"{missing[0]}.npz" if missing else f"{seqs[-1]}.npz")


def stages(cfg: DemoConfig) -> list[Stage]:
    """The demo's stages for ``cfg``: the command lines every stage runs."""
    preset = ["--preset", cfg.preset]
    render_limit = ["--max-frames", str(cfg.render_frames)] if cfg.render_frames else []
    return [
        Stage("capture", lambda p: ["synth", str(p.capture), *preset, "--identity", str(cfg.identity)],
              lambda p: p.capture / "synth.json"),
        Stage("prior", lambda p: ["prior", "fit", "--out", str(p.prior), *preset],
              lambda p: p.prior / "prior.pt"),
        Stage("track", lambda p: ["track", str(p.capture), "--prior", str(p.prior), *preset],
              _tracking_done),
        Stage("distill", lambda p: ["distill", "--prior", str(p.prior), "--tracking", str(p.tracking_dir()),
                                    "--out", str(p.distill), *preset],
              lambda p: p.distill / "forward_field.pt"),
        Stage("fit", lambda p: ["fit", str(p.capture), "--out", str(p.run), "--prior", str(p.prior),
                                "--field", str(p.distill), *preset, "--device", cfg.device],
              lambda p: p.run / "summary.json"),
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
        if output.exists() and not cfg.force:
            echo(f"[{stage.name}] done already ({output}), skipping")
            record["stages"].setdefault(stage.name, {})["skipped"] = True
            continue
        argv = stage.argv(paths)
        if cfg.force and stage.name not in ("eval", "render") and "--force" not in argv:
            argv.append("--force")
        echo(f"[{stage.name}] npga {' '.join(argv)}")
        start = time.perf_counter()
        runner(argv)
        seconds = time.perf_counter() - start
        output = stage.output(paths)
        if not output.exists():
            raise RuntimeError(f"stage {stage.name} finished but its output {output} is missing")
        record["stages"][stage.name] = {"seconds": round(seconds, 2), "argv": argv, "skipped": False,
                                        "output": str(output)}
        echo(f"[{stage.name}] finished in {seconds:.1f} s")
        from npga_taichi.checkpoint import write_text_atomic

        write_text_atomic(json.dumps(record, indent=2) + "\n", record_path)
    record["total_seconds_this_call"] = round(time.perf_counter() - total_start, 2)
    summary_path = paths.eval / "summary.json"
    record["metrics"] = json.loads(summary_path.read_text())
    record["video"] = str(paths.render / "video.mp4")
    from npga_taichi.checkpoint import write_text_atomic

    write_text_atomic(json.dumps(record, indent=2) + "\n", record_path)
    return record
