"""Training-loop tests: learning, exact resume, crash safety, non-finite steps, the CLI.

The trainer is driven by a small multi-view "capture" rendered in memory by a teacher avatar
(random coloured Gaussians on a head-sized ellipsoid, moving rigidly per frame) through our
rasterizer, so these tests depend only on the avatar code and the rasterizer.
"""
import json
import math
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from npga_taichi import metrics
from npga_taichi.avatar.config import AvatarConfig, TrainConfig
from npga_taichi.avatar.model import NPGAAvatar, load_avatar, render_frame
from npga_taichi.cameras import Camera
from npga_taichi.training_curve import read_curve
from npga_taichi.avatar.trainer import AvatarData, Trainer, View, frame_code
from npga_taichi.checkpoint import load_checkpoint

W, H = 48, 64
EXP = 4
N_TEACHER = 600


def _rot_y(a):
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=torch.float32)


def _ellipsoid(n, seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(n, 3, generator=g)
    return p / p.norm(dim=-1, keepdim=True) * torch.tensor([0.38, 0.5, 0.42]), g


class TeacherCapture:
    """cameras (serial -> Camera) + load_image / load_alpha rendered by a teacher avatar."""

    def __init__(self):
        cfg = AvatarConfig(num_init_gaussians=N_TEACHER, max_gaussians=N_TEACHER, sh_degree=0, static=True,
                           use_latents=False, use_detail=False)
        self.teacher = NPGAAvatar(cfg, None, EXP)
        pts, g = _ellipsoid(N_TEACHER, 0)
        self.teacher.gaussians.initialize(pts, torch.rand(N_TEACHER, 3, generator=g), 0.9)
        self.cameras = {}
        for i, ang in enumerate(np.linspace(-0.8, 0.8, 6)):
            view = torch.eye(4)
            view[:3, :3] = _rot_y(float(ang))
            view[2, 3] = 0.6
            K = torch.tensor([[80.0, 0, W / 2], [0, 80.0, H / 2], [0, 0, 1]])
            self.cameras[f"c{i}"] = Camera(f"c{i}", view, K, W, H)
        frames = 4
        self.tracking = SimpleNamespace(
            timesteps=np.arange(frames), z_exp=torch.randn(frames, EXP, generator=g),
            rot=torch.stack([_rot_y(0.15 * t) for t in range(frames)]),
            trans=torch.tensor([[0.01 * t, 0, 0] for t in range(frames)], dtype=torch.float32), scale=0.25)
        self._cache = {}

    def _render(self, t, serial):
        if (t, serial) not in self._cache:
            with torch.no_grad():
                out = render_frame(self.teacher, self.cameras[serial], frame_code(self.tracking, t),
                                   torch.zeros(3))
            self._cache[(t, serial)] = (out.image.numpy(), out.raster.alpha.numpy())
        return self._cache[(t, serial)]

    def load_image(self, seq, t, serial):
        return self._render(t, serial)[0]

    def load_alpha(self, seq, t, serial):
        return self._render(t, serial)[1]


@pytest.fixture(scope="module")
def capture():
    return TeacherCapture()


def _configs(steps, **train):
    avatar_cfg = AvatarConfig(num_init_gaussians=500, max_gaussians=800, latent_dim=4, sh_degree=1,
                              detail_hidden=16, detail_layers=1, detail_pos_freqs=1, scratch_field_hidden=16,
                              scratch_field_layers=1, knn_k=4, use_prior_field=False, exp_dim=EXP)
    base = dict(steps=steps, densify_from=20, densify_interval=20, val_interval=10 ** 6, val_views=2,
                checkpoint_interval=10 ** 6, log_interval=10, background=(1.0, 1.0, 1.0), lr_means=1e-3)
    base.update(train)
    return avatar_cfg, TrainConfig(**base)


def _data(capture, train_cfg):
    serials = sorted(capture.cameras)
    train = [View("S", t, t, s) for t in range(4) for s in serials[:5]]
    val = [View("S", t, t, serials[5]) for t in (1, 3)]
    return AvatarData(capture, {"S": capture.tracking}, train, val, train_cfg.background)


def _student(avatar_cfg, seed=1):
    avatar = NPGAAvatar(avatar_cfg, None, EXP)
    pts, g = _ellipsoid(avatar_cfg.num_init_gaussians, seed)
    avatar.gaussians.initialize(pts, torch.full((len(pts), 3), 0.5), 0.1, 1.0, 0.05, g)
    avatar.rebuild_graph()
    return avatar


def _trainer(tmp_path, capture, steps, resume=False, dist=None, **train):
    avatar_cfg, train_cfg = _configs(steps, **train)
    torch.manual_seed(0)
    return Trainer(tmp_path, None if resume else _student(avatar_cfg), _data(capture, train_cfg),
                   avatar_cfg, train_cfg, {"data": "in-memory"}, resume=resume, progress=False, dist=dist)


@torch.no_grad()
def _mean_train_psnr(trainer):
    values = []
    for view in trainer.data.train_views[::3]:
        target, _ = trainer.data.target(view)
        out = render_frame(trainer.avatar, trainer.data.camera(view.serial), trainer.data.frame(view),
                           trainer.data.background)
        values.append(float(metrics.psnr(out.image.clamp(0, 1), target)))
    return float(np.mean(values))


def test_training_reduces_loss_and_raises_psnr(tmp_path, capture):
    trainer = _trainer(tmp_path, capture, steps=120)
    before = _mean_train_psnr(trainer)
    summary = trainer.train()
    after = _mean_train_psnr(trainer)
    print(f"training PSNR {before:.2f} -> {after:.2f} dB")
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:2])
    assert after > before + 4.0, (before, after)
    assert summary["skipped_steps"] == 0 and summary["finished"]
    assert any("adc" in r for r in records)  # densification ran
    # Run layout and the loader other commands use.
    assert (tmp_path / "config.json").is_file() and (tmp_path / "summary.json").is_file()
    assert sorted(p.name for p in (tmp_path / "val").iterdir()) == ["step_0000120.png"]
    curve = read_curve(tmp_path)
    assert curve["step"].tolist() == [120] and np.isfinite(curve["val_psnr"]).all()
    assert len(curve["train_psnr"]) == 12 and curve["train_psnr"][-1] > curve["train_psnr"][0]
    picture = iio.imread(tmp_path / "curve.png")
    assert picture.ndim == 3 and picture.shape[0] > 200 and picture.std() > 10  # a drawn figure
    avatar, paths, (acfg, tcfg, extra) = load_avatar(tmp_path)
    assert paths["step"] == 120 and extra["data"] == "in-memory" and tcfg.steps == 120
    out = avatar.gaussians_for_frame(torch.zeros(EXP), torch.eye(3), torch.zeros(3), 0.25)
    assert out["colors"].shape == (len(avatar.gaussians), 4, 3) and out["sh_degree"] == 1


