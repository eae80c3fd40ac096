"""Training speed of the NPGA avatar: steps per second and where the time goes.

Runs the real :class:`~npga_taichi.avatar.trainer.Trainer` step (deformation with F + G, our
Taichi rasterizer, L1 + D-SSIM + regularisers, Adam, ADC) on an in-memory stand-in capture of
the default size (275 x 401 images, a head-sized cloud of the preset's Gaussian count, F with the
distilled field's default architecture), then times each component in isolation.

    python benchmarks/train.py --out benchmarks/results/train.json   # default preset
    python benchmarks/train.py --preset tiny --steps 20 --json

``--curve DEMO`` instead trains the avatar of a finished default demo folder (its capture, prior,
tracking and distilled F) twice in one run, with the schedule before issue 16
(:data:`OLD_SCHEDULE`: ``long`` without image colours) and with the ``default`` preset's
shorter one, and draws held-out PSNR against training wall time and step for both in one
figure (``--curve-out``/curve.png, beside curve.json):

    python benchmarks/train.py --curve demo/ --curve-out benchmarks/results/train_curve
"""
from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np
import torch

from npga_taichi import metrics
from npga_taichi.avatar.config import preset as get_preset
from npga_taichi.avatar.density_control import GradientStats, densify_and_prune
from npga_taichi.avatar.laplacian import KnnLaplacian, knn_graph, laplacian_loss
from npga_taichi.avatar.model import NPGAAvatar, get_rasterizer
from npga_taichi.cameras import Camera
from npga_taichi.avatar.trainer import AvatarData, Trainer, View, regularizers

WIDTH, HEIGHT = 275, 401   # the default synthetic capture's image size

# The default avatar schedule before issue 16 (29 min 41 s of fit, 31.69 dB held out on 31337): the
# `long` preset without issue 16's image-coloured initialisation. `--curve` trains it as "old"
# beside the `default` preset (1400 steps of two views, a smaller G) as "new".
OLD_SCHEDULE: dict[str, dict] = {"avatar": {"init_colors_from_images": False}, "train": {}}
OLD_PRESET, NEW_PRESET = "long", "default"
EXP_DIM = 16               # the distilled field's default expression size


class StandInCapture:
    """Cameras on a ring around a head-sized target, with a soft disc image as ground truth."""

    def __init__(self, n_cams: int = 8):
        self.cameras = {}
        for i in range(n_cams):
            ang = -0.6 + 1.2 * i / max(n_cams - 1, 1)
            rot = torch.tensor([[math.cos(ang), 0, -math.sin(ang)], [0, 1, 0], [math.sin(ang), 0, math.cos(ang)]])
            view = torch.eye(4)
            view[:3, :3] = rot
            view[2, 3] = 1.0
            K = torch.tensor([[690.0, 0, WIDTH / 2], [0, 690.0, HEIGHT / 2], [0, 0, 1]])
            self.cameras[f"cam{i}"] = Camera(f"cam{i}", view, K, WIDTH, HEIGHT)
        yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
        r = np.hypot((xx - WIDTH / 2) / 90, (yy - HEIGHT / 2) / 120)
        self.alpha = (r < 1).astype(np.float32)[..., None]
        self.image = np.stack([0.8 - 0.2 * r, 0.6 - 0.1 * r, 0.5 + 0 * r], -1).clip(0, 1).astype(np.float32)

    def load_image(self, seq, t, serial):
        return self.image

    def load_alpha(self, seq, t, serial):
        return self.alpha


def stand_in_tracking(frames: int = 8):
    g = torch.Generator().manual_seed(0)
    return SimpleNamespace(timesteps=np.arange(frames), z_exp=torch.randn(frames, EXP_DIM, generator=g) * 0.3,
                           rot=torch.eye(3).expand(frames, 3, 3), trans=torch.zeros(frames, 3), scale=0.25)


