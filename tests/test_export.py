"""The npga-sequence HDF5 format, the PLY export and `npga export` on the tiny trained run."""
from __future__ import annotations

import json
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

from npga_taichi import export_hdf5
from npga_taichi.ply import raw_ply_arrays, read_ply, write_ply


def _random_frame(n, seed, sh_degree=1):
    g = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2
    return {
        "means": torch.randn(n, 3, generator=g) * 0.1,
        "quats": torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
        "scales": torch.rand(n, 3, generator=g) * 0.03 + 0.005,
        "opacities": torch.rand(n, generator=g),
        "sh": torch.randn(n, k, 3, generator=g) * 0.5,
    }


def _camera():
    viewmat = torch.eye(4)
    viewmat[2, 3] = 1.0  # 1 m in front of the origin
    K = torch.tensor([[80.0, 0, 24.0], [0, 80.0, 20.0], [0, 0, 1]])
    return SimpleNamespace(serial="222200037", viewmat=viewmat, K=K, width=48, height=40)


def _write(path, frames, **kw):
    with export_hdf5.SequenceWriter(path, sh_degree=1, background=torch.ones(3), **kw) as w:
        w.write_cameras({"222200037": _camera()})
        for t, f in enumerate(frames):
            w.add_frame(10 + t, f)
        n = len(frames)
        w.write_tracks(np.arange(10, 10 + n), torch.randn(n, 8), torch.eye(3).expand(n, 3, 3), torch.zeros(n, 3),
                       torch.ones(n))


def test_hdf5_round_trip_and_conventions(tmp_path):
    frames = [_random_frame(50, 0), _random_frame(37, 1)]  # N may change between frames
    path = tmp_path / "seq.h5"
    _write(path, frames)
    meta = export_hdf5.read_metadata(path)
    assert meta["format"] == "npga-sequence" and meta["format_version"] == 1
    assert meta["quaternion_order"] == "wxyz" and "OpenCV" in meta["camera_axes"] and meta["units"] == "metres"
    assert meta["num_frames"] == 2 and list(meta["timesteps"]) == [10, 11] and meta["cameras"] == ["222200037"]
    for i, f in enumerate(frames):
        back = export_hdf5.read_frame(path, i)
        assert back["sh_degree"] == 1 and torch.equal(back["background"], torch.ones(3))
        for key in ("means", "quats", "scales", "opacities"):
            assert torch.equal(back[key], f[key])
        assert torch.equal(back["colors"], f["sh"])
    with h5py.File(path) as h:  # chunked per frame and gzip-compressed
        ds = h["frames/00000/means"]
        assert ds.compression == "gzip" and ds.chunks == ds.shape


def test_hdf5_frame_rerenders_like_the_arrays_it_was_written_from(tmp_path):
    from npga_taichi.reference import rasterize

    frame = _random_frame(60, 2)
    path = tmp_path / "seq.h5"
    _write(path, [frame])
    cam = export_hdf5.read_camera(path, "222200037")
    direct = rasterize(frame["means"], frame["quats"], frame["scales"], frame["opacities"], frame["sh"],
                       _camera().viewmat, _camera().K, 48, 40, sh_degree=1, background=torch.ones(3))
    again = rasterize(**export_hdf5.read_frame(path, 0), **cam)
    assert float(direct.alpha.max()) > 0.1  # the scene is visible, so the check means something
    assert torch.equal(direct.image, again.image)


def test_hdf5_refuses_to_overwrite_and_is_atomic(tmp_path):
    path = tmp_path / "seq.h5"
    _write(path, [_random_frame(10, 3)])
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="--force"):
        _write(path, [_random_frame(10, 4)])
    with pytest.raises(RuntimeError):  # a failure mid-export leaves the old file untouched
        with export_hdf5.SequenceWriter(path, sh_degree=1, force=True) as w:
            w.add_frame(0, _random_frame(10, 5))
            raise RuntimeError("interrupted")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["seq.h5"]
    _write(path, [_random_frame(10, 4)], force=True)
    assert path.read_bytes() != before


def test_hdf5_reader_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such sequence"):
        export_hdf5.read_frame(tmp_path / "missing.h5", 0)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as h:
        h.attrs["format"] = "something-else"
    with pytest.raises(ValueError, match="not an npga-sequence"):
        export_hdf5.read_frame(other, 0)
    path = tmp_path / "seq.h5"
    _write(path, [_random_frame(10, 6)])
    with pytest.raises(IndexError, match="out of range"):
        export_hdf5.read_frame(path, 5)
    with pytest.raises(KeyError, match="no camera"):
        export_hdf5.read_camera(path, "nope")
    with pytest.raises(ValueError, match=r"\.h5"):
        export_hdf5.SequenceWriter(tmp_path / "seq.txt", sh_degree=1)


