"""The ``npga view`` server: a viser scene + GUI, and one worker thread that does all the work.

Threading: viser runs GUI and camera callbacks on its own threads. Those callbacks only
*record* what the user asked for (:meth:`Viewer._record`; the newest state replaces older ones,
so a fast drag never queues stale work) and wake the worker. The worker thread alone touches
torch and Taichi: it deforms the avatars when the expression changed, packs and sends splats,
renders exact frames for each browser, advances playback and performs button actions.

Renderers:

* *browser* — the splats are drawn by viser's WebGL client; the server sends new Gaussians only
  when the expression changes (and, for avatars with view-dependent SH colours, re-bakes the
  colours for the new eye once the camera has rested: see :mod:`npga_taichi.viewer.splats`).
* *exact* — our Taichi rasterizer renders each browser's current camera (``client.camera`` ->
  :func:`npga_taichi.viewer.camera.viewer_camera`) and the image becomes that browser's
  background (``client.scene.set_background_image``): a smaller image while the camera
  moves, the full canvas size once it has rested for ``REST_SECONDS``. With one avatar the
  image is ``LoadedRun.render`` of exactly the Gaussians ``npga render`` renders.
"""
from __future__ import annotations

import dataclasses
import threading
import time
import traceback
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from npga_taichi.conventions import MM_PER_UNIT
from npga_taichi.part_motion import PART_MOTION_NAMES
from npga_taichi.reenactment import LoadedRun
from npga_taichi.viewer.camera import camera_pose, frontal_serial, resized_keep_fov, viewer_camera
from npga_taichi.viewer.expressions import MODES, Applied, ExpressionSource, ViewState, save_expression
from npga_taichi.viewer.pad import pad_image, position_to_uv, uv_to_position
from npga_taichi.viewer.splats import NODE_SCALE, concat_gaussians, to_splats

REST_SECONDS = 0.25      # a camera unchanged this long counts as stopped (exact: full resolution)
MOVING_SIDE = 256        # exact mode: longer image side while the camera moves
MODE_LABELS = {"tracked": "Tracked", "interpolate": "Interpolation", "canonical": "Canonical"}
RENDERERS = ("Browser splats", "Exact (Taichi, server)")
CORNER_NAMES = ("top-left", "top-right", "bottom-left", "bottom-right")


def _quat_from_matrix(R: np.ndarray) -> np.ndarray:
    import viser.transforms as vtf

    return vtf.SO3.from_matrix(R).wxyz


def _unique_path(directory: Path, stem: str, suffix: str) -> Path:
    """directory/stem-<time>[-k].suffix that does not exist yet (nothing is overwritten)."""
    base = f"{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    path, k = directory / f"{base}{suffix}", 1
    while path.exists() or path.with_suffix(".json").exists():
        path, k = directory / f"{base}-{k}{suffix}", k + 1
    return path


