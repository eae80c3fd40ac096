"""MonoNPHM = identity field (SDF + colour) + backward deformation field + latent codebooks.

Conventions: canonical space is MonoNPHM's (FLAME metres × 4, head ~1 unit tall, looking +z;
1 unit = 250 mm). ``z_geo``/``z_app``: (G,) identity codes laid out [global, local_0 … local_A];
``z_exp``: (E,) or per point (N, E). Codebooks are auto-decoded: one geometry/appearance row per
training identity, one expression row per training (identity, expression) pair.

A prior directory (``npga prior fit --out PRIOR``) holds ``config.json``, ``checkpoint.pt`` and
``metrics.json``; :func:`load_prior` accepts the directory or the checkpoint file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from npga_taichi.checkpoint import load_module_payload, load_weights, save_module_dir
from npga_taichi.prior.backward_field import BackwardDeformationField
from npga_taichi.prior.config import PriorConfig
from npga_taichi.prior.identity_field import IdentityField

CHECKPOINT_FORMAT = "npga-mononphm-prior"
CHECKPOINT_VERSION = 1


class MonoNPHM(nn.Module):
    """The neural parametric head model; see the module docstring for conventions."""

    def __init__(self, config: PriorConfig, anchors_mean: torch.Tensor,
                 n_identities: int = 1, n_expressions: int = 1):
        super().__init__()
        self.config = config
        self.id_decoder = IdentityField(config, anchors_mean)
        self.ex_decoder = BackwardDeformationField(config)
        self.codes_geo = nn.Embedding(n_identities, config.lat_dim_geo)
        self.codes_app = nn.Embedding(n_identities, config.lat_dim_app)
        self.codes_exp = nn.Embedding(n_expressions, config.lat_dim_exp)
        for emb in (self.codes_geo, self.codes_app, self.codes_exp):
            nn.init.normal_(emb.weight, std=0.01)
        # Free-form metadata saved with the checkpoint (training identities, provenance).
        self.meta: dict[str, Any] = {}

    # Codes -------------------------------------------------------------------------------------
    def mean_codes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean identity codes over the codebook: (G_geo,), (G_app,) — a tracking start."""
        return self.codes_geo.weight.mean(dim=0).detach(), self.codes_app.weight.mean(dim=0).detach()

    @staticmethod
    def _codes(z: torch.Tensor) -> torch.Tensor:
        return z[None] if z.dim() == 1 else z

    def _per_point(self, z_exp: torch.Tensor, n: int) -> torch.Tensor:
        if z_exp.dim() == 1:
            return z_exp[None].expand(n, -1)
        if z_exp.shape[0] != n:
            raise ValueError(f"z_exp has {z_exp.shape[0]} rows for {n} points")
        return z_exp

    # Public fields -----------------------------------------------------------------------------
    def anchors(self, z_geo: torch.Tensor) -> torch.Tensor:
        """Anchor positions (n_anchors, 3) of one identity (or (S, A, 3) for (S, G) codes)."""
        out = self.id_decoder.anchors(self._codes(z_geo))
        return out[0] if z_geo.dim() == 1 else out

    def sdf(self, x_canonical: torch.Tensor, z_geo: torch.Tensor,
            shape_index: torch.Tensor | None = None) -> torch.Tensor:
        """Canonical SDF. x_canonical: (N, 3) (hyper = 0) or (N, 3 + n_hyper) -> (N,)."""
        return self.id_decoder(x_canonical, self._codes(z_geo), None, shape_index)[0]

    def sdf_and_color(self, x_canonical: torch.Tensor, z_geo: torch.Tensor, z_app: torch.Tensor,
                      shape_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """SDF (N,) and raw colour (N, 3) in about [−1, 1] at canonical points."""
        return self.id_decoder(x_canonical, self._codes(z_geo), self._codes(z_app), shape_index)

    def albedo(self, x_canonical: torch.Tensor, z_geo: torch.Tensor, z_app: torch.Tensor) -> torch.Tensor:
        """Albedo (N, 3) in [0, 1] at canonical points (MonoNPHM's RGB in [−1, 1] remapped)."""
        rgb = self.sdf_and_color(x_canonical, z_geo, z_app)[1]
        return ((rgb + 1.0) * 0.5).clamp(0.0, 1.0)

    def backward_with_hyper(self, x_posed: torch.Tensor, z_exp: torch.Tensor, z_geo: torch.Tensor,
                            shape_index: torch.Tensor | None = None) -> torch.Tensor:
        """B: posed (N, 3) -> canonical with hyper coordinates (N, 3 + n_hyper)."""
        z_geo = self._codes(z_geo)
        anchors = self.id_decoder.anchors(z_geo)
        z_id = self.ex_decoder.compress_identity(z_geo, anchors)
        n = x_posed.shape[0]
        z_id = z_id[shape_index] if shape_index is not None else z_id.expand(n, -1)
        offsets, hyper = self.ex_decoder(x_posed, self._per_point(z_exp, n), z_id)
        return torch.cat([x_posed + offsets, hyper], dim=-1)

    def backward(self, x_posed: torch.Tensor, z_exp: torch.Tensor, z_geo: torch.Tensor) -> torch.Tensor:
        """B: posed points (N, 3) -> canonical points (N, 3) (hyper dims dropped)."""
        return self.backward_with_hyper(x_posed, z_exp, z_geo)[:, :3]

    def hyper(self, x_posed: torch.Tensor, z_exp: torch.Tensor, z_geo: torch.Tensor) -> torch.Tensor:
        """The backward field's hyper coordinates (N, n_hyper) at posed points."""
        return self.backward_with_hyper(x_posed, z_exp, z_geo)[:, 3:]

    def posed_sdf(self, x_posed: torch.Tensor, z_exp: torch.Tensor, z_geo: torch.Tensor,
                  shape_index: torch.Tensor | None = None) -> torch.Tensor:
        """SDF of the posed head: SDF(B(x_posed)) (N,)."""
        can = self.backward_with_hyper(x_posed, z_exp, z_geo, shape_index)
        return self.sdf(can, z_geo, shape_index)


def save_prior(model: MonoNPHM, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write ``checkpoint.pt`` + ``config.json`` atomically into directory ``path``; return it.

    ``extra`` (e.g. optimiser state for resuming) is stored beside the weights.
    """
    return save_module_dir(path, "checkpoint.pt", CHECKPOINT_FORMAT, model, model.config,
                           version=CHECKPOINT_VERSION, n_identities=model.codes_geo.num_embeddings,
                           n_expressions=model.codes_exp.num_embeddings, meta=model.meta,
                           extra=extra or {})


def load_prior(path: str | os.PathLike, map_location: str | torch.device = "cpu",
               with_extra: bool = False):
    """Load a prior directory (or its ``checkpoint.pt``) -> MonoNPHM in eval mode.

    ``model.config`` holds the :class:`PriorConfig`; ``model.meta`` the metadata. With
    ``with_extra`` also returns the stored extra dict (optimiser state of a resumable run).
    """
    payload, ckpt_path = load_module_payload(path, "checkpoint.pt", CHECKPOINT_FORMAT, "prior",
                                             map_location)
    config = PriorConfig.from_dict(payload["config"])
    state = payload["state_dict"]
    model = MonoNPHM(config, state["id_decoder.anchors_mean"],
                     payload.get("n_identities", 1), payload.get("n_expressions", 1))
    load_weights(model, state, ckpt_path)
    model.meta = dict(payload.get("meta", {}))
    model.eval()
    if with_extra:
        return model, payload.get("extra", {})
    return model
