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
and ``ascii``; extra vertex properties are ignored; every error names the file. Counts declared in
the header are checked against the file's size before anything is allocated or parsed, so a
lying header costs no time or memory.

Writing: :func:`write_ply` (one file, atomically) and :class:`PlyFolderWriter` (``frame_<i>.ply``
files of an exported sequence); :func:`raw_ply_arrays` turns rasterize's activated arrays into
the raw values stored here (the inverse of :meth:`GaussianPly.activated`).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from npga_taichi.checkpoint import CommitOnExit, atomic_path, ensure_output_dir, staging_dir
from npga_taichi.conventions import SH_C0

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
_MAX_HEADER_LINE = 65536      # bytes; a PLY header line is a few dozen
_MAX_HEADER_BYTES = 1 << 20   # a header larger than this is not a PLY header


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
    magic = f.readline(_MAX_HEADER_LINE)
    if magic.strip() != b"ply":
        raise ValueError(f"{path}: not a PLY file (first line is {magic[:40]!r}, expected 'ply')")
    fmt, elements = None, []
    while True:
        raw = f.readline(_MAX_HEADER_LINE)
        if not raw:
            raise ValueError(f"{path}: PLY header has no 'end_header' line")
        if f.tell() > _MAX_HEADER_BYTES or (len(raw) == _MAX_HEADER_LINE and not raw.endswith(b"\n")):
            raise ValueError(f"{path}: PLY header is not a header (a line or the header is over "
                             f"{_MAX_HEADER_LINE} / {_MAX_HEADER_BYTES} bytes) before 'end_header'")
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
            if len(words) != 3 or not (words[2].isascii() and words[2].isdigit()):
                raise ValueError(f"{path}: malformed PLY element line {raw.strip()!r}")
            elements.append(_Element(words[1], int(words[2]), []))
        elif words[0] == "property":
            if not elements:
                raise ValueError(f"{path}: PLY property before any element")
            if len(words) >= 2 and words[1] == "list":
                elements[-1].properties.append((words[-1], "list"))
            elif len(words) == 3 and words[1] in _PLY_TYPES:
                if any(name == words[2] for name, _ in elements[-1].properties):
                    raise ValueError(f"{path}: PLY element '{elements[-1].name}' declares property "
                                     f"{words[2]!r} twice")
                elements[-1].properties.append((words[2], _PLY_TYPES[words[1]]))
            else:
                raise ValueError(f"{path}: unsupported PLY property line {raw.strip()!r}")
        else:
            raise ValueError(f"{path}: unexpected PLY header line {raw.strip()!r}")
    if fmt is None:
        raise ValueError(f"{path}: PLY header has no 'format' line")
    return fmt, elements


def _read_ascii_vertices(path: str, f, body_bytes: int, before: list[_Element], vertex: _Element,
                        dtype: np.dtype) -> dict[str, np.ndarray]:
    """Vertex columns (float64) of an ascii PLY body; every count is checked against the body."""
    names = dtype.names
    # Each value takes at least two bytes (a digit and a separator), so a count the body cannot
    # hold is refused before reading (and the body read below is bounded by the file size).
    claimed = sum(e.count for e in before) + vertex.count
    if vertex.count * len(names) * 2 > body_bytes + 1 or claimed > body_bytes + 1:
        raise ValueError(f"{path}: truncated PLY: the header declares {vertex.count} vertices of "
                         f"{len(names)} values, the ascii body holds only {body_bytes} bytes")
    lines = f.read().splitlines()
    first = sum(e.count for e in before)
    rows = lines[first:first + vertex.count]
    if len(rows) != vertex.count:
        raise ValueError(f"{path}: truncated PLY: the header declares {vertex.count} vertices after "
                         f"{first} other rows, the ascii body has {len(lines)} lines")
    table = np.empty((vertex.count, len(names)), np.float64)
    for i, row in enumerate(rows):
        values = row.split()
        if len(values) < len(names):
            raise ValueError(f"{path}: malformed ascii vertex {i}: {len(values)} values, expected {len(names)}")
        try:
            table[i] = [float(v) for v in values[:len(names)]]
        except ValueError as err:
            raise ValueError(f"{path}: malformed ascii vertex {i} ({err})") from None
    return {name: table[:, i] for i, name in enumerate(names)}


