"""`npga view`: the viser viewer on the tiny trained run, in a real headless browser.

The browser is Debian's ``chromium`` driven by playwright's Python package (software WebGL
through SwiftShader); ``.ci/run`` installs it. Without it these tests skip locally and fail in
CI (``CI`` set).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.spatial.transform import Rotation

from npga_taichi.camera_paths import bilinear_code
from npga_taichi.cli.main import cli
from npga_taichi.video import to_uint8

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-dev-shm-usage"]
VIEWPORT = {"width": 960, "height": 600}


# ----------------------------------------------------------------------------- pure functions

def test_millimetre_splats_keep_small_covariances_through_float16():
    """Why the viewer sends millimetres: viser stores covariances as float16."""
    from viser._scene_handles import GaussianSplatHandle

    from npga_taichi.viewer.splats import to_splats

    gen = torch.Generator().manual_seed(0)
    n = 200
    quats = torch.randn(n, 4, generator=gen)
    quats /= quats.norm(dim=1, keepdim=True)
    scales = 10 ** (torch.rand(n, 3, generator=gen) * 1.5 - 4.3)   # 0.05 mm .. 1.6 mm (metres)
    means = torch.randn(n, 3, generator=gen) * 0.1
    g = {"means": means, "quats": quats, "scales": scales, "opacities": torch.rand(n, generator=gen),
         "colors": torch.rand(n, 1, 3, generator=gen) - 0.5, "sh_degree": 0}
    splats = to_splats(g, eye=[0, 0, 1])

    def rel_err(a, b):
        return np.linalg.norm(a - b, axis=(1, 2)) / np.linalg.norm(b, axis=(1, 2))

    # independent covariance: scipy's rotation (x, y, z, w order) times the scales, in float64
    R = Rotation.from_quat(quats[:, [1, 2, 3, 0]].double().numpy()).as_matrix()
    M = R * scales.double().numpy()[:, None, :]
    cov_m = M @ M.transpose(0, 2, 1)
    assert np.allclose(splats.centers, means.numpy() * 1000, rtol=1e-6, atol=1e-5)
    assert rel_err(splats.covariances.astype(np.float64), cov_m * 1e6).max() < 1e-5
    assert np.allclose(splats.rgbs, np.clip(0.28209479177387814 * g["colors"][:, 0].numpy() + 0.5, 0, 1), atol=1e-6)

    def through_viser(cov):  # viser's own packing, then read back
        buf = np.zeros((n, 8), np.uint32)
        GaussianSplatHandle._pack_covariances(buf, cov)
        tri = buf[:, 4:7].view(np.float16).astype(np.float64).reshape(n, 6)
        full = np.zeros((n, 3, 3))
        for k, (i, j) in enumerate([(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]):
            full[:, i, j] = full[:, j, i] = tri[:, k]
        return full

    assert rel_err(through_viser(splats.covariances) / 1e6, cov_m).max() < 2e-3
    assert rel_err(through_viser(cov_m.astype(np.float32)), cov_m).max() > 0.1  # metres would not survive


def test_baked_colours_are_the_rasterizers_colours_for_that_eye():
    from npga_taichi import render
    from npga_taichi.viewer.splats import baked_colors

    gen = torch.Generator().manual_seed(1)
    means = torch.randn(300, 3, generator=gen) * 0.1
    coeffs = torch.randn(300, 9, 3, generator=gen) * 0.4
    eye = np.array([0.1, -0.2, 1.0])
    ours = baked_colors({"means": means, "colors": coeffs, "sh_degree": 2}, eye)
    kernel = render._ShadeSH.apply(means, coeffs, torch.tensor(eye, dtype=torch.float32), 2)  # Taichi shading
    torch.testing.assert_close(ours, kernel.clamp(0, 1), atol=2e-6, rtol=0)
    features = torch.randn(300, 8, generator=gen) * 0.3  # screen-CNN avatars: background + f[:3]
    base = baked_colors({"means": means, "colors": features, "sh_degree": None}, eye, background=[1.0, 0.5, 0.0])
    torch.testing.assert_close(base, (torch.tensor([1.0, 0.5, 0.0]) + features[:, :3]).clamp(0, 1))


def test_browser_camera_round_trips_a_capture_camera(viewer):
    from npga_taichi.viewer.camera import camera_pose, viewer_camera

    run = viewer.runs[0]
    cam = run.camera(sorted(run.cameras)[3])
    v = cam.viewmat.double().numpy()
    wxyz = Rotation.from_matrix(v[:3, :3].T).as_quat()[[3, 0, 1, 2]]   # R_world_camera
    centre = -v[:3, :3].T @ v[:3, 3]
    fov = 2 * np.arctan(0.5 * cam.height / float(cam.K[1, 1]))
    ours = viewer_camera(wxyz, centre, fov, cam.width, cam.height)
    assert np.allclose(ours.viewmat.numpy(), v, atol=1e-5)
    assert float(ours.K[1, 1]) == pytest.approx(float(cam.K[1, 1]), rel=1e-5)
    assert float(ours.K[0, 2]) == cam.width / 2 and float(ours.K[1, 2]) == cam.height / 2
    pose = camera_pose(cam)
    assert np.allclose(pose["position"], centre) and pose["fov"] == pytest.approx(fov)
    assert pose["up"] @ np.array([0.0, 1.0, 0.0]) > 0.9  # the synthetic capture's heads stand along +y


def test_pad_maps_cursor_positions_to_uv():
    from npga_taichi.viewer.pad import pad_image, position_to_uv, uv_to_position

    for uv in [(0.0, 0.0), (1.0, 0.0), (0.25, 0.75), (1.0, 1.0)]:
        assert position_to_uv(uv_to_position(uv, 0.12), 0.12) == uv
    assert position_to_uv([1.0, -1.0, 0.0], 0.12) == (1.0, 0.0)  # clamped to the square
    tiles = [np.full((20, 14, 3), 50 * k, np.uint8) for k in range(4)]
    image = pad_image(tiles)
    assert image.shape == (28, 28, 3) and image[5, 5, 0] == 0 and image[-5, -5, 0] == 150


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        message = "chromium is not installed (apt-get install --no-install-recommends chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def run_dir(tiny_demo):
    return tiny_demo["out"] / "run"


@pytest.fixture(scope="module")
def viewer(run_dir, tmp_path_factory):
    from npga_taichi.viewer.app import Viewer

    v = Viewer([run_dir], port=0, verbose=False, out_dir=tmp_path_factory.mktemp("viewer_out"))
    yield v  # its worker deforms and sends the first splats while the test opens the page
    v.close()


def _open(browser, viewer):
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(viewer.url)
    end = time.monotonic() + 120
    while not viewer.server.get_clients() or viewer.splat_updates == 0:
        assert not viewer.errors, viewer.errors[-1]
        assert time.monotonic() < end, "the page never connected"
        time.sleep(0.05)
    return page


def _client(viewer):
    clients = list(viewer.server.get_clients().values())
    assert len(clients) == 1
    end = time.monotonic() + 30
    while True:  # the browser reports its camera shortly after connecting
        try:
            clients[0].camera.update_timestamp
            return clients[0]
        except AssertionError:
            assert time.monotonic() < end
            time.sleep(0.05)


def _settled(page, timeout=40.0) -> np.ndarray:
    """(H, W, 3) screenshot once two consecutive ones agree to within JPEG-free noise (splats
    faded in, sorted, drawn)."""
    import imageio.v2 as imageio

    last, end = None, time.monotonic() + timeout
    while True:
        time.sleep(0.3)
        shot = imageio.imread(page.screenshot(animations="disabled"))[..., :3].astype(np.int16)
        if last is not None and (np.abs(shot - last).max(axis=2) > 2).mean() < 1e-4:
            return shot
        assert time.monotonic() < end, "the canvas never settled"
        last = shot


def _slider(page, label_start: str):
    """The draggable thumb of a viser slider whose label starts with ``label_start``."""
    widget = page.locator("label", has_text=label_start).first.get_attribute("for")
    return page.locator(f'[id="{widget}"] [role=slider]')


def _choose(page, label: str, option: str) -> None:
    page.get_by_label(label, exact=True).click()
    page.get_by_role("option", name=option, exact=True).click()


def _pixel(client, point) -> tuple[int, int]:
    """Canvas pixel (row, col) where world ``point`` appears for this browser."""
    from npga_taichi.viewer.app import camera_from_client

    cam = camera_from_client(client)
    uv, z = cam.project(torch.as_tensor(np.asarray(point, dtype=np.float32))[None])
    assert float(z[0]) > 0
    scale = VIEWPORT["height"] / cam.height  # canvas pixels may differ from CSS pixels
    return int(uv[0, 1] * scale), int(uv[0, 0] * scale)


def _ink(shot: np.ndarray, rc, half=40) -> float:
    """Mean distance from white in a patch around (row, col): > 0 where something is drawn."""
    r, c = rc
    patch = shot[max(r - half, 0):r + half, max(c - half, 0):c + half]
    return float((255 - patch).mean())


def _expected_code(run, corners, u, v) -> torch.Tensor:
    """Bilinear blend of the corner codes read straight from the tracking files."""
    from npga_taichi.reenactment import load_drive

    codes = torch.stack([load_drive(run.run_dir, seq, "cpu").z_exp[i] for seq, i in corners])
    return bilinear_code(codes, u, v)


# ----------------------------------------------------------------------------- in the browser

def test_page_draws_avatar_and_u_slider_drives_expression(viewer, browser):
    import imageio.v2 as imageio

    page = _open(browser, viewer)
    try:
        assert page.evaluate("() => !!document.createElement('canvas').getContext('webgl2')")
        client = _client(viewer)
        # the first view is the frontal capture camera, head upright (the capture's up, not viser's +z)
        from npga_taichi.viewer.app import camera_from_client

        frontal = viewer.runs[0].camera("222200037").viewmat.double().numpy()
        end = time.monotonic() + 20  # the first camera message may still be the client's default
        while not np.allclose(camera_from_client(client).viewmat.double().numpy(), frontal, atol=1e-3):
            assert time.monotonic() < end, "the initial view is not the frontal capture camera"
            time.sleep(0.05)
        assert np.allclose(client.camera.up_direction, -frontal[1, :3], atol=1e-3)
        head = _pixel(client, viewer._center)
        before = _settled(page)
        assert _ink(before, head) > 20, "no avatar drawn at the head's position"
        assert before.std() > 10
        assert viewer.state.mode == "interpolate" and viewer.applied.state.uv == (0.5, 0.5)
        buffer_before = viewer._splats[0].buffer.copy()

        _slider(page, "u (left").press("End")                  # the user moves u to 1
        applied = viewer.wait_applied(lambda a: a.state.uv[0] == 1.0, timeout=20)
        run = viewer.runs[0]
        expected = _expected_code(run, applied.state.corners, 1.0, 0.5)
        assert np.allclose(applied.z_exp, expected.numpy(), atol=1e-6)
        assert not np.array_equal(viewer._splats[0].buffer, buffer_before)  # new splats were sent
        after = _settled(page)
        changed = np.abs(after - before).max(axis=2) > 0
        assert changed[head[0] - 60:head[0] + 60, head[1] - 60:head[1] + 60].sum() > 50, "the canvas did not change"
        # the pad cursor followed the slider
        assert viewer._cursor.position[0] == pytest.approx(0.5 * viewer.pad_size)

        # drag the cursor's down arrow (v) on the pad: the expression and the v slider follow
        from npga_taichi.viewer.camera import quat_wxyz_to_matrix

        centre, wxyz = viewer._pad_pose
        R = quat_wxyz_to_matrix(wxyz)
        origin = centre + R @ np.asarray(viewer._cursor.position)
        grab = _pixel(client, origin + R @ np.array([0.0, 0.6 * 0.35 * viewer.pad_size, 0.0]))
        page.mouse.move(grab[1], grab[0])
        page.mouse.down()
        for step in range(1, 6):
            page.mouse.move(grab[1], grab[0] + 8 * step)
        page.mouse.up()
        dragged = viewer.wait_applied(lambda a: a.state.uv[1] > 0.55, timeout=20)
        assert dragged.state.uv[0] == 1.0
        assert np.allclose(dragged.z_exp, _expected_code(run, dragged.state.corners, *dragged.state.uv).numpy(),
                           atol=1e-6)
        thumb_v = _slider(page, "v (top")
        end = time.monotonic() + 10
        while abs(float(thumb_v.get_attribute("aria-valuenow")) - viewer.state.uv[1]) > 1e-3:
            assert time.monotonic() < end, "the v slider did not follow the pad"
            time.sleep(0.05)
        applied = viewer.wait_applied(lambda a: a.state.key() == viewer.state.key())  # the drag's last move
        expected = _expected_code(run, applied.state.corners, *applied.state.uv)

        # exact mode: the server renders this browser's camera with our rasterizer
        _choose(page, "Renderer", "Exact (Taichi, server)")
        end = time.monotonic() + 60
        while True:
            got = viewer.last_exact.get(client.client_id)
            if got is not None and got[3] == "full" and got[2] == applied.state.key():
                break
            assert time.monotonic() < end, "no full-resolution exact frame"
            time.sleep(0.05)
        cam, image = got[0], got[1]
        assert max(cam.width, cam.height) == min(viewer.max_side, max(client.camera.image_width,
                                                                      client.camera.image_height))
        # the pad's codes come without an eye closure or part motion (open eyes, parts at rest:
        # the sliders at 0)
        frame = {"z_exp": expected, **{k: v for k, v in run.reference_drive().frame(0).items()
                                       if k not in ("z_exp", "eye_closure", "part_motion")}}
        reference = viewer.call(lambda: run.render(run.gaussians(frame), cam).numpy())
        assert np.array_equal(image, reference)  # what `npga render` computes for this camera
        saved = _click_save_view(page, viewer)                    # exact mode saves the server's image
        assert np.array_equal(imageio.imread(saved), to_uint8(image))

        _choose(page, "Capture camera", "222200037")             # jump to a capture camera
        target = run.camera("222200037").viewmat.double().numpy()
        end = time.monotonic() + 20
        while not np.allclose(camera_from_client(client).viewmat.double().numpy(), target, atol=1e-3):
            assert time.monotonic() < end, "the camera did not move to the capture camera"
            time.sleep(0.05)
        _choose(page, "Renderer", "Browser splats")
        end = time.monotonic() + 20
        while not viewer._splats[0].visible:
            assert time.monotonic() < end
            time.sleep(0.05)
        saved = imageio.imread(_click_save_view(page, viewer))   # browser mode saves the canvas
        assert saved.shape == (client.camera.image_height, client.camera.image_width, 3)
        assert _ink(saved.astype(np.int16), _pixel(client, viewer._center)) > 20
    finally:
        page.close()


def _click_save_view(page, viewer):
    before = set(viewer.out_dir.glob("view-*.png")) if viewer.out_dir.is_dir() else set()
    page.get_by_role("button", name="Save view (PNG)").click()
    end = time.monotonic() + 30
    while True:
        new = set(viewer.out_dir.glob("view-*.png")) - before if viewer.out_dir.is_dir() else set()
        if new:
            return new.pop()
        assert time.monotonic() < end, "no PNG saved"
        time.sleep(0.05)


def test_two_runs_stand_side_by_side(browser, run_dir, tmp_path):
    from npga_taichi.viewer.app import Viewer

    v = Viewer([run_dir, run_dir], port=0, verbose=False, out_dir=tmp_path)
    try:
        page = _open(browser, v)
        a, b = (h.buffer[:, :3].view(np.float32) for h in v._splats)
        assert len(a) == len(b) > 100
        shift = (b.astype(np.float64) - a).mean(0) / 1000.0       # millimetres -> metres (float64 mean)
        assert np.allclose(b - a, (b - a)[0], atol=1e-2)           # a rigid shift ...
        assert np.allclose(shift, v.offsets[1] - v.offsets[0], atol=1e-6)
        assert np.linalg.norm(shift) > np.ptp(a[:, 0]) / 1000.0    # ... wider than the head
        client = _client(v)
        shot = _settled(page)
        left, right = (_pixel(client, v._center + off) for off in v.offsets)
        assert abs(left[1] - right[1]) > 100
        assert _ink(shot, left) > 20 and _ink(shot, right) > 20
        assert _ink(shot, ((left[0] + right[0]) // 2, (left[1] + right[1]) // 2), half=5) < _ink(shot, left)
        # the exact renderer draws both avatars in one rasterization
        from npga_taichi.viewer.app import camera_from_client

        cam = camera_from_client(client)
        exact = v.call(lambda: to_uint8(v.render_exact(cam))).astype(np.int16)
        assert _ink(exact, left) > 20 and _ink(exact, right) > 20
        page.close()
    finally:
        v.close()


# ----------------------------------------------------------------------------- without a browser

def test_auto_corners_match_npga_render_and_exact_matches_npga_render(viewer, run_dir, tmp_path):
    """The default corners are `render --interpolate auto`'s; 'Save expression' writes a file
    `npga render --expressions` takes, and the exact renderer draws what it draws."""
    import imageio.v2 as imageio

    grid = CliRunner().invoke(cli, ["render", str(run_dir), "--interpolate", "auto", "--grid", "2x2",
                                    "--out", str(tmp_path / "grid"), "--json"])
    assert grid.exit_code == 0, grid.output
    corners = json.loads(grid.stdout.strip().splitlines()[-1])["corners"]
    assert [viewer.source.label(s, i) for s, i in viewer.source.auto_corners()] == corners

    viewer._record(mode="interpolate", uv=(0.25, 0.75))
    viewer.wait_applied(lambda a: a.state.uv == (0.25, 0.75))
    saved = viewer.call(lambda: viewer._save_expression(None, viewer.state))
    assert saved.is_file() and saved.parent == viewer.out_dir
    result = CliRunner().invoke(cli, ["render", str(run_dir), "--expressions", str(saved), "--camera", "222200037",
                                      "--png", "--no-video", "--out", str(tmp_path / "r"), "--json"])
    assert result.exit_code == 0, result.output
    png = imageio.imread(tmp_path / "r" / "frames" / "frame_00000.png")
    ours = viewer.call(lambda: to_uint8(viewer.render_exact(viewer.runs[0].camera("222200037"))))
    assert np.array_equal(ours, png)
    again = viewer.call(lambda: viewer._save_expression(None, viewer.state))
    assert again != saved  # a new name, the first file untouched


def test_tracked_canonical_corners_centres_and_play(viewer):
    src = viewer.source
    seq = [s for s in src.sequences if src.num_frames(s) > 1][0]
    viewer._record(mode="tracked", sequence=seq, frame=1)
    applied = viewer.wait_applied(lambda a: a.state.key() == ("tracked", seq, 1))
    drive = viewer.runs[0].drive(seq)
    assert np.array_equal(applied.z_exp, drive.z_exp[1].numpy())
    g = viewer.call(lambda: viewer.runs[0].gaussians(drive.frame(1)))   # the tracked pose, too
    assert np.allclose(viewer._splats[0].buffer[:, :3].view(np.float32), g["means"].numpy() * 1000, atol=1e-3)

    viewer._act("corner", 2)                                            # bottom-left := this frame
    end = time.monotonic() + 10
    while viewer.state.corners[2] != (seq, 1):
        assert time.monotonic() < end
        time.sleep(0.02)

    viewer._record_flag(centres=True)
    end = time.monotonic() + 10
    while viewer._points[0] is None:
        assert time.monotonic() < end
        time.sleep(0.02)
    assert np.allclose(viewer._points[0].points, g["means"].numpy(), atol=1e-6)
    viewer._record_flag(centres=False)

    viewer._record(mode="canonical")
    applied = viewer.wait_applied(lambda a: a.state.mode == "canonical")
    assert applied.z_exp is None
    avatar, pose = viewer.runs[0].avatar, viewer.source.reference_poses[0]
    canon = avatar.gaussians.means.detach().double()
    expected = float(pose["scale"]) * canon @ pose["rot"].double().T + pose["trans"].double()
    assert np.allclose(viewer._splats[0].buffer[:, :3].view(np.float32), expected.numpy() * 1000, atol=1e-3)

    viewer._record(mode="tracked", sequence=seq, frame=0)
    viewer._set_playing(True)
    viewer.wait_applied(lambda a: a.state.key() == ("tracked", seq, 1), timeout=10)  # it plays on
    viewer._set_playing(False)


def test_eye_closure_sliders_close_the_pads_eyes(viewer, tmp_path):
    run = viewer.runs[0]
    assert run.avatar.eye_closure_dim == 2  # the tiny capture has label maps: the avatar takes a closure
    viewer._record(mode="interpolate")
    viewer._record_closure(0, 1.0)
    viewer._record_closure(1, 0.5)
    applied = viewer.wait_applied(lambda a: a.state.mode == "interpolate" and a.state.closure == (1.0, 0.5))
    assert "eyes closed 1.00/0.50" in applied.label
    frame = {"z_exp": torch.as_tensor(applied.z_exp), **viewer.source.pose(applied.state, 0)}
    closed = viewer.call(lambda: run.gaussians({**frame, "eye_closure": torch.tensor([1.0, 0.5])}))
    opened = viewer.call(lambda: run.gaussians({**frame, "eye_closure": None}))
    shown = viewer._world[0]
    for key in ("means", "opacities", "colors"):
        assert torch.allclose(shown[key], closed[key], atol=1e-6), key
    assert any(not torch.allclose(closed[k], opened[k], atol=1e-6) for k in ("means", "opacities", "colors"))
    # "Save expression" keeps the closure: npga render --expressions reads it back
    path = viewer.call(lambda: viewer._save_expression(None, applied.state))
    from npga_taichi.prior.tracking import load_tracking

    assert np.allclose(load_tracking(path).eye_closure, [[1.0, 0.5]])
    viewer._record_closure(0, 0.0)
    viewer._record_closure(1, 0.0)
    viewer.wait_applied(lambda a: a.state.closure == (0.0, 0.0))


def test_part_motion_sliders_raise_the_pads_brows(viewer):
    from npga_taichi.part_motion import BROW_CENTRES, PART_MOTION_NAMES

    run = viewer.runs[0]
    assert run.avatar.part_motion_dim == len(PART_MOTION_NAMES)  # the tiny capture's label maps
    viewer._record(mode="interpolate")
    viewer._record_part_motion("brow_left_up", 8.0)
    applied = viewer.wait_applied(lambda a: a.state.mode == "interpolate" and a.state.part_motion[1] > 0)
    assert applied.state.part_motion[1] == pytest.approx(8.0 / 250) and "brow_left_up +8.0 mm" in applied.label
    frame = {"z_exp": torch.as_tensor(applied.z_exp), **viewer.source.pose(applied.state, 0),
             "eye_closure": viewer.source.eye_closure(applied.state)}
    rest = viewer.call(lambda: run.gaussians({**frame, "part_motion": None}))
    shown = viewer._world[0]
    # the Gaussians at the left brow rose by about the 8 mm asked (world y is the head's up in the
    # tiny capture's poses, to within its few degrees; G, which reads the motion too, adds little),
    # those far from every part stayed
    canon = run.avatar.gaussians.means.detach()
    near = (canon - torch.tensor(BROW_CENTRES[0])).norm(dim=1) < 0.03
    far = (canon - torch.tensor(BROW_CENTRES[0])).norm(dim=1) > 0.4
    rise = (shown["means"] - rest["means"])[:, 1]
    assert near.any() and far.any()
    assert 0.005 < float(rise[near].mean()) < 0.011 and float(rise[far].abs().max()) < 0.001
    viewer._record_part_motion("brow_left_up", 0.0)
    viewer.wait_applied(lambda a: a.state.part_motion[1] == 0.0)


# ----------------------------------------------------------------------------- the command

def test_view_binds_loopback_by_default(viewer):
    from npga_taichi.cli.view import command

    assert viewer.server.get_host() == "127.0.0.1"
    assert {p.name: p.default for p in command.params}["host"] == "127.0.0.1"
    port = viewer.server.get_port()
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    try:  # this machine's other addresses must not answer
        others = {ai[4][0] for ai in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    except OSError:
        others = set()
    for address in sorted(a for a in others if not a.startswith("127.")):
        with pytest.raises(OSError):
            socket.create_connection((address, port), timeout=2).close()


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# "ignored": started by a parent that ignores SIGINT (a background job of a non-interactive shell);
# Python keeps an inherited SIG_IGN, so without its own handler the viewer would never stop.
@pytest.mark.parametrize("inherited_sigint", ["default", "ignored"])
def test_view_command_errors_help_and_ctrl_c(run_dir, tmp_path, inherited_sigint):
    result = CliRunner().invoke(cli, ["view", "--help"])
    assert result.exit_code == 0 and "127.0.0.1" in result.output and "--port" in result.output
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    result = CliRunner().invoke(cli, ["view", str(not_a_run)])
    assert result.exit_code == 1 and "not a run directory" in result.output, result.output

    proc = subprocess.Popen([sys.executable, "-m", "npga_taichi.cli.main", "view", str(run_dir), "--port", "0",
                             "--out", str(tmp_path / "o")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=_ignore_sigint if inherited_sigint == "ignored" else None)
    import queue
    import threading

    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
    reader.start()
    try:
        url, seen = None, []
        end = time.monotonic() + 120
        while url is None:  # a hung process fails the test instead of blocking it
            assert time.monotonic() < end and proc.poll() is None, "no URL printed:\n" + "".join(seen)
            try:
                seen.append(lines.get(timeout=1.0))
            except queue.Empty:
                continue
            if seen[-1].startswith("open http://127.0.0.1:"):
                url = seen[-1].split()[1]
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)  # exiting writes the Taichi offline cache: slow on a busy machine
        except subprocess.TimeoutExpired:
            pytest.fail("npga view did not stop within 120 s of Ctrl-C; it printed:\n"
                        + "".join(seen) + "".join(lines.get() for _ in range(lines.qsize())))
        reader.join(timeout=10)  # everything it printed, up to end of file
        out = "".join(seen) + "".join(lines.get() for _ in range(lines.qsize()))
        assert proc.returncode == 0, out
        assert "stopped" in out and "Traceback" not in out
    finally:
        if proc.poll() is None:
            proc.kill()
