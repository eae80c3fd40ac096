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


_MAX_HEADER_BYTES = 1 << 16  # a PCD header is a few hundred bytes


def read_pcd(path) -> dict[str, np.ndarray]:
    """Read a .pcd file -> {field name: (N,) array}. Raises ValueError naming the file.

    The declared point count is checked against the bytes after the header before any array is
    built, so a lying header costs neither time nor memory. Values are returned as stored
    (non-finite ones included: :func:`finite_points` is the gate for consumers).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read point cloud {path}: {err.strerror or err}") from None
    if not raw:
        raise ValueError(f"{path}: empty file (0 bytes), not a PCD point cloud")
    header: dict[str, list[str]] = {}
    pos = 0
    while True:
        end = raw.find(b"\n", pos, pos + _MAX_HEADER_BYTES)
        if end < 0 or end > _MAX_HEADER_BYTES:
            raise ValueError(f"{path}: not a PCD point cloud (no complete header with a DATA line)")
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
        raise ValueError(f"{path}: malformed PCD header ({type(err).__name__}: {err})") from None
    if not (len(names) == len(sizes) == len(types) == len(counts)):
        raise ValueError(f"{path}: PCD header lists {len(names)} FIELDS but {len(sizes)} SIZE, {len(types)} TYPE "
                         f"and {len(counts)} COUNT entries")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: PCD header repeats a field name ({names})")
    if n < 0:
        raise ValueError(f"{path}: negative point count {n}")
    if any(c != 1 for c in counts):
        raise ValueError(f"{path}: fields with COUNT > 1 are not supported")
    try:
        dtypes = [_TYPES[(t, s)] for t, s in zip(types, sizes)]
    except KeyError as err:
        raise ValueError(f"{path}: unsupported PCD field type {err}") from None
    if not {"x", "y", "z"} <= set(names):
        raise ValueError(f"{path}: point cloud has no x, y, z fields ({names})")
    body = len(raw) - pos
    if data_kind == "binary":
        rec_dtype = np.dtype([(k, d) for k, d in zip(names, dtypes)])
        need = n * rec_dtype.itemsize
        if body < need:
            raise ValueError(f"{path}: binary data truncated: the header declares {n} points "
                             f"({need} bytes), the file holds {body} bytes after its header")
        rec = np.frombuffer(raw, dtype=rec_dtype, count=n, offset=pos)
        return {k: np.array(rec[k]) for k in names}
    if data_kind == "ascii":
        # every value takes at least two bytes (a digit and a separator)
        if n * len(names) * 2 > body + 1:
            raise ValueError(f"{path}: ascii data truncated: the header declares {n} points of "
                             f"{len(names)} values, the body holds {body} bytes")
        text = raw[pos:].split()
        if len(text) < n * len(names):
            raise ValueError(f"{path}: ascii data truncated: {len(text)} values for {n} points of "
                             f"{len(names)} fields")
        try:
            table = np.array([float(v) for v in text[: n * len(names)]], dtype=np.float64).reshape(n, len(names))
        except ValueError as err:
            raise ValueError(f"{path}: malformed ascii point data ({err})") from None
        with np.errstate(invalid="ignore", over="ignore"):
            return {k: table[:, i].astype(d) for i, (k, d) in enumerate(zip(names, dtypes))}
    raise ValueError(f"{path}: PCD data kind {data_kind!r} is not supported (use ascii or binary)")


def read_points(path) -> np.ndarray:
    """(N, 3) float32 xyz of a .pcd file, as stored (see :func:`finite_points`)."""
    f = read_pcd(path)
    with np.errstate(over="ignore"):
        return np.stack([f["x"], f["y"], f["z"]], 1).astype(np.float32)


def finite_points(points, source: str, min_points: int = 1) -> tuple[np.ndarray, int]:
    """The finiteness gate for point clouds entering a fit: ``(rows of points (M, 3) that are all
    finite, number of rows dropped)``. Raises ValueError naming ``source`` when fewer than
    ``min_points`` rows remain (a zero-point or all-NaN cloud) or the array is not (M, 3)."""
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"{source}: a point cloud must be (M, 3), got {pts.shape}")
    with np.errstate(over="ignore"):
        pts = pts.astype(np.float32, copy=False)
    keep = np.isfinite(pts).all(axis=1)
    kept = pts[keep]
    dropped = int(len(pts) - len(kept))
    if len(kept) < min_points:
        raise ValueError(f"{source}: {len(kept)} finite points of {len(pts)}"
                         f"{f' ({dropped} with NaN/Inf)' if dropped else ''}; at least {min_points} are needed")
    return kept, dropped