def test_ply_export_round_trips_through_the_reader(tmp_path):
    f = _random_frame(40, 7)
    f["opacities"][0] = 1.0  # fully opaque stays finite (clamped logit), so no row is dropped
    g = {"means": f["means"], "quats": f["quats"], "scales": f["scales"], "opacities": f["opacities"],
         "colors": f["sh"], "sh_degree": 1}
    assert write_ply(tmp_path / "f.ply", **raw_ply_arrays(g)) == 0
    means, quats, scales, opacities, sh = read_ply(tmp_path / "f.ply").activated()
    assert torch.equal(means, g["means"]) and torch.equal(sh, g["colors"])
    assert torch.allclose(quats, g["quats"], atol=1e-6)
    assert torch.allclose(scales, g["scales"], rtol=1e-6)
    assert torch.allclose(opacities, g["opacities"], atol=1e-6)
    rgb = {**g, "colors": torch.rand(40, 3), "sh_degree": None}  # RGB features become SH DC
    write_ply(tmp_path / "rgb.ply", **raw_ply_arrays(rgb))
    back = read_ply(tmp_path / "rgb.ply")
    assert back.sh_degree == 0
    assert torch.allclose(0.5 + 0.28209479177387814 * back.sh[:, 0], rgb["colors"], atol=1e-6)


# ----------------------------------------------------------------------- `npga export` on a run



