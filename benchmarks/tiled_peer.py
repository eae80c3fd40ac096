"""The benchmark's speed peer: a tile-batched pure-PyTorch rasterizer (not an oracle).

:func:`rasterize_tiled` has the contract's semantics (projection, SH, depth order and the
per-fragment rule are the oracle's own functions from :mod:`npga_taichi.reference`) and is written
the way a competent PyTorch user would make it fast: visible Gaussians are binned into 16×16 tiles
by their opacity-aware radius, tiles of similar list length are batched into padded tensors, and
the backward is hand-written and vectorised (:class:`_TiledComposite`). ``benchmarks/rasterizer.py``
times our Taichi rasterizer beside it; ``tests/test_tiled_peer.py`` checks it against the oracle.
Not part of the package: a measuring stick, not an alternative renderer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from npga_taichi import reference
from npga_taichi.contract import ALPHA_MAX, TILE_SIZE, RasterOutput, validate_inputs

# Slack on the radius when binning tiles (absorbs float rounding of the radius computation).
BINNING_REL_SLACK = 1e-3
BINNING_ABS_SLACK = 1e-2
# Fragments per tile group (tiles × 256 pixels × padded list length).
TILED_GROUP_FRAGMENTS = 4_000_000


@dataclass
class _TilePlan:
    """Which sorted-visible Gaussians each 16×16 tile must look at.

    Only tiles with at least one candidate are listed. ``gauss_ids[starts[t]:starts[t]+counts[t]]``
    are the candidates of tile ``tile_ids[t]`` in front-to-back order.
    """

    width: int
    height: int
    tiles_x: int
    tiles_y: int
    tile_ids: torch.Tensor   # (T,) int64 tile index ty * tiles_x + tx
    starts: torch.Tensor     # (T,) int64 offset into gauss_ids
    counts: torch.Tensor     # (T,) int64 candidate count
    gauss_ids: torch.Tensor  # (I,) int64 index into the sorted visible Gaussians


def _tile_plan(xy: torch.Tensor, radius: torch.Tensor, width: int, height: int) -> _TilePlan:
    """Bin sorted visible Gaussians (xy (M, 2), integer radius (M,)) into the tiles their
    square [xy ± r] touches. Every pixel a Gaussian can contribute to has its centre inside
    that square (σ ≥ |d|² / (2 λmax) and α ≥ 1/255 ⇒ |d| ≤ r), so binning never changes the image."""
    device = xy.device
    tiles_x = (width + TILE_SIZE - 1) // TILE_SIZE
    tiles_y = (height + TILE_SIZE - 1) // TILE_SIZE
    with torch.no_grad():
        # The integer radius bounds the exact reach up to rounding of its float computation;
        # a little slack keeps a pixel whose alpha rounds to exactly 1/255 inside its tiles.
        r = radius.to(xy.dtype) * (1.0 + BINNING_REL_SLACK) + BINNING_ABS_SLACK
        x0 = torch.floor((xy[:, 0] - r) / TILE_SIZE).clamp(0, tiles_x - 1).long()
        x1 = torch.floor((xy[:, 0] + r) / TILE_SIZE).clamp(0, tiles_x - 1).long()
        y0 = torch.floor((xy[:, 1] - r) / TILE_SIZE).clamp(0, tiles_y - 1).long()
        y1 = torch.floor((xy[:, 1] + r) / TILE_SIZE).clamp(0, tiles_y - 1).long()
        span_x = x1 - x0 + 1
        per_gauss = span_x * (y1 - y0 + 1)
        total = int(per_gauss.sum())
        gauss = torch.repeat_interleave(torch.arange(xy.shape[0], device=device), per_gauss)
        first = torch.cumsum(per_gauss, 0) - per_gauss
        local = torch.arange(total, device=device) - first[gauss]
        tile = (y0[gauss] + local // span_x[gauss]) * tiles_x + x0[gauss] + local % span_x[gauss]
        # Stable sort by tile keeps the front-to-back order inside each tile.
        tile_sorted, order = torch.sort(tile, stable=True)
        gauss_ids = gauss[order]
        tile_ids, counts = torch.unique_consecutive(tile_sorted, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
    return _TilePlan(width, height, tiles_x, tiles_y, tile_ids, starts, counts, gauss_ids)


def _tile_groups(lengths: torch.Tensor, budget: int) -> list[tuple[torch.Tensor, int]]:
    """Batch tiles of similar list length: returns (positions into the tile list, padded L).

    Tiles are taken longest first, so each group pads to its first tile's length and holds
    at most ``budget`` fragments (tiles × 256 pixels × L)."""
    order = torch.sort(lengths, descending=True, stable=True).indices
    lens = lengths[order].tolist()
    groups, i = [], 0
    pixels = TILE_SIZE * TILE_SIZE
    while i < len(lens) and lens[i] > 0:
        length = lens[i]
        count = max(1, budget // (pixels * length))
        groups.append((order[i:i + count], length))
        i += count
    return groups


def _tile_pixels(plan: _TilePlan, tiles: torch.Tensor, dtype) -> torch.Tensor:
    """Pixel centres (B, 256, 2) of the given tiles, row-major inside each tile."""
    local = reference.pixel_centers(TILE_SIZE, TILE_SIZE, dtype, tiles.device)
    origin = torch.stack([tiles % plan.tiles_x, tiles // plan.tiles_x], dim=-1).to(dtype) * TILE_SIZE
    return origin[:, None, :] + local[None]


def _group_lists(plan: _TilePlan, positions: torch.Tensor, length: int):
    """Padded candidate lists (B, L) and their validity mask for tiles at ``positions``."""
    ar = torch.arange(length, device=positions.device)
    valid = ar[None, :] < plan.counts[positions][:, None]
    idx = (plan.starts[positions][:, None] + ar[None, :]).clamp(max=plan.gauss_ids.numel() - 1)
    gid = torch.where(valid, plan.gauss_ids[idx], torch.zeros_like(idx))
    return gid, valid


def _tiles_to_image(plan: _TilePlan, per_tile: torch.Tensor) -> torch.Tensor:
    """(tiles_y*tiles_x, 256, C) tile-major buffer -> (H, W, C) image (cropped)."""
    c = per_tile.shape[-1]
    img = per_tile.reshape(plan.tiles_y, plan.tiles_x, TILE_SIZE, TILE_SIZE, c)
    img = img.permute(0, 2, 1, 3, 4).reshape(plan.tiles_y * TILE_SIZE, plan.tiles_x * TILE_SIZE, c)
    return img[:plan.height, :plan.width]


def _image_to_tiles(plan: _TilePlan, image: torch.Tensor) -> torch.Tensor:
    """(H, W, C) image -> (tiles_y*tiles_x, 256, C) tile-major buffer (zero padded)."""
    c = image.shape[-1]
    full = image.new_zeros(plan.tiles_y * TILE_SIZE, plan.tiles_x * TILE_SIZE, c)
    full[:plan.height, :plan.width] = image
    full = full.reshape(plan.tiles_y, TILE_SIZE, plan.tiles_x, TILE_SIZE, c).permute(0, 2, 1, 3, 4)
    return full.reshape(plan.tiles_y * plan.tiles_x, TILE_SIZE * TILE_SIZE, c)


class _TiledComposite(torch.autograd.Function):
    """Tile-batched compositing with a hand-written backward.

    forward(xy (M,2), conics (M,3), opacities (M,), colors (M,C), depths (M,), plan)
    -> (color (H,W,C), T_final (H,W,1), depth (H,W,1)). The backward recomputes each tile
    group's fragments (bounded memory) and applies the analytic gradient of front-to-back
    compositing; it only revisits each tile's list up to its last contributing Gaussian.
    """

    @staticmethod
    def forward(ctx, xy, conics, opacities, colors, depths, plan: _TilePlan):
        n_tiles = plan.tiles_x * plan.tiles_y
        pixels = TILE_SIZE * TILE_SIZE
        channels = colors.shape[1]
        out_color = colors.new_zeros(n_tiles, pixels, channels)
        out_t = colors.new_ones(n_tiles, pixels, 1)
        out_depth = colors.new_zeros(n_tiles, pixels, 1)
        used = torch.zeros_like(plan.counts)  # per listed tile: last contributing position + 1
        for positions, length in _tile_groups(plan.counts, TILED_GROUP_FRAGMENTS):
            gid, valid = _group_lists(plan, positions, length)
            tiles = plan.tile_ids[positions]
            pix = _tile_pixels(plan, tiles, xy.dtype)
            _, _, _, _, alpha, hit = reference.fragments(pix, xy[gid], conics[gid], opacities[gid], valid)
            weights, _, contrib, t_final = reference.transmittance(alpha, hit)
            out_color[tiles] = weights @ colors[gid]
            out_depth[tiles] = weights @ depths[gid][..., None]
            out_t[tiles] = t_final[..., None]
            any_contrib = contrib.any(dim=1)  # (B, L)
            last = length - torch.flip(any_contrib, dims=[-1]).to(torch.int8).argmax(dim=-1)
            used[positions] = torch.where(any_contrib.any(dim=-1), last, torch.zeros_like(last))
        ctx.save_for_backward(xy, conics, opacities, colors, depths, used)
        ctx.plan = plan
        return (_tiles_to_image(plan, out_color), _tiles_to_image(plan, out_t),
                _tiles_to_image(plan, out_depth))

    @staticmethod
    def backward(ctx, grad_color, grad_t, grad_depth):
        xy, conics, opacities, colors, depths, used = ctx.saved_tensors
        plan: _TilePlan = ctx.plan
        g_color = _image_to_tiles(plan, grad_color)
        g_t = _image_to_tiles(plan, grad_t)[..., 0]
        g_depth = _image_to_tiles(plan, grad_depth)[..., 0]
        d_xy = torch.zeros_like(xy)
        d_conics = torch.zeros_like(conics)
        d_opac = torch.zeros_like(opacities)
        d_colors = torch.zeros_like(colors)
        d_depths = torch.zeros_like(depths)
        for positions, length in _tile_groups(used, TILED_GROUP_FRAGMENTS):
            gid, valid = _group_lists(plan, positions, length)
            valid = valid & (torch.arange(length, device=valid.device)[None, :] < used[positions][:, None])
            tiles = plan.tile_ids[positions]
            pix = _tile_pixels(plan, tiles, xy.dtype)
            xy_g, con_g, op_g, col_g, z_g = xy[gid], conics[gid], opacities[gid], colors[gid], depths[gid]
            dx, dy, _, gauss, alpha, hit = reference.fragments(pix, xy_g, con_g, op_g, valid)
            weights, t_excl, contrib, t_final = reference.transmittance(alpha, hit)
            gc, gt, gd = g_color[tiles], g_t[tiles], g_depth[tiles]  # (B,P,C), (B,P), (B,P)

            # dL/d(w_i) for w_i = α_i T_i: the colour and depth it carries.
            g_w = gc @ col_g.transpose(1, 2) + gd[..., None] * z_g[:, None, :]
            v = weights * g_w
            # Σ_{j>i} w_j g_j: exclusive suffix sums along the list.
            suffix = torch.flip(torch.cumsum(torch.flip(v, dims=[-1]), dim=-1), dims=[-1])
            suffix = torch.cat([suffix[..., 1:], torch.zeros_like(suffix[..., :1])], dim=-1)
            # T_j (j > i) and T_final each carry a factor (1 - α_i).
            d_alpha = t_excl * g_w - (suffix + t_final[..., None] * gt[..., None]) / (1.0 - alpha)
            d_gauss = torch.where(contrib & (gauss <= ALPHA_MAX), d_alpha, torch.zeros_like(d_alpha))
            d_sigma = -d_gauss * gauss
            a = con_g[:, None, :, 0]
            b = con_g[:, None, :, 1]
            c = con_g[:, None, :, 2]

            grad_xy = torch.stack([-(d_sigma * (a * dx + b * dy)).sum(1),
                                   -(d_sigma * (b * dx + c * dy)).sum(1)], dim=-1)
            grad_con = torch.stack([0.5 * (d_sigma * dx * dx).sum(1), (d_sigma * dx * dy).sum(1),
                                    0.5 * (d_sigma * dy * dy).sum(1)], dim=-1)
            grad_op = (d_gauss * gauss).sum(1) / op_g
            grad_col = weights.transpose(1, 2) @ gc
            grad_z = (weights * gd[..., None]).sum(1)

            flat = gid.reshape(-1)
            d_xy.index_add_(0, flat, grad_xy.reshape(-1, 2))
            d_conics.index_add_(0, flat, grad_con.reshape(-1, 3))
            d_opac.index_add_(0, flat, grad_op.reshape(-1))
            d_colors.index_add_(0, flat, grad_col.reshape(-1, colors.shape[1]))
            d_depths.index_add_(0, flat, grad_z.reshape(-1))
        return d_xy, d_conics, d_opac, d_colors, d_depths, None


def rasterize_tiled(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
                    colors: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor, width: int, height: int,
                    sh_degree: int | None = None, background: torch.Tensor | None = None, near: float = 0.01,
                    far: float = 1e10, eps2d: float = 0.3) -> RasterOutput:
    """Fast tile-batched PyTorch rasterizer with the oracle's exact semantics.

    Same arguments and output as :func:`npga_taichi.reference.rasterize`. Projection, SH and
    depth order are the oracle's (one shared front end); compositing bins visible Gaussians into 16×16 tiles by
    their opacity-aware radius, batches tiles of similar list length into padded tensors and
    runs a hand-written vectorised backward (see :class:`_TiledComposite`).
    """
    validate_inputs(means, quats, scales, opacities, colors, viewmat, K, width, height,
                    sh_degree, background, near, far, eps2d)
    width, height = int(width), int(height)
    sh_degree = None if sh_degree is None else int(sh_degree)
    means2d, conics, depths, radii, rgb = reference.project_and_shade(
        means, quats, scales, opacities, colors, viewmat, K, width, height, sh_degree, near, far, eps2d)
    index = reference.front_to_back(radii, depths)
    xy = means2d[index]
    plan = _tile_plan(xy.detach(), radii[index], width, height)
    color, t_final, depth = _TiledComposite.apply(xy, conics[index], opacities[index], rgb[index],
                                                  depths[index], plan)
    image = color if background is None else color + t_final * background
    return RasterOutput(image=image, alpha=1.0 - t_final, depth=depth, radii=radii, means2d=means2d)
