"""Convert an official MonoNPHM experiment directory into our :class:`MonoNPHM`.

An experiment directory holds ``configs.yaml`` and ``checkpoints/checkpoint_epoch_<N>.tar``
(a torch pickle with ``id_decoder``, ``ex_decoder`` state dicts and optionally
``latent_codes``). MonoNPHM's anchor means are not part of the checkpoint (the official code
reads ``assets/anchors_<nloc>.npy``): pass that file, or place it in the experiment directory.

Parameter mapping (official name -> ours; t = MLP type, l = linear layer index):

====================================================  =============================================
``id_decoder``: ``deepSDFensemble.layers.t.layers.2l.{weight,bias}``  ``id_decoder.geometry.{weights,biases}.l[t]``
``id_decoder``: ``aggr_app.layers.t.layers.2l.{weight,bias}``         ``id_decoder.color.{weights,biases}.l[t]``
``id_decoder``: ``communcation_bottleneck{1,2}.*`` (sic)             ``id_decoder.bottleneck{1,2}.*``
``id_decoder``: ``mlp_pos.{0,2,4}.*``                                ``id_decoder.anchor_offsets.{0,2,4}.*``
``ex_decoder``: ``compressor.0.*``                                   ``ex_decoder.compressor.*``
``ex_decoder``: ``defDeepSDF.lin<l>.*``                              ``ex_decoder.layers.<l>.*``
``latent_codes``: ``codebook.{geo,app,exp}.*`` (2-D)                 ``codes_{geo,app,exp}.weight``
====================================================  =============================================

In each official ``MLPDeepSDF`` the ModuleList interleaves Linear and Softplus/ReLU modules, so
its Linear layers sit at even indices. Every tensor's shape is checked against the config; a
mismatch raises ValueError naming the tensor.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from npga_taichi.checkpoint import load_checkpoint
from npga_taichi.prior.config import PriorConfig
from npga_taichi.prior.model import MonoNPHM

# Plain data constructors an official checkpoint may contain besides tensors and dicts: numpy
# scalars and their dtypes (loss values or epochs some scripts store). They build values only.
# numpy 2 moved numpy.core to numpy._core; files written under numpy 1 name the old path.
_NP_SCALAR = getattr(np, "_core", None).multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
OFFICIAL_SAFE_GLOBALS = (_NP_SCALAR, (_NP_SCALAR, "numpy.core.multiarray.scalar"), np.dtype,
                         type(np.dtype(np.float64)), type(np.dtype(np.float32)), type(np.dtype(np.int64)))


def config_from_official(cfg: dict[str, Any]) -> PriorConfig:
    """Our PriorConfig from the dict of an official ``configs.yaml``."""
    try:
        dec = cfg["decoder"]
        idc, exc = dec["id"], dec["ex"]
        n_hyper = exc.get("nhyper", dec.get("n_hyper"))
        if n_hyper is None:
            raise KeyError("decoder.ex.nhyper")
        if idc["lat_dim_loc_geo"] != idc["lat_dim_loc_app"]:
            raise ValueError("lat_dim_loc_geo != lat_dim_loc_app is not supported")
        if exc.get("mode", "compress") != "compress":
            raise ValueError(f"backward mode {exc.get('mode')!r} unsupported (only 'compress')")
        return PriorConfig(
            n_anchors=int(idc["nloc"]), n_symm_pairs=int(idc["nsymm_pairs"]),
            n_neighbors=int(idc["nneigh"]),
            n_blend_std_neighbors=min(8, int(idc["nneigh"]) + 1),  # official: dists[:, :8] of K+1
            blend_std=float(idc.get("blend_std", 4.0)), global_distance=0.75,
            lat_dim_glob=int(idc["lat_dim_glob"]), lat_dim_loc=int(idc["lat_dim_loc_geo"]),
            hidden_dim_geo=int(idc["gnn"]["hidden_dim_geo"]), n_layers_geo=int(idc["gnn"]["nlayers_geo"]),
            hidden_dim_app=int(idc["gnn"]["hidden_dim_app"]), n_layers_app=int(idc["gnn"]["nlayers_app"]),
            communication_dim=16, pos_mlp_dim=64,
            lat_dim_exp=int(exc["lat_dim_ex"]), lat_dim_id_compressed=int(exc["lat_dim_id"]),
            hidden_dim_ex=int(exc["hidden_dim"]), n_layers_ex=int(exc["nlayers"]),
            n_hyper=int(n_hyper),
        )
    except KeyError as err:
        raise ValueError(f"configs.yaml lacks the key {err}") from err


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        import yaml  # PyYAML: optional; only needed to read official configs
    except ImportError:
        yaml = None
    text = path.read_text()
    if yaml is not None:
        return yaml.safe_load(text)
    return _mini_yaml(text)


def _mini_yaml(text: str) -> dict[str, Any]:
    """Parse the indentation-nested ``key: scalar`` subset that MonoNPHM configs use."""
    root: dict[str, Any] = {}
    stack: list[tuple[int, dict[str, Any]]] = [(-1, root)]
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        key, _, value = line.strip().partition(":")
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        value = value.strip()
        if value == "":
            child: dict[str, Any] = {}
            parent[key] = child
            stack.append((indent, child))
        else:
            parent[key] = _scalar(value)
    return root


def _scalar(value: str) -> Any:
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none", "~"):
        return None
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value.strip("'\"")


def find_checkpoint(exp_dir: Path, epoch: int | None = None) -> Path:
    """``checkpoints/checkpoint_epoch_<N>.tar`` of the given (or latest) epoch."""
    ckpt_dir = exp_dir / "checkpoints"
    found = {}
    for p in ckpt_dir.glob("checkpoint_epoch_*.tar"):
        m = re.fullmatch(r"checkpoint_epoch_(\d+)\.tar", p.name)
        if m:
            found[int(m.group(1))] = p
    if not found:
        raise ValueError(f"no checkpoints/checkpoint_epoch_<N>.tar in {exp_dir}")
    if epoch is None:
        return found[max(found)]
    if epoch not in found:
        raise ValueError(f"{exp_dir}: no checkpoint for epoch {epoch} (have {sorted(found)})")
    return found[epoch]


def official_to_ours(config: PriorConfig, id_state: dict[str, torch.Tensor],
                     ex_state: dict[str, torch.Tensor], source: str = "checkpoint"
                     ) -> dict[str, torch.Tensor]:
    """Map official ``id_decoder``/``ex_decoder`` state dicts onto our parameter names.

    Returns our state-dict entries (without anchors and codebooks). Raises ValueError naming
    the official tensor that is missing or has the wrong shape, or that is not recognised.
    """
    c = config
    reference = MonoNPHM(c, torch.zeros(c.n_anchors, 3)).state_dict()
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(state: dict[str, torch.Tensor], prefix: str, name: str) -> torch.Tensor:
        key = f"{prefix}.{name}"
        if name not in state:
            raise ValueError(f"{source}: missing tensor {key}")
        used.add(key)
        return state[name]

    def put(ours: str, tensor: torch.Tensor, official: str) -> None:
        expected = reference[ours].shape
        if tuple(tensor.shape) != tuple(expected):
            raise ValueError(f"{source}: tensor {official} has shape {tuple(tensor.shape)}, "
                             f"expected {tuple(expected)} for this config")
        out[ours] = tensor.detach().float().clone()

    for official_mod, ours_mod, n_layers in (("deepSDFensemble", "geometry", c.n_layers_geo),
                                             ("aggr_app", "color", c.n_layers_app)):
        for layer in range(n_layers + 1):
            for kind, ours_kind in (("weight", "weights"), ("bias", "biases")):
                tensors = []
                for t in range(c.n_mlp_types):
                    name = f"{official_mod}.layers.{t}.layers.{2 * layer}.{kind}"
                    tensors.append(take(id_state, "id_decoder", name))
                    per_type = reference[f"id_decoder.{ours_mod}.{ours_kind}.{layer}"].shape[1:]
                    if tuple(tensors[-1].shape) != tuple(per_type):
                        raise ValueError(f"{source}: tensor id_decoder.{name} has shape "
                                         f"{tuple(tensors[-1].shape)}, expected {tuple(per_type)}")
                put(f"id_decoder.{ours_mod}.{ours_kind}.{layer}", torch.stack(tensors),
                    f"id_decoder.{official_mod}.layers.*.layers.{2 * layer}.{kind}")
    for idx in (1, 2):
        for kind in ("weight", "bias"):
            name = f"communcation_bottleneck{idx}.{kind}"
            put(f"id_decoder.bottleneck{idx}.{kind}", take(id_state, "id_decoder", name),
                f"id_decoder.{name}")
    for idx in (0, 2, 4):
        for kind in ("weight", "bias"):
            name = f"mlp_pos.{idx}.{kind}"
            put(f"id_decoder.anchor_offsets.{idx}.{kind}", take(id_state, "id_decoder", name),
                f"id_decoder.{name}")
    for kind in ("weight", "bias"):
        put(f"ex_decoder.compressor.{kind}", take(ex_state, "ex_decoder", f"compressor.0.{kind}"),
            f"ex_decoder.compressor.0.{kind}")
        for layer in range(c.n_layers_ex + 1):
            name = f"defDeepSDF.lin{layer}.{kind}"
            put(f"ex_decoder.layers.{layer}.{kind}", take(ex_state, "ex_decoder", name),
                f"ex_decoder.{name}")
    # Anything left over means the file is not the architecture the config describes.
    for prefix, state in (("id_decoder", id_state), ("ex_decoder", ex_state)):
        for name, tensor in state.items():
            key = f"{prefix}.{name}"
            if key in used or (name.endswith("freq_bands") and tensor.numel() == 0):
                continue
            raise ValueError(f"{source}: unexpected tensor {key} {tuple(tensor.shape)} "
                             "(not part of the MonoNPHM layout this importer knows)")
    return out


def import_official(exp_dir: str | os.PathLike, anchors_path: str | os.PathLike | None = None,
                    epoch: int | None = None) -> MonoNPHM:
    """Build our MonoNPHM from an official experiment directory (see module docstring)."""
    exp_dir = Path(exp_dir)
    cfg_path = exp_dir / "configs.yaml"
    if not cfg_path.is_file():
        raise ValueError(f"{exp_dir} has no configs.yaml; is it a MonoNPHM experiment directory?")
    config = config_from_official(_read_yaml(cfg_path))
    ckpt_path = find_checkpoint(exp_dir, epoch)
    # weights_only: an official checkpoint is state dicts of tensors (+ epoch numbers); numpy
    # scalars some training scripts store are allowed as plain data. Anything else is refused.
    ckpt = load_checkpoint(ckpt_path, required_keys=("id_decoder", "ex_decoder"),
                           allow_globals=OFFICIAL_SAFE_GLOBALS)
    if anchors_path is None:
        anchors_path = exp_dir / f"anchors_{config.n_anchors}.npy"
    anchors_path = Path(anchors_path)
    if not anchors_path.is_file():
        raise ValueError(f"anchor means not found: {anchors_path} (MonoNPHM's "
                         f"assets/anchors_{config.n_anchors}.npy; pass --anchors)")
    anchors = torch.from_numpy(np.asarray(np.load(anchors_path, allow_pickle=False), dtype=np.float32)).reshape(-1, 3)
    if anchors.shape[0] != config.n_anchors:
        raise ValueError(f"{anchors_path} has {anchors.shape[0]} anchors, config says {config.n_anchors}")
    state = official_to_ours(config, ckpt["id_decoder"], ckpt["ex_decoder"], source=str(ckpt_path))
    codes = _latent_codes(ckpt.get("latent_codes"), config, str(ckpt_path))
    sizes = {k: (v.shape[0] if v is not None else 1) for k, v in codes.items()}
    model = MonoNPHM(config, anchors, n_identities=max(sizes["geo"], sizes["app"]),
                     n_expressions=sizes["exp"])
    full = model.state_dict()
    full.update(state)
    for mod, tensor in codes.items():
        if tensor is not None:
            full[f"codes_{mod}.weight"] = tensor
    if codes["geo"] is not None and codes["app"] is not None and codes["geo"].shape[0] != codes["app"].shape[0]:
        full["codes_app.weight"] = torch.zeros_like(full["codes_app.weight"])
    model.load_state_dict(full)
    model.meta = {"source": "official MonoNPHM", "checkpoint": str(ckpt_path),
                  "anchors": str(anchors_path)}
    model.eval()
    return model


def _latent_codes(state: Any, config: PriorConfig, source: str) -> dict[str, torch.Tensor | None]:
    """Codebooks from an official ``latent_codes`` state dict (``codebook.<mod>.*`` 2-D)."""
    width = {"geo": config.lat_dim_geo, "app": config.lat_dim_app, "exp": config.lat_dim_exp}
    out: dict[str, torch.Tensor | None] = {"geo": None, "app": None, "exp": None}
    if not isinstance(state, dict):
        return out
    for name, tensor in state.items():
        m = re.match(r"codebook\.(geo|app|exp)\.", name)
        if not m or not torch.is_tensor(tensor):
            continue
        mod = m.group(1)
        t = tensor.reshape(tensor.shape[0], -1) if tensor.dim() >= 2 else None
        if t is None or t.shape[1] != width[mod]:
            raise ValueError(f"{source}: latent_codes tensor {name} has shape {tuple(tensor.shape)}, "
                             f"expected (n, {width[mod]})")
        out[mod] = t.detach().float().clone()
    return out
