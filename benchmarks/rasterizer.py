"""Benchmark: our Taichi rasterizer vs the tile-batched pure-PyTorch peer (tiled_peer.rasterize_tiled).

A third rasterizer calibrates the bar: ``per_pixel.rasterize_per_pixel``, the straightforward
per-pixel Taichi loop (our projection and binning, one pixel per parallel iteration, atomics in
the backward) that issue 2 expects to reach about half of its 100x. Before timing, each row
checks it agrees with ours (image and gradient errors in the JSON).

Random scenes (``random_scene``): N Gaussians uniform in the view frustum between depth 2 and 4,
random rotations, log-normal scales (median 0.04 world units, ~10 px radius at 256 px), uniform
opacities and colours, a pinhole camera with focal length = image width. For each N x size we time
forward and forward+backward (loss = sum(image * random upstream gradient)) after a warm-up,
report the median of repeats, and the fragment rate.

Wall times are medians; ``cpu`` is the process CPU time (all threads) of forward+backward,
which stays meaningful when other processes share the cores (wall time then mostly measures
waiting for a core). Fragments are counted as tile fragments: intersections x 256 (every pixel of every
(Gaussian, tile) pair), the work a tile rasterizer without early termination would do; the rate
is tile fragments / forward+backward seconds, so ours and the peer's are comparable.

    python benchmarks/rasterizer.py --out bench.json          # full grid
    python benchmarks/rasterizer.py --quick                   # 256^2 x 20k only (the acceptance bar)
    python benchmarks/rasterizer.py --quick --repeats 21 --peer-repeats 3   # steadier figures

The peer is skipped where its estimated time (from its measured fragment rate) exceeds
``--peer-budget`` seconds; the JSON says so (``"peer": {"skipped": "..."}``).
"""
from __future__ import annotations

import os

# Taichi's CPU threads and torch's OpenMP pool share the cores; libgomp's default active
# spin-wait after every torch op steals the cores from the Taichi kernels that follow (measured
# ~3x CPU time for our forward on 2 cores). Passive waiting is set before torch is imported,
# applies to both rasterizers, and is recorded in the JSON. Override by setting it yourself.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass

import click
import torch

from npga_taichi import render

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.rasterizer
    from per_pixel import rasterize_per_pixel
    from tiled_peer import rasterize_tiled
except ImportError:  # pragma: no cover
    from benchmarks.per_pixel import rasterize_per_pixel
    from benchmarks.tiled_peer import rasterize_tiled


@dataclass
class BenchConfig:
    sizes: tuple[int, ...] = (128, 256, 512)      # square image sides
    counts: tuple[int, ...] = (1000, 10000, 100000)  # Gaussians
    repeats: int = 5          # timed repeats per measurement (median reported)
    peer_repeats: int = 1     # the PyTorch peer is slow; one timed run after its warm-up
    per_pixel: bool = True    # also time the straightforward per-pixel Taichi loop (calibration)
    peer_budget_s: float = 60.0  # skip the peer where one fwd+bwd is estimated above this
    seed: int = 0             # scene seed
    channels: int = 3         # colour channels


def random_scene(n: int, width: int, height: int, seed: int = 0, dtype=torch.float32, channels: int = 3):
    """Random Gaussians in front of an identity camera: (means, quats, scales, opacities, colors,
    viewmat, K), each (N, ...) except viewmat (4, 4) and K (3, 3)."""
    g = torch.Generator().manual_seed(seed)
    f = float(width)
    z = 2.0 + 2.0 * torch.rand(n, generator=g, dtype=torch.float64)
    x = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * z * width / f
    y = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * z * height / f
    means = torch.stack([x, y, z], 1)
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    scales = torch.exp(torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.3 + math.log(0.04 * 256 / width))
    opacities = torch.rand(n, generator=g, dtype=torch.float64)
    colors = torch.rand(n, channels, generator=g, dtype=torch.float64)
    viewmat = torch.eye(4, dtype=torch.float64)
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], dtype=torch.float64)
    return tuple(t.to(dtype) for t in (means, quats, scales, opacities, colors, viewmat, K))


def _cpu_seconds() -> float:
    """CPU time of this process (all threads): robust to other processes sharing the cores."""
    return time.process_time()