def make_avatar(avatar_cfg, use_field: bool) -> NPGAAvatar:
    from npga_taichi.prior.forward_field import ForwardDeformationField, ForwardFieldConfig

    field = ForwardDeformationField(ForwardFieldConfig(lat_dim_exp=EXP_DIM)) if use_field else None
    avatar_cfg = dataclasses.replace(avatar_cfg, exp_dim=EXP_DIM)
    avatar = NPGAAvatar(avatar_cfg, field, EXP_DIM, extent=0.5)
    n = avatar_cfg.num_init_gaussians
    g = torch.Generator().manual_seed(1)
    pts = torch.randn(n, 3, generator=g)
    pts = pts / pts.norm(dim=-1, keepdim=True) * torch.tensor([0.38, 0.5, 0.42])  # head-sized ellipsoid
    rgb = torch.rand(n, 3, generator=g)
    avatar.gaussians.initialize(pts, rgb, avatar_cfg.init_opacity, 1.0, avatar_cfg.init_latent_std, g)
    avatar.rebuild_graph()
    return avatar


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (kernel compiles, allocator)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def time_steps(avatar_cfg, train_cfg, views_per_step: int, cameras_per_frame: int, steps: int) -> dict:
    """Steps/s, views/s and the per-component share of ``steps`` trainer steps (after one warm-up)."""
    train_cfg = dataclasses.replace(train_cfg, views_per_step=views_per_step, cameras_per_frame=cameras_per_frame)
    capture, tracking = StandInCapture(), stand_in_tracking()
    views = [View("S", i, i, s) for i in range(8) for s in capture.cameras]
    data = AvatarData(capture, {"S": tracking}, views, [], tuple(train_cfg.background))
    avatar = make_avatar(avatar_cfg, use_field=True)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(tmp, avatar, data, avatar_cfg, train_cfg, progress=False, rasterizer=get_rasterizer())
        trainer.train_step()  # warm-up: kernel compiles, image cache
        trainer.timings.clear()
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            trainer.train_step()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    total = sum(trainer.timings.values())
    return {"views_per_step": views_per_step, "cameras_per_frame": cameras_per_frame,
            "steps_per_s": steps / wall, "views_per_s": steps * views_per_step / wall,
            "step_ms": 1000 * wall / steps, "cpu_ms_per_step": 1000 * cpu / steps,
            "breakdown_ms": {k: 1000 * v / steps for k, v in trainer.timings.items()},
            "share": {k: v / total for k, v in trainer.timings.items()}}, trainer, data, views


def train_curves(demo: Path, out: Path, reuse_old: Path | None = None, reuse_new: Path | None = None,
                 device: str = "cpu") -> dict:
    """Train the avatar of finished demo folder ``demo`` with OLD_SCHEDULE and with the NEW_PRESET
    preset (runs in ``out``/old and ``out``/new), draw both curves into ``out``/curve.png and
    return their figures. ``reuse_old`` / ``reuse_new``: an existing finished run of that schedule
    on the same demo's inputs instead of training one."""
    from npga_taichi.avatar.fitting import fit_avatar
    from npga_taichi.training_curve import plot_runs, read_curve

    runs = {"old schedule": reuse_old or out / "old", "new schedule": reuse_new or out / "new"}
    reused = {"old schedule": reuse_old, "new schedule": reuse_new}
    out.mkdir(parents=True, exist_ok=True)
    for (label, run), preset, overrides in zip(runs.items(), (OLD_PRESET, NEW_PRESET),
                                               (OLD_SCHEDULE, {"avatar": {}, "train": {}})):
        if reused[label] is not None:
            continue
        fit_avatar(demo / "capture", run, prior=demo / "prior", field=demo / "distill", preset=preset,
                   avatar_overrides=overrides["avatar"], train_overrides=overrides["train"], force=True,
                   device=device, progress=True)
    plot_runs(runs, out / "curve.png", title="held-out masked PSNR: schedule before issue 16 vs the default preset")
    results = {"old_schedule": OLD_SCHEDULE, "runs": {}}
    for label, run in runs.items():
        c = read_curve(run)
        summary = json.loads((Path(run) / "summary.json").read_text())
        results["runs"][label] = {
            "run": str(run), "steps": summary["step"], "train_time_s": summary["train_time_s"],
            "final_val_masked_psnr": float(c["val_masked_psnr"][-1]) if len(c["step"]) else None,
            "curve": {"step": c["step"].tolist(), "elapsed_s": c["elapsed"].tolist(),
                      "val_masked_psnr": c["val_masked_psnr"].tolist()}}
    old, new = results["runs"]["old schedule"], results["runs"]["new schedule"]
    if old["final_val_masked_psnr"] is not None:
        # When the new schedule first reaches the old one's final held-out PSNR (None: never).
        reach = [t for t, v in zip(new["curve"]["elapsed_s"], new["curve"]["val_masked_psnr"])
                 if v >= old["final_val_masked_psnr"]]
        results["new_reaches_old_final_psnr_after_s"] = reach[0] if reach else None
    (out / "curve.json").write_text(json.dumps(results, indent=2))
    return results


