"""The ``npga-sequence`` HDF5 format: the deformed Gaussians of every frame of an avatar sequence.

Layout (format_version 1)::

    /                       attrs: format="npga-sequence", format_version=1, and the conventions
                                   below (quaternion_order, scales, opacities, colors, color_mode,
                                   sh_degree, camera_axes, units, background, images), plus
                                   provenance: run, sequence, num_frames, created_by
    /timesteps              (T,) int64     capture timestep of each frame
    /codes/z_exp            (T, E) float32 expression code driving each frame
    /poses/rot              (T, 3, 3)      head rotation (world <- head), float32
    /poses/trans            (T, 3)         head translation, metres
    /poses/scale            (T,) or (T, k) head scale
    /cameras/<serial>/viewmat (4, 4) world->camera (OpenCV), /K (3, 3) pixels;
                             attrs width, height (pixels)
    /frames/<i:05d>/        one group per frame i = 0..T-1 (attrs: index, timestep)
        means      (N, 3) float32   world positions, metres
        quats      (N, 4) float32   rotation quaternions, wxyz, unit length
        scales     (N, 3) float32   activated (linear) standard deviations, metres
        opacities  (N,)   float32   activated, in [0, 1]
        sh         (N, K, 3) float32  SH coefficients, K = (sh_degree+1)^2   (color_mode "sh")
        colors     (N, C) float32   per-Gaussian colours/features             (color_mode "features")
        images/<serial> (H, W, C) float32  optional: the image ``npga render`` produced

Each per-frame dataset is one gzip-compressed chunk, so reading frame i touches only frame i.
N may differ between frames. A frame renders exactly as ``npga render`` rendered it with::

    frame = read_frame(path, i)                      # rasterize's keyword arguments
    cam = read_camera(path, serial)
    rasterize(**frame, viewmat=cam["viewmat"], K=cam["K"], width=cam["width"], height=cam["height"])

Files are written to a private temporary file beside the target
(:class:`npga_taichi.checkpoint.AtomicFile`: unpredictable name, never follows a planted link)
and moved into place with :func:`os.replace` only when complete; an existing file is never
replaced unless ``force``. :func:`export_sequence` is ``npga export``'s work (HDF5 and PLY).
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Callable, Iterator, Mapping

import h5py
import numpy as np
import torch

from npga_taichi.checkpoint import AtomicFile, CommitOnExit

FORMAT_NAME = "npga-sequence"
FORMAT_VERSION = 1
GZIP_LEVEL = 4  # gzip 4 is within a few % of level 9's size at a fraction of the time

# Every convention a reader needs, stored verbatim as root attributes.
CONVENTIONS: dict[str, str] = {
    "quaternion_order": "wxyz",
    "quaternion_normalized": "yes (unit length)",
    "scales": "activated (linear standard deviations in metres, exp of the log-scales)",
    "opacities": "activated [0,1] (sigmoid of the logits)",
    "colors_sh": "SH coefficients (N,K,3), K=(sh_degree+1)^2, colour = max(SH(dir)+0.5, 0), "
                 "dir = normalised (mean - camera centre)",
    "colors_features": "per-Gaussian colours or features (N,C), composited as is",
    "camera_axes": "OpenCV world->camera (x right, y down, z forward); K in pixels, "
                   "pixel centres at (j+0.5, i+0.5)",
    "units": "metres",
    "images": "float32 (H,W,C) as rendered, background composited as T_final*background",
}


def _np(x, dtype=np.float32) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=dtype))


def _dataset(group: h5py.Group, name: str, data: np.ndarray) -> None:
    # One chunk per frame dataset (the whole array) so each frame is read with one decompress.
    chunks = data.shape if data.size and data.ndim else None
    group.create_dataset(name, data=data, chunks=chunks, compression="gzip" if chunks else None,
                         compression_opts=GZIP_LEVEL if chunks else None, shuffle=bool(chunks))


class SequenceWriter(CommitOnExit):
    """Write an ``npga-sequence`` file frame by frame, atomically.

    with SequenceWriter(path, sh_degree=1, force=False) as w:
        w.write_cameras(cameras); for ...: w.add_frame(...)
        w.write_tracks(timesteps, z_exp, rot, trans, scale)

    sh_degree:  SH degree of the colours (``sh`` datasets), or None for ``colors`` features
    background: (C,) background the images were rendered over (stored so re-renders match)
    """

    def __init__(self, path: str | os.PathLike, sh_degree: int | None, background=None,
                 force: bool = False, attrs: Mapping[str, object] | None = None) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in (".h5", ".hdf5"):
            raise ValueError(f"export path must end in .h5 or .hdf5, got {self.path}")
        if self.path.exists() and not force:
            raise FileExistsError(f"{self.path} already exists; pass --force to overwrite it")
        self._target = AtomicFile(self.path)
        self.tmp = self._target.tmp
        self.sh_degree = sh_degree
        self.count = 0
        try:
            self.file = h5py.File(self.tmp, "w")
        except BaseException:
            self._target.discard()
            raise
        a = self.file.attrs
        a["format"] = FORMAT_NAME
        a["format_version"] = FORMAT_VERSION
        for key, value in CONVENTIONS.items():
            a[key] = value
        a["color_mode"] = "features" if sh_degree is None else "sh"
        a["sh_degree"] = -1 if sh_degree is None else int(sh_degree)
        a["colors"] = CONVENTIONS["colors_features" if sh_degree is None else "colors_sh"]
        a["background"] = _np([] if background is None else background)
        a["created_by"] = "npga-taichi"
        for key, value in (attrs or {}).items():
            a[key] = value if isinstance(value, (str, int, float, np.ndarray)) else json.dumps(value)
        self.frames = self.file.create_group("frames")

    # ------------------------------------------------------------------ content
    def write_cameras(self, cameras: Mapping[str, object]) -> None:
        """cameras: serial -> Camera-like (viewmat (4,4), K (3,3), width, height)."""
        group = self.file.require_group("cameras")
        for serial, cam in cameras.items():
            g = group.create_group(str(serial))
            g.create_dataset("viewmat", data=_np(cam.viewmat))
            g.create_dataset("K", data=_np(cam.K))
            g.attrs["width"] = int(cam.width)
            g.attrs["height"] = int(cam.height)

    def add_frame(self, timestep: int, gaussians: Mapping[str, object],
                  images: Mapping[str, object] | None = None) -> None:
        """Append frame ``self.count``; ``gaussians`` holds rasterize's arrays (activated).

        gaussians: means (N,3), quats (N,4) wxyz, scales (N,3), opacities (N,), and
                   sh (N,K,3) when sh_degree is set, else colors (N,C)
        images:    serial -> (H, W, C) rendered image (optional)
        """
        g = self.frames.create_group(f"{self.count:05d}")
        g.attrs["index"] = self.count
        g.attrs["timestep"] = int(timestep)
        n = None
        for key in ("means", "quats", "scales", "opacities"):
            if key not in gaussians:
                raise ValueError(f"frame {self.count} lacks {key!r}")
            arr = _np(gaussians[key])
            n = arr.shape[0] if n is None else n
            if arr.shape[0] != n:
                raise ValueError(f"frame {self.count}: {key} has {arr.shape[0]} rows, means has {n}")
            _dataset(g, key, arr)
        color_key = "colors" if self.sh_degree is None else "sh"
        if color_key not in gaussians:
            raise ValueError(f"frame {self.count} lacks {color_key!r} (color_mode of this file)")
        _dataset(g, color_key, _np(gaussians[color_key]))
        if images:
            ig = g.create_group("images")
            for serial, image in images.items():
                _dataset(ig, str(serial), _np(image))
        self.count += 1

    def write_tracks(self, timesteps, z_exp, rot, trans, scale) -> None:
        """Per-frame capture timesteps, expression codes and head poses (T rows each)."""
        t = _np(timesteps, np.int64)
        for name, arr in (("z_exp", z_exp), ("rot", rot), ("trans", trans), ("scale", scale)):
            if len(_np(arr)) != len(t):
                raise ValueError(f"{name} has {len(_np(arr))} rows but there are {len(t)} timesteps")
        self.file.create_dataset("timesteps", data=t)
        self.file.require_group("codes").create_dataset("z_exp", data=_np(z_exp))
        poses = self.file.require_group("poses")
        poses.create_dataset("rot", data=_np(rot))
        poses.create_dataset("trans", data=_np(trans))
        poses.create_dataset("scale", data=_np(scale))

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> Path:
        """Finish the file and move it into place; returns the final path."""
        try:
            self.file.attrs["num_frames"] = self.count
            self.file.close()
        except BaseException:
            self._target.discard()
            raise
        return self._target.commit()

    def abort(self) -> None:
        """Discard the partial file (the target, if it existed, is untouched)."""
        try:
            if self.file.id.valid:
                self.file.close()
        finally:
            self._target.discard()


# ---------------------------------------------------------------------------------- reading

# gzip cannot shrink data more than ~1032:1, so a dataset declaring more bytes than this many
# times the file's size is a lying header: refused before h5py allocates it.
_MAX_EXPANSION = 1100


def _open(path: str | os.PathLike) -> h5py.File:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such sequence file: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path} is not an HDF5 file: {err}") from None
    try:
        fmt = f.attrs.get("format")
        if isinstance(fmt, bytes):
            fmt = fmt.decode("utf-8", errors="replace")
        if not isinstance(fmt, str) or fmt != FORMAT_NAME:
            raise ValueError(f"{path} is not an {FORMAT_NAME} file (format attribute: {fmt!r})")
        version = f.attrs.get("format_version", -1)
        if not isinstance(version, (int, np.integer)) or not 1 <= int(version) <= FORMAT_VERSION:
            raise ValueError(f"{path} has format_version {version!r}; this reader supports 1..{FORMAT_VERSION}")
    except BaseException as err:
        f.close()
        if isinstance(err, ValueError) and str(path) in str(err):
            raise
        if isinstance(err, Exception):
            raise ValueError(f"{path}: malformed {FORMAT_NAME} file ({type(err).__name__}: {err})") from None
        raise
    return f


@contextlib.contextmanager
def _reading(path: str | os.PathLike) -> Iterator[h5py.File]:
    """Open a sequence file; any h5py / shape problem inside the block becomes a ValueError
    naming the file (our own KeyError / IndexError lookups, which name it, pass through)."""
    f = _open(path)
    try:
        yield f
    except (KeyError, IndexError, ValueError) as err:
        if str(path) in str(err):
            raise
        raise ValueError(f"{path}: malformed {FORMAT_NAME} file ({type(err).__name__}: {err})") from None
    except (OSError, TypeError, AttributeError, RuntimeError, MemoryError, OverflowError) as err:
        raise ValueError(f"{path}: malformed {FORMAT_NAME} file ({type(err).__name__}: {err})") from None
    finally:
        f.close()


def _read(f: h5py.File, key: str, path, ndim: int | None = None, numeric: bool = True) -> np.ndarray:
    """Dataset ``key`` as an array, its declared size checked against the file size first."""
    ds = f[key]
    if not isinstance(ds, h5py.Dataset):
        raise ValueError(f"{path}: {key} is not a dataset")
    nbytes = int(np.prod(ds.shape, dtype=object) or 0) * ds.dtype.itemsize if ds.shape is not None else 0
    if nbytes > _MAX_EXPANSION * os.path.getsize(f.file.filename) + (1 << 20):
        raise ValueError(f"{path}: {key} declares shape {ds.shape} ({nbytes} bytes), more than the file can hold")
    arr = ds[()]
    arr = np.asarray(arr)
    if numeric and arr.dtype.kind not in "biuf":
        raise ValueError(f"{path}: {key} holds {arr.dtype}, expected numbers")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{path}: {key} has shape {arr.shape}, expected {ndim} dimensions")
    return arr


def read_metadata(path: str | os.PathLike) -> dict:
    """Root attributes, timesteps, codes, poses and camera serials of a sequence file."""
    with _reading(path) as f:
        meta = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items()}
        meta["num_frames"] = len(f["frames"])
        meta["cameras"] = sorted(f["cameras"]) if "cameras" in f else []
        if "timesteps" in f:
            meta["timesteps"] = _read(f, "timesteps", path, 1)
            meta["z_exp"] = _read(f, "codes/z_exp", path, 2)
            meta["rot"] = _read(f, "poses/rot", path, 3)
            meta["trans"] = _read(f, "poses/trans", path, 2)
            meta["scale"] = _read(f, "poses/scale", path)
            t = len(meta["timesteps"])
            if any(len(meta[k]) != t for k in ("z_exp", "rot", "trans", "scale")):
                raise ValueError(f"{path}: codes and poses do not have one row per timestep ({t})")
        return meta


def _frame_group(f: h5py.File, path, index: int) -> h5py.Group:
    n = len(f["frames"])
    if not 0 <= index < n:
        raise IndexError(f"frame index {index} out of range: {path} has {n} frames")
    return f["frames"][f"{index:05d}"]


def read_frame(path: str | os.PathLike, index: int, device="cpu", dtype=torch.float32) -> dict:
    """Frame ``index`` as :func:`npga_taichi.render.rasterize` keyword arguments (torch tensors).

    Returns means, quats, scales, opacities, colors (SH (N,K,3) or features (N,C)), sh_degree
    (int or None) and background (tensor or None): add viewmat, K, width, height and call
    ``rasterize(**frame, ...)``. Shapes are checked and values must be finite (ValueError
    naming the file and frame otherwise).
    """
    with _reading(path) as f:
        g = _frame_group(f, path, index)
        where = f"frames/{index:05d}"
        sh_degree = int(f.attrs["sh_degree"])
        if not -1 <= sh_degree <= 3:
            raise ValueError(f"{path}: sh_degree {sh_degree} is not -1 (features) or 0..3")
        arrays = {"means": _read(g, "means", path, 2), "quats": _read(g, "quats", path, 2),
                  "scales": _read(g, "scales", path, 2), "opacities": _read(g, "opacities", path, 1),
                  "colors": _read(g, "sh" if sh_degree >= 0 else "colors", path, 3 if sh_degree >= 0 else 2)}
        n = arrays["means"].shape[0]
        tails = {"means": (3,), "quats": (4,), "scales": (3,), "opacities": (),
                 "colors": ((sh_degree + 1) ** 2, 3) if sh_degree >= 0 else arrays["colors"].shape[1:]}
        for key, tail in tails.items():
            if arrays[key].shape != (n, *tail):
                raise ValueError(f"{path} {where}: {key} has shape {arrays[key].shape}, expected {(n, *tail)}")
            if not np.isfinite(arrays[key]).all():
                raise ValueError(f"{path} {where}: {key} contains NaN or Inf")
        background = np.asarray(f.attrs["background"], dtype=np.float64)
        if background.size and (background.ndim != 1 or not np.isfinite(background).all()):
            raise ValueError(f"{path}: background attribute {background.tolist()} is not a finite vector")
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype, device=device)  # noqa: E731
        return {**{k: t(v) for k, v in arrays.items()},
                "sh_degree": sh_degree if sh_degree >= 0 else None,
                "background": t(background) if background.size else None}


def read_frame_image(path: str | os.PathLike, index: int, serial: str) -> np.ndarray:
    """The rendered image stored with frame ``index`` for camera ``serial`` (H, W, C) float32."""
    with _reading(path) as f:
        g = _frame_group(f, path, index)
        if "images" not in g or serial not in g["images"]:
            raise KeyError(f"{path} frame {index} has no stored image for camera {serial!r}")
        return _read(g, f"images/{serial}", path, 3)


def read_camera(path: str | os.PathLike, serial: str, device="cpu", dtype=torch.float32) -> dict:
    """Camera ``serial`` of a sequence file as rasterize keyword arguments (viewmat, K, width, height)."""
    with _reading(path) as f:
        if "cameras" not in f or serial not in f["cameras"]:
            have = sorted(f["cameras"]) if "cameras" in f else []
            raise KeyError(f"{path} has no camera {serial!r}; it has {have}")
        g = f["cameras"][serial]
        viewmat, K = _read(g, "viewmat", path), _read(g, "K", path)
        width, height = int(g.attrs["width"]), int(g.attrs["height"])
        if viewmat.shape != (4, 4) or K.shape != (3, 3) or not (np.isfinite(viewmat).all() and np.isfinite(K).all()):
            raise ValueError(f"{path}: camera {serial} needs a finite 4x4 viewmat and 3x3 K")
        if width < 1 or height < 1:
            raise ValueError(f"{path}: camera {serial} has size {width}x{height}")
        return {"viewmat": torch.as_tensor(viewmat, dtype=dtype, device=device),
                "K": torch.as_tensor(K, dtype=dtype, device=device), "width": width, "height": height}


# ---------------------------------------------------------------------------------- export

def export_sequence(run_dir: str | os.PathLike, sequence: str, out_path: str | os.PathLike | None = None,
                    ply_dir: str | os.PathLike | None = None, expressions: str | os.PathLike | None = None,
                    cameras: str = "all", images: bool = False, stride: int = 1, max_frames: int | None = None,
                    device: str = "cpu", force: bool = False,
                    progress: Callable[[int, int], None] | None = None) -> dict:
    """``npga export``: the deformed Gaussians of run ``run_dir`` for every frame of ``sequence``.

    Writes ``out_path`` (an ``npga-sequence`` HDF5 file, see the module docstring) and/or
    ``ply_dir/frame_<i:05d>.ply`` (graphdeco layout, :class:`npga_taichi.ply.PlyFolderWriter`).
    ``expressions``: another run / tracking file / participant folder whose codes drive the
    avatar (cross-reenactment); ``cameras``: ``all``, ``holdout``, ``train`` or comma-separated
    serials stored in the HDF5 file; ``images`` also stores every frame's render per camera;
    every ``stride``-th frame, at most ``max_frames``. ``progress(done, total)`` is called per frame.
    Nothing is replaced without ``force``; with ``force`` a PLY folder loses only the frames an
    earlier export wrote. Returns a JSON-able description; raises ValueError /
    FileNotFoundError / FileExistsError / KeyError naming the file or argument.
    """
    from npga_taichi.data.nersemble import select_cameras
    from npga_taichi.ply import PlyFolderWriter
    from npga_taichi.reenactment import LoadedRun, describe_run

    run_dir = Path(run_dir)
    if out_path is None and ply_dir is None:
        raise ValueError("nothing to write: give an HDF5 file (--out) and/or a PLY folder (--ply)")
    if stride < 1 or (max_frames is not None and max_frames < 1):
        raise ValueError(f"stride and max_frames must be >= 1, got {stride} and {max_frames}")
    if out_path is not None:
        out_path = Path(out_path)
        if out_path.suffix.lower() not in (".h5", ".hdf5"):
            raise ValueError(f"export path must end in .h5 or .hdf5, got {out_path}")
        if out_path.exists() and not force:
            raise FileExistsError(f"{out_path} already exists; pass --force to overwrite it")
    plys = PlyFolderWriter(ply_dir, force=force, protect=[run_dir]) if ply_dir is not None else None
    writer = None
    try:
        run = LoadedRun(run_dir, device=device)
        drive = run.drive(sequence, expressions)
        serials = select_cameras(sorted(run.cameras), cameras, run.heldout_cameras())
        chosen = {s: run.cameras[s] for s in serials}
        drive = drive.select(list(range(0, len(drive), stride))[:max_frames])
        for i in range(len(drive)):
            g = run.gaussians(drive.frame(i))
            if writer is None and out_path is not None:
                meta = describe_run(run)
                writer = SequenceWriter(out_path, sh_degree=g["sh_degree"], background=run.raster_background(g),
                                        force=force, attrs={"run": meta["run"], "sequence": drive.sequence,
                                                            "capture": meta["capture"],
                                                            "participant": meta["participant"],
                                                            "expressions": str(expressions or "self")})
                writer.write_cameras(chosen)
            if writer is not None:
                rendered = {s: run.render(g, cam) for s, cam in chosen.items()} if images else None
                arrays = dict(g)
                if g["sh_degree"] is not None:
                    arrays["sh"] = arrays.pop("colors")
                writer.add_frame(int(drive.timesteps[i]), arrays, rendered)
            if plys is not None:
                plys.add(i, g)
            if progress is not None:
                progress(i + 1, len(drive))
        if writer is not None:
            writer.write_tracks(drive.timesteps, drive.z_exp, drive.rot, drive.trans, drive.scale)
            writer.close()
        if plys is not None:
            plys.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        if plys is not None:
            plys.abort()
        raise
    return {"run": str(run_dir), "sequence": drive.sequence, "num_frames": len(drive),
            "hdf5": str(out_path) if out_path else None, "ply_dir": str(ply_dir) if ply_dir else None,
            "cameras": sorted(chosen), "images": images, "timesteps": [int(t) for t in drive.timesteps]}
