"""3DGS PLY io (npga_taichi.ply): graphdeco layout, round trips, bad files."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from npga_taichi.ply import GaussianPly, property_names, read_ply, write_ply
from npga_taichi.reference import sh_to_color

GRAPHDECO_DEGREE3 = (
    ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    + [f"f_rest_{i}" for i in range(45)]
    + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
)


def random_raw(n, degree, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "means": torch.randn(n, 3, generator=g),
        "quats": torch.randn(n, 4, generator=g),
        "log_scales": torch.randn(n, 3, generator=g) - 3,
        "opacity_logits": torch.randn(n, generator=g),
        "sh": torch.randn(n, (degree + 1) ** 2, 3, generator=g),
    }


def header_and_records(path):
    data = open(path, "rb").read()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    names = [line.split()[2] for line in header if line.startswith("property")]
    records = np.frombuffer(data[end:], dtype=[(name, "<f4") for name in names])
    return header, names, records


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_round_trip(tmp_path, degree):
    raw = random_raw(50, degree, seed=degree)
    path = tmp_path / "cloud.ply"
    assert write_ply(path, **raw) == 0
    cloud = read_ply(path)
    assert isinstance(cloud, GaussianPly) and len(cloud) == 50 and cloud.sh_degree == degree
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        assert getattr(cloud, name).dtype == torch.float32
        torch.testing.assert_close(getattr(cloud, name), raw[name], rtol=0, atol=0)
    assert not [f for f in os.listdir(tmp_path) if f != "cloud.ply"]  # no temporary left behind


def test_graphdeco_column_order_and_channel_major_rest(tmp_path):
    n, k = 4, 16
    raw = random_raw(n, 3)
    sh = torch.zeros(n, k, 3)
    for kk in range(k):
        for c in range(3):
            sh[:, kk, c] = 100 * c + kk
    raw["sh"] = sh
    path = tmp_path / "cloud.ply"
    write_ply(path, **raw)
    header, names, rec = header_and_records(path)
    assert header[:3] == ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    assert header[-1] == "end_header"
    assert all(line.startswith("property float ") for line in header[3:-1])
    assert names == GRAPHDECO_DEGREE3 == property_names(3)
    # f_rest is channel-major: f_rest[c * (K - 1) + k - 1] = sh[k, c]
    for c in range(3):
        for kk in range(1, k):
            assert np.all(rec[f"f_rest_{c * (k - 1) + kk - 1}"] == 100 * c + kk)
        assert np.all(rec[f"f_dc_{c}"] == 100 * c)
    assert np.all(rec["nx"] == 0) and np.all(rec["ny"] == 0) and np.all(rec["nz"] == 0)
    np.testing.assert_array_equal(rec["rot_0"], raw["quats"][:, 0].numpy())  # w first
    np.testing.assert_array_equal(rec["opacity"], raw["opacity_logits"].numpy())  # raw logits
    np.testing.assert_array_equal(rec["scale_2"], raw["log_scales"][:, 2].numpy())  # raw log scales


def test_activated_and_dc_colour(tmp_path):
    raw = random_raw(30, 1)
    write_ply(tmp_path / "a.ply", **raw)
    cloud = read_ply(tmp_path / "a.ply")
    means, quats, scales, opacities, sh = cloud.activated(dtype=torch.float64)
    assert means.dtype == torch.float64
    torch.testing.assert_close(quats.norm(dim=-1), torch.ones(30, dtype=torch.float64))
    torch.testing.assert_close(scales, raw["log_scales"].double().exp())
    torch.testing.assert_close(opacities, torch.sigmoid(raw["opacity_logits"].double()))
    # Degree-0 colour is 0.5 + C0 * f_dc (clamped at 0), whatever the view direction.
    viewmat = torch.eye(4, dtype=torch.float64)
    expect = torch.clamp(0.5 + 0.28209479 * raw["sh"][:, 0].double(), min=0)
    torch.testing.assert_close(sh_to_color(0, means, viewmat, sh), expect, rtol=1e-7, atol=1e-7)


def test_non_finite_rows_dropped(tmp_path):
    raw = random_raw(10, 2)
    raw["means"][1, 0] = float("nan")
    raw["opacity_logits"][4] = float("inf")
    raw["sh"][7, 5, 2] = -float("inf")
    path = tmp_path / "c.ply"
    assert write_ply(path, **raw) == 3
    cloud = read_ply(path)
    keep = [0, 2, 3, 5, 6, 8, 9]
    assert len(cloud) == 7
    torch.testing.assert_close(cloud.means, raw["means"][keep])
    torch.testing.assert_close(cloud.sh, raw["sh"][keep])


def test_numpy_inputs_and_bad_shapes(tmp_path):
    raw = {k: v.numpy() for k, v in random_raw(5, 0).items()}
    raw["opacity_logits"] = raw["opacity_logits"][:, None]  # (N, 1) accepted
    write_ply(tmp_path / "n.ply", **raw)
    assert len(read_ply(tmp_path / "n.ply")) == 5
    raw["sh"] = np.zeros((5, 5, 3), np.float32)  # K = 5 is no SH degree
    with pytest.raises(ValueError, match="sh"):
        write_ply(tmp_path / "bad.ply", **raw)
    assert not (tmp_path / "bad.ply").exists()


def _write_custom(path, fmt, names, rows, types=None, extra_header=""):
    types = types or ["float"] * len(names)
    header = f"ply\nformat {fmt} 1.0\n{extra_header}element vertex {len(rows)}\n"
    header += "".join(f"property {t} {n}\n" for t, n in zip(types, names)) + "end_header\n"
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        if fmt == "ascii":
            f.write("".join(" ".join(repr(float(v)) for v in row) + "\n" for row in rows).encode())
        else:
            order = "<" if fmt == "binary_little_endian" else ">"
            codes = {"float": "f4", "double": "f8", "uchar": "u1"}
            dtype = np.dtype([(n, order + codes[t]) for n, t in zip(names, types)])
            f.write(np.array([tuple(r) for r in rows], dtype=dtype).tobytes())


def test_ascii_big_endian_and_extra_properties(tmp_path):
    names = property_names(0)
    rows = np.random.default_rng(0).normal(size=(6, len(names))).astype(np.float32)
    for fmt in ("ascii", "binary_big_endian"):
        path = tmp_path / f"{fmt}.ply"
        _write_custom(path, fmt, names, rows, extra_header="comment made by a test\n")
        cloud = read_ply(path)
        np.testing.assert_allclose(cloud.means.numpy(), rows[:, :3], rtol=1e-6)
        np.testing.assert_allclose(cloud.quats.numpy(), rows[:, -4:], rtol=1e-6)
        assert cloud.sh.shape == (6, 1, 3)
    # Extra properties and other scalar types (double, uchar) are fine.
    path = tmp_path / "extra.ply"
    types = ["double"] * 3 + ["float"] * (len(names) - 3) + ["uchar"]
    _write_custom(path, "binary_little_endian", names + ["red"], np.abs(np.c_[rows, np.ones(6)]), types)
    np.testing.assert_allclose(read_ply(path).means.numpy(), np.abs(rows[:, :3]), rtol=1e-6)


def test_bad_files_name_the_file(tmp_path):
    missing = tmp_path / "missing.ply"
    with pytest.raises(ValueError, match="missing.ply"):
        read_ply(missing)

    text = tmp_path / "notes.ply"
    text.write_text("hello world\n")
    with pytest.raises(ValueError, match=r"notes\.ply.*not a PLY"):
        read_ply(text)

    points = tmp_path / "points.ply"
    _write_custom(points, "binary_little_endian", ["x", "y", "z"], np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"points\.ply.*missing 3DGS properties: f_dc_0.*rot_3"):
        read_ply(points)

    weird = tmp_path / "weird.ply"
    weird.write_bytes(b"ply\nformat binary_middle_endian 1.0\nelement vertex 0\nend_header\n")
    with pytest.raises(ValueError, match=r"weird\.ply.*unsupported PLY format"):
        read_ply(weird)

    truncated = tmp_path / "truncated.ply"
    write_ply(truncated, **random_raw(20, 1))
    truncated.write_bytes(truncated.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"truncated\.ply.*truncated"):
        read_ply(truncated)

    rest = tmp_path / "rest.ply"
    _write_custom(rest, "binary_little_endian", property_names(0)[:9] + ["f_rest_0", "f_rest_1"]
                  + property_names(0)[9:], np.zeros((1, 19)))
    with pytest.raises(ValueError, match=r"rest\.ply.*f_rest"):
        read_ply(rest)
