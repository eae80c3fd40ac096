"""Fuzzing what users hand us (issue 13): PLY, PCD, camera_params.json, image / alpha folders,
npga-sequence HDF5 files, tracking .npz files and MonoNPHM per-frame .npy folders.

Every target states the same property: the reader either loads the file correctly (shapes
consistent, values as written for files we wrote unchanged, finite where the format promises
it) or raises our error type — ValueError (CaptureError is one) or FileNotFoundError — whose
message names the file, within a bounded time (a hang guard, not a speed test) and bounded
Python/numpy memory. Inputs start from valid files and are mutated (truncated, bytes replaced,
header counts changed, values replaced by NaN / strings / other shapes, files removed) or are
built from random header pieces.

Size: ``FUZZ_EXAMPLES`` examples per target by default (tests/conftest.py); ``--runslow`` or
``--fuzz-examples N`` for a longer run.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import signal
import tracemalloc
import warnings
from pathlib import Path

import h5py
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from npga_taichi.data import nersemble as ns
from npga_taichi.data.pcd import read_pcd, read_points, write_pcd
from npga_taichi.export_hdf5 import SequenceWriter, read_camera, read_frame, read_frame_image, read_metadata
from npga_taichi.ply import read_ply, write_ply
from npga_taichi.prior.tracking import Tracking, import_mononphm_tracking, load_tracking, save_tracking

FUZZ = settings.get_profile("npga-fuzz")
HANG_SECONDS = 30            # a reader still busy after this long on a file of a few KB hangs
PEAK_BYTES = 256 << 20       # traced allocations per example (inputs are a few KB)


class Hang(BaseException):
    """Raised by the alarm: a BaseException so no ``except Exception`` in a reader swallows it."""


@contextlib.contextmanager
def bounded():
    def alarm(signum, frame):
        raise Hang(f"no answer within {HANG_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(HANG_SECONDS)
    tracemalloc.start()
    try:
        yield
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert peak < PEAK_BYTES, f"peak traced memory {peak / 2**20:.0f} MiB"


def loads_or_names(fn, *names, errors=(ValueError, FileNotFoundError)):
    """``fn()``'s result, or None when it raised one of ``errors`` naming one of ``names``."""
    try:
        with bounded(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()
    except errors as err:
        message = str(err)
        assert any(str(n) in message for n in names), f"{type(err).__name__} does not name the file: {message!r}"
        return None


def read_case(tmp_path_factory, name: str, data: bytes, reader, unchanged: bool):
    """Write ``data`` to a fresh file ``name``; return (path, reader(path) or None on a named
    error). A file we wrote that was not mutated (``unchanged``) must load."""
    path = tmp_path_factory.mktemp("case") / name
    path.write_bytes(data)
    got = loads_or_names(lambda: reader(path), path)
    assert got is not None or not unchanged, f"an unchanged {name} written by npga must load"
    return path, got


# ----------------------------------------------------------------------------- byte mutations
@st.composite
def mutated(draw, data: bytes, header_end: int | None = None) -> bytes:
    """``data`` truncated, with bytes replaced or inserted (biased to the header), or unchanged."""
    kind = draw(st.sampled_from(["same", "truncate", "replace", "insert", "header"]))
    if kind == "same" or not data:
        return data
    if kind == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))]
    limit = len(data) if kind != "header" or not header_end else header_end
    pos = draw(st.integers(0, max(limit - 1, 0)))
    chunk = draw(st.binary(min_size=1, max_size=12))
    if kind == "insert":
        return data[:pos] + chunk + data[pos:]
    return data[:pos] + chunk + data[pos + len(chunk):]


def _replace_number(draw, text: bytes, key: bytes) -> bytes:
    """Replace the first number after ``key`` in a header by an arbitrary (possibly huge) one."""
    at = text.find(key)
    if at < 0:
        return text
    start = at + len(key)
    end = start
    while end < len(text) and text[end:end + 1] not in (b"\n",):
        end += 1
    value = draw(st.one_of(st.integers(0, 50), st.integers(0, 2 ** 70), st.integers(-5, -1)))
    return text[:start] + str(value).encode() + text[end:]


