"""Image metrics and losses: PSNR, alpha-masked PSNR, SSIM (Gaussian window) and D-SSIM.

Conventions: images hold values in [0, 1] (``data_range`` = 1 by default) and come either as
``(H, W, C)`` or batched ``(B, C, H, W)``. Everything is plain torch, differentiable, and works
in float32 and float64.

SSIM follows Wang et al. 2004 with an 11-tap Gaussian window (sigma 1.5, K1 = 0.01,
K2 = 0.03) evaluated only where the window fits inside the image ("valid" convolution), then
averaged over positions and channels. This is exactly scikit-image's
``structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=1)``, which filters with reflection and then crops the 5-pixel border.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SSIM_SIGMA = 1.5      # Gaussian window standard deviation (pixels)
SSIM_RADIUS = 5       # int(3.5 * sigma + 0.5): scikit-image's truncate=3.5 window radius
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _to_bchw(img: torch.Tensor, name: str) -> torch.Tensor:
    """(H, W, C) -> (1, C, H, W); (B, C, H, W) unchanged; anything else is a ValueError."""
    if img.dim() == 3:
        return img.permute(2, 0, 1).unsqueeze(0)
    if img.dim() == 4:
        return img
    raise ValueError(f"{name} must be (H, W, C) or (B, C, H, W), got shape {tuple(img.shape)}")


def _check_pair(img1: torch.Tensor, img2: torch.Tensor) -> None:
    if img1.shape != img2.shape:
        raise ValueError(f"images differ in shape: {tuple(img1.shape)} vs {tuple(img2.shape)}")


def mse(img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements."""
    _check_pair(img1, img2)
    return ((img1 - img2) ** 2).mean()


def psnr(img1: torch.Tensor, img2: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB over the whole image: 10 log10(range^2 / MSE)."""
    err = mse(img1, img2).clamp_min(1e-20)
    return 10.0 * torch.log10(torch.as_tensor(data_range ** 2, dtype=err.dtype) / err)


def masked_mse(img1: torch.Tensor, img2: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mask-weighted MSE: sum(mask * err^2) / (sum(mask) * C).

    img1, img2: (H, W, C); mask: (H, W, 1) or (H, W) with weights in [0, 1] (an alpha matte).
    Pixels outside the mask do not count at all, so the background cannot inflate the score.
    """
    _check_pair(img1, img2)
    if img1.dim() != 3:
        raise ValueError(f"masked metrics take (H, W, C) images, got shape {tuple(img1.shape)}")
    if mask.dim() == 2:
        mask = mask.unsqueeze(-1)
    if mask.shape[:2] != img1.shape[:2] or mask.shape[-1] != 1:
        raise ValueError(f"mask must be (H, W, 1) matching the image, got {tuple(mask.shape)}")
    weight = mask.to(img1.dtype)
    denom = weight.sum() * img1.shape[-1]
    if float(denom) <= 0:
        raise ValueError("mask is empty: no pixel to evaluate")
    return (weight * (img1 - img2) ** 2).sum() / denom


def masked_psnr(img1: torch.Tensor, img2: torch.Tensor, mask: torch.Tensor,
                data_range: float = 1.0) -> torch.Tensor:
    """PSNR over the pixels inside ``mask`` (alpha-masked PSNR); see :func:`masked_mse`."""
    err = masked_mse(img1, img2, mask).clamp_min(1e-20)
    return 10.0 * torch.log10(torch.as_tensor(data_range ** 2, dtype=err.dtype) / err)


def gaussian_window(dtype: torch.dtype, device: torch.device | str,
                    sigma: float = SSIM_SIGMA, radius: int = SSIM_RADIUS) -> torch.Tensor:
    """Normalised 1D Gaussian taps, shape (2 * radius + 1,)."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-(x ** 2) / (2.0 * sigma ** 2))
    return (taps / taps.sum()).to(device=device, dtype=dtype)


def _blur(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filter of (B, C, H, W), each channel on its own."""
    c = x.shape[1]
    k = taps.numel()
    wx = taps.view(1, 1, 1, k).expand(c, 1, 1, k)
    wy = taps.view(1, 1, k, 1).expand(c, 1, k, 1)
    return F.conv2d(F.conv2d(x, wx, groups=c), wy, groups=c)


def ssim_map(img1: torch.Tensor, img2: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-pixel SSIM, (B, C, H - 10, W - 10), for inputs as in :func:`ssim`."""
    _check_pair(img1, img2)
    x, y = _to_bchw(img1, "img1"), _to_bchw(img2, "img2")
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"ssim needs float32 or float64 images, got {x.dtype}")
    if min(x.shape[-2:]) < 2 * SSIM_RADIUS + 1:
        raise ValueError(f"ssim needs images of at least {2 * SSIM_RADIUS + 1} pixels per side, "
                         f"got {tuple(x.shape[-2:])}")
    taps = gaussian_window(x.dtype, x.device)
    c = x.shape[1]
    # One grouped blur over all five moments (far cheaper on the CPU than five separate calls).
    moments = _blur(torch.cat([x, y, x * x, y * y, x * y], dim=1), taps)
    mu_x, mu_y, exx, eyy, exy = moments.split(c, dim=1)
    sxx = exx - mu_x * mu_x
    syy = eyy - mu_y * mu_y
    sxy = exy - mu_x * mu_y
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (sxx + syy + c2)
    return num / den


def ssim(img1: torch.Tensor, img2: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM (scalar tensor) of two images, (H, W, C) or (B, C, H, W), values in [0, range]."""
    return ssim_map(img1, img2, data_range).mean()


def dssim_loss(img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
    """Structural dissimilarity loss 1 - SSIM (0 for identical images), as in 3DGS."""
    return 1.0 - ssim(img1, img2)


def l1_loss(img1: torch.Tensor, img2: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error; with a (H, W, 1) ``mask`` the mean runs over masked pixels only."""
    _check_pair(img1, img2)
    if mask is None:
        return (img1 - img2).abs().mean()
    weight = mask.to(img1.dtype)
    return (weight * (img1 - img2).abs()).sum() / (weight.sum() * img1.shape[-1]).clamp_min(1e-12)


def psnr_from_mse(value: float, data_range: float = 1.0) -> float:
    """Plain-float PSNR for logging."""
    return 10.0 * math.log10(data_range ** 2 / max(value, 1e-20))


def psnr_report(value: float, data_range: float = 1.0) -> float:
    """PSNR of an MSE for reports (``npga eval``): exactly ``inf`` for identical images, where
    :func:`psnr_from_mse` (training logs) clamps the error at 1e-20."""
    return math.inf if value == 0.0 else psnr_from_mse(value, data_range)