@pytest.fixture(scope="module")
def exported(tiny_demo, tmp_path_factory):
    from click.testing import CliRunner

    from npga_taichi.cli.main import cli

    out = tmp_path_factory.mktemp("export")
    run_dir = tiny_demo["out"] / "run"
    result = CliRunner().invoke(cli, ["export", str(run_dir), "--sequence", "FREE", "--out", str(out / "free.h5"),
                                      "--ply", str(out / "ply"), "--images", "--cameras", "holdout",
                                      "--max-frames", "2", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return run_dir, out, json.loads(result.stdout.strip().splitlines()[-1])


def test_export_hdf5_rerenders_exactly_what_npga_render_renders(exported):
    from npga_taichi.reenactment import LoadedRun
    from npga_taichi.render import rasterize

    run_dir, out, info = exported
    path = out / "free.h5"
    meta = export_hdf5.read_metadata(path)
    assert meta["num_frames"] == info["num_frames"] == 2 and meta["sequence"] == "FREE"
    run = LoadedRun(run_dir)
    drive = run.drive("FREE")
    assert list(meta["timesteps"]) == [int(t) for t in drive.timesteps[:2]]
    assert np.array_equal(meta["z_exp"], drive.z_exp[:2].numpy())
    assert meta["cameras"] == sorted(run.heldout_cameras())
    for i in range(2):
        frame = export_hdf5.read_frame(path, i)
        for serial in meta["cameras"]:
            cam = export_hdf5.read_camera(path, serial)
            again = rasterize(**frame, **cam).image
            api = run.render(run.gaussians(drive.frame(i)), run.camera(serial))  # what `npga render` shows
            assert float(again.max()) > 0 and float((again - run.background).abs().max()) > 0.05  # not empty
            assert float((again - api).abs().max()) <= 1e-6
            assert np.array_equal(again.numpy(), export_hdf5.read_frame_image(path, i, serial))


def _window(cam: dict, frame: dict, size: int = 40) -> tuple[dict, slice, slice]:
    """A size x size window of the camera around the projected head centre: the same pixels
    (K's principal point shifted by the window corner), so the slow oracle renders only those."""
    p = cam["K"] @ (cam["viewmat"][:3, :3] @ frame["means"].mean(0) + cam["viewmat"][:3, 3])
    x0 = int(min(max(float(p[0] / p[2]) - size / 2, 0), cam["width"] - size))
    y0 = int(min(max(float(p[1] / p[2]) - size / 2, 0), cam["height"] - size))
    K = cam["K"].clone()
    K[0, 2] -= x0
    K[1, 2] -= y0
    return {**cam, "K": K, "width": size, "height": size}, slice(y0, y0 + size), slice(x0, x0 + size)


def test_export_passes_an_independent_rerender(exported):
    """The oracle rasterizer (pure PyTorch, every Gaussian at every pixel) on the HDF5 frame and
    on the PLY file (raw 3DGS parameters, re-activated) agrees with the stored images."""
    from npga_taichi import reference
    from npga_taichi.compare import DEFAULT_TOLERANCES

    # two correct float32 rasterizers may flip a fragment across the 1/255 or T thresholds
    tol = DEFAULT_TOLERANCES[("exact", "float32")][0]
    _, out, _ = exported
    path = out / "free.h5"
    serial = export_hdf5.read_metadata(path)["cameras"][0]
    frame = export_hdf5.read_frame(path, 1)
    cam, rows, cols = _window(export_hdf5.read_camera(path, serial), frame)
    stored = torch.as_tensor(export_hdf5.read_frame_image(path, 1, serial))[rows, cols]
    assert float((stored - frame["background"]).abs().max()) > 0.1  # the window shows the head
    oracle = reference.rasterize(**frame, **cam).image
    assert float((oracle - stored).abs().max()) < tol and float((oracle - stored).abs().mean()) < 1e-5
    ply = read_ply(out / "ply" / "frame_00001.ply")
    assert len(ply) == len(frame["means"])
    means, quats, scales, opacities, sh = ply.activated()
    from_ply = reference.rasterize(means, quats, scales, opacities, sh, cam["viewmat"], cam["K"], cam["width"],
                                   cam["height"], sh_degree=ply.sh_degree, background=frame["background"]).image
    assert float((from_ply - stored).abs().max()) < tol and float((from_ply - stored).abs().mean()) < 1e-5


def test_exported_ply_opens_in_npga_compare(exported):
    from click.testing import CliRunner

    from npga_taichi.cli.main import cli

    _, out, _ = exported
    result = CliRunner().invoke(cli, ["compare", "--ply", str(out / "ply" / "frame_00000.ply"), "--n", "300",
                                      "--width", "32", "--height", "32", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["passed"], result.output


def test_export_refuses_overwrite_and_bad_arguments(exported, tmp_path):
    from click.testing import CliRunner

    from npga_taichi.cli.main import cli

    run_dir, out, _ = exported
    runner = CliRunner()
    before = (out / "free.h5").stat().st_mtime_ns
    again = runner.invoke(cli, ["export", str(run_dir), "-s", "FREE", "--out", str(out / "free.h5")])
    assert again.exit_code == 1 and "--force" in again.output
    assert (out / "free.h5").stat().st_mtime_ns == before
    ply_again = runner.invoke(cli, ["export", str(run_dir), "-s", "FREE", "--ply", str(out / "ply")])
    assert ply_again.exit_code == 1 and "--force" in ply_again.output
    nothing = runner.invoke(cli, ["export", str(run_dir), "-s", "FREE"])
    assert nothing.exit_code == 2 and "--ply" in nothing.output
    bad_seq = runner.invoke(cli, ["export", str(run_dir), "-s", "NOPE", "--out", str(tmp_path / "x.h5")])
    assert bad_seq.exit_code == 1 and "NOPE" in bad_seq.output and not (tmp_path / "x.h5").exists()
    bad_ext = runner.invoke(cli, ["export", str(run_dir), "-s", "FREE", "--out", str(tmp_path / "x.txt")])
    assert bad_ext.exit_code == 2 and ".h5" in bad_ext.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporaries left behind


def test_export_never_follows_planted_links_and_force_keeps_unrelated_files(exported, tmp_path, monkeypatch):
    """Issue 13 rows 1, 2, 11 through the command: planted symlinks at the old temporary names
    and at the targets are not followed, --force removes only frames an export wrote, dangerous
    --ply folders are refused, and written files get the umask's mode."""
    import os
    import stat

    from click.testing import CliRunner

    from npga_taichi.cli.main import cli

    run_dir, _, _ = exported
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "frame_00000.ply").symlink_to(victim)
    (tmp_path / ".frames.tmp").symlink_to(tmp_path)  # the old staging folder name
    (tmp_path / ".free.h5.tmp").symlink_to(victim)   # the old HDF5 temporary name
    (tmp_path / "free.h5").symlink_to(victim)
    runner = CliRunner()
    refused = runner.invoke(cli, ["export", str(run_dir), "-s", "FREE", "--ply", str(folder), "--max-frames", "1"])
    assert refused.exit_code == 1 and "--force" in refused.output
    result = runner.invoke(cli, ["export", str(run_dir), "-s", "FREE", "--ply", str(folder), "--out",
                                 str(tmp_path / "free.h5"), "--max-frames", "1", "--force"])
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "precious" and (folder / "notes.txt").read_text() == "mine"
    mask = os.umask(0o022)
    os.umask(mask)
    mode = 0o666 & ~mask  # what open() gives a new file
    for target in (folder / "frame_00000.ply", tmp_path / "free.h5"):
        assert target.is_file() and not target.is_symlink()
        assert stat.S_IMODE(target.stat().st_mode) == mode
    assert len(read_ply(folder / "frame_00000.ply")) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".free.h5.tmp", ".frames.tmp", "frames", "free.h5",
                                                                "victim.txt"])
    monkeypatch.chdir(run_dir)
    for bad in (".", "..", str(run_dir)):
        result = runner.invoke(cli, ["export", str(run_dir), "-s", "FREE", "--ply", bad, "--force"])
        assert result.exit_code == 1 and "refusing" in result.output, (bad, result.output)
        assert isinstance(result.exception, SystemExit)