# ----------------------------------------------------------------------------- PLY
finite_or_not = st.floats(width=32, allow_nan=True, allow_infinity=True)


@st.composite
def ply_files(draw) -> tuple[bytes, dict | None]:
    """(file bytes, the arrays when the file is an unchanged write_ply output)."""
    n = draw(st.integers(0, 5))
    degree = draw(st.integers(0, 3))
    k = (degree + 1) ** 2
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    arrays = {"means": rng.normal(size=(n, 3)), "quats": rng.normal(size=(n, 4)),
              "log_scales": rng.normal(size=(n, 3)), "opacity_logits": rng.normal(size=n),
              "sh": rng.normal(size=(n, k, 3))}
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    from npga_taichi.ply import property_names

    header += [f"property float {p}" for p in property_names(degree)] + ["end_header"]
    cols = np.concatenate([arrays["means"], np.zeros((n, 3)), arrays["sh"][:, 0],
                           arrays["sh"][:, 1:].transpose(0, 2, 1).reshape(n, 3 * (k - 1)), arrays["opacity_logits"][:, None],
                           arrays["log_scales"], arrays["quats"]], axis=1).astype("<f4")
    style = draw(st.sampled_from(["binary", "ascii", "big"]))
    if style == "ascii":
        header[1] = "format ascii 1.0"
        body = "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in cols).encode()
    elif style == "big":
        header[1] = "format binary_big_endian 1.0"
        body = cols.astype(">f4").tobytes()
    else:
        body = cols.tobytes()
    head = ("\n".join(header) + "\n").encode()
    data = head + body
    how = draw(st.sampled_from(["same", "bytes", "count", "pieces"]))
    if how == "same":
        return data, {k: v.astype(np.float32) for k, v in arrays.items()}
    if how == "bytes":
        return draw(mutated(data, len(head))), None
    if how == "count":
        return _replace_number(draw, head, b"element vertex ") + body, None
    # a header assembled from random pieces over a random body
    lines = draw(st.lists(st.one_of(
        st.sampled_from(["format ascii 1.0", "format binary_little_endian 1.0", "format binary_big_endian 1.0",
                         "format weird 2.0", "comment hi", "element vertex 3", "element face 2", "element",
                         "property float x", "property float y", "property float z", "property", "property list "
                         "uchar int vertex_indices", "property double opacity", "property int8 x", "obj_info",
                         "end_header"]),
        st.text(max_size=20)), max_size=12))
    return ("ply\n" + "\n".join(lines) + "\nend_header\n").encode() + draw(st.binary(max_size=200)), None


@FUZZ
@given(ply_files())
def test_fuzz_ply(tmp_path_factory, case):
    data, arrays = case
    _, ply = read_case(tmp_path_factory, "in.ply", data, read_ply, arrays is not None)
    if ply is None:
        return
    n = len(ply)
    k = (ply.sh_degree + 1) ** 2
    assert ply.means.shape == (n, 3) and ply.quats.shape == (n, 4) and ply.log_scales.shape == (n, 3)
    assert ply.opacity_logits.shape == (n,) and ply.sh.shape == (n, k, 3)
    if arrays is not None:  # loads correctly: exactly what was written
        torch.testing.assert_close(ply.means, torch.from_numpy(arrays["means"]), rtol=0, atol=0)
        torch.testing.assert_close(ply.sh, torch.from_numpy(arrays["sh"]), rtol=0, atol=0)
        torch.testing.assert_close(ply.quats, torch.from_numpy(arrays["quats"]), rtol=0, atol=0)


def test_fuzz_ply_writer_round_trip_with_nonfinite_rows(tmp_path):
    """write_ply drops rows with NaN/Inf and says how many; the rest reads back exactly."""
    rng = np.random.default_rng(0)
    means = rng.normal(size=(6, 3)).astype(np.float32)
    means[2, 1] = np.nan
    means[4, 0] = np.inf
    dropped = write_ply(tmp_path / "a.ply", means, rng.normal(size=(6, 4)), rng.normal(size=(6, 3)),
                        rng.normal(size=6), rng.normal(size=(6, 1, 3)))
    assert dropped == 2
    np.testing.assert_array_equal(read_ply(tmp_path / "a.ply").means.numpy(), means[[0, 1, 3, 5]])