def test_detail_code_noise_comes_from_the_view_sampler_per_frame_group(tmp_path, capture):
    # Drawn like the views (identically on every rank, resumed with the sampler's state): the
    # two-rank and resume tests take the default noise through their bit-for-bit comparisons.
    assert TrainConfig().detail_code_noise > 0
    a = _trainer(tmp_path / "a", capture, steps=2, detail_code_noise=0.05)
    b = _trainer(tmp_path / "b", capture, steps=2, detail_code_noise=0.05)
    draws = torch.stack(a.detail_code_noise(4000))
    assert draws.shape == (4000, EXP)
    assert abs(float(draws.std()) - 0.05) < 0.002 and abs(float(draws.mean())) < 0.002
    assert torch.equal(torch.stack(b.detail_code_noise(4000)), draws)
    assert not torch.equal(torch.stack(a.detail_code_noise(4000)), draws)  # a stream, not one draw
    assert _trainer(tmp_path / "c", capture, steps=2, detail_code_noise=0.0).detail_code_noise(3) == [None] * 3
    # a training step hands each frame group's draw, taken after the views, to the deformation
    seen, step = [], _trainer(tmp_path / "d", capture, steps=2, detail_code_noise=0.05)
    deform = step.avatar.deform
    step.avatar.deform = lambda frame, noise=None: (seen.append(noise), deform(frame, noise))[1]
    step.train_step()
    replay = _trainer(tmp_path / "e", capture, steps=2, detail_code_noise=0.05)
    replay.sample_views()
    assert len(seen) == 1 and torch.equal(seen[0], replay.detail_code_noise(1)[0])
    a.avatar.config.detail_conditioning = "deformation"  # G without the code: nothing to perturb
    assert a.detail_code_noise(3) == [None] * 3


