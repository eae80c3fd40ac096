"""Issue 13 (hardening): hostile paths, lying headers, non-finite data and broken captures.

Each test is named after the issue row it covers and fails on the code before the fix. The
captures here are written by hand (a few 12x16 images, small point clouds) so the tests do not
depend on the synthetic-capture renderer and run in seconds.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from npga_taichi.checkpoint import atomic_path
from npga_taichi.cli.main import cli
from npga_taichi.data import nersemble as ns
from npga_taichi.data.pcd import write_pcd
from npga_taichi.export_hdf5 import SequenceWriter
from npga_taichi.ply import read_ply, write_ply

SERIALS = ("222200037", "222200038")
W, H = 12, 16


# --------------------------------------------------------------------------------- helpers
def _cloud(n=300, seed=0) -> np.ndarray:
    """Points on a 0.1 m sphere in front of the cameras (a head-sized blob)."""
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(n, 3))
    return (0.1 * p / np.linalg.norm(p, axis=1, keepdims=True)).astype(np.float32)


def _write_cloud(path: Path, pts: np.ndarray) -> None:
    write_pcd(path, {"x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2]})


def make_capture(root: Path, pid: str = "001", sequences=("EXP-1",), frames=(0, 1)) -> Path:
    """A minimal NeRSemble v1 participant folder: calibration, images, mattes, point clouds."""
    pdir = root / pid
    (pdir / "calibration").mkdir(parents=True)
    w2c = {}
    for i, s in enumerate(SERIALS):
        m = np.eye(4)
        m[:3, 3] = [0.05 * i, 0.0, 1.0]
        w2c[s] = m.tolist()
    calib = {"world_2_cam": w2c, "intrinsics": [[20.0, 0, W / 2], [0, 20.0, H / 2], [0, 0, 1]],
             "resolution": [W, H]}
    (pdir / "calibration" / "camera_params.json").write_text(json.dumps(calib))
    for seq in sequences:
        for t in frames:
            fdir = pdir / "sequences" / seq / "timesteps" / f"frame_{t:05d}"
            (fdir / "images").mkdir(parents=True)
            (fdir / "alpha_map").mkdir()
            (fdir / "colmap" / "pointclouds").mkdir(parents=True)
            for s in SERIALS:
                iio.imwrite(fdir / "images" / f"cam_{s}.png", np.full((H, W, 3), 128, np.uint8))
                iio.imwrite(fdir / "alpha_map" / f"cam_{s}.png", np.full((H, W), 255, np.uint8))
            _write_cloud(fdir / "colmap" / "pointclouds" / "pointcloud_16.pcd", _cloud(seed=t))
    return pdir


@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory) -> Path:
    """An untrained tiny prior: enough for `npga track` to run a few steps."""
    from npga_taichi.prior.config import preset
    from npga_taichi.prior.model import MonoNPHM, save_prior

    torch.manual_seed(0)
    cfg = preset("tiny")
    out = tmp_path_factory.mktemp("prior") / "prior"
    save_prior(MonoNPHM(cfg, torch.randn(cfg.n_anchors, 3) * 0.3), out)
    return out


def _track(pdir: Path, prior: Path, *extra: str):
    return CliRunner().invoke(cli, ["track", str(pdir), "--prior", str(prior), "--steps-first", "3", "--steps", "1",
                                    "--points", "50", "--quiet", *extra])


def _is_message(result) -> bool:
    """A click error message (exit 1/2), not a Python traceback."""
    return result.exit_code in (1, 2) and isinstance(result.exception, SystemExit) and \
        "Traceback" not in result.output


def _frame(n=20, seed=0, sh_degree=1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"means": torch.randn(n, 3, generator=g) * 0.1,
            "quats": torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
            "scales": torch.rand(n, 3, generator=g) * 0.03 + 0.005, "opacities": torch.rand(n, generator=g),
            "colors": torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g) * 0.5, "sh_degree": sh_degree}


# --------------------------------------------------------------------------------- row 1
def test_row1_writers_never_follow_a_planted_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    # every name the old writers used beside their targets, and the targets themselves
    for name in (".seq.h5.tmp", ".ply.tmp", "seq.h5", "x.ply"):
        (out / name).symlink_to(victim)
    f = _frame()
    arrays = {k: f[k] for k in ("means", "quats", "scales", "opacities")} | {"sh": f["colors"]}
    with SequenceWriter(out / "seq.h5", sh_degree=1, force=True) as w:
        w.add_frame(0, arrays)
    assert victim.read_text() == "precious"
    from npga_taichi.ply import PlyFolderWriter, raw_ply_arrays

    write_ply(out / "x.ply", **raw_ply_arrays(f))
    with PlyFolderWriter(out / "ply") as plys:
        plys.add(0, f)
    assert victim.read_text() == "precious"
    for target in (out / "seq.h5", out / "x.ply", out / "ply" / "frame_00000.ply"):
        assert target.is_file() and not target.is_symlink(), target
    assert len(read_ply(out / "ply" / "frame_00000.ply")) == 20
    # no temporaries left, and the planted links were not touched
    assert sorted(p.name for p in out.iterdir()) == [".ply.tmp", ".seq.h5.tmp", "ply", "seq.h5", "x.ply"]
    assert sorted(p.name for p in (out / "ply").iterdir()) == [".npga-ply-export.json", "frame_00000.ply"]


# --------------------------------------------------------------------------------- row 2
def test_row2_ply_force_removes_only_what_an_export_wrote(tmp_path, monkeypatch):
    from npga_taichi.ply import PlyFolderWriter

    folder = tmp_path / "frames"
    with PlyFolderWriter(folder) as plys:
        for i in range(3):
            plys.add(i, _frame(seed=i))
    (folder / "notes.txt").write_text("mine")
    (folder / "frame_00099.ply").write_text("not written by npga")  # looks like ours, is not listed
    (folder / "sub").mkdir()
    with pytest.raises(FileExistsError, match="--force"):
        PlyFolderWriter(folder)
    with PlyFolderWriter(folder, force=True) as plys:
        plys.add(0, _frame(seed=5))
    names = sorted(p.name for p in folder.iterdir())
    assert names == [".npga-ply-export.json", "frame_00000.ply", "frame_00099.ply", "notes.txt", "sub"]
    assert (folder / "notes.txt").read_text() == "mine"
    # an export killed mid-write leaves a hidden staging folder: the next export is not refused for it
    fresh = tmp_path / "fresh"
    (fresh / ".npga-ply.k3j9x2ab.tmp").mkdir(parents=True)
    (fresh / ".npga-ply.k3j9x2ab.tmp" / "frame_00000.ply").write_bytes(b"ply\ntorn")
    with PlyFolderWriter(fresh) as plys:
        plys.add(0, _frame())
    assert sorted(p.name for p in fresh.iterdir()) == [".npga-ply-export.json", "frame_00000.ply"]
    # a failed export leaves the folder as it was
    with pytest.raises(RuntimeError):
        with PlyFolderWriter(folder, force=True) as plys:
            plys.add(0, _frame(seed=6))
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in folder.iterdir()) == names
    # dangerous folders are refused with a message
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.chdir(run)
    for bad in (".", "..", str(run), str(tmp_path), "/"):
        with pytest.raises(ValueError, match="refusing"):
            PlyFolderWriter(bad, force=True, protect=[run])
    with pytest.raises(ValueError, match="refusing"):
        PlyFolderWriter(tmp_path / "elsewhere" / "..", force=True, protect=[run])


# --------------------------------------------------------------------------------- row 3
def test_row3_track_drops_nonfinite_points_and_never_writes_nan(tmp_path, prior_dir):
    from npga_taichi.prior.tracking import load_tracking

    pdir = make_capture(tmp_path)
    pcd = pdir / "sequences/EXP-1/timesteps/frame_00001/colmap/pointclouds/pointcloud_16.pcd"
    pts = _cloud(seed=1)
    pts[:7, 1] = np.nan
    pts[7, 2] = np.inf
    _write_cloud(pcd, pts)
    result = _track(pdir, prior_dir)
    assert result.exit_code == 0, result.output
    assert "dropped 8 of 300 points" in result.output and "pointcloud_16.pcd" in result.output
    tr = load_tracking(pdir / "annotations/tracking/EXP-1.npz")
    assert tr.meta["nonfinite_points_dropped"] == 8
    for arr in (tr.z_exp, tr.z_geo, tr.rot, tr.trans, tr.residual):
        assert np.isfinite(arr).all()
    # a cloud with too few finite points is an error naming the file, and nothing is written
    pts[:, 0] = np.nan
    _write_cloud(pcd, pts)
    result = _track(pdir, prior_dir, "--force")
    assert _is_message(result) and "pointcloud_16.pcd" in result.output and "0 finite points" in result.output


def test_row3_tracking_files_never_hold_nan(tmp_path):
    from npga_taichi.prior.tracking import Tracking, load_tracking, save_tracking

    tr = Tracking("EXP-1", np.arange(2), np.zeros((2, 4), np.float32), np.zeros(3, np.float32),
                  np.zeros(3, np.float32), np.stack([np.eye(3)] * 2).astype(np.float32),
                  np.zeros((2, 3), np.float32), 0.25, np.zeros(2, np.float32))
    tr.z_exp[1, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite.*z_exp"):
        save_tracking(tr, tmp_path / "EXP-1.npz")
    assert not list(tmp_path.iterdir())
    np.savez(tmp_path / "nan.npz", sequence=np.array("EXP-1"), timesteps=np.arange(2), z_exp=tr.z_exp,
             z_geo=tr.z_geo, z_app=tr.z_app, rot=tr.rot, trans=tr.trans, scale=np.array(0.25),
             residual=tr.residual)
    with pytest.raises(ValueError, match="nan.npz"):
        load_tracking(tmp_path / "nan.npz")


# --------------------------------------------------------------------------------- row 4
def _lying_ply(path: Path, fmt: str, count: int) -> None:
    header = (f"ply\nformat {fmt} 1.0\nelement vertex {count}\n" +
              "".join(f"property float {p}\n" for p in ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                                                        "scale_0", "scale_1", "scale_2", "rot_0", "rot_1",
                                                        "rot_2", "rot_3")) + "end_header\n")
    body = b"0 0 0 0 0 0 0 0 0 0 1 0 0 0\n" if fmt == "ascii" else np.zeros(14, "<f4").tobytes()
    path.write_bytes(header.encode() + body)


def test_row4_lying_ply_header_counts_fail_fast(tmp_path):
    _lying_ply(tmp_path / "bin.ply", "binary_little_endian", 2 ** 40)
    with pytest.raises(ValueError, match=r"bin\.ply.*declares 1099511627776 vertices"):
        read_ply(tmp_path / "bin.ply")
    _lying_ply(tmp_path / "ok.ply", "ascii", 1)
    assert len(read_ply(tmp_path / "ok.ply")) == 1
    # ascii: the old reader called readline once per claimed vertex (minutes, GBs): run it in a
    # child with 2 GB of address space and 120 s, which a per-vertex loop cannot finish in.
    _lying_ply(tmp_path / "asc.ply", "ascii", 10 ** 9)
    code = ("import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
            "from npga_taichi.ply import read_ply\n"
            "try:\n    read_ply(sys.argv[1])\nexcept ValueError as err:\n    print('ValueError:', err)\n")
    child = subprocess.run([sys.executable, "-c", code, str(tmp_path / "asc.ply")], capture_output=True,
                           text=True, timeout=120)
    assert child.returncode == 0 and "ValueError:" in child.stdout and "asc.ply" in child.stdout, child.stderr


def test_row4_lying_pcd_and_npy_headers(tmp_path):
    from npga_taichi.data.pcd import read_pcd
    from npga_taichi.prior.tracking import import_mononphm_tracking

    pcd = tmp_path / "big.pcd"
    pcd.write_bytes(b"VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH 1\nHEIGHT 1\n"
                    b"POINTS 1000000000000\nDATA binary\n" + bytes(12))
    with pytest.raises(ValueError, match="big.pcd.*1000000000000 points"):
        read_pcd(pcd)
    # a MonoNPHM tracking frame whose z_exp.npy header claims 400 GB over a 16-byte body
    frame = tmp_path / "mononphm" / "00000"
    frame.mkdir(parents=True)
    for name, value in (("rot.npy", np.eye(3)), ("trans.npy", np.zeros(3)), ("scale.npy", np.ones(1)),
                        ("z_geo.npy", np.zeros(4)), ("z_app.npy", np.zeros(4))):
        np.save(frame / name, value)
    (frame / "z_exp.npy").write_bytes(np.lib.format.MAGIC_PREFIX + bytes([1, 0]) + _npy_header(
        b"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999,), }") + bytes(16))
    with pytest.raises(ValueError, match="z_exp.npy.*99999999999"):
        import_mononphm_tracking(tmp_path / "mononphm", "EXP-1")


def _npy_header(d: bytes) -> bytes:
    """A version 1.0 .npy header block (length prefix, dict, padding to 64 bytes, newline)."""
    total = len(d) + 1
    pad = (64 - (10 + total) % 64) % 64
    body = d + b" " * pad + b"\n"
    return len(body).to_bytes(2, "little") + body


# --------------------------------------------------------------------------------- row 8
def test_row8_track_on_broken_point_clouds_and_folders_gives_messages(tmp_path, prior_dir):
    cases = {
        "zero-byte": lambda p: p.write_bytes(b""),
        "garbage": lambda p: p.write_bytes(b"\x00\xff garbage \x13" * 20),
        "no-points": lambda p: _write_cloud(p, np.zeros((0, 3), np.float32)),
        "no-file": lambda p: p.unlink(),
    }
    for i, (name, damage) in enumerate(cases.items()):
        pdir = make_capture(tmp_path / name)
        pcd = pdir / "sequences/EXP-1/timesteps/frame_00001/colmap/pointclouds/pointcloud_16.pcd"
        damage(pcd)
        result = _track(pdir, prior_dir)
        assert _is_message(result), (name, result.output, result.exception)
        assert "pointcloud_16.pcd" in result.output, (name, result.output)
        assert not (pdir / "annotations/tracking/EXP-1.npz").exists()
    # an empty frame folder, an empty sequence folder, a sequence without timesteps/
    pdir = make_capture(tmp_path / "folders", sequences=("EXP-1", "EXP-2"))
    empty_frame = pdir / "sequences/EXP-2/timesteps/frame_00002"
    empty_frame.mkdir()
    result = _track(pdir, prior_dir, "--sequences", "EXP-2")
    assert _is_message(result) and "frame_00002" in result.output, result.output
    import shutil

    shutil.rmtree(pdir / "sequences/EXP-2/timesteps")
    (pdir / "sequences/EXP-2/timesteps").mkdir()
    result = _track(pdir, prior_dir, "--sequences", "EXP-2")
    assert _is_message(result) and "no frame_* folders" in result.output, result.output
    shutil.rmtree(pdir / "sequences/EXP-2/timesteps")
    result = _track(pdir, prior_dir, "--sequences", "EXP-2")
    assert _is_message(result) and "EXP-2" in result.output, result.output


def test_row8_output_folder_naming_a_file_is_a_clear_error(tmp_path):
    from npga_taichi.checkpoint import ensure_output_dir

    (tmp_path / "run").write_text("a file")
    with pytest.raises(ValueError, match="run exists and is not a folder"):
        ensure_output_dir(tmp_path / "run", "--out")
    with pytest.raises(ValueError, match=r"run/sub cannot be created"):
        ensure_output_dir(tmp_path / "run" / "sub", "--out")
    assert ensure_output_dir(tmp_path / "new" / "run").is_dir()


# --------------------------------------------------------------------------------- row 9
def test_row9_nan_in_one_calibration_matrix_names_camera_and_file(tmp_path):
    pdir = make_capture(tmp_path)
    path = pdir / "calibration" / "camera_params.json"
    calib = json.loads(path.read_text())
    calib["world_2_cam"][SERIALS[1]][1][2] = float("nan")
    path.write_text(json.dumps(calib))  # json writes NaN, and reads it back
    with pytest.raises(ns.CaptureError, match=f"camera_params.json.*{SERIALS[1]}.*NaN"):
        ns.NersembleCapture(tmp_path, "001")
    calib["world_2_cam"][SERIALS[1]][1][2] = 0.0
    calib["intrinsics"][0][0] = float("inf")
    path.write_text(json.dumps(calib))
    with pytest.raises(ns.CaptureError, match="camera_params.json.*intrinsics"):
        ns.NersembleCapture(tmp_path, "001")


def test_row9_validate_capture_checks_every_image_before_training(tmp_path):
    pdir = make_capture(tmp_path, frames=(0, 1, 2))
    cap = ns.NersembleCapture(tmp_path, "001")
    views = [("EXP-1", t, s) for t in (0, 1, 2) for s in SERIALS]
    assert ns.validate_capture(cap, views) == {"views": 6, "frames": 3, "images": 6, "mattes": 6}
    frame = pdir / "sequences/EXP-1/timesteps/frame_00002"
    (frame / "images" / f"cam_{SERIALS[1]}.png").unlink()
    with pytest.raises(ns.CaptureError, match=f"frame_00002/images/cam_{SERIALS[1]}"):
        ns.validate_capture(cap, views)
    assert ns.validate_capture(cap, views[:4])["images"] == 4  # views that do not use it pass
    iio.imwrite(frame / "images" / f"cam_{SERIALS[1]}.png", np.zeros((H, W + 1, 3), np.uint8))
    with pytest.raises(ns.CaptureError, match="size 13x16 disagrees"):
        ns.validate_capture(cap, views)
    iio.imwrite(frame / "images" / f"cam_{SERIALS[1]}.png", np.zeros((H, W, 3), np.uint8))
    data = (frame / "alpha_map" / f"cam_{SERIALS[0]}.png").read_bytes()
    (frame / "alpha_map" / f"cam_{SERIALS[0]}.png").write_bytes(data[: len(data) // 2])  # truncated matte
    with pytest.raises(ns.CaptureError, match=f"alpha_map/cam_{SERIALS[0]}.png"):
        ns.validate_capture(cap, views)


# --------------------------------------------------------------------------------- row 10
def test_row10_uncalibrated_camera_and_sequence_file_are_not_silent(tmp_path, prior_dir):
    pdir = make_capture(tmp_path, sequences=("EXP-1", "EXP-2"))
    frame = pdir / "sequences/EXP-1/timesteps/frame_00000"
    iio.imwrite(frame / "images" / "cam_999999999.png", np.zeros((H, W, 3), np.uint8))
    cap = ns.NersembleCapture(tmp_path, "001")
    with pytest.raises(ns.CaptureError, match="cam_999999999.png.*absent from the calibration"):
        ns.validate_capture(cap, [("EXP-1", 0, SERIALS[0])])
    (frame / "images" / "cam_999999999.png").unlink()
    # a sequence folder replaced by a file: said when listing, an error when named
    import shutil

    shutil.rmtree(pdir / "sequences" / "EXP-2")
    (pdir / "sequences" / "EXP-2").write_text("oops")
    with pytest.warns(UserWarning, match="EXP-2: not a sequence folder; skipped"):
        cap = ns.NersembleCapture(tmp_path, "001")
    assert cap.sequences() == ["EXP-1"] and "EXP-2" in cap.skipped[0]
    with pytest.raises(ns.CaptureError, match="EXP-2 is not a folder"):
        cap.timesteps("EXP-2")
    named = _track(pdir, prior_dir, "--sequences", "EXP-2")
    assert _is_message(named) and "EXP-2 is not a folder" in named.output, named.output
    unnamed = _track(pdir, prior_dir)
    assert unnamed.exit_code == 0, unnamed.output
    assert "warning:" in unnamed.output and "EXP-2: not a sequence folder; skipped" in unnamed.output


# --------------------------------------------------------------------------------- row 11
@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_row11_atomic_files_get_the_umask_mode(tmp_path, mask):
    from npga_taichi.ply import write_ply as write

    old = os.umask(mask)
    try:
        with atomic_path(tmp_path / "a.json") as tmp:
            tmp.write_text("{}")
        f = _frame()
        with SequenceWriter(tmp_path / "s.h5", sh_degree=1) as w:
            w.add_frame(0, {k: f[k] for k in ("means", "quats", "scales", "opacities")} | {"sh": f["colors"]})
        write(tmp_path / "f.ply", f["means"], f["quats"], f["scales"].log(), f["opacities"], f["colors"])
        with open(tmp_path / "plain.txt", "w") as fh:  # what a plain open() gives
            fh.write("x")
    finally:
        os.umask(old)
    want = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert want == 0o666 & ~mask
    for p in (tmp_path / "a.json", tmp_path / "s.h5", tmp_path / "f.ply"):
        assert stat.S_IMODE(p.stat().st_mode) == want, (p, oct(p.stat().st_mode))
