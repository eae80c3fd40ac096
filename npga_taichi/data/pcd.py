"""Read and write point clouds in the PCL ``.pcd`` format (ascii and binary).

Only the unorganised-cloud subset we need: any number of scalar fields (``x y z`` required)
of types F (float 4/8), I (int 1/2/4/8) and U (uint 1/2/4/8), COUNT 1; ``DATA ascii`` and
``DATA binary``. ``binary_compressed`` (LZF) is rejected with a clear error. NeRSemble ships its
COLMAP clouds as ``colmap/pointclouds/pointcloud_16.pcd``; the synthetic capture writes
``x y z normal_x normal_y normal_z`` as binary float32.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from npga_taichi.checkpoint import atomic_path

_TYPES = {("F", 4): np.float32, ("F", 8): np.float64, ("I", 1): np.int8, ("I", 2): np.int16,
          ("I", 4): np.int32, ("I", 8): np.int64, ("U", 1): np.uint8, ("U", 2): np.uint16,
          ("U", 4): np.uint32, ("U", 8): np.uint64}


def write_pcd(path, fields: dict[str, np.ndarray], binary: bool = True) -> None:
    """Write columns `fields` (name -> (N,) array, written in dict order) atomically.

    Example: ``write_pcd(p, {"x": P[:, 0], "y": P[:, 1], "z": P[:, 2]})``.
    """
    path = Path(path)
    names = list(fields)
    if not {"x", "y", "z"} <= set(names):
        raise ValueError(f"{path}: a point cloud needs x, y and z fields, got {names}")
    cols = [np.asarray(fields[k]).reshape(-1) for k in names]
    n = cols[0].shape[0]
    if any(c.shape[0] != n for c in cols):
        raise ValueError(f"{path}: all fields must have the same length")
    cols = [c.astype(np.float32) if c.dtype.kind == "f" else c for c in cols]
    types, sizes = [], []
    for c in cols:
        kind = {"f": "F", "i": "I", "u": "U"}.get(c.dtype.kind)
        if kind is None:
            raise ValueError(f"{path}: unsupported field dtype {c.dtype}")
        types.append(kind)
        sizes.append(str(c.dtype.itemsize))
    header = (
        "# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\n"
        f"FIELDS {' '.join(names)}\nSIZE {' '.join(sizes)}\nTYPE {' '.join(types)}\n"
        f"COUNT {' '.join('1' for _ in names)}\nWIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\n"
        f"POINTS {n}\nDATA {'binary' if binary else 'ascii'}\n"
    )
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(header.encode("ascii"))
            if binary:
                rec = np.empty(n, dtype=[(k, c.dtype) for k, c in zip(names, cols)])
                for k, c in zip(names, cols):
                    rec[k] = c
                fh.write(rec.tobytes())
            else:
                for row in zip(*cols):
                    fh.write((" ".join(repr(float(v)) if isinstance(v, np.floating) else str(v) for v in row) + "\n")
                             .encode("ascii"))


def read_pcd(path) -> dict[str, np.ndarray]:
    """Read a .pcd file -> {field name: (N,) array}. Raises ValueError naming the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read point cloud {path}: {err}") from None
    header: dict[str, list[str]] = {}
    pos = 0
    while True:
        end = raw.find(b"\n", pos)
        if end < 0:
            raise ValueError(f"{path}: truncated PCD header")
        line = raw[pos:end].decode("ascii", errors="replace").strip()
        pos = end + 1
        if not line or line.startswith("#"):
            continue
        key, *vals = line.split()
        header[key.upper()] = vals
        if key.upper() == "DATA":
            break
    try:
        names = header["FIELDS"]
        sizes = [int(v) for v in header["SIZE"]]
        types = header["TYPE"]
        counts = [int(v) for v in header.get("COUNT", ["1"] * len(names))]
        n = int(header["POINTS"][0]) if "POINTS" in header else int(header["WIDTH"][0]) * int(header["HEIGHT"][0])
        data_kind = header["DATA"][0].lower()
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"{path}: malformed PCD header ({err})") from None
    if any(c != 1 for c in counts):
        raise ValueError(f"{path}: fields with COUNT > 1 are not supported")
    try:
        dtypes = [_TYPES[(t, s)] for t, s in zip(types, sizes)]
    except KeyError as err:
        raise ValueError(f"{path}: unsupported PCD field type {err}") from None
    if not {"x", "y", "z"} <= set(names):
        raise ValueError(f"{path}: point cloud has no x, y, z fields ({names})")
    if data_kind == "binary":
        rec_dtype = np.dtype([(k, d) for k, d in zip(names, dtypes)])
        need = n * rec_dtype.itemsize
        if len(raw) - pos < need:
            raise ValueError(f"{path}: binary data truncated ({len(raw) - pos} of {need} bytes)")
        rec = np.frombuffer(raw, dtype=rec_dtype, count=n, offset=pos)
        return {k: np.array(rec[k]) for k in names}
    if data_kind == "ascii":
        text = raw[pos:].decode("ascii", errors="replace").split()
        if len(text) < n * len(names):
            raise ValueError(f"{path}: ascii data truncated")
        table = np.array(text[: n * len(names)], dtype=np.float64).reshape(n, len(names))
        return {k: table[:, i].astype(d) for i, (k, d) in enumerate(zip(names, dtypes))}
    raise ValueError(f"{path}: PCD data kind {data_kind!r} is not supported (use ascii or binary)")


def read_points(path) -> np.ndarray:
    """(N, 3) float32 xyz of a .pcd file."""
    f = read_pcd(path)
    return np.stack([f["x"], f["y"], f["z"]], 1).astype(np.float32)
