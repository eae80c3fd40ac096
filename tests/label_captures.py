"""A capture stand-in whose label maps a test paints (for the label-map measurements:
npga_taichi/eye_closure.py, npga_taichi/part_motion.py)."""
from pathlib import Path
from typing import Callable

import imageio.v3 as iio
import numpy as np
import torch

from npga_taichi.cameras import Camera
from npga_taichi.prior.tracking import Tracking


class PaintedCapture:
    """Cameras round the front of a head at 1 m (one per yaw, radians), tracks of ``frames``
    {sequence: per-frame specs} with zero codes at one head pose (``rot`` (3, 3), ``trans`` (3,),
    scale 0.25), and for every frame and camera the label map ``paint(spec, camera, rot, trans)``
    returns ((H, W) uint8), written where the measurements read it. What a NersembleCapture
    offers them: cameras, sequences(), timesteps(), frame_dir()."""

    def __init__(self, root: Path, frames: dict[str, list], paint: Callable, size=(96, 128), focal=600.0,
                 yaws=(0.0, 0.2), rot=None, trans=None):
        self.root, self.frames = root, frames
        h, w = size
        K = np.array([[focal, 0, w / 2], [0, focal, h / 2], [0, 0, 1]])
        self.cameras = {}
        for serial, yaw in zip(("cam_a", "cam_b", "cam_c", "cam_d"), yaws):
            c, s = np.cos(yaw), np.sin(yaw)
            R = np.array([[c, 0, -s], [0, -1, 0], [-s, 0, -c]])  # looks at the head's face (-z world)
            viewmat = np.eye(4)
            viewmat[:3, :3] = R
            viewmat[:3, 3] = -R @ np.array([1.0 * s, 0.0, 1.0 * c])
            self.cameras[serial] = Camera(serial, viewmat, K, w, h)
        rot = torch.eye(3) if rot is None else torch.as_tensor(rot, dtype=torch.float32)
        trans = torch.zeros(3) if trans is None else torch.as_tensor(trans, dtype=torch.float32)
        self.tracks = {}
        for seq, specs in frames.items():
            t = len(specs)
            self.tracks[seq] = Tracking(seq, np.arange(t), np.zeros((t, 4), np.float32), np.zeros(3, np.float32),
                                        np.zeros(3, np.float32), np.repeat(rot.numpy()[None], t, 0),
                                        np.repeat(trans.numpy()[None], t, 0), 0.25, np.zeros(t, np.float32))
            for i, spec in enumerate(specs):
                for serial, cam in self.cameras.items():
                    path = self.frame_dir(seq, i) / "labels" / f"cam_{serial}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    iio.imwrite(path, paint(spec, cam, rot, trans))

    def sequences(self):
        return list(self.frames)

    def timesteps(self, seq):
        return list(range(len(self.frames[seq])))

    def frame_dir(self, seq, t):
        return self.root / seq / f"frame_{t:05d}"