# ----------------------------------------------------------------------------- PCD
_SCRATCH: list[Path] = []


def _scratch() -> Path:
    """A folder for building inputs inside strategies (fixtures are not available there)."""
    if not _SCRATCH:
        import tempfile

        _SCRATCH.append(Path(tempfile.mkdtemp(prefix="npga-fuzz-")))
    return _SCRATCH[0]


@st.composite
def pcd_files(draw) -> tuple[bytes, dict | None]:
    n = draw(st.integers(0, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    fields = {"x": rng.normal(size=n).astype(np.float32), "y": rng.normal(size=n).astype(np.float32),
              "z": rng.normal(size=n).astype(np.float32)}
    if draw(st.booleans()):
        fields["label"] = rng.integers(0, 100, size=n).astype(np.uint16)
    scratch = _scratch() / "written.pcd"
    write_pcd(scratch, fields, binary=draw(st.booleans()))
    data = scratch.read_bytes()
    head = data[:data.index(b"DATA")]
    how = draw(st.sampled_from(["same", "bytes", "points", "pieces"]))
    if how == "same":
        return data, fields
    if how == "bytes":
        return draw(mutated(data, len(head) + 12)), None
    if how == "points":
        return _replace_number(draw, data, b"POINTS "), None
    keys = ["VERSION 0.7", "FIELDS x y z", "FIELDS x y", "FIELDS x y z x", "SIZE 4 4 4", "SIZE 4 4", "SIZE 8 8 8",
            "TYPE F F F", "TYPE I U F", "TYPE Q Q Q", "COUNT 1 1 1", "COUNT 2 1 1", "WIDTH 3", "HEIGHT 1",
            "POINTS 3", "POINTS -3", "POINTS 99999999999", "DATA ascii", "DATA binary", "DATA binary_compressed"]
    lines = draw(st.lists(st.one_of(st.sampled_from(keys), st.text(max_size=16)), max_size=10))
    return ("\n".join(lines) + "\n").encode() + draw(st.binary(max_size=120)), None


@FUZZ
@given(pcd_files())
def test_fuzz_pcd(tmp_path_factory, case):
    data, fields = case
    path, got = read_case(tmp_path_factory, "pointcloud_16.pcd", data, read_pcd, fields is not None)
    if got is None:
        return
    assert {"x", "y", "z"} <= set(got) and len({len(v) for v in got.values()}) == 1
    pts = loads_or_names(lambda: read_points(path), path)
    assert pts is not None and pts.shape == (len(got["x"]), 3)
    if fields is not None:
        for key, value in fields.items():
            np.testing.assert_array_equal(got[key], value)


# ----------------------------------------------------------------------------- captures
@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A minimal capture (two cameras, two frames) to mutate; see tests/test_hardening.py."""
    from test_hardening import make_capture

    root = tmp_path_factory.mktemp("template")
    make_capture(root)
    return root


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 20, 10 ** 20),
                      st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
json_value = st.recursive(json_leaf, lambda c: st.one_of(st.lists(c, max_size=5),
                                                         st.dictionaries(st.text(max_size=6), c, max_size=4)),
                          max_leaves=20)


@st.composite
def calibrations(draw, base: dict) -> bytes:
    how = draw(st.sampled_from(["leaf", "drop", "value", "bytes"]))
    calib = json.loads(json.dumps(base))
    if how == "bytes":
        return draw(mutated(json.dumps(base).encode()))
    if how == "value":
        return json.dumps(draw(json_value)).encode()
    # walk to a random container inside the calibration and replace / drop one entry
    node = calib
    for _ in range(draw(st.integers(1, 4))):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = draw(st.sampled_from(keys))
        child = node[key]
        if not isinstance(child, (dict, list)) or draw(st.booleans()):
            if how == "drop":
                del node[key]
            else:
                node[key] = draw(json_value)
            break
        node = child
    return json.dumps(calib).encode()


def _copy(template: Path, dst_parent: Path) -> Path:
    dst = dst_parent / "cap"
    shutil.copytree(template, dst)
    return dst


@FUZZ
@given(data=st.data())
def test_fuzz_camera_params_json(template, tmp_path_factory, data):
    root = _copy(template, tmp_path_factory.mktemp("calib"))
    path = root / "001" / "calibration" / "camera_params.json"
    path.write_bytes(data.draw(calibrations(json.loads(path.read_text()))))
    cap = loads_or_names(lambda: ns.NersembleCapture(root, "001"), path)
    if cap is not None:
        assert cap.cameras, "a capture with no camera must be refused"
        for serial, cam in cap.cameras.items():
            assert torch.isfinite(cam.viewmat).all() and torch.isfinite(cam.K).all(), serial
            assert cam.width == cap.width and cam.height == cap.height


@st.composite
def image_damage(draw) -> list[tuple[str, str, str]]:
    """1..3 (frame, file, damage) edits of the template's images / mattes."""
    from test_hardening import SERIALS

    files = [f"{folder}/cam_{s}.png" for folder in ("images", "alpha_map") for s in SERIALS]
    edits = st.tuples(st.sampled_from(["frame_00000", "frame_00001"]), st.sampled_from(files),
                      st.sampled_from(["bytes", "truncate", "size", "mode", "delete", "folder", "extra", "junk"]))
    return draw(st.lists(edits, min_size=1, max_size=3))


def _damage(root: Path, edits, draw) -> None:
    from test_hardening import H, W

    for frame, name, damage in edits:
        path = root / "001" / "sequences" / "EXP-1" / "timesteps" / frame / name
        if not path.is_file():  # an earlier edit removed it
            continue
        if damage == "bytes":
            path.write_bytes(draw(mutated(path.read_bytes(), 40)))
        elif damage == "truncate":
            raw = path.read_bytes()
            path.write_bytes(raw[:draw(st.integers(0, max(len(raw) - 1, 0)))])
        elif damage == "size":
            path.unlink()
            iio.imwrite(path, np.zeros((draw(st.integers(1, 20)), draw(st.integers(1, 20)), 3), np.uint8))
        elif damage == "mode":  # other PNG flavours of the right size: grey, grey+alpha, RGBA, 16 bit
            shape, dtype = draw(st.sampled_from([((H, W), np.uint8), ((H, W), np.uint16), ((H, W, 2), np.uint8),
                                                 ((H, W, 3), np.uint8), ((H, W, 4), np.uint8)]))
            path.unlink()
            iio.imwrite(path, np.full(shape, 200, dtype))
        elif damage == "delete":
            path.unlink()
        elif damage == "folder":
            path.unlink()
            path.mkdir()
        elif damage == "extra":  # an image of a camera absent from the calibration
            shutil.copy(path, path.with_name("cam_123456789.png"))
        elif damage == "junk":
            (path.parent / draw(st.sampled_from(["notes.txt", "cam_.png", ".DS_Store", "cam_x.jpg"]))).write_bytes(
                draw(st.binary(max_size=30)))


@FUZZ
@given(data=st.data())
def test_fuzz_image_and_alpha_folders(template, tmp_path_factory, data):
    """Validation passing promises that every view loads: validate_capture is the gate."""
    from test_hardening import SERIALS

    root = _copy(template, tmp_path_factory.mktemp("images"))
    _damage(root, data.draw(image_damage()), data.draw)
    pdir = root / "001"
    cap = loads_or_names(lambda: ns.NersembleCapture(root, "001"), pdir)
    if cap is None:
        return
    views = [("EXP-1", t, s) for t in (0, 1) for s in SERIALS]
    if loads_or_names(lambda: ns.validate_capture(cap, views), pdir) is None:
        return
    for seq, t, s in views:
        img = loads_or_names(lambda: cap.load_image(seq, t, s), pdir)
        alpha = loads_or_names(lambda: cap.load_alpha(seq, t, s), pdir)
        assert img is not None and img.shape == (cap.height, cap.width, 3), "validated view failed to load"
        assert img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1
        assert alpha is None or (alpha.shape == (cap.height, cap.width, 1) and 0 <= alpha.min() and alpha.max() <= 1)


# ----------------------------------------------------------------------------- HDF5 sequences
@pytest.fixture(scope="module")
def sequence_file(tmp_path_factory) -> Path:
    from types import SimpleNamespace

    path = tmp_path_factory.mktemp("h5") / "seq.h5"
    rng = np.random.default_rng(0)
    cam = SimpleNamespace(viewmat=np.eye(4), K=np.array([[20.0, 0, 6], [0, 20, 8], [0, 0, 1]]), width=12, height=16)
    with SequenceWriter(path, sh_degree=1, background=np.ones(3)) as w:
        w.write_cameras({"222200037": cam})
        for t in range(2):
            n = 5 + t
            w.add_frame(t, {"means": rng.normal(size=(n, 3)), "quats": rng.normal(size=(n, 4)),
                            "scales": rng.random((n, 3)), "opacities": rng.random(n),
                            "sh": rng.normal(size=(n, 4, 3))}, {"222200037": rng.random((16, 12, 3))})
        w.write_tracks(np.arange(2), rng.normal(size=(2, 4)), np.stack([np.eye(3)] * 2), np.zeros((2, 3)), np.ones(2))
    return path


def _h5_objects(path: Path) -> list[str]:
    names: list[str] = []
    with h5py.File(path, "r") as f:
        f.visit(names.append)
    return names


@st.composite
def h5_edits(draw, names: list[str]):
    how = draw(st.sampled_from(["truncate", "delete", "dataset", "attr", "same"]))
    target = draw(st.sampled_from(names))
    value = draw(st.one_of(
        st.just(np.array(np.nan)), st.just(np.bytes_(b"text")), st.just(np.zeros((0,))),
        st.builds(lambda shape, fill: np.full(shape, fill, np.float32),
                  st.lists(st.integers(0, 5), max_size=3).map(tuple), finite_or_not),
        st.integers(-3, 10).map(np.int64)))
    attr = draw(st.sampled_from(["format", "format_version", "sh_degree", "background", "width", "height"]))
    return how, target, value, attr, draw(st.floats(0, 1))


def _apply_h5(path: Path, edit) -> None:
    how, target, value, attr, fraction = edit
    if how == "truncate":
        raw = path.read_bytes()
        path.write_bytes(raw[:int(len(raw) * fraction)])
        return
    if how == "same":
        return
    with h5py.File(path, "r+") as f:
        if how == "delete":
            del f[target]
        elif how == "dataset":
            if isinstance(f[target], h5py.Dataset):
                del f[target]
                f.create_dataset(target, data=value)
        else:
            node = f[target] if attr in ("width", "height") else f
            node.attrs[attr] = value


@FUZZ
@given(data=st.data())
def test_fuzz_hdf5_sequence(sequence_file, tmp_path_factory, data):
    path = tmp_path_factory.mktemp("h5case") / "seq.h5"
    shutil.copy(sequence_file, path)
    edit = data.draw(h5_edits(_h5_objects(sequence_file)))
    _apply_h5(path, edit)
    errors = (ValueError, FileNotFoundError, KeyError, IndexError)  # lookups by index / serial name the file
    meta = loads_or_names(lambda: read_metadata(path), path, errors=errors)
    if meta is None:
        return
    for i in range(int(meta["num_frames"])):
        frame = loads_or_names(lambda: read_frame(path, i), path, errors=errors)
        if frame is not None:
            n = frame["means"].shape[0]
            assert frame["quats"].shape == (n, 4) and frame["opacities"].shape == (n,)
            assert all(torch.isfinite(frame[k]).all() for k in ("means", "quats", "scales", "opacities", "colors"))
        loads_or_names(lambda: read_frame_image(path, i, "222200037"), path, errors=errors)
    cam = loads_or_names(lambda: read_camera(path, "222200037"), path, errors=errors)
    if cam is not None:
        assert cam["viewmat"].shape == (4, 4) and cam["width"] >= 1
    if edit[0] == "same":
        assert meta["num_frames"] == 2 and cam is not None


# ----------------------------------------------------------------------------- tracking files
def _tracking(t: int = 3) -> Tracking:
    rng = np.random.default_rng(1)
    return Tracking("EXP-1", np.arange(t), rng.normal(size=(t, 4)).astype(np.float32),
                    rng.normal(size=6).astype(np.float32), rng.normal(size=6).astype(np.float32),
                    np.stack([np.eye(3)] * t).astype(np.float32), rng.normal(size=(t, 3)).astype(np.float32),
                    0.25, rng.random(t).astype(np.float32), {"source": "fuzz"})


array_values = st.one_of(
    st.builds(lambda shape, fill: np.full(shape, fill), st.lists(st.integers(0, 4), max_size=3).map(tuple),
              finite_or_not),
    st.just(np.array(["a", "b"])), st.just(np.array([{"x": 1}], dtype=object)), st.just(np.array(0.25)))


@FUZZ
@given(how=st.sampled_from(["same", "drop", "replace", "bytes"]),
       key=st.sampled_from(["sequence", "timesteps", "z_exp", "z_geo", "z_app", "rot", "trans", "scale",
                            "residual", "meta"]),
       value=array_values, data=st.data())
def test_fuzz_tracking_npz(tmp_path_factory, how, key, value, data):
    path = tmp_path_factory.mktemp("trk") / "EXP-1.npz"
    tr = _tracking()
    save_tracking(tr, path)
    if how in ("drop", "replace"):
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        if how == "drop":
            arrays.pop(key)
        else:
            arrays[key] = value
        np.savez(path, **arrays)  # object arrays are pickled: the reader must refuse them
    elif how == "bytes":
        path.write_bytes(data.draw(mutated(path.read_bytes())))
    got = loads_or_names(lambda: load_tracking(path), path)
    if got is None:
        assert how != "same"
        return
    t = len(got.timesteps)
    assert got.z_exp.ndim == 2 and got.z_exp.shape[0] == t and got.rot.shape == (t, 3, 3)
    assert got.trans.shape == (t, 3) and got.residual.shape == (t,)
    assert np.isfinite(got.z_exp).all() and np.isfinite(got.rot).all() and np.isfinite(got.trans).all()
    if how == "same":
        np.testing.assert_array_equal(got.z_exp, tr.z_exp)


@FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(["00000", "00001", "."]),
                                st.sampled_from(["z_exp.npy", "rot.npy", "trans.npy", "scale.npy", "z_geo.npy",
                                                 "z_app.npy"]),
                                st.sampled_from(["delete", "bytes", "array"])), max_size=3),
       value=array_values, data=st.data())
