"""3D Gaussian clouds in the graphdeco 3DGS PLY layout (read and write).

Layout (one ``vertex`` element, float32 properties in this order)::

    x y z  nx ny nz  f_dc_0 f_dc_1 f_dc_2  f_rest_0 .. f_rest_{3(K-1)-1}  opacity
    scale_0 scale_1 scale_2  rot_0 rot_1 rot_2 rot_3

Values are stored **raw**, as the 3DGS trainer keeps them: ``opacity`` is a logit
(opacity = sigmoid), ``scale_*`` are log scales (scale = exp), ``rot_*`` is a wxyz quaternion
(not necessarily normalised), ``f_dc_*`` is the SH DC coefficient (colour = 0.5 + 0.28209479·f_dc)
and ``f_rest_*`` are the higher SH coefficients stored channel-major:
``f_rest[c * (K - 1) + (k - 1)] = sh[k, c]`` for k = 1..K-1, c = 0..2 (K = (degree + 1)²).
Normals are written as zeros and ignored on read.

Reading supports ``binary_little_endian`` and ``binary_big_endian`` (any scalar property types)
and ``ascii``; extra vertex properties are ignored; every error names the file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from npga_taichi.checkpoint import atomic_path

# PLY scalar type names -> numpy type codes (without byte order).
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_FORMATS = {"binary_little_endian": "<", "binary_big_endian": ">", "ascii": "="}
_BASE_PROPS = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
_TAIL_PROPS = ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def property_names(sh_degree: int) -> list[str]:
    """Vertex property names, in graphdeco order, for SH of ``sh_degree`` (0..3)."""
    n_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return _BASE_PROPS + [f"f_rest_{i}" for i in range(n_rest)] + _TAIL_PROPS


@dataclass
class GaussianPly:
    """A Gaussian cloud as stored in a 3DGS PLY (raw, un-activated parameters, float32).

    means:          (N, 3) world positions
    quats:          (N, 4) wxyz rotation quaternions as stored (not normalised)
    log_scales:     (N, 3) log of the per-axis standard deviations
    opacity_logits: (N,)   logit of the opacity
    sh:             (N, K, 3) SH coefficients, K = (sh_degree + 1)², sh[:, 0] = f_dc
    sh_degree:      SH degree 0..3
    """

    means: torch.Tensor
    quats: torch.Tensor
    log_scales: torch.Tensor
    opacity_logits: torch.Tensor
    sh: torch.Tensor
    sh_degree: int

    def __len__(self) -> int:
        return self.means.shape[0]

    def activated(self, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        """``(means, quats normalised, scales = exp, opacities = sigmoid, sh)`` as tensors of
        ``dtype`` on ``device``, ready for ``rasterize(..., colors=sh, sh_degree=self.sh_degree)``."""
        def cast(t: torch.Tensor) -> torch.Tensor:
            return t.to(dtype=dtype, device=device)

        quats = cast(self.quats)
        return (cast(self.means), quats / quats.norm(dim=-1, keepdim=True), torch.exp(cast(self.log_scales)),
                torch.sigmoid(cast(self.opacity_logits)), cast(self.sh))


def _as_numpy(name: str, value, shape_tail: tuple[int, ...]) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value, dtype=np.float32)
    if arr.shape[1:] != shape_tail or arr.ndim != len(shape_tail) + 1:
        raise ValueError(f"{name} must have shape (N, {', '.join(map(str, shape_tail))}), got {arr.shape}"
                         if shape_tail else f"{name} must have shape (N,), got {arr.shape}")
    return arr


def write_ply(path: str | os.PathLike, means, quats, log_scales, opacity_logits, sh) -> int:
    """Write Gaussians to ``path`` in the graphdeco 3DGS layout (binary little endian, float32).

    means (N, 3), quats (N, 4) wxyz, log_scales (N, 3), opacity_logits (N,) or (N, 1),
    sh (N, K, 3) with K in {1, 4, 9, 16}; torch tensors or numpy arrays, all raw (un-activated).
    Rows with any non-finite value are dropped. The file is written to a temporary file in the
    same directory and moved into place, so readers never see a partial file.
    Returns the number of dropped rows.
    """
    path = os.fspath(path)
    sh_arr = sh.detach().cpu().numpy() if isinstance(sh, torch.Tensor) else np.asarray(sh)
    if sh_arr.ndim != 3 or sh_arr.shape[2] != 3:
        raise ValueError(f"sh must have shape (N, K, 3), got {sh_arr.shape}")
    k = sh_arr.shape[1]
    degree = round(k ** 0.5) - 1
    if (degree + 1) ** 2 != k or not 0 <= degree <= 3:
        raise ValueError(f"sh must have K = (degree+1)^2 in {{1, 4, 9, 16}} coefficients, got K = {k}")
    means_a = _as_numpy("means", means, (3,))
    quats_a = _as_numpy("quats", quats, (4,))
    scales_a = _as_numpy("log_scales", log_scales, (3,))
    opac_a = np.asarray(opacity_logits.detach().cpu().numpy() if isinstance(opacity_logits, torch.Tensor)
                        else opacity_logits, dtype=np.float32)
    if opac_a.ndim == 2 and opac_a.shape[1] == 1:
        opac_a = opac_a[:, 0]
    if opac_a.ndim != 1:
        raise ValueError(f"opacity_logits must have shape (N,) or (N, 1), got {opac_a.shape}")
    n = means_a.shape[0]
    for name, arr in (("quats", quats_a), ("log_scales", scales_a), ("opacity_logits", opac_a), ("sh", sh_arr)):
        if arr.shape[0] != n:
            raise ValueError(f"{name} has {arr.shape[0]} rows but means has {n}")

    sh_arr = sh_arr.astype(np.float32)
    # f_rest is channel-major: all of channel 0's higher coefficients, then channel 1, ...
    f_rest = sh_arr[:, 1:, :].transpose(0, 2, 1).reshape(n, -1)
    columns = np.concatenate(
        [means_a, np.zeros((n, 3), np.float32), sh_arr[:, 0, :], f_rest, opac_a[:, None], scales_a, quats_a],
        axis=1,
    )
    finite = np.isfinite(columns).all(axis=1)
    dropped = int(n - finite.sum())
    columns = columns[finite]

    names = property_names(degree)
    record = np.empty(columns.shape[0], dtype=[(name, "<f4") for name in names])
    for i, name in enumerate(names):
        record[name] = columns[:, i]
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {columns.shape[0]}"]
    header += [f"property float {name}" for name in names] + ["end_header"]

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(("\n".join(header) + "\n").encode("ascii"))
            f.write(record.tobytes())
    return dropped


@dataclass
class _Element:
    name: str
    count: int
    properties: list[tuple[str, str]]  # (name, numpy type code); lists are not supported


def _parse_header(path: str, f) -> tuple[str, list[_Element]]:
    magic = f.readline()
    if magic.strip() != b"ply":
        raise ValueError(f"{path}: not a PLY file (first line is {magic[:40]!r}, expected 'ply')")
    fmt, elements = None, []
    while True:
        raw = f.readline()
        if not raw:
            raise ValueError(f"{path}: PLY header has no 'end_header' line")
        words = raw.decode("ascii", errors="replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            break
        if words[0] == "format":
            if len(words) < 2 or words[1] not in _FORMATS:
                raise ValueError(f"{path}: unsupported PLY format {' '.join(words[1:])!r}; "
                                 f"supported: {', '.join(_FORMATS)}")
            fmt = words[1]
        elif words[0] == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise ValueError(f"{path}: malformed PLY element line {raw.strip()!r}")
            elements.append(_Element(words[1], int(words[2]), []))
        elif words[0] == "property":
            if not elements:
                raise ValueError(f"{path}: PLY property before any element")
            if words[1] == "list":
                elements[-1].properties.append((words[-1], "list"))
            elif len(words) == 3 and words[1] in _PLY_TYPES:
                elements[-1].properties.append((words[2], _PLY_TYPES[words[1]]))
            else:
                raise ValueError(f"{path}: unsupported PLY property line {raw.strip()!r}")
        else:
            raise ValueError(f"{path}: unexpected PLY header line {raw.strip()!r}")
    if fmt is None:
        raise ValueError(f"{path}: PLY header has no 'format' line")
    return fmt, elements


def read_ply(path: str | os.PathLike) -> GaussianPly:
    """Read a 3DGS PLY (graphdeco layout) written by us, the 3DGS trainer or compatible tools.

    Raises ValueError naming ``path`` for a missing file, a non-PLY file, an unsupported format
    or property, or missing Gaussian properties (lists every one that is missing).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    with open(path, "rb") as f:
        fmt, elements = _parse_header(path, f)
        vertex_pos = next((i for i, e in enumerate(elements) if e.name == "vertex"), None)
        if vertex_pos is None:
            raise ValueError(f"{path}: PLY has no 'vertex' element")
        order = _FORMATS[fmt]
        for element in elements[:vertex_pos + 1]:
            if any(t == "list" for _, t in element.properties):
                raise ValueError(f"{path}: list properties in element '{element.name}' before the "
                                 "vertices are not supported")
        vertex = elements[vertex_pos]
        dtype = np.dtype([(name, order + code) for name, code in vertex.properties])
        if fmt == "ascii":
            for element in elements[:vertex_pos]:
                for _ in range(element.count):
                    f.readline()
            rows = [f.readline() for _ in range(vertex.count)]
            try:
                table = np.array([[float(v) for v in r.split()[:len(dtype.names)]] for r in rows],
                                 dtype=np.float64).reshape(vertex.count, len(dtype.names))
            except ValueError as err:
                raise ValueError(f"{path}: malformed ascii vertex data ({err})") from None
            data = {name: table[:, i] for i, name in enumerate(dtype.names)}
        else:
            skip = sum(e.count * np.dtype([(n, order + c) for n, c in e.properties]).itemsize
                       for e in elements[:vertex_pos])
            f.seek(skip, os.SEEK_CUR)
            buf = f.read(vertex.count * dtype.itemsize)
            if len(buf) != vertex.count * dtype.itemsize:
                raise ValueError(f"{path}: truncated PLY: expected {vertex.count} vertices of "
                                 f"{dtype.itemsize} bytes, file holds {len(buf)} bytes of vertex data")
            rec = np.frombuffer(buf, dtype=dtype)
            data = {name: rec[name] for name in dtype.names}

    n_rest = sum(1 for name in data if name.startswith("f_rest_"))
    k = n_rest // 3 + 1
    degree = round(k ** 0.5) - 1
    if n_rest % 3 or (degree + 1) ** 2 != k or degree > 3:
        raise ValueError(f"{path}: {n_rest} f_rest_* properties do not match any SH degree 0..3 "
                         "(expected 0, 9, 24 or 45)")
    required = [name for name in property_names(degree) if name not in ("nx", "ny", "nz")]
    missing = [name for name in required if name not in data]
    if missing:
        raise ValueError(f"{path}: missing 3DGS properties: {', '.join(missing)}")

    def stack(names: list[str]) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.asarray(data[n], dtype=np.float32) for n in names], axis=1))

    n = vertex.count
    dc = stack(["f_dc_0", "f_dc_1", "f_dc_2"])
    rest = stack([f"f_rest_{i}" for i in range(n_rest)]) if n_rest else torch.zeros(n, 0)
    sh = torch.cat([dc[:, None, :], rest.reshape(n, 3, k - 1).transpose(1, 2)], dim=1)
    return GaussianPly(
        means=stack(["x", "y", "z"]),
        quats=stack(["rot_0", "rot_1", "rot_2", "rot_3"]),
        log_scales=stack(["scale_0", "scale_1", "scale_2"]),
        opacity_logits=stack(["opacity"])[:, 0],
        sh=sh.contiguous(),
        sh_degree=degree,
    )