class Viewer:
    """Serve ``run_dirs`` (trained runs; the first one drives) at http://host:port.

    ``port`` 0 picks a free port (see :attr:`url`). ``out_dir`` receives saved views and
    expressions (default ``<first run>/viewer``). Call :meth:`close` to stop.
    """

    def __init__(self, run_dirs, host: str = "127.0.0.1", port: int = 8080, out_dir=None, fps: float = 25.0,
                 device: str = "cpu", max_side: int = 1024, verbose: bool = True):
        import viser

        if not run_dirs:
            raise ValueError("give at least one run directory")
        self.runs = [LoadedRun(d, device=device) for d in run_dirs]
        self.source = ExpressionSource(self.runs)
        self.fps = float(fps)
        self.max_side = int(max_side)
        self.out_dir = Path(out_dir) if out_dir else self.runs[0].run_dir / "viewer"
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._actions: list[tuple[str, object]] = []
        self.errors: list[str] = []
        self.applied: Applied | None = None
        # client id -> (Camera, (H, W, 3) float32 image, ViewState key, "moving" or "full") last shown
        self.last_exact: dict[int, tuple] = {}
        self.splat_updates = 0

        seq = self.source.default_sequence()
        self._state = ViewState("interpolate", seq, 0, (0.5, 0.5), self.source.auto_corners())
        self._renderer = RENDERERS[0]
        self._show_centres = False
        self._playing = False
        self._uv_source = "program"
        self._layout()

        self.server = viser.ViserServer(host=host, port=port, verbose=verbose)
        self._build_scene()
        self._build_gui()
        self.server.on_client_connect(self._on_connect)
        self._world: list[dict] = []          # per avatar world-space arrays (offsets applied)
        self._world_key = None                # ViewState.key() of _world
        self._world_time = 0.0                # when _world last changed (time.time, as camera stamps)
        self._splats_key = None               # ViewState.key() of the splats last sent
        self._pending_applied = None
        self._updates = 0
        self._bake_eye = self._frontal["position"]
        self._pad_corners = None
        self._exact_done: dict[int, tuple] = {}
        self._browser_bg_cleared: set[int] = set()
        self._next_tick = 0.0
        self._soon: float | None = None  # monotonic time by which the worker should step again
        self._warm_up()
        self._worker = threading.Thread(target=self._work, name="npga-view-worker", daemon=True)
        self._worker.start()

    def _warm_up(self) -> None:
        """Render each avatar once, small, on the constructing thread. Taichi's CPU backend may
        create a field (an SNode tree) the first time a kernel variant runs, and it allows that
        only on the thread that first materialised Taichi's fields — in `npga view` and in a
        test session the main thread, not the worker. After this every later render only
        launches kernels, which any one thread at a time may do."""
        cam = resized_keep_fov(self.runs[0].camera(self._frontal_serial), 32)
        for k, run in enumerate(self.runs):
            run.render(self.source.gaussians(self._state, None, k), cam)

    # ------------------------------------------------------------------ layout of the scene
    def _layout(self) -> None:
        """Frontal camera, up direction, side-by-side offsets and the pad's place (metres)."""
        primary = self.runs[0]
        ref = self.source.gaussians(dataclasses.replace(self._state, mode="canonical"), None, 0)
        means = ref["means"].double().cpu().numpy()
        self._center = means.mean(0)
        serial = frontal_serial(primary.cameras, self._center)
        self._frontal_serial = serial
        self._frontal = camera_pose(primary.camera(serial))
        up = self._frontal["up"]
        right = self._frontal["right"]
        width = float(np.ptp(means @ right))
        height = float(np.ptp(means @ up))
        spacing = 1.25 * width
        n = len(self.runs)
        self.offsets = [((k - (n - 1) / 2) * spacing) * right if n > 1 else np.zeros(3) for k in range(n)]
        self.pad_size = 0.8 * min(width, height) if min(width, height) > 0 else 0.1
        pad_center = self._center - ((n - 1) / 2 * spacing + 0.5 * width + 0.7 * self.pad_size) * right
        R_wc = np.stack([right, -up, self._frontal["forward"]], axis=1)
        self._pad_pose = (pad_center, _quat_from_matrix(R_wc))

    def _build_scene(self) -> None:
        scene = self.server.scene
        scene.set_up_direction(tuple(float(x) for x in self._frontal["up"]))
        cam = self.server.initial_camera
        cam.up = tuple(self._frontal["up"])
        cam.position = tuple(self._frontal["position"])
        cam.look_at = tuple(self._frontal["position"] + self._frontal["forward"]
                            * float(np.linalg.norm(self._center - self._frontal["position"])))
        cam.fov = float(self._frontal["fov"])
        cam.near = 0.01
        empty = np.zeros((0, 3), np.float32)
        self._splats = [scene.add_gaussian_splats(f"/avatar{k}", empty, np.zeros((0, 3, 3), np.float32), empty,
                                                  np.zeros((0, 1), np.float32), scale=NODE_SCALE)
                        for k in range(len(self.runs))]
        self._points = [None] * len(self.runs)
        center, wxyz = self._pad_pose
        self._pad_frame = scene.add_frame("/pad", show_axes=False, position=tuple(center), wxyz=tuple(wxyz))
        self._pad_image = scene.add_image("/pad/image", np.full((8, 8, 3), 200, np.uint8),
                                          self.pad_size, self.pad_size, cast_shadow=False, receive_shadow=False)
        half = self.pad_size / 2
        self._cursor = scene.add_transform_controls(
            "/pad/cursor", scale=0.35 * self.pad_size, disable_rotations=True, disable_axes=False,
            active_axes=(True, True, False), translation_limits=((-half, half), (-half, half), (-1, 1)),
            depth_test=False, position=tuple(uv_to_position(self._state.uv, self.pad_size)))
        self._cursor.on_update(self._on_cursor)

    # ------------------------------------------------------------------ GUI (callbacks only record)
    def _build_gui(self) -> None:
        gui = self.server.gui
        names = ", ".join(run.run_dir.name for run in self.runs)
        gui.add_markdown(f"**npga view** — {names}")
        self.gui_mode = gui.add_dropdown("Mode", [MODE_LABELS[m] for m in MODES],
                                         initial_value=MODE_LABELS[self._state.mode])
        self.gui_mode.on_update(lambda e: self._record(mode={v: k for k, v in MODE_LABELS.items()}[e.target.value]))

        with gui.add_folder("Interpolation pad"):
            self.gui_u = gui.add_slider("u (left-right)", 0.0, 1.0, 1e-4, self._state.uv[0])
            self.gui_v = gui.add_slider("v (top-bottom)", 0.0, 1.0, 1e-4, self._state.uv[1])
            self.gui_u.on_update(lambda e: self._record_uv(u=float(e.target.value)))
            self.gui_v.on_update(lambda e: self._record_uv(v=float(e.target.value)))
            self.gui_corners = gui.add_markdown(self._corners_text(self._state.corners))
            self.gui_set_corner = gui.add_button_group("Set corner to tracked frame", ["TL", "TR", "BL", "BR"],
                                                       hint="Use the Tracked sequence/frame as this corner")
            self.gui_set_corner.on_click(lambda e: self._act("corner", ["TL", "TR", "BL", "BR"].index(e.target.value)))
            reset = gui.add_button("Most distinct corners")
            reset.on_click(lambda e: self._act("auto_corners", None))
            if any(run.avatar.eye_closure_dim for run in self.runs):
                self.gui_closure = [gui.add_slider(f"Eye closure ({side})", 0.0, 1.0, 0.01, 0.0,
                                                   hint="0 open, 1 closed: the blink the avatar learned")
                                    for side in ("left", "right")]
                for i, slider in enumerate(self.gui_closure):
                    slider.on_update(lambda e, i=i: self._record_closure(i, float(e.target.value)))
            if any(run.avatar.part_motion_dim for run in self.runs):
                # the "up" motions: how far a brow or a mouth corner is raised (mm; < 0 lowers it)
                self.gui_part_motion = {}
                for name in ("brow_left_up", "brow_right_up", "corner_left_up", "corner_right_up"):
                    part, side = name.split("_")[:2]
                    label = f"{'Brow' if part == 'brow' else 'Mouth corner'} up ({side}, mm)"
                    slider = gui.add_slider(label, -5.0, 10.0, 0.1, 0.0,
                                            hint="measured from label maps in tracked mode; here yours")
                    slider.on_update(lambda e, name=name: self._record_part_motion(name, float(e.target.value)))
                    self.gui_part_motion[name] = slider

        with gui.add_folder("Tracked"):
            self.gui_sequence = gui.add_dropdown("Sequence", self.source.sequences, initial_value=self._state.sequence)
            self.gui_frame = gui.add_slider("Frame", 0, max(1, self.source.num_frames(self._state.sequence) - 1), 1, 0)
            self.gui_play = gui.add_checkbox("Play", False, hint=f"Loop the sequence at {self.fps:g} fps")
            self.gui_sequence.on_update(lambda e: self._record(sequence=e.target.value, frame=0))
            self.gui_frame.on_update(lambda e: self._record(frame=int(e.target.value)))
            self.gui_play.on_update(lambda e: self._set_playing(bool(e.target.value)))

        with gui.add_folder("View"):
            serials = sorted(self.runs[0].cameras)
            self.gui_camera = gui.add_dropdown("Capture camera", serials, initial_value=self._frontal_serial)
            self.gui_camera.on_update(lambda e: self._jump(e.client, e.target.value))
            go = gui.add_button("Go to capture camera")
            go.on_click(lambda e: self._jump(e.client, self.gui_camera.value))
            self.gui_renderer = gui.add_dropdown("Renderer", RENDERERS, initial_value=self._renderer)
            self.gui_renderer.on_update(lambda e: self._record_flag(renderer=e.target.value))
            self.gui_centres = gui.add_checkbox("Show Gaussian centres", False)
            self.gui_centres.on_update(lambda e: self._record_flag(centres=bool(e.target.value)))
            save_view = gui.add_button("Save view (PNG)")
            save_view.on_click(lambda e: self._act("save_view", e.client_id))
            save_expr = gui.add_button("Save expression")
            save_expr.on_click(lambda e: self._act("save_expression", e.client_id))
        self.gui_status = gui.add_markdown("starting…")

    def _corners_text(self, corners) -> str:
        labels = [self.source.label(s, i) for s, i in corners]
        return "Corners: " + ", ".join(f"{n} `{lab}`" for n, lab in zip(("TL", "TR", "BL", "BR"), labels))

    def _record(self, **changes) -> None:
        """Replace fields of the pending view state (newest wins) and wake the worker."""
        with self._lock:
            state = self._state
            if "sequence" in changes and changes["sequence"] != state.sequence:
                changes.setdefault("frame", 0)
            elif "sequence" in changes:
                changes.pop("frame", None)
            if "frame" in changes:
                n = self.source.num_frames(changes.get("sequence", state.sequence))
                changes["frame"] = int(min(max(changes["frame"], 0), n - 1))
            if "uv" in changes:
                self._uv_source = "program"  # both the sliders and the cursor follow
            self._state = dataclasses.replace(state, **changes)
        self._wake.set()

    def _record_uv(self, u=None, v=None, source: str = "slider") -> None:
        """Record a cursor move from the sliders or the pad. ``source`` is remembered so the
        worker moves only the *other* control (never the one the user is dragging); an echo of
        the current value changes nothing."""
        with self._lock:
            old = self._state.uv
            uv = (old[0] if u is None else float(u), old[1] if v is None else float(v))
            if uv == old:
                return
            self._state = dataclasses.replace(self._state, uv=uv)
            self._uv_source = source
        self._wake.set()

    def _record_closure(self, side: int, value: float) -> None:
        with self._lock:
            closure = list(self._state.closure)
            closure[side] = value
            self._state = dataclasses.replace(self._state, closure=tuple(closure))
        self._wake.set()

    def _record_part_motion(self, name: str, mm: float) -> None:
        """Set one of PART_MOTION_NAMES of the pad's expression to ``mm`` millimetres."""
        with self._lock:
            motion = list(self._state.part_motion)
            motion[PART_MOTION_NAMES.index(name)] = mm / MM_PER_UNIT
            self._state = dataclasses.replace(self._state, part_motion=tuple(motion))
        self._wake.set()

    def _on_cursor(self, event) -> None:
        u, v = position_to_uv(event.target.position, self.pad_size)
        self._record_uv(u, v, source="pad")

    def _record_flag(self, renderer=None, centres=None) -> None:
        with self._lock:
            if renderer is not None:
                self._renderer = renderer
            if centres is not None:
                self._show_centres = centres
        self._wake.set()

    def _set_playing(self, playing: bool) -> None:
        with self._lock:
            self._playing = playing
            self._next_tick = time.monotonic()
        self._wake.set()

    def _act(self, name: str, arg) -> None:
        with self._lock:
            self._actions.append((name, arg))
        self._wake.set()

    def _jump(self, client, serial: str) -> None:
        """Move one browser's camera (or every browser's) onto a capture camera."""
        pose = camera_pose(self.runs[0].camera(serial))
        clients = [client] if client is not None else list(self.server.get_clients().values())
        distance = float(np.linalg.norm(self._center - pose["position"]))
        for c in clients:
            with c.atomic():
                c.camera.up_direction = tuple(pose["up"])
                c.camera.fov = float(pose["fov"])
                c.camera.position = tuple(pose["position"])
                c.camera.look_at = tuple(pose["position"] + distance * pose["forward"])

    def _on_connect(self, client) -> None:
        client.camera.on_update(lambda cam: self._wake.set())
        self._wake.set()

    # ------------------------------------------------------------------ public
    @property
    def url(self) -> str:
        host = self.server.get_host()
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        return f"http://{shown}:{self.server.get_port()}"

    @property
    def state(self) -> ViewState:
        with self._lock:
            return self._state

    def wait_applied(self, predicate, timeout: float = 30.0) -> Applied:
        """Block until the worker has sent an update satisfying ``predicate(applied)`` (tests)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            applied = self.applied
            if applied is not None and predicate(applied):
                return applied
            if self.errors:
                raise RuntimeError("viewer worker failed:\n" + self.errors[-1])
            time.sleep(0.02)
        raise TimeoutError(f"no matching update within {timeout} s; last: {self.applied}")

    def call(self, fn, timeout: float = 60.0):
        """Run ``fn()`` on the worker thread (which owns torch and Taichi) and return its result."""
        from concurrent.futures import Future

        future: Future = Future()
        self._act("call", (fn, future))
        return future.result(timeout=timeout)

    def render_exact(self, camera) -> torch.Tensor:
        """(H, W, 3) float32 image of the current Gaussians seen by ``camera`` (worker thread or
        tests with the worker idle): ``LoadedRun.render`` for one avatar, one rasterization of all
        avatars when they share a colour layout, else a front-to-back composite of each."""
        world = self._world
        if len(world) == 1:
            return self.runs[0].render(world[0], camera)
        if all(run.avatar.cnn is None for run in self.runs):
            try:
                g = concat_gaussians(world, [np.zeros(3)] * len(world))
                return self.runs[0].render(g, camera)
            except ValueError:
                pass
        eye = camera_pose(camera)["position"]
        order = sorted(range(len(world)), key=lambda k: -np.linalg.norm(self._center + self.offsets[k] - eye))
        image = self.runs[0].background.view(1, 1, -1).expand(camera.height, camera.width, 3).clone()
        for k in order:  # far to near, "over"
            alpha = self.runs[k].rasterize_frame(world[k], camera).alpha
            image = alpha * self.runs[k].render(world[k], camera) + (1 - alpha) * image
        return image

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._worker.join(timeout=10)
        self.server.stop()

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while not self._stop.is_set():
            timeout = 0.25 if self._soon is None else min(0.25, max(0.0, self._soon - time.monotonic()))
            self._wake.wait(timeout=timeout)
            self._wake.clear()
            self._soon = None
            if self._stop.is_set():
                break
            try:
                self._step()
            except Exception:  # keep serving; show the error instead of dying silently
                err = traceback.format_exc()
                self.errors.append(err)
                print(err, flush=True)
                self.gui_status.content = f"**error:** `{err.strip().splitlines()[-1]}`"
                time.sleep(0.2)

    def _step(self) -> None:
        with self._lock:
            state, renderer, centres, playing = self._state, self._renderer, self._show_centres, self._playing
            actions, self._actions = self._actions, []
            uv_source = self._uv_source
        if playing and state.mode == "tracked" and time.monotonic() >= self._next_tick:
            self._next_tick = max(self._next_tick + 1.0 / self.fps, time.monotonic() - 1.0)
            n = self.source.num_frames(state.sequence)
            self.gui_frame.value = (state.frame + 1) % n   # runs the slider callback -> _record
            with self._lock:
                state = self._state
        for name, arg in actions:
            state = self._do(name, arg, state, renderer)
        self._sync_gui(state, uv_source)
        if state.key() != self._world_key:
            self._update_gaussians(state)
        browser = renderer == RENDERERS[0]
        send_seconds = 0.0
        if browser and (self._splats_key != self._world_key or self._need_rebake()):
            send_seconds = self._send_splats()
        self._update_centres(centres)
        self._update_renderer(renderer)
        if self._pending_applied is not None:
            self._publish(send_seconds)
        if playing and state.mode == "tracked":
            self._look_again(self._next_tick - time.monotonic())

    def _look_again(self, seconds: float) -> None:
        """Run the next step within ``seconds`` even if nothing wakes the worker (no busy loop)."""
        when = time.monotonic() + max(0.0, seconds)
        self._soon = when if self._soon is None else min(self._soon, when)

    def _eye(self) -> np.ndarray:
        """The most recently moved browser camera's position (the frontal camera without one)."""
        best, stamp = self._frontal["position"], -1.0
        for client in self.server.get_clients().values():
            try:
                t = client.camera.update_timestamp
                if t > stamp:
                    best, stamp = np.asarray(client.camera.position, dtype=np.float64), t
            except AssertionError:  # no camera message from this client yet
                continue
        return best

    def _camera_resting(self) -> bool:
        now = time.time()
        for client in self.server.get_clients().values():
            try:
                if now - client.camera.update_timestamp < REST_SECONDS:
                    return False
            except AssertionError:
                continue
        return True

    def _need_rebake(self) -> bool:
        """SH colours depend on the eye: re-send once the camera rests somewhere new (>1 cm)."""
        if not self._world:
            return False
        if all(not w.get("sh_degree") for w in self._world):
            return False
        if not self._camera_resting():
            self._look_again(REST_SECONDS / 4)
            return False
        return float(np.linalg.norm(self._eye() - self._bake_eye)) > 0.01

    def _update_gaussians(self, state: ViewState) -> None:
        """Deform every avatar for ``state`` (world space, side-by-side offsets applied)."""
        start = time.perf_counter()
        z = self.source.expression(state)
        world = []
        for k in range(len(self.runs)):
            g = self.source.gaussians(state, z, k)
            if np.any(self.offsets[k]):
                g = dict(g, means=g["means"] + torch.as_tensor(self.offsets[k], dtype=g["means"].dtype,
                                                               device=g["means"].device))
            world.append(g)
        self._world = world
        self._world_key = state.key()
        self._world_time = time.time()
        self._pending_applied = (state, z, time.perf_counter() - start)

    def _send_splats(self) -> float:
        """Bake colours for the current eye, pack and send every avatar's splats; returns seconds."""
        start = time.perf_counter()
        eye = self._eye()
        splats = [to_splats(g, eye, run.background.cpu().numpy()) for g, run in zip(self._world, self.runs)]
        with self.server.atomic():
            for handle, s in zip(self._splats, splats):
                handle.set_gaussians(**s.as_kwargs())
        self.splat_updates += 1
        self._bake_eye = eye
        self._splats_key = self._world_key
        return time.perf_counter() - start

    def _publish(self, extra_seconds: float) -> None:
        """Record what is now on screen (tests and the status line read it)."""
        state, z, seconds = self._pending_applied
        self._pending_applied = None
        self._updates += 1
        seconds += extra_seconds
        self.applied = Applied(state, None if z is None else z.detach().cpu().numpy().copy(),
                               self.source.describe(state), seconds, self._updates)
        n = sum(len(g["means"]) for g in self._world)
        self.gui_status.content = (f"{self.source.describe(state)} · {n} Gaussians · "
                                   f"update {1000 * seconds:.0f} ms")

    def _sync_gui(self, state: ViewState, uv_source: str) -> None:
        """Keep the pad cursor, sliders and corner image in step with the state (no callbacks
        fire for values that did not change)."""
        if uv_source != "pad":
            target = uv_to_position(state.uv, self.pad_size)
            if not np.allclose(self._cursor.position, target, atol=1e-6):
                self._cursor.position = tuple(target)
        if uv_source != "slider":
            self.gui_u.value, self.gui_v.value = state.uv
        if self.gui_sequence.value != state.sequence:
            self.gui_sequence.value = state.sequence
        n = self.source.num_frames(state.sequence)
        if self.gui_frame.max != max(1, n - 1):
            self.gui_frame.max = max(1, n - 1)
        if self.gui_frame.value != state.frame:
            self.gui_frame.value = state.frame
        mode_label = MODE_LABELS[state.mode]
        if self.gui_mode.value != mode_label:
            self.gui_mode.value = mode_label
        if self._pad_corners != state.corners:
            self._pad_corners = state.corners
            self.gui_corners.content = self._corners_text(state.corners)
            self._pad_image.image = self._corner_thumbnails(state.corners)

    def _corner_thumbnails(self, corners) -> np.ndarray:
        """Pad image: the primary avatar at its reference pose showing each corner code, seen
        from the frontal capture camera (at most 128 pixels high)."""
        from npga_taichi.video import to_uint8

        run = self.runs[0]
        cam = run.camera(self._frontal_serial)
        cam = resized_keep_fov(cam, 128)
        pose = self.source.reference_poses[0]
        tiles = [to_uint8(run.render(run.gaussians({"z_exp": self.source.code(s, i), **pose}), cam))
                 for s, i in corners]
        return pad_image(tiles)

    def _update_centres(self, show: bool) -> None:
        for k, g in enumerate(self._world):
            handle = self._points[k]
            if show:
                points = g["means"].detach().float().cpu().numpy()
                if handle is None or handle.points.shape != points.shape or not np.array_equal(handle.points, points):
                    if handle is not None:
                        handle.remove()
                    self._points[k] = self.server.scene.add_point_cloud(
                        f"/centres{k}", points, (230, 30, 30), point_size=0.0015, point_shape="circle",
                        precision="float32")
            elif handle is not None:
                handle.remove()
                self._points[k] = None

    def _update_renderer(self, renderer: str) -> None:
        exact = renderer != RENDERERS[0]
        for handle in self._splats:
            if handle.visible == exact:
                handle.visible = not exact
        if not exact:
            for cid, client in self.server.get_clients().items():
                if cid not in self._browser_bg_cleared:
                    client.scene.set_background_image(None)
                    self._browser_bg_cleared.add(cid)
            self._exact_done.clear()  # back in exact mode, draw at once
            return
        from npga_taichi.video import to_uint8

        self._browser_bg_cleared.clear()
        now = time.time()
        for cid, client in list(self.server.get_clients().items()):
            try:
                stamp = client.camera.update_timestamp
                full = viewer_camera(client.camera.wxyz, client.camera.position, client.camera.fov,
                                     client.camera.image_width, client.camera.image_height)
            except AssertionError:
                continue
            full = resized_keep_fov(full, self.max_side)
            # smaller frames while the camera or the expression (a pad drag) keeps changing
            moving = now - max(stamp, self._world_time) < REST_SECONDS
            quality = "moving" if moving else "full"
            done = self._exact_done.get(cid)  # (camera stamp, Gaussians key, quality) last shown
            if done == (stamp, self._world_key, "full") or (moving and done is not None
                                                            and done[:2] == (stamp, self._world_key)):
                if moving:
                    self._look_again(REST_SECONDS / 4)  # come back for the full frame once it rests
                continue
            cam = resized_keep_fov(full, MOVING_SIDE) if moving else full
            image = self.render_exact(cam).detach().float().cpu()
            client.scene.set_background_image(to_uint8(image), format="jpeg", jpeg_quality=92)
            self.last_exact[cid] = (cam, image.numpy(), self._world_key, quality)
            self._exact_done[cid] = (stamp, self._world_key, quality)
            if moving:
                self._look_again(REST_SECONDS / 4)

    # ------------------------------------------------------------------ actions (worker thread)
    def _do(self, name: str, arg, state: ViewState, renderer: str) -> ViewState:
        if name == "corner":
            corners = list(state.corners)
            corners[arg] = (state.sequence, state.frame)
            self._record(corners=tuple(corners))
        elif name == "auto_corners":
            self._record(corners=self.source.auto_corners())
        elif name == "save_view":
            self._save_view(arg, renderer)
        elif name == "save_expression":
            self._save_expression(arg, state)
        elif name == "call":
            fn, future = arg
            try:
                future.set_result(fn())
            except Exception as err:  # handed to the caller
                future.set_exception(err)
        with self._lock:
            return self._state

    def _notify(self, client_id, title: str, body: str) -> None:
        client = self.server.get_clients().get(client_id)
        if client is not None:
            client.add_notification(title, body, auto_close_seconds=8.0)
        print(f"{title}: {body}", flush=True)

    def _save_view(self, client_id, renderer: str) -> Path | None:
        from npga_taichi.video import write_png

        client = self.server.get_clients().get(client_id)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = _unique_path(self.out_dir, "view", ".png")
        if renderer != RENDERERS[0] and client_id in self.last_exact:
            image = self.last_exact[client_id][1]
        elif client is not None:
            rgba = client.get_render(client.camera.image_height, client.camera.image_width,
                                     transport_format="png", timeout=20.0).astype(np.float32) / 255.0
            background = self.runs[0].background.cpu().numpy()
            image = rgba[..., :3] * rgba[..., 3:4] + background * (1 - rgba[..., 3:4])
        else:
            return None
        write_png(path, image)
        self._notify(client_id, "Saved view", str(path))
        return path

    def _save_expression(self, client_id, state: ViewState) -> Path | None:
        z = self.source.expression(state)
        if z is None:
            self._notify(client_id, "Nothing to save", "canonical mode has no expression code")
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = _unique_path(self.out_dir, "expression", ".npz")
        meta = {"mode": state.mode, "description": self.source.describe(state),
                "corners": [self.source.label(s, i) for s, i in state.corners], "uv": list(state.uv)}
        path = save_expression(path, self.runs[0], z, self.source.pose(state, 0), meta,
                               eye_closure=self.source.eye_closure(state),
                               part_motion=self.source.part_motion(state))
        self._notify(client_id, "Saved expression", f"{path} — use it with: npga render RUN --expressions {path}")
        return path


def camera_from_client(client):
    """A connected browser's current camera as our Camera (full canvas size)."""
    cam = client.camera
    return viewer_camera(cam.wxyz, cam.position, cam.fov, cam.image_width, cam.image_height)