def test_resume_equals_uninterrupted_run(tmp_path, capture):
    steps = 40  # densification at 20 and 40, so resuming at 30 crosses an ADC pass
    straight = _trainer(tmp_path / "a", capture, steps)
    straight.train()
    first = _trainer(tmp_path / "b", capture, steps, checkpoint_interval=30)
    first.train(stop_at=30)
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "latest.pt")["step"] == 30
    resumed = _trainer(tmp_path / "b", capture, steps, resume=True, checkpoint_interval=30)
    assert resumed.step == 30
    resumed.train()
    a, b = straight.avatar.state_dict(), resumed.avatar.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, k
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6, rtol=0), (k, (a[k] - b[k]).abs().max())
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for i in sa:
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(sa[i][key], sb[i][key], atol=1e-6, rtol=0)
    assert torch.equal(straight.stats.count, resumed.stats.count)


def test_non_finite_loss_skips_the_step_without_touching_parameters(tmp_path, capture, monkeypatch):
    trainer = _trainer(tmp_path, capture, steps=6)
    trainer.train(stop_at=2)
    before = {k: v.clone() for k, v in trainer.avatar.state_dict().items()}
    adam_before = {i: {k: v.clone() for k, v in s.items()}
                   for i, s in trainer.optimizer.state_dict()["state"].items()}
    import npga_taichi.avatar.trainer as trainer_module
    real = trainer_module.photometric_loss
    monkeypatch.setattr(trainer_module, "photometric_loss",
                        lambda *a: (real(*a)[0] * float("nan"), real(*a)[1]))
    record = trainer.train_step()
    assert record["skipped"] and trainer.skipped_steps == 1 and trainer.step == 3
    for k, v in trainer.avatar.state_dict().items():
        assert torch.equal(v, before[k]), k
    for i, s in trainer.optimizer.state_dict()["state"].items():
        for k, v in s.items():
            assert torch.equal(v, adam_before[i][k])
    monkeypatch.setattr(trainer_module, "photometric_loss", real)
    summary = trainer.train()
    assert summary["skipped_steps"] == 1
    assert all(torch.isfinite(v).all() for v in trainer.avatar.state_dict().values() if v.is_floating_point())