def read_ply(path: str | os.PathLike) -> GaussianPly:
    """Read a 3DGS PLY (graphdeco layout) written by us, the 3DGS trainer or compatible tools.

    Raises ValueError naming ``path`` for a missing file, a non-PLY file, an unsupported format
    or property, or missing Gaussian properties (lists every one that is missing).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    try:
        handle = open(path, "rb")
    except OSError as err:
        raise ValueError(f"{path}: cannot read: {err.strerror}") from None
    with handle as f:
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
        # The properties are checked from the header, before any body byte is read.
        names = [name for name, _ in vertex.properties]
        n_rest = sum(1 for name in names if name.startswith("f_rest_"))
        k = n_rest // 3 + 1
        degree = round(k ** 0.5) - 1
        if n_rest % 3 or (degree + 1) ** 2 != k or degree > 3:
            raise ValueError(f"{path}: {n_rest} f_rest_* properties do not match any SH degree 0..3 "
                             "(expected 0, 9, 24 or 45)")
        missing = [name for name in property_names(degree) if name not in ("nx", "ny", "nz") and name not in names]
        if missing:
            raise ValueError(f"{path}: missing 3DGS properties: {', '.join(missing)}")
        dtype = np.dtype([(name, order + code) for name, code in vertex.properties])
        body_bytes = os.fstat(f.fileno()).st_size - f.tell()
        if fmt == "ascii":
            data = _read_ascii_vertices(path, f, body_bytes, elements[:vertex_pos], vertex, dtype)
        else:
            skip = sum(e.count * np.dtype([(n, order + c) for n, c in e.properties]).itemsize
                       for e in elements[:vertex_pos])
            need = vertex.count * dtype.itemsize
            # Checked before reading: a header may claim any count; the file size cannot lie.
            if skip + need > body_bytes:
                raise ValueError(f"{path}: truncated PLY: the header declares {vertex.count} vertices of "
                                 f"{dtype.itemsize} bytes ({skip + need} bytes with the elements before "
                                 f"them), the file holds {body_bytes} bytes after its header")
            f.seek(skip, os.SEEK_CUR)
            rec = np.frombuffer(f.read(need), dtype=dtype)
            data = {name: rec[name] for name in dtype.names}

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


# ----------------------------------------------------------------------------- export helpers
def raw_ply_arrays(gaussians: dict) -> dict:
    """Activated rasterize arrays -> the raw parameters the 3DGS PLY layout stores (the inverse of
    :meth:`GaussianPly.activated`), as :func:`write_ply` keyword arguments.

    ``gaussians``: means (N, 3), quats (N, 4) wxyz, scales (N, 3), opacities (N,), colors (SH
    (N, K, 3) with ``sh_degree`` set, or RGB features (N, 3) with ``sh_degree`` None).
    log_scales = log(scales); opacity_logits = logit(opacities) computed in float64 with the
    opacity clamped to [1e-7, 1 - 1e-7] so fully opaque Gaussians stay finite (sigmoid of the
    stored logit is within 1e-7 of the original); RGB features become SH degree 0 with
    f_dc = (rgb - 0.5) / SH_C0.
    """
    colors = gaussians["colors"]
    if gaussians.get("sh_degree") is None:
        if colors.shape[1] != 3:
            raise ValueError(f"PLY export needs RGB colours or SH, the avatar renders {colors.shape[1]} "
                             "feature channels (screen-space CNN); export HDF5 only")
        sh = ((colors - 0.5) / SH_C0)[:, None, :]
    else:
        sh = colors
    op = gaussians["opacities"].double().clamp(1e-7, 1 - 1e-7)
    return {
        "means": gaussians["means"],
        "quats": gaussians["quats"],
        "log_scales": gaussians["scales"].log(),
        "opacity_logits": torch.log(op / (1 - op)).float(),
        "sh": sh,
    }


FRAME_NAME = "frame_{:05d}.ply"
_FRAME_RE = re.compile(r"frame_\d{5,}\.ply")
MANIFEST_NAME = ".npga-ply-export.json"   # the files the last export into a folder wrote
_STAGING = "npga-ply"                      # staging folders: .npga-ply.<random>.tmp


def check_output_folder(folder: str | os.PathLike, protect: Iterable[str | os.PathLike] = ()) -> Path:
    """Refuse folders an export must never write into: the current folder or one of its parents,
    the file system root, the home folder, and each ``protect`` path (e.g. the run) or one of
    its parents. Returns ``folder``; raises ValueError naming it."""
    folder = Path(folder)
    target = folder.resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise ValueError(f"refusing to write PLY frames into {folder} ({target}): it is the current folder "
                         "or one of its parents; name a new folder, e.g. --ply frames_ply")
    if target == Path(target.anchor) or target == Path.home().resolve():
        raise ValueError(f"refusing to write PLY frames into {folder} ({target}); name a new folder")
    for p in protect:
        p = Path(p).resolve()
        if target == p or target in p.parents:
            raise ValueError(f"refusing to write PLY frames into {folder}: it is {p} or one of its parents; "
                             "name a new folder")
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} exists and is not a folder")
    return folder


class PlyFolderWriter(CommitOnExit):
    """Write ``frame_<i:05d>.ply`` files (graphdeco layout) into ``folder``, all or nothing.

    Frames are written into a private staging folder inside ``folder`` (``mkdtemp``) and moved
    into place by :meth:`close`; :meth:`abort` (or an exception in a ``with`` block) discards
    them. ``folder`` must be empty (staging folders a killed export left aside: they are removed)
    unless ``force``; with ``force`` only what an earlier export wrote is removed — the files
    listed in its manifest (``.npga-ply-export.json``) and ``frame_*`` files this export rewrites
    — never other files.
    """

    def __init__(self, folder: str | os.PathLike, force: bool = False,
                 protect: Iterable[str | os.PathLike] = ()):
        self.folder = check_output_folder(folder, protect)
        self._created = not self.folder.exists()
        # A killed export leaves only its hidden staging folder: that does not make DIR "not empty".
        if not self._created and not force and any(p not in self._leftovers() for p in self.folder.iterdir()):
            raise FileExistsError(f"{self.folder} is not empty; pass --force to replace the frames an earlier "
                                  "export wrote there (other files are kept)")
        ensure_output_dir(self.folder, "PLY folder")
        self.force = force
        self.names: list[str] = []
        self._staging = staging_dir(self.folder, _STAGING)
        self.stage = self._staging.__enter__()

    def add(self, index: int, gaussians: dict) -> Path:
        """Write frame ``index`` (rasterize's activated arrays, see :func:`raw_ply_arrays`)."""
        name = FRAME_NAME.format(int(index))
        write_ply(self.stage / name, **raw_ply_arrays(gaussians))
        self.names.append(name)
        return self.folder / name

    def _leftovers(self) -> set[Path]:
        """Staging folders (``.npga-ply.<random>.tmp``, real folders) of exports killed mid-write."""
        return {p for p in self.folder.glob(f".{_STAGING}.*.tmp") if p.is_dir() and not p.is_symlink()}

    def _previous(self) -> set[str]:
        """Names an earlier export wrote here (its manifest; only plain frame file names count)."""
        try:
            listed = json.loads((self.folder / MANIFEST_NAME).read_text()).get("files", [])
        except (OSError, ValueError, AttributeError):
            return set()
        return {n for n in listed if isinstance(n, str) and _FRAME_RE.fullmatch(n)}

    def close(self) -> list[Path]:
        """Move the frames into ``folder`` (replacing earlier exports' frames); returns their paths."""
        try:
            if self.force:
                for name in self._previous() - set(self.names):
                    stale = self.folder / name
                    if stale.is_symlink() or stale.is_file():
                        stale.unlink()
            for leftover in self._leftovers() - {self.stage}:
                shutil.rmtree(leftover, ignore_errors=True)
            for name in self.names:
                os.replace(self.stage / name, self.folder / name)  # replaces a link, never follows it
            with atomic_path(self.folder / MANIFEST_NAME) as tmp:
                tmp.write_text(json.dumps({"written_by": "npga export", "files": self.names}, indent=1))
        finally:
            self._staging.__exit__(None, None, None)
        return [self.folder / n for n in self.names]

    def abort(self) -> None:
        """Discard the staged frames; a folder this writer created is removed again if empty."""
        self._staging.__exit__(None, None, None)
        if self._created:
            try:
                self.folder.rmdir()
            except OSError:
                pass