def _time_once(fn, scene, width, height, upstream):
    params = [t.clone().requires_grad_(i < 5) for i, t in enumerate(scene)]
    c0, t0 = _cpu_seconds(), time.perf_counter()
    out = fn(*params, width, height)
    t1 = time.perf_counter()
    (out.image * upstream).sum().backward()
    t2, c2 = time.perf_counter(), _cpu_seconds()
    return t1 - t0, t2 - t0, c2 - c0


def _measure(fn, scene, width, height, upstream, repeats):
    """Median wall forward, wall forward+backward and CPU forward+backward seconds."""
    _time_once(fn, scene, width, height, upstream)  # warm-up (kernel compile / caches)
    runs = [_time_once(fn, scene, width, height, upstream) for _ in range(repeats)]
    return tuple(statistics.median(r[k] for r in runs) for k in range(3))


def count_intersections(scene, width, height) -> int:
    """Tile intersections of a scene (what our binning emits)."""
    means, quats, scales, opacities, _colors, viewmat, K = scene
    with torch.no_grad():
        means2d, conics, depths, radii = render._ProjectGaussians.apply(
            means, quats, scales, opacities, viewmat, K, width, height, 0.01, 1e10, 0.3)
        return render.bin_and_sort(means2d, conics, opacities, depths, radii, width, height).total


def _agreement(scene, width, height, upstream) -> dict:
    """Image max abs error and worst per-input relative L2 gradient error of the per-pixel loop
    against ours (means, quats, scales, opacities, colours)."""
    grads, images = [], []
    for fn in (render.rasterize, rasterize_per_pixel):
        params = [t.clone().requires_grad_(i < 5) for i, t in enumerate(scene)]
        out = fn(*params, width, height)
        (out.image * upstream).sum().backward()
        images.append(out.image.detach())
        grads.append([p.grad for p in params[:5]])
    rel = max(float((a - b).norm() / b.norm().clamp_min(1e-30)) for a, b in zip(grads[1], grads[0]))
    return {"image_max_abs_err": float((images[1] - images[0]).abs().max()), "grad_max_rel_err": rel}


def run_benchmark(cfg: BenchConfig, progress=print) -> list[dict]:
    rows = []
    peer_rate = None  # measured peer tile fragments / s, to estimate whether it fits the budget
    for size in cfg.sizes:
        for n in cfg.counts:
            scene = random_scene(n, size, size, cfg.seed, channels=cfg.channels)
            upstream = torch.randn(size, size, cfg.channels, generator=torch.Generator().manual_seed(1))
            isect = count_intersections(scene, size, size)
            fragments = isect * 256
            fwd, total, cpu = _measure(render.rasterize, scene, size, size, upstream, cfg.repeats)
            row = {
                "n": n, "size": size, "intersections": isect, "tile_fragments": fragments,
                "ours": {"forward_ms": 1e3 * fwd, "backward_ms": 1e3 * (total - fwd),
                         "fwd_bwd_ms": 1e3 * total, "fwd_bwd_cpu_ms": 1e3 * cpu,
                         "fragments_per_s": fragments / total},
            }
            if cfg.per_pixel:
                check = _agreement(scene, size, size, upstream)
                if check["image_max_abs_err"] > 1e-4 or check["grad_max_rel_err"] > 1e-3:
                    raise RuntimeError(f"per-pixel loop disagrees with ours at {size}² N={n}: {check}")
                qf, qt, qc = _measure(rasterize_per_pixel, scene, size, size, upstream, cfg.repeats)
                row["per_pixel"] = {"forward_ms": 1e3 * qf, "backward_ms": 1e3 * (qt - qf), "fwd_bwd_ms": 1e3 * qt,
                                    "fwd_bwd_cpu_ms": 1e3 * qc, **check}
                row["speedup_vs_per_pixel"] = qt / total
            estimate = fragments / peer_rate if peer_rate else None
            if estimate is not None and estimate > cfg.peer_budget_s:
                row["peer"] = {"skipped": f"estimated {estimate:.0f} s > budget {cfg.peer_budget_s:.0f} s"}
            else:
                pf, pt, pc = _measure(rasterize_tiled, scene, size, size, upstream, cfg.peer_repeats)
                peer_rate = fragments / pt if fragments else peer_rate
                row["peer"] = {"forward_ms": 1e3 * pf, "backward_ms": 1e3 * (pt - pf), "fwd_bwd_ms": 1e3 * pt,
                               "fwd_bwd_cpu_ms": 1e3 * pc, "fragments_per_s": fragments / pt}
                row["speedup_fwd_bwd"] = pt / total
                row["speedup_fwd_bwd_cpu"] = pc / cpu if cpu > 0 else None
                if cfg.per_pixel:
                    row["per_pixel_speedup_fwd_bwd"] = pt / row["per_pixel"]["fwd_bwd_ms"] * 1e3
            rows.append(row)
            progress(_row_line(row))
    return rows