KILL_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_fit import TeacherCapture, _trainer
from pathlib import Path
trainer = _trainer(Path({run!r}), TeacherCapture(), steps=400, checkpoint_interval=5)
trainer.train()
"""


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, capture):
    run = tmp_path / "run"
    script = KILL_SCRIPT.format(tests=os.path.dirname(__file__), run=str(run))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = run / "checkpoints" / "latest.pt"
    deadline = time.time() + 600
    try:
        # Kill hard (no cleanup handlers) once a couple of checkpoints exist, mid-training.
        while time.time() < deadline and proc.poll() is None:
            if len(list((run / "checkpoints").glob("step_*.pt"))) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    saved = load_checkpoint(latest)["step"]
    assert saved >= 10 and saved % 5 == 0
    resumed = _trainer(run, capture, steps=saved + 10, resume=True, checkpoint_interval=5)
    assert resumed.step == saved
    assert not list((run / "checkpoints").glob(".*.tmp"))
    summary = resumed.train()
    assert summary["step"] == saved + 10 and summary["skipped_steps"] == 0
    assert load_checkpoint(latest)["step"] == saved + 10
    assert all(torch.isfinite(v).all() for v in resumed.avatar.state_dict().values() if v.is_floating_point())


def test_resume_cleans_leftovers_and_cuts_the_log_back(tmp_path, capture):
    """Issue 13 rows 6 and 7: temporaries a SIGKILL leaves mid-write (".step_*.pt.<rand>.tmp.pt",
    ".latest.<rand>.tmp") are removed on resume; log records past the checkpoint's step are
    dropped so the resumed steps appear once; --resume with no checkpoint is an error."""
    run = tmp_path / "run"
    first = _trainer(run, capture, steps=40, checkpoint_interval=20, log_interval=5)
    first.train(stop_at=20)
    # What a kill after step 30 (checkpoint at 20) leaves behind: log lines 25, 30, a torn line,
    # and half-written temporaries of both writers.
    with open(run / "log.jsonl", "a") as log:
        log.write(json.dumps({"step": 25}) + "\n" + json.dumps({"step": 30}) + "\n" + '{"step": 3')
    leftovers = [run / "checkpoints" / ".step_0000030.pt.k3j9x.tmp.pt", run / "checkpoints" / ".latest.9f8e.tmp"]
    for path in leftovers:
        path.write_bytes(b"torn")
    resumed = _trainer(run, capture, steps=40, resume=True, checkpoint_interval=20, log_interval=5)
    assert not any(path.exists() for path in leftovers)
    resumed.train()
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and len(steps) == len(set(steps)), steps
    assert steps[-1] == 40
    with pytest.raises(ValueError, match="no checkpoint"):
        _trainer(tmp_path / "empty", capture, steps=10, resume=True)


# ------------------------------------------------------------------------------ npga fit (CLI)
@pytest.fixture(scope="module")
def demo_out(tiny_demo):
    """The tiny demo's capture, prior, tracking and F (built once per session, see conftest)."""
    return tiny_demo["out"]


def _fit(args):
    from click.testing import CliRunner

    from npga_taichi.cli.main import cli

    return CliRunner().invoke(cli, ["fit", *map(str, args)], catch_exceptions=False)


