"""The prior that ships with the package: ``npga prior fit --preset small`` trained once, kept.

The prior is trained on synthetic identities (seeds ``identity_seed_base + i``, a held-out one
for its metrics) that never include the person being captured, so every capture's demo would
train the same network: 8.5 of the default demo's 49 minutes on the 2-core machine. Like the
published MonoNPHM checkpoint for real captures, it is trained once and shipped;
``npga demo --train-prior`` (or ``npga prior fit``) trains it anyway.

``npga_taichi/assets/prior_small/`` holds exactly what ``fit_prior`` wrote (checkpoint.pt,
config.json, train_config.json, metrics.json). It is used only where its recorded training
settings equal the requested ones (:func:`shipped_prior_for`); a change of
:class:`~npga_taichi.prior.config.PriorTrainConfig`'s defaults therefore stops the demo from
using it until it is retrained with::

    npga prior fit --out npga_taichi/assets/prior_small --preset small --force

(tests/test_pretrained_prior.py fails on such a drift). Loading it is the safe loading of every
prior (``torch.load(weights_only=True)`` of a state dict).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from npga_taichi.prior.config import PriorTrainConfig

SHIPPED_PRIOR = Path(__file__).resolve().parent.parent / "assets" / "prior_small"
PRIOR_FILES = ("checkpoint.pt", "config.json", "train_config.json", "metrics.json")
# Settings that change how a run is written, not what it learns.
_NOT_LEARNED = ("checkpoint_every",)


def shipped_training_settings() -> dict[str, Any]:
    """The shipped prior's ``PriorTrainConfig`` as a dict (its train_config.json)."""
    return json.loads((SHIPPED_PRIOR / "train_config.json").read_text())["training"]


def shipped_prior_for(cfg: PriorTrainConfig) -> Path | None:
    """The shipped prior's folder when it was trained with ``cfg``'s settings, else None."""
    if not all((SHIPPED_PRIOR / name).is_file() for name in PRIOR_FILES):
        return None
    wanted, shipped = cfg.to_dict(), shipped_training_settings()
    for key in _NOT_LEARNED:
        wanted.pop(key, None)
        shipped.pop(key, None)
    return SHIPPED_PRIOR if wanted == shipped else None


def install_shipped_prior(out: str | os.PathLike, force: bool = False) -> dict:
    """Copy the shipped prior into folder ``out``; return its metrics (metrics.json).

    Refuses (ValueError naming ``out``) when ``out`` already holds a prior, unless ``force``.
    The files land through a private staging folder, so ``out`` never holds half a prior.
    """
    from npga_taichi.checkpoint import ensure_output_dir, staging_dir  # torch: only when copying

    out = Path(out)
    if (out / "checkpoint.pt").exists() and not force:
        raise ValueError(f"{out} already holds a prior; use --force to overwrite")
    missing = [name for name in PRIOR_FILES if not (SHIPPED_PRIOR / name).is_file()]
    if missing:
        raise FileNotFoundError(f"the shipped prior is incomplete: {', '.join(missing)} missing in "
                                f"{SHIPPED_PRIOR} (reinstall npga-taichi or train one with npga prior fit)")
    ensure_output_dir(out, "prior folder")
    with staging_dir(out, "prior") as tmp:
        for name in PRIOR_FILES:
            shutil.copyfile(SHIPPED_PRIOR / name, tmp / name)
        # metrics.json last: it marks the folder as a finished prior (the demo's "done" file).
        for name in PRIOR_FILES:
            os.replace(tmp / name, out / name)
    return json.loads((out / "metrics.json").read_text())


def obtain_prior(out: str | os.PathLike, cfg: PriorTrainConfig, train: bool = False, force: bool = False,
                 progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """A prior with ``cfg``'s settings in folder ``out``: the shipped one copied where it was
    trained with them (unless ``train``), else trained by ``fit_prior``; returns its metrics."""
    if not train and shipped_prior_for(cfg) is not None:
        log(f"prior: the shipped prior has these settings; copying it to {out}")
        return install_shipped_prior(out, force=force)
    from npga_taichi.prior.training import fit_prior

    return fit_prior(out, cfg, force=force, progress=progress, log=log)
