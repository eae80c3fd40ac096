"""Label maps, the blink-safe sphere tracer and region / expression fidelity (issue 18).

Independent references: the generator's own per-point label query (the non-bounded SDF path,
not the tracer's), finite-difference Jacobians of the analytic backward field, hand-computed
PSNR, and the capture's stored images (a re-render must reproduce them bit for bit).
"""
import json
import math

import numpy as np
import pytest
import torch

from npga_taichi import evaluation, fidelity
from npga_taichi.cameras import Camera, look_at
from npga_taichi.data import synthetic as syn
from npga_taichi.data.head_render import render_head
from npga_taichi.evaluation import EvalItem

from heads import E, expression, front_camera

L = {n: i for i, n in enumerate(syn.LABEL_NAMES)}


@pytest.fixture(scope="module")
def head():
    return syn.SyntheticHead.from_seed(1234)




def _eye_crop_camera(head, zoom_px_per_unit, width, height, centre_offset=(0.0, 0.0, 0.0)):
    """A camera looking straight at the subject's left eye, its image centred on the eye."""
    ce = np.array([0.112 * (1.0 + 0.07 * head.identity[6]), 0.045, 0.30]) + np.asarray(centre_offset)
    target = ce * syn.UNIT_METRES
    eye = target + np.array([0.0, 0.0, 1.0])
    f = zoom_px_per_unit / syn.UNIT_METRES  # pixels per metre at 1 m
    return Camera("eye", look_at(eye, target), [[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], width, height)


def test_label_maps_agree_with_the_generator(head):
    cam = front_camera(96, 144)
    counts = []
    for e in (expression(), expression(jaw_open=1.0, blink_left=1.0)):
        rgba, hits, labels = render_head(head, e, cam.viewmat[None], cam.K[None], cam.width, cam.height)
        lab, alpha, hit = labels[0].numpy(), rgba[0, ..., 3].numpy(), hits[0].numpy()
        assert lab.dtype == np.int32 and lab.min() >= 0 and lab.max() < syn.NUM_LABELS
        assert (lab[alpha == 0] == 0).all() and (lab[alpha == 1] != 0).all()  # majority of 4 samples
        # the label of the first sample's hit, asked of the generator's own (unbounded) query
        ok = np.isfinite(hit[..., 0]) & (alpha == 1)
        x_world = torch.from_numpy(hit[ok][:, :3])
        x_canon = head.backward(x_world / syn.UNIT_METRES, e)  # identity pose: world = s * posed
        truth = head.surface_label(x_canon).numpy()
        assert (truth == lab[ok]).mean() > 0.97
        counts.append(np.bincount(lab.ravel(), minlength=syn.NUM_LABELS))
    # what the parts show: skin dominates, eyes, lids, brows, lips and hair are there, and the
    # closed lid covers one eye
    neutral, moved = counts
    assert neutral[L["skin"]] == neutral[1:].max()
    for part in ("eyes", "eyelids", "brows", "lips", "hair"):
        assert neutral[L[part]] > 0, part
    assert moved[L["eyes"]] < 0.75 * neutral[L["eyes"]]


def test_surface_labels_of_known_points(head):
    ce = torch.tensor([[0.112 * (1.0 + 0.07 * float(head.identity[6])), 0.045, 0.30]])
    pupil = ce + torch.tensor([[0.0, 0.0, syn.EYEBALL_RADIUS]])  # the front of the eyeball
    lid = ce + torch.tensor([[0.0, 0.05, 0.03]]) * (syn.LID_RADIUS / math.hypot(0.05, 0.03))
    back = torch.tensor([[0.0, 0.1, -0.6]])
    labels = head.surface_label(torch.cat([pupil, lid, back])).tolist()
    assert labels[:2] == [L["eyes"], L["eyelids"]]
    assert labels[2] in (L["hair"], L["skin"])


def test_blink_lipschitz_bounds_the_backward_jacobian(head):
    """The tracer's step bound must hold: |d backward / dx| <= blink_lipschitz (finite differences)."""
    rng = np.random.default_rng(0)
    ce = np.array([0.112 * (1.0 + 0.07 * head.identity[6]), 0.045, 0.30])
    x = ce * np.array([1.0, 1.0, 1.0]) + rng.uniform(-0.075, 0.075, (20000, 3))
    x[::2, 0] *= -1.0  # both eyes
    x = torch.tensor(x, dtype=torch.float32)
    e = expression(blink_left=1.0, blink_right=0.6)
    h = 2e-5
    cols = []
    for k in range(3):
        d = torch.zeros(3)
        d[k] = h
        cols.append((head.backward(x + d, e).double() - head.backward(x - d, e).double()) / (2 * h))
    jac = torch.linalg.matrix_norm(torch.stack(cols, 2), ord=2)
    bound = head.blink_lipschitz(x, e, radius=2 * h).double()  # the difference taps span 2h
    assert jac.max() > 10.0  # the closed lids squeeze the slit: the field is far from 1-Lipschitz
    assert (jac <= bound * 1.01 + 1e-3).all()
    # no blink, or far from the eyes: 1
    assert (head.blink_lipschitz(x, expression(jaw_open=1.0), 0.01) == 1.0).all()
    far = torch.tensor([[0.0, -0.3, 0.3], [0.0, 0.3, 0.0]])
    assert (head.blink_lipschitz(far, e, 0.01) == 1.0).all()
    # a larger ball never gets a smaller bound
    assert (head.blink_lipschitz(x, e, 0.01) >= head.blink_lipschitz(x, e, 0.0)).all()


def test_closed_lids_have_no_holes(head):
    """Zoomed on a closed eye every ray must hit the head (the seam of the closed lids used to
    let rays step through the lid edge and show the backdrop)."""
    e = expression(blink_left=1.0)
    cam = _eye_crop_camera(head, 1500.0, 48, 40, centre_offset=(0.0, -0.012, 0.0))
    rgba, _, labels = render_head(head, e, cam.viewmat[None], cam.K[None], cam.width, cam.height)
    assert rgba[0, ..., 3].min() == 1.0
    lab = labels[0].numpy()
    assert (lab == L["eyelids"]).mean() > 0.3  # the closed lid fills most of the crop
    assert (lab == L["eyes"]).mean() < 0.1


# ------------------------------------------------------------------------- region metrics

def test_region_metrics_see_errors_whole_image_psnr_hides():
    rng = np.random.default_rng(1)
    h, w = 40, 48
    gt = torch.tensor(rng.uniform(0.2, 0.8, (h, w, 3)))
    labels = np.full((h, w), L["skin"], np.uint8)
    labels[10:14, 10:20] = L["eyes"]
    labels[30:34, 20:30] = L["lips"]
    pred = gt.clone()
    pred[10:14, 10:20] += 0.1  # wrong only inside the eyes
    weights = fidelity.region_weights(labels, (h, w))
    assert float(weights["eyes"].sum()) == 40 and float(weights["mouth"].sum()) == 40
    scores = fidelity.region_scores(pred, gt, weights)
    assert scores["eyes"]["psnr"] == pytest.approx(20.0)  # 10 log10(1 / 0.1^2)
    assert scores["mouth"]["psnr"] == math.inf
    assert evaluation.psnr_value(pred, gt) == pytest.approx(20.0 + 10 * math.log10(h * w / 40))
    assert scores["eyes"]["ssim"] < scores["mouth"]["ssim"] <= 1.0
    # area-resampled to half size: the weights keep the region's area fraction
    half = fidelity.region_weights(labels, (h // 2, w // 2))
    assert float(half["eyes"].sum()) == pytest.approx(10.0)


def test_expression_ratio_construction():
    off = torch.full((20, 20, 3), 0.5)
    on = off.clone()
    on[9, 9] = 0.1  # the feature changes one pixel ...
    region = fidelity.feature_region(on, off)
    assert region.sum() == 25 and region[7:12, 7:12].all()  # ... dilated by 2 px
    assert fidelity.expression_ratio(on, on, off) == (0.0, 25)       # shows the feature
    assert fidelity.expression_ratio(off, on, off) == (math.inf, 25)  # ignores it
    half = (on + off) / 2
    assert fidelity.expression_ratio(half, on, off)[0] == pytest.approx(1.0)
    assert math.isnan(fidelity.expression_ratio(off, off, off)[0])  # not visible in this view
    assert fidelity.summarise_ratios([(0.5, 4), (2.0, 8), (math.nan, 0), (1.0, 6)])["median_ratio"] == 1.0


def test_core_ratio_keeps_only_what_the_feature_changes_strongly():
    off = torch.full((20, 20, 3), 0.5)
    on = off.clone()
    on[4:16, 4:16] += 0.02       # faint shading around ...
    on[9, 9] = 0.1               # ... a strong change in one pixel (the lid covers the eye)
    avatar = on.clone()
    avatar[4:16, 4:16] += 0.05   # ordinary error in the surroundings ...
    avatar[9, 9] = 0.1           # ... and the blink exactly
    ratio, pixels = fidelity.expression_ratio(avatar, on, off)
    core, core_pixels = fidelity.core_ratio(avatar, on, off)
    assert pixels > 144 and core_pixels == 1
    assert core == 0.0 and ratio > 0.5  # the surroundings' error swamps the dilated ratio, not the core
    assert fidelity.core_ratio(off, on, off) == (math.inf, 1)


def test_evaluate_reports_regions_and_fidelity_or_says_why_not(tmp_path):
    rng = np.random.default_rng(2)
    gt = torch.tensor(rng.uniform(0.2, 0.8, (24, 24, 3)), dtype=torch.float32)
    alpha = torch.ones(24, 24, 1)
    labels = np.full((24, 24), L["skin"], np.uint8)
    labels[8:12, 8:16] = L["eyelids"]
    closed = gt.clone()
    closed[8:12, 8:16] = 0.7
    truths = {"blink": (closed, gt)}  # the truth blinks; "off" = open eyes
    never_blinks = EvalItem("FREE", 0, "c", gt, closed, alpha, labels=labels, truths=truths)
    result = evaluation.evaluate([never_blinks], use_lpips=False, progress=False, background=(0, 0, 0))
    s = result.summary()
    assert s["regions"]["eyes"]["num_images"] == 1 and s["regions"]["eyes"]["psnr"] < s["psnr"]
    assert s["regions"]["mouth"]["num_images"] == 0 and s["regions"]["mouth"]["psnr"] is None
    assert s["fidelity"]["blink"]["median_ratio"] == math.inf
    assert s["fidelity"]["blink"]["core_median_ratio"] == math.inf  # 0.7 vs gt: a strong change everywhere
    assert s["fidelity"]["jaw"]["num_images"] == 0
    evaluation.write_csv(result, tmp_path / "m.csv")
    row = evaluation.read_csv(tmp_path / "m.csv")[0]
    assert row["ratio_blink"] == math.inf and math.isnan(row["psnr_mouth"]) and row["psnr_eyes"] < row["psnr"]
    assert row["ratio_jaw"] is None  # not active in this frame: an empty cell
    assert row["core_ratio_blink"] == math.inf and row["core_ratio_jaw"] is None
    assert "eyes" in evaluation.format_table(s) and "blink" in evaluation.format_table(s)
    crops = evaluation.write_feature_crops(result, tmp_path / "expressions.png")  # truth | avatar | off
    import imageio.v3 as iio

    sheet = iio.imread(crops)
    assert sheet.shape[1] % 3 == 0 and sheet.shape[0] >= 60
    third = sheet.shape[1] // 3
    assert (sheet[:-2, :third] != sheet[:-2, third:2 * third]).any()  # the avatar differs from the truth
    assert (sheet[:-2, third:2 * third] == sheet[:-2, 2 * third:]).all()  # it shows the open eyes
    real = evaluation.evaluate([EvalItem("FREE", 0, "c", gt, closed, alpha)], use_lpips=False, progress=False)
    s = real.summary()
    assert s["regions"] is None and "whole-image metrics only" in s["regions_note"]
    assert s["fidelity"] is None and "synthetic" in s["fidelity_note"]
    assert "whole-image metrics only" in evaluation.format_table(s)


# ------------------------------------------------------------------ the capture and its truth

@pytest.fixture(scope="module")
def blink_capture(tmp_path_factory):
    from npga_taichi.data.capture import CaptureConfig, write_capture

    out = tmp_path_factory.mktemp("blinkcap")
    config = CaptureConfig.preset("tiny", identity_seed=5, participant=5, sequences=("EXP-4",),
                                  frames_per_sequence=3, samples_per_side=1)
    write_capture(out, config, progress=False)
    return out / "005"


def test_capture_writes_label_maps_and_the_truth_rerenders_it(blink_capture):
    from npga_taichi.data.nersemble import NersembleCapture

    cap = NersembleCapture(blink_capture)
    plan = json.loads((blink_capture / "groundtruth" / "groundtruth.json").read_text())
    assert plan["label_names"] == list(syn.LABEL_NAMES)
    truth = fidelity.SyntheticTruth.find(blink_capture)
    expr = np.asarray(plan["sequences"]["EXP-4"]["expression"])
    serial = "222200037"
    for t in cap.timesteps("EXP-4"):
        labels = fidelity.load_labels(fidelity.label_path(cap.frame_dir("EXP-4", t), serial))
        assert labels.shape == (cap.height, cap.width)
        image = cap.load_image("EXP-4", t, serial)
        alpha = np.asarray(cap.load_alpha("EXP-4", t, serial)).reshape(labels.shape)
        assert ((labels == 0) == (alpha == 0)).all()  # 1 sample per pixel: background iff missed
        rgb, a = truth.render("EXP-4", t, cap.cameras[serial], truth.expression("EXP-4", t))
        stored = torch.from_numpy(np.asarray(image, np.float32))
        # the writer's frame exactly (up to 8-bit rounding): same pose, camera, sample jitter
        assert (rgb - stored).abs().max() <= 0.5 / 255 + 1e-6
        # another sample seed: other jitter at the edges (the renderer's own noise), the same head
        other, _ = truth.render("EXP-4", t, cap.cameras[serial], truth.expression("EXP-4", t), seed=t + 1000)
        assert (other - rgb).abs().amax(-1).gt(0.05).sum() > 10
        assert (other - rgb).abs().mean() < 0.02
        active = truth.active_features("EXP-4", t)
        assert ("blink" in active) == (expr[t, [E["blink_left"], E["blink_right"]]].max() > fidelity.ACTIVE)
    assert truth.without(expr[1].astype(np.float32), "blink")[[E["blink_left"], E["blink_right"]]].tolist() == [0, 0]
    assert fidelity.SyntheticTruth.find(blink_capture / "calibration") is None  # not a capture: None


def test_load_labels_errors_name_the_file(tmp_path):
    import imageio.v3 as iio

    with pytest.raises(FileNotFoundError, match="nope.png"):
        fidelity.load_labels(tmp_path / "nope.png")
    iio.imwrite(tmp_path / "rgb.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="rgb.png"):
        fidelity.load_labels(tmp_path / "rgb.png")
    (tmp_path / "junk.png").write_text("not a png")
    with pytest.raises(ValueError, match="junk.png"):
        fidelity.load_labels(tmp_path / "junk.png")