def test_fit_cli_trains_resumes_and_protects_its_output(tmp_path, demo_out):
    run = tmp_path / "run"
    base = [demo_out / "capture", "--out", run, "--prior", demo_out / "prior", "--field", demo_out / "distill",
            "--preset", "tiny", "--no-progress", "--json"]
    first = _fit(base + ["--steps", "6"])
    assert first.exit_code == 0, first.output
    assert json.loads(first.output[first.output.index("{"):])["step"] == 6
    again = _fit(base + ["--steps", "6"])
    assert again.exit_code != 0 and "--resume" in again.output
    resumed = _fit(base + ["--steps", "10", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.output[resumed.output.index("{"):])
    assert summary["step"] == 10 and summary["finished"]
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["steps"] == 10 and config["extra"]["participant"]
    assert config["avatar"]["exp_dim"] > 0
    avatar, paths, _ = load_avatar(run)
    assert paths["step"] == 10 and len(avatar.gaussians) > 0


def test_fit_cli_ablation_flags_and_errors(tmp_path, demo_out):
    run = tmp_path / "static"
    result = _fit([demo_out / "capture", "--out", run, "--prior", demo_out / "prior", "--preset", "tiny",
                   "--steps", "2", "--static", "--no-laplacian", "--no-progress"])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["avatar"]["static"] and not config["train"]["use_laplacian"]
    avatar, _, _ = load_avatar(run)
    assert avatar.field is None and avatar.detail is None
    missing = _fit([demo_out / "capture", "--out", tmp_path / "x", "--prior", demo_out / "prior",
                    "--tracking", tmp_path / "nowhere", "--preset", "tiny"])
    assert missing.exit_code != 0 and "no tracking files" in missing.output
    no_field = _fit([demo_out / "capture", "--out", tmp_path / "y", "--prior", demo_out / "prior",
                     "--field", tmp_path / "nofield", "--preset", "tiny"])
    assert no_field.exit_code != 0 and "--no-prior" in no_field.output
    bad = _fit([demo_out / "capture", "--out", tmp_path / "z", "--views-per-step", "3", "--cameras-per-frame", "2"])
    assert bad.exit_code != 0 and "cameras_per_frame" in bad.output and not (tmp_path / "z").exists()
    nothing = _fit([demo_out / "capture", "--out", tmp_path / "w", "--resume"])
    assert nothing.exit_code != 0 and "no checkpoint to resume" in nothing.output


def test_render_kernels_compiled_beforehand_are_all_a_fit_needs(tmp_path, demo_out):
    """``npga demo`` compiles the avatar's render kernels in a second process while the capture
    compiles its own (npga_taichi.render.compile_kernels): into an empty offline cache, that
    process writes every kernel a later ``npga fit`` of that image size uses — the fit adds none.
    (It also shows a finished process writes Taichi's cache: Taichi does so only when its
    program object is destroyed, which interpreter shutdown did not do; the runtime tears Taichi
    down at exit.)"""
    from npga_taichi.data.capture import CaptureConfig, image_size
    from npga_taichi.presets import preset_overrides

    cache = tmp_path / "kernel_cache"
    env = dict(os.environ, NPGA_TAICHI_CACHE=str(cache))
    width, height = image_size(CaptureConfig.preset("tiny").downscale)
    sh_degree = AvatarConfig(**preset_overrides("tiny", "avatar")).sh_degree
    compile_only = f"from npga_taichi.render import compile_kernels; compile_kernels({width}, {height}, {sh_degree})"
    proc = subprocess.run([sys.executable, "-c", compile_only], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    compiled = sorted(p.name for p in cache.glob("*.tic"))
    assert len(compiled) >= 5, compiled
    args = [demo_out / "capture", "--out", tmp_path / "run", "--prior", demo_out / "prior", "--field",
            demo_out / "distill", "--preset", "tiny", "--steps", "1", "--no-progress"]
    proc = subprocess.run([sys.executable, "-m", "npga_taichi.cli.main", "fit", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in cache.glob("*.tic")) == compiled


# ------------------------------------------------------------------ npga fit --processes (local ranks)
def test_local_ranks_split_whole_frame_groups_and_only_on_the_cpu(monkeypatch):
    from npga_taichi.avatar.fitting import local_ranks

    monkeypatch.setattr("npga_taichi.processes.available_cores", lambda: 4)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert local_ranks(TrainConfig(), "cpu") == 1  # one view per step: nothing to split
    assert local_ranks(TrainConfig(views_per_step=2), "cpu") == 2
    assert local_ranks(TrainConfig(views_per_step=6), "cpu") == 3  # a divisor of the 6 groups, <= 4 cores
    assert local_ranks(TrainConfig(views_per_step=4, cameras_per_frame=4), "cpu") == 1  # one frame group
    assert local_ranks(TrainConfig(views_per_step=8, processes=8), "cpu") == 8  # asked for: granted
    assert local_ranks(TrainConfig(views_per_step=2), "cuda") == 1
    with pytest.raises(ValueError, match="must divide the step's 3 frame groups"):
        local_ranks(TrainConfig(views_per_step=3, processes=2), "cpu")
    with pytest.raises(ValueError, match="torchrun"):
        local_ranks(TrainConfig(views_per_step=2, processes=2), "cuda")
    monkeypatch.setenv("WORLD_SIZE", "2")  # already a torchrun rank: never spawn more
    assert local_ranks(TrainConfig(views_per_step=2), "cpu") == 1


def test_fit_in_local_processes_takes_the_single_process_steps(tmp_path, demo_out):
    """`--processes 2` trains as two data-parallel ranks in spawned processes: the same steps as
    one process with the same views per step (loss curve, Gaussian count, held-out PSNR, to
    float rounding of the summed gradients) and rank 0's summary."""
    base = [demo_out / "capture", "--prior", demo_out / "prior", "--field", demo_out / "distill",
            "--preset", "tiny", "--steps", "16", "--views-per-step", "2", "--densify-from", "5",
            "--densify-interval", "5", "--densify-until-frac", "0.7", "--val-interval", "8",
            "--checkpoint-interval", "8", "--log-interval", "5", "--no-progress", "--json"]
    runs = {}
    for n in (1, 2):
        result = _fit(base + ["--out", tmp_path / f"p{n}", "--processes", str(n)])
        assert result.exit_code == 0, result.output
        runs[n] = (json.loads(result.output[result.output.index("{"):]),
                   [json.loads(line) for line in (tmp_path / f"p{n}" / "log.jsonl").read_text().splitlines()])
    (one, log_one), (two, log_two) = runs[1], runs[2]
    assert one["ranks"] == 1 and two["ranks"] == 2 and two["rank"] == 0 and two["step"] == 16
    assert [r["step"] for r in log_one] == [r["step"] for r in log_two]
    assert [r["adc"] for r in log_one if "adc" in r] == [r["adc"] for r in log_two if "adc" in r] != []
    for a, b in zip(log_one, log_two):
        assert a["gaussians"] == b["gaussians"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert two["val_masked_psnr"] == pytest.approx(one["val_masked_psnr"], abs=1e-3)


def test_a_local_rank_error_is_the_callers_clear_error(tmp_path, demo_out):
    """A failure inside the ranks (here: a training image that does not decode) reaches the
    command as its usual one-line error naming the file, and no process is left behind."""
    import shutil

    cap = tmp_path / "cap"
    shutil.copytree(demo_out / "capture", cap)
    broken = sorted(cap.glob("*/sequences/EXP-1/timesteps/*/images-*/cam_*.png"))  # a training sequence
    for path in broken:
        path.write_bytes(b"not a png")
    result = _fit([cap, "--out", tmp_path / "run", "--prior", demo_out / "prior", "--field", demo_out / "distill",
                   "--preset", "tiny", "--steps", "5", "--views-per-step", "2", "--processes", "2", "--no-progress"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert any(str(path) in result.output for path in broken), result.output
    import multiprocessing

    assert not multiprocessing.active_children()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_stops_a_fit_in_local_processes_at_once(tmp_path, demo_out):
    """Ctrl-C (SIGINT to the foreground process group) during `npga fit --processes 2`: the
    command stops within seconds, prints no traceback, leaves no process, and the run resumes."""
    from ctrl_c import interrupt_when

    run = tmp_path / "run"
    cmd = [sys.executable, "-c", "from npga_taichi.cli.main import cli; cli()", "fit", str(demo_out / "capture"),
           "--out", str(run), "--prior", str(demo_out / "prior"), "--field", str(demo_out / "distill"),
           "--preset", "tiny", "--steps", "100000", "--views-per-step", "2", "--processes", "2",
           "--checkpoint-interval", "5", "--no-progress"]
    # the ranks are training once the first checkpoint is there
    code, output, stopped_after = interrupt_when(cmd, lambda _: (run / "checkpoints" / "latest.pt").is_file())
    assert code != 0 and stopped_after < 30, output
    assert "Traceback" not in output and "leaked" not in output, output
    step = int(load_checkpoint(run / "checkpoints" / "latest.pt")["step"])
    resumed = _fit([demo_out / "capture", "--out", run, "--steps", str(step + 2), "--resume", "--processes", "1",
                    "--no-progress", "--json"])  # any process count continues the run
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.output[resumed.output.index("{"):])
    assert summary["step"] == step + 2 and summary["ranks"] == 1