def test_fuzz_mononphm_frame_folders(tmp_path_factory, edits, value, data):
    root = tmp_path_factory.mktemp("mononphm") / "tracking"
    tr = _tracking(2)
    for i in range(2):
        d = root / f"{i:05d}"
        d.mkdir(parents=True)
        np.save(d / "z_exp.npy", tr.z_exp[i][None])
        np.save(d / "rot.npy", tr.rot[i])
        np.save(d / "trans.npy", tr.trans[i])
        np.save(d / "scale.npy", np.array([0.25]))
    np.save(root / "z_geo.npy", tr.z_geo[None])
    np.save(root / "z_app.npy", tr.z_app[None])
    for folder, name, how in edits:
        path = root / folder / name
        if how == "delete":
            path.unlink(missing_ok=True)
        elif how == "bytes" and path.exists():
            path.write_bytes(data.draw(mutated(path.read_bytes(), 80)))
        elif how == "array":
            np.save(path, value, allow_pickle=True)
    got = loads_or_names(lambda: import_mononphm_tracking(root, "EXP-1"), root)
    if got is None:
        assert edits, "unchanged MonoNPHM output must import"
        return
    t = len(got.timesteps)
    assert got.rot.shape == (t, 3, 3) and got.trans.shape == (t, 3) and got.z_exp.shape[0] == t
    assert np.isfinite(got.z_exp).all() and np.isfinite(got.rot).all() and got.scale > 0