@click.command()
@click.option("--preset", type=click.Choice(["tiny", "default", "long"]), default="default", show_default=True)
@click.option("--steps", type=int, default=30, show_default=True, help="Trainer steps timed.")
@click.option("--repeats", type=int, default=5, show_default=True, help="Repeats per component timing.")
@click.option("--views", "views_per_step", type=int, default=4, show_default=True,
              help="Views per step for the multi-view comparison (one frame per view vs one frame for all).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the results as JSON here.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--curve", "curve_demo", type=click.Path(file_okay=False, exists=True), default=None,
              help="Instead of timing steps: train this finished default demo folder's avatar with the old "
                   "and the new schedule and plot held-out PSNR against wall time (slow: both full fits).")
@click.option("--curve-out", type=click.Path(file_okay=False), default="benchmarks/results/train_curve",
              show_default=True, help="Folder for --curve's runs, curve.png and curve.json.")
@click.option("--reuse-old", type=click.Path(file_okay=False, exists=True), default=None,
              help="With --curve: a finished old-schedule run folder of the same demo, instead of training one.")
@click.option("--reuse-new", type=click.Path(file_okay=False, exists=True), default=None,
              help="With --curve: a finished new-schedule run folder of the same demo, instead of training one.")
def main(preset, steps, repeats, views_per_step, out, as_json, curve_demo, curve_out, reuse_old, reuse_new):
    """Time training steps and their components at a preset's default settings.

    Three step kinds are timed in the same run, in this one process: one view per step, VIEWS
    views per step each from its own frame (one deformation per view: the baseline), and VIEWS
    views of one frame (one deformation rendered into VIEWS cameras).
    """
    if curve_demo:
        results = train_curves(Path(curve_demo), Path(curve_out), Path(reuse_old) if reuse_old else None,
                               Path(reuse_new) if reuse_new else None)
        print(json.dumps({k: v for k, v in results.items() if k != "runs"}
                         | {label: {k: r[k] for k in ("steps", "train_time_s", "final_val_masked_psnr")}
                            for label, r in results["runs"].items()}, indent=2))
        return
    avatar_cfg, train_cfg = get_preset(preset)
    train_cfg = dataclasses.replace(train_cfg, steps=10 ** 6, val_interval=10 ** 6, checkpoint_interval=10 ** 6,
                                    log_interval=10 ** 6, densify_from=10 ** 6)
    results: dict = {"preset": preset, "image": [WIDTH, HEIGHT], "threads": torch.get_num_threads()}
    kinds = {}
    for label, vps, cpf in (("single_view", 1, 1), ("views_separate_frames", views_per_step, 1),
                            ("views_one_frame", views_per_step, views_per_step)):
        kinds[label], trainer, data, views = time_steps(avatar_cfg, train_cfg, vps, cpf, steps)
    results["steps"] = kinds
    results["gaussians"] = len(trainer.avatar.gaussians)
    results["steps_per_s"] = kinds["single_view"]["steps_per_s"]
    results["step_ms"] = kinds["single_view"]["step_ms"]
    rasterize = get_rasterizer()

    # Isolated components (same sizes): what the backward time is made of.
    avatar = trainer.avatar
    frame = data.frame(views[0])
    camera = data.camera(views[0].serial)
    target, alpha = data.target(views[0])

    def deform_fwd():
        with torch.no_grad():
            avatar.deform(frame)

    def deform_fwd_bwd():
        posed = avatar.deform(frame)
        (posed.means.sum() + posed.quats.sum() + posed.scales.sum() + posed.colors.sum()
         + posed.opacities.sum()).backward()

    posed = avatar.deform(frame)
    colors, sh_degree = avatar.raster_colors(posed)
    leaves = [t.detach().clone().requires_grad_(True) for t in
              (posed.means, posed.quats, posed.scales, posed.opacities, colors)]

    def raster_fwd():
        with torch.no_grad():
            rasterize(*leaves, camera.viewmat, camera.K, camera.width, camera.height, sh_degree=sh_degree,
                      background=data.background)

    def raster_fwd_bwd():
        out = rasterize(*leaves, camera.viewmat, camera.K, camera.width, camera.height, sh_degree=sh_degree,
                        background=data.background)
        metrics.l1_loss(out.image, target).backward()

    image = torch.rand(HEIGHT, WIDTH, 3, requires_grad=True)

    def losses_fwd_bwd():
        loss = metrics.l1_loss(image, target) + 0.2 * metrics.dssim_loss(image, target)
        loss.backward()

    def regs_fwd_bwd():
        p = avatar.deform(frame)
        reg, _ = regularizers(avatar, p, torch.zeros(HEIGHT, WIDTH, 1), alpha, train_cfg)
        reg.backward()

    # The two Laplacian regularisers at the preset's Gaussian cap: the sparse operator training
    # uses against the gather twin (the code before 11-30's change; its backward scatters).
    n_cap = avatar_cfg.max_gaussians
    graph = knn_graph(torch.randn(n_cap, 3, generator=torch.Generator().manual_seed(0)), avatar_cfg.knn_k)
    sparse_op = KnnLaplacian(graph)
    lap_latents = torch.randn(n_cap, max(avatar_cfg.latent_dim, 1), requires_grad=True)
    lap_dynamics = torch.randn(n_cap, 3, requires_grad=True)

    def laplacians_sparse():
        (sparse_op.loss(lap_latents) + sparse_op.loss(lap_dynamics)).backward()

    def laplacians_gather():
        (laplacian_loss(lap_latents, graph) + laplacian_loss(lap_dynamics, graph)).backward()

    def adc_pass():
        g = avatar.gaussians
        saved = {k: v.detach().clone() for k, v in g.per_gaussian().items()}
        stats = GradientStats(len(g))
        stats.update(torch.rand(len(g), 2) * 1e-3, torch.ones(len(g), dtype=torch.int32), WIDTH, HEIGHT)
        densify_and_prune(g, None, stats, grad_threshold=train_cfg.densify_grad_threshold, extent=avatar.extent,
                          percent_dense=train_cfg.percent_dense, prune_opacity=train_cfg.prune_opacity,
                          max_scale_frac=train_cfg.prune_max_scale_frac, max_gaussians=avatar_cfg.max_gaussians)
        avatar.rebuild_graph()
        for k, v in saved.items():
            g.set_param(k, v)
        avatar.rebuild_graph()

    comp = {
        "deform_forward": timed(deform_fwd, repeats),
        "deform_forward_backward": timed(deform_fwd_bwd, repeats),
        "raster_forward": timed(raster_fwd, repeats),
        "raster_forward_backward": timed(raster_fwd_bwd, repeats),
        "losses_forward_backward (L1 + D-SSIM)": timed(losses_fwd_bwd, repeats),
        "regularizers_with_deform_forward_backward": timed(regs_fwd_bwd, repeats),
        f"laplacians_forward_backward_sparse ({n_cap} Gaussians)": timed(laplacians_sparse, repeats),
        f"laplacians_forward_backward_gather_twin ({n_cap} Gaussians)": timed(laplacians_gather, repeats),
        "adc_pass_incl_two_knn_rebuilds (every densify_interval steps)": timed(adc_pass, 2),
    }
    results["components_ms"] = {k: 1000 * v for k, v in comp.items()}
    results["adc_ms_per_step_amortised"] = 1000 * comp[
        "adc_pass_incl_two_knn_rebuilds (every densify_interval steps)"] / 2 / train_cfg.densify_interval
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2))
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        print(f"preset {preset}: {results['gaussians']} Gaussians, {WIDTH}x{HEIGHT}, {results['threads']} threads")
        for label, r in kinds.items():
            print(f"  {label:<22} {r['views_per_step']} views/step: {r['steps_per_s']:.2f} steps/s, "
                  f"{r['views_per_s']:.2f} views/s ({r['step_ms']:.0f} ms/step)")
            print("      share: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["share"].items()))
        for k, v in results["components_ms"].items():
            print(f"  {k:<60} {v:8.1f} ms")
        print(f"  ADC amortised per step {results['adc_ms_per_step_amortised']:.2f} ms")


if __name__ == "__main__":
    main()
