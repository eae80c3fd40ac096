"""Metrics checked against independent implementations (scikit-image, numpy formulas)."""
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from npga_taichi import metrics


def _pair(seed, h=37, w=29, c=3):
    rng = np.random.default_rng(seed)
    a = rng.random((h, w, c))
    b = np.clip(a + 0.1 * rng.standard_normal((h, w, c)), 0, 1)
    return a, b


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ssim_matches_scikit_image(dtype):
    a, b = _pair(0)
    ref = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                data_range=1.0, channel_axis=-1)
    ours = metrics.ssim(torch.tensor(a, dtype=dtype), torch.tensor(b, dtype=dtype))
    assert ours.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert abs(float(ours) - ref) < tol


def test_ssim_batched_layout_equals_hwc_and_identity_is_one():
    a, b = _pair(1)
    hwc = metrics.ssim(torch.tensor(a), torch.tensor(b))
    bchw = metrics.ssim(torch.tensor(a).permute(2, 0, 1)[None], torch.tensor(b).permute(2, 0, 1)[None])
    assert torch.allclose(hwc, bchw)
    assert abs(float(metrics.ssim(torch.tensor(a), torch.tensor(a))) - 1.0) < 1e-12
    assert float(metrics.dssim_loss(torch.tensor(a), torch.tensor(a))) == pytest.approx(0.0, abs=1e-12)


def test_ssim_gradient_matches_finite_differences():
    a, b = _pair(2, 16, 16, 3)
    x = torch.tensor(a, requires_grad=True)
    target = torch.tensor(b)
    (grad,) = torch.autograd.grad(metrics.ssim(x, target), x)
    rng = np.random.default_rng(5)
    for _ in range(3):  # directional derivatives along random directions, central differences
        d = torch.tensor(rng.standard_normal(a.shape))
        eps = 1e-6
        fd = (metrics.ssim(x.detach() + eps * d, target) - metrics.ssim(x.detach() - eps * d, target)) / (2 * eps)
        assert float((grad * d).sum()) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)


def test_psnr_and_masked_psnr():
    a, b = _pair(3)
    ref = peak_signal_noise_ratio(a, b, data_range=1.0)
    assert float(metrics.psnr(torch.tensor(a), torch.tensor(b))) == pytest.approx(ref, rel=1e-10)
    mask = np.zeros(a.shape[:2] + (1,))
    mask[5:20, 3:17] = 1
    sel = mask[..., 0] > 0
    ref_masked = peak_signal_noise_ratio(a[sel], b[sel], data_range=1.0)
    ours = metrics.masked_psnr(torch.tensor(a), torch.tensor(b), torch.tensor(mask))
    assert float(ours) == pytest.approx(ref_masked, rel=1e-10)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.ssim(torch.zeros(20, 20, 3), torch.zeros(20, 21, 3))
    with pytest.raises(ValueError, match="at least 11"):
        metrics.ssim(torch.zeros(8, 20, 3), torch.zeros(8, 20, 3))
    with pytest.raises(ValueError, match="mask is empty"):
        metrics.masked_psnr(torch.zeros(4, 4, 3), torch.ones(4, 4, 3), torch.zeros(4, 4, 1))