def _row_line(row) -> str:
    ours, peer = row["ours"], row["peer"]
    if "skipped" in peer:
        peer_txt, speed = f"skipped ({peer['skipped']})", "-"
    else:
        peer_txt = f"{peer['forward_ms']:.0f} / {peer['fwd_bwd_ms']:.0f} ({peer['fwd_bwd_cpu_ms']:.0f} cpu)"
        cpu_speed = row.get("speedup_fwd_bwd_cpu")
        speed = f"{row['speedup_fwd_bwd']:.0f}x" + (f" ({cpu_speed:.0f}x cpu)" if cpu_speed else "")
    per_pixel = row.get("per_pixel")
    pp_txt = "-"
    if per_pixel:
        pp_txt = f"{per_pixel['fwd_bwd_ms']:.0f} (ours {row['speedup_vs_per_pixel']:.1f}x faster"
        if "per_pixel_speedup_fwd_bwd" in row:
            pp_txt += f"; {row['per_pixel_speedup_fwd_bwd']:.1f}x the peer"
        pp_txt += ")"
    return (f"| {row['size']}² | {row['n']} | {row['intersections']} | {ours['forward_ms']:.1f} / "
            f"{ours['fwd_bwd_ms']:.1f} ({ours['fwd_bwd_cpu_ms']:.0f} cpu) | {ours['fragments_per_s'] / 1e9:.2f} | "
            f"{peer_txt} | {speed} | {pp_txt} |")


TABLE_HEADER = ("| image | N | intersections | ours fwd / fwd+bwd ms (cpu ms) | ours G tile-frag/s | "
                "peer fwd / fwd+bwd ms (cpu ms) | speed-up wall (cpu) | per-pixel loop fwd+bwd ms |\n"
                "|---|---|---|---|---|---|---|---|")


@click.command()
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None, help="write results as JSON here")
@click.option("--quick", is_flag=True, help="only 256x256 with 20k Gaussians (the acceptance bar)")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True, help="timed repeats (median)")
@click.option("--peer-repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="timed repeats of the (slow) PyTorch peer (median; skip it with --peer-budget 0)")
@click.option("--peer-budget", type=float, default=60.0, show_default=True,
              help="skip the PyTorch peer where one fwd+bwd is estimated above this many seconds")
@click.option("--per-pixel/--no-per-pixel", default=True, show_default=True,
              help="also time the straightforward per-pixel Taichi loop (benchmarks/per_pixel.py)")
def main(out_path, quick, repeats, peer_repeats, peer_budget, per_pixel):
    """Time forward/backward of our rasterizer beside the PyTorch peer (and a straightforward
    per-pixel Taichi loop); print a markdown table."""
    cfg = BenchConfig(repeats=repeats, peer_repeats=peer_repeats, peer_budget_s=peer_budget, per_pixel=per_pixel)
    if quick:
        cfg.sizes, cfg.counts = (256,), (20000,)
    click.echo(f"torch threads {torch.get_num_threads()}")
    click.echo(TABLE_HEADER)
    rows = run_benchmark(cfg, progress=click.echo)
    result = {"config": asdict(cfg), "device": "cpu", "torch_threads": torch.get_num_threads(),
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "rows": rows}
    if out_path:
        tmp = out_path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(result, fh, indent=2)
        os.replace(tmp, out_path)
        click.echo(f"wrote {out_path}")


if __name__ == "__main__":
    main()
