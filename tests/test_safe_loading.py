"""Loading never runs code from a file: every loader refuses a crafted pickle, clearly.

Each crafted file's payload would create a marker file when unpickled with ``weights_only=False``
(checked once below, so the payload is known to be live); every project loader and the
commands that use them must refuse it with a message naming the file, and the marker must not
appear.
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from npga_taichi.avatar.config import AvatarConfig, TrainConfig, configs_to_json
from npga_taichi.checkpoint import UnsafeCheckpointError, load_checkpoint


class _WritesMarker:
    """Unpickling this calls ``pathlib.Path.touch(marker)``: code execution on load."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def crafted_torch_file(path: Path, marker: Path, **plain) -> Path:
    """A torch.save'd dict that looks like a checkpoint but hides the payload in one value."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**plain, "payload": _WritesMarker(marker)}, path)
    return path


def assert_refused(err: BaseException, path: Path, marker: Path) -> None:
    assert str(path) in str(err)
    assert "refused" in str(err)
    assert not marker.exists(), "the payload ran"


def test_crafted_file_payload_is_live(tmp_path):
    """Guard for the tests below: the payload does run when loaded unsafely."""
    marker = tmp_path / "marker"
    path = crafted_torch_file(tmp_path / "x.pt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_load_checkpoint_refuses_pickled_objects(tmp_path, writer):
    marker = tmp_path / "marker"
    path = tmp_path / "ckpt.pt"
    if writer == "torch":
        crafted_torch_file(path, marker, step=1)
    else:
        path.write_bytes(pickle.dumps({"step": 1, "payload": _WritesMarker(marker)}))
    with pytest.raises(UnsafeCheckpointError) as err:
        load_checkpoint(path)
    assert_refused(err.value, path, marker)


def _run_dir(tmp_path: Path, marker: Path) -> Path:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(configs_to_json(AvatarConfig(), TrainConfig(),
                                                     {"data": str(tmp_path), "participant": "000"}))
    crafted_torch_file(run / "checkpoints" / "latest.pt", marker, step=1, avatar={})
    return run


def test_avatar_loaders_refuse(tmp_path):
    from npga_taichi.avatar.model import load_avatar
    from npga_taichi.reenactment import LoadedRun

    marker = tmp_path / "marker"
    run = _run_dir(tmp_path, marker)
    for load in (lambda: load_avatar(run), lambda: LoadedRun(run)):
        with pytest.raises(ValueError) as err:
            load()
        assert_refused(err.value, run / "checkpoints" / "latest.pt", marker)


def test_prior_and_field_loaders_refuse(tmp_path):
    from npga_taichi.prior.forward_field import load_forward_field
    from npga_taichi.prior.model import load_prior

    marker = tmp_path / "marker"
    prior = crafted_torch_file(tmp_path / "prior" / "checkpoint.pt", marker, format="x", config={},
                               state_dict={})
    field = crafted_torch_file(tmp_path / "field" / "forward_field.pt", marker, format="x", config={},
                               state_dict={})
    for load, path in ((lambda: load_prior(tmp_path / "prior"), prior),
                       (lambda: load_forward_field(tmp_path / "field"), field)):
        with pytest.raises(ValueError) as err:
            load()
        assert_refused(err.value, path, marker)


def test_official_mononphm_import_refuses(tmp_path):
    from npga_taichi.prior.importer import import_official

    marker = tmp_path / "marker"
    exp = tmp_path / "official"
    (exp / "checkpoints").mkdir(parents=True)
    (exp / "configs.yaml").write_text(
        "decoder:\n  id:\n    lat_dim_glob: 64\n    lat_dim_loc_geo: 32\n    lat_dim_loc_app: 32\n"
        "    nloc: 39\n    nsymm_pairs: 16\n    gnn:\n      hidden_dim_geo: 200\n  ex:\n    nhyper: 2\n"
        "    lat_dim_ex: 100\n")
    path = crafted_torch_file(exp / "checkpoints" / "checkpoint_epoch_1.tar", marker,
                              id_decoder={}, ex_decoder={})
    with pytest.raises(ValueError) as err:
        import_official(exp)
    assert not marker.exists()
    if "configs.yaml" not in str(err.value):  # a config the importer accepts reaches the checkpoint
        assert_refused(err.value, path, marker)


def test_official_import_accepts_plain_numpy_scalars(tmp_path):
    """Allow-listed plain data (numpy scalars) loads; a state dict of tensors loads."""
    path = tmp_path / "ok.tar"
    torch.save({"epoch": np.int64(3), "loss": np.float64(0.5), "id_decoder": {"w": torch.ones(2)},
                "ex_decoder": {}}, path)
    from npga_taichi.prior.importer import OFFICIAL_SAFE_GLOBALS

    ckpt = load_checkpoint(path, allow_globals=OFFICIAL_SAFE_GLOBALS)
    assert float(ckpt["loss"]) == 0.5 and torch.equal(ckpt["id_decoder"]["w"], torch.ones(2))
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(path)  # without the allow-list numpy scalars are refused too


def test_tracking_file_with_object_array_refused(tmp_path):
    from npga_taichi.prior.tracking import load_tracking

    marker = tmp_path / "marker"
    path = tmp_path / "EXP-1.npz"
    np.savez(path, z_exp=np.array([_WritesMarker(marker)], dtype=object))
    with pytest.raises(ValueError) as err:
        load_tracking(path)
    assert str(path) in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("argv", [["render", "{run}", "--out", "{tmp}/r"], ["eval", "{run}", "--out", "{tmp}/e"],
                                  ["export", "{run}", "--sequence", "FREE", "--out", "{tmp}/x.h5"]])
def test_commands_refuse_crafted_checkpoint_without_traceback(tmp_path, argv):
    marker = tmp_path / "marker"
    run = _run_dir(tmp_path, marker)
    args = [a.format(run=run, tmp=tmp_path) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "npga_taichi.cli.main", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "NPGA_ARCH": "cpu"})
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "refused" in proc.stderr and "latest.pt" in proc.stderr, proc.stderr
    assert not marker.exists()


def test_upgrade_converts_a_legacy_pickled_checkpoint(tmp_path):
    """An npga-taichi 0.1 checkpoint (pickled module, numpy RNG tuple) is refused, then upgraded
    with --trust and loads as the same avatar."""
    from click.testing import CliRunner

    from npga_taichi.avatar.model import NPGAAvatar, avatar_from_state
    from npga_taichi.cli.main import cli

    avatar = NPGAAvatar(AvatarConfig(num_init_gaussians=16, max_gaussians=16, latent_dim=2, sh_degree=0,
                                     detail_hidden=8, detail_layers=1, scratch_field_hidden=8,
                                     scratch_field_layers=1, use_prior_field=False), None, 4)
    torch.nn.init.normal_(avatar.gaussians.means)
    path = tmp_path / "latest.pt"
    torch.save({"format": "npga-avatar-train-v1", "avatar": avatar, "step": 3,
                "rng": {"numpy": np.random.get_state()}}, path)
    with pytest.raises(UnsafeCheckpointError, match="npga upgrade"):
        load_checkpoint(path)
    refused = CliRunner().invoke(cli, ["upgrade", str(path)])
    assert refused.exit_code != 0 and "--trust" in refused.output
    result = CliRunner().invoke(cli, ["upgrade", str(path), "--trust"])
    assert result.exit_code == 0, result.output
    state = load_checkpoint(path)
    again = avatar_from_state(state["avatar"], path)
    assert torch.equal(again.gaussians.means, avatar.gaussians.means) and state["step"] == 3
