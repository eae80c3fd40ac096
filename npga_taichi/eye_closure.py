"""Per-frame eye closure measured from label maps: the avatar's blink input.

Why it exists: the prior cannot carry a blink. The lid is a ~1 mm shell that a blink rotates
over an eyeball staying put 2 mm beneath it; the backward field B, an MLP on positions trained
with a per-point distance loss, settles on the median motion there (none), so the tracked codes
of point-cloud tracking do not follow blinks either (README, *Expression fidelity*). What does
see a blink is the image: how much of each eye is visible.

Measure: for every frame, training camera (:func:`measuring_cameras`) and eye, the number of
pixels a label map marks as ``eyes`` (eyeball, iris), each assigned to the nearer of the two
projected eye centres (tracked head pose, :data:`EYE_CENTRES`). Summed over cameras and divided by the same sum at the participant's
:data:`OPEN_PERCENTILE`-th percentile frame per camera (the open eye, so no neutral frame is
needed), it is the eye's openness; ``closure = clip(1 - openness, 0, 1)``: 0 open, 1 closed.

Label maps: ``<frame>/labels/cam_<serial>.png`` (uint8 ids into
:data:`npga_taichi.data.synthetic.LABEL_NAMES`), written by ``npga synth`` from the generator's
own parts; for a real capture, any face parser's eye class saved in that layout serves. Captures
without label maps get no closure (``Tracking.eye_closure`` None) and avatars trained on them
do not take one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

# Head-frame (canonical units) eye centres, subject's left (+x) first. They split an image's eye
# pixels between the two eyes and bound the Gaussians that follow a closure (EYE_REGION_RADIUS),
# so the synthetic heads' centres serve the prior's canonical space (it is trained on them).
EYE_CENTRES = ((0.112, 0.045, 0.30), (-0.112, 0.045, 0.30))
OPEN_PERCENTILE = 90.0  # per camera and eye: the pixel count of an open eye
EYE_REGION_RADIUS = 0.08  # canonical units (20 mm): Gaussians this close to an eye centre follow its closure


def closure_weights(means: torch.Tensor, eye_closure: torch.Tensor) -> torch.Tensor:
    """(N,) how closed the eye of each canonical Gaussian ``means`` (N, 3) is: the closure (2,)
    of the subject's left eye for x > 0, of the right eye for x < 0, and 0 farther than
    :data:`EYE_REGION_RADIUS` from both eye centres."""
    centres = torch.tensor(EYE_CENTRES, dtype=means.dtype, device=means.device)
    near = torch.cdist(means, centres).min(dim=1).values < EYE_REGION_RADIUS
    closure = eye_closure.to(means).reshape(2)
    return torch.where(means[:, 0] > 0, closure[0], closure[1]) * near.to(means.dtype)


def has_label_maps(capture: Any, sequence: str) -> bool:
    """Whether ``capture`` (a NersembleCapture) has a label map for the first frame of ``sequence``."""
    from npga_taichi.fidelity import label_path

    timesteps = capture.timesteps(sequence)
    serial = next(iter(capture.cameras))
    return bool(timesteps) and label_path(capture.frame_dir(sequence, timesteps[0]), serial).is_file()


def eye_centres_world(rot, trans, scale) -> torch.Tensor:
    """(2, 3) world positions of :data:`EYE_CENTRES` under a tracked head pose (world = scale ·
    rot · x + trans; rot (3, 3), trans (3,) metres, scale metres per canonical unit)."""
    from npga_taichi.prior.tracking import posed_to_world

    return posed_to_world(torch.tensor(EYE_CENTRES, dtype=torch.float32),
                          torch.as_tensor(np.asarray(rot), dtype=torch.float32),
                          torch.as_tensor(np.asarray(trans), dtype=torch.float32),
                          float(np.asarray(scale).reshape(-1)[0]))


def count_eye_pixels(labels: np.ndarray, camera: Any, centres_world: torch.Tensor) -> tuple[int, int]:
    """(left, right): ``eyes`` pixels of one (H, W) label map, each given to the nearer projected
    eye centre (``camera`` at any resolution with the label map's aspect ratio)."""
    from npga_taichi.data.synthetic import LABEL_NAMES

    rows, cols = np.nonzero(labels == LABEL_NAMES.index("eyes"))
    if len(rows) == 0:
        return 0, 0
    uv = camera.project(centres_world.to(camera.viewmat))[0].cpu().numpy() * (labels.shape[1] / camera.width)
    d_left = (cols - uv[0, 0]) ** 2 + (rows - uv[0, 1]) ** 2
    d_right = (cols - uv[1, 0]) ** 2 + (rows - uv[1, 1]) ** 2
    left = int((d_left < d_right).sum())
    return left, len(rows) - left


def measuring_cameras(capture: Any) -> list[str]:
    """The serials the closure is measured in: the capture's cameras less NeRSemble's held-out
    ones (:func:`npga_taichi.data.nersemble.split_cameras`), so evaluating on those cameras never
    reads their images through the avatar's input."""
    from npga_taichi.data.nersemble import split_cameras

    train, _ = split_cameras(list(capture.cameras))
    return train or list(capture.cameras)


def eye_pixel_counts(capture: Any, tracking: Any, serials: list[str] | None = None) -> np.ndarray:
    """(T, V, 2) float: ``eyes`` pixels near each eye (left, right) per tracked frame and camera
    (``serials``, default all of ``capture.cameras``), in pixels of the label maps' resolution."""
    from npga_taichi.fidelity import label_path, load_labels

    serials = list(capture.cameras) if serials is None else serials
    counts = np.zeros((len(tracking.timesteps), len(serials), 2))
    for i, t in enumerate(np.asarray(tracking.timesteps).tolist()):
        world = eye_centres_world(tracking.rot[i], tracking.trans[i], tracking.scale)
        frame_dir = capture.frame_dir(tracking.sequence, int(t))
        for v, serial in enumerate(serials):
            cam = capture.cameras[serial]
            counts[i, v] = count_eye_pixels(load_labels(label_path(frame_dir, serial)), cam, world)
    return counts


def closure_from_counts(counts: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Sequence -> (T, V, 2) pixel counts  to  sequence -> (T, 2) float32 closure in [0, 1].

    The open reference is shared by all sequences of a participant: per camera and eye, the
    :data:`OPEN_PERCENTILE`-th percentile of the counts over every frame given."""
    stacked = np.concatenate([np.asarray(c, np.float64) for c in counts.values()])
    if len(stacked) == 0:
        raise ValueError("no frames to measure the eye closure on")
    reference = np.percentile(stacked, OPEN_PERCENTILE, axis=0).sum(0)  # (2,)
    if (reference <= 0).any():
        raise ValueError("no camera shows the eyes open (no 'eyes' pixels in the label maps)")
    return {seq: np.clip(1.0 - np.asarray(c, np.float64).sum(1) / reference, 0.0, 1.0).astype(np.float32)
            for seq, c in counts.items()}


def add_label_measurement(capture: Any, tracking_folder: str | Path, attribute: str,
                          measure: Callable[[dict[str, Any], list[str]], dict[str, np.ndarray]]
                          ) -> dict[str, np.ndarray]:
    """Measure ``Tracking.<attribute>`` of every track in ``tracking_folder`` whose sequence
    ``capture`` has, and rewrite the tracks with it. ``measure({sequence: Tracking}, serials)``
    returns {sequence: values}, ``serials`` the :func:`measuring_cameras`. Returns those values;
    {} (nothing written) unless every one of the tracks' sequences has label maps."""
    from npga_taichi.prior.tracking import load_trackings, save_tracking, tracking_files

    trackings = {seq: tr for seq, tr in load_trackings(tracking_folder).items() if seq in capture.sequences()}
    if not trackings or not all(has_label_maps(capture, seq) for seq in trackings):
        return {}
    values = measure(trackings, measuring_cameras(capture))
    files = tracking_files(tracking_folder)
    for seq, tr in trackings.items():
        setattr(tr, attribute, values[seq])
        save_tracking(tr, files[seq])
    return values


def add_eye_closure(capture: Any, tracking_folder: str | Path) -> dict[str, float]:
    """Measure the eye closure of every track in ``tracking_folder`` of ``capture`` and write it
    into the tracks (``Tracking.eye_closure``). Returns {sequence: mean closure}; {} (nothing
    written) when the capture has no label maps."""
    closure = add_label_measurement(capture, tracking_folder, "eye_closure", lambda trackings, serials: (
        closure_from_counts({seq: eye_pixel_counts(capture, tr, serials) for seq, tr in trackings.items()})))
    return {seq: float(c.mean()) for seq, c in closure.items()}
