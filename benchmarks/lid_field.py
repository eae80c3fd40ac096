"""Can a backward field of the prior's shape learn the eyelids at all? (issue 18, JSON out)

    python benchmarks/lid_field.py --freqs 0 --steps 1500 --out lid_field_f0.json
    python benchmarks/lid_field.py --freqs 6 --steps 1500 --out lid_field_f6.json

The most favourable setting for B: no auto-decoded codes, the *true* expression parameters and a
one-hot identity as its input, a deformation-only loss (MonoNPHM's mean ‖B(x) − B_gt(x)‖), and
10 % of every batch on the eyelid points a blink moves (> 1 mm) - twice the share of the prior's
own ``moving_share`` sampling. The MLP is the prior's (400 × 6, Softplus β = 100, DeepSDF skip),
with ``--freqs`` Fourier frequencies of x added to its input (0 = MonoNPHM's raw coordinates).
Four synthetic identities x 10 expressions (every other one with both blinks > 0.6); the last
four pairs are held out. Reported: the median error on moving lid points against "doing
nothing" (B = identity there), and the mean error on uniform surface points.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from npga_taichi.data import synthetic as syn  # noqa: E402

MM = syn.UNIT_METRES * 1000.0
LIDS = syn.LABEL_NAMES.index("eyelids")
BLINKS = [syn.EXPRESSION_NAMES.index(n) for n in ("blink_left", "blink_right")]


def dataset(n_identities=4, n_expressions=10, points=40000):
    """Per (identity, expression): posed surface points, their canonical truth, a lid mask."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_identities):
        head = syn.SyntheticHead.from_seed(1000 + i)
        for j in range(n_expressions):
            e = syn.SyntheticHead.random_expression(rng)
            if j % 2 == 0:
                e[BLINKS] = rng.uniform(0.6, 1.0, 2)
            pts = head.sample_surface(points, expr=e, seed=i * 100 + j)
            can = head.backward(pts, e)
            open_eyes = np.array(e, np.float32)
            open_eyes[BLINKS] = 0.0
            moved = (can - head.backward(pts, open_eyes)).norm(dim=1) > 1.0 / MM
            lid = moved & (head.surface_label(can) == LIDS)
            code = torch.cat([torch.as_tensor(e, dtype=torch.float32), torch.eye(n_identities)[i]])
            rows.append((pts, can, lid, code))
    return rows


class BackwardMLP(nn.Module):
    """The prior's backward MLP (npga_taichi/prior/backward_field.py) on [fourier(x), code]."""

    def __init__(self, code_dim: int, freqs: int, hidden=400, layers=6):
        super().__init__()
        self.freqs = freqs
        d_in = 3 + 6 * freqs + code_dim
        dims = [d_in] + [hidden] * layers + [3]
        self.skip = layers // 2
        self.layers = nn.ModuleList(nn.Linear(dims[k] + (d_in if k == self.skip else 0), dims[k + 1])
                                    for k in range(len(dims) - 1))
        with torch.no_grad():
            self.layers[-1].weight.mul_(0.01)
            self.layers[-1].bias.zero_()
        self.act = nn.Softplus(beta=100.0)

    def forward(self, x, code):
        enc = [x] + [f(2.0 ** k * math.pi * x) for k in range(self.freqs) for f in (torch.sin, torch.cos)]
        inp = torch.cat(enc + [code], -1)
        h = inp
        for k, layer in enumerate(self.layers):
            if k == self.skip:
                h = torch.cat([h, inp], -1) / math.sqrt(2.0)
            h = layer(h)
            if k < len(self.layers) - 1:
                h = self.act(h)
        return x + h


def evaluate(net, rows):
    out = []
    with torch.no_grad():
        for pts, can, lid, code in rows:
            if lid.sum() < 5:
                continue
            p, c = pts[lid], can[lid]
            err = (net(p, code.expand(len(p), -1)) - c).norm(dim=1) * MM
            uniform = (net(pts[:3000], code.expand(3000, -1)) - can[:3000]).norm(dim=1) * MM
            out.append((float(err.median()), float((p - c).norm(dim=1).median() * MM), float(uniform.mean())))
    med = np.median(np.array(out), 0)
    return {"lid_error_mm": med[0], "lid_doing_nothing_mm": med[1], "surface_error_mm": med[2], "pairs": len(out)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--freqs", type=int, default=0, help="Fourier frequencies of x (0: raw coordinates)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lid-share", type=float, default=0.1, help="share of each batch on moving lid points")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    rows = dataset()
    train, held = rows[:-4], rows[-4:]
    net = BackwardMLP(len(rows[0][3]), args.freqs)
    opt = torch.optim.Adam(net.parameters(), lr=5e-4)
    gen = torch.Generator().manual_seed(1)
    n_lid = int(round(600 * args.lid_share))
    t0 = time.time()
    for step in range(args.steps):
        xs, cs, zs = [], [], []
        for k in torch.randint(len(train), (4,), generator=gen).tolist():
            pts, can, lid, code = train[k]
            idx = torch.randint(len(pts), (600 - n_lid,), generator=gen)
            lid_idx = lid.nonzero()[:, 0]
            if len(lid_idx):
                idx = torch.cat([idx, lid_idx[torch.randint(len(lid_idx), (n_lid,), generator=gen)]])
            xs.append(pts[idx]), cs.append(can[idx]), zs.append(code.expand(len(idx), -1))
        x, c, z = torch.cat(xs), torch.cat(cs), torch.cat(zs)
        loss = (net(x, z) - c).norm(dim=-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == args.steps // 2:
            for group in opt.param_groups:
                group["lr"] *= 0.3
    result = {"freqs": args.freqs, "steps": args.steps, "lid_share": args.lid_share,
              "seconds": time.time() - t0, "train": evaluate(net, train), "heldout": evaluate(net, held)}
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
