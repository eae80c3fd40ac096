"""Optional screen-space CNN: turns a rendered feature image into RGB.

With ``use_cnn`` the Gaussians carry C feature channels instead of SH colour, rendered over a
*zero* background. The first three channels hold colour relative to the training background,
so ``background + features[:3]`` is exactly alpha compositing of RGB over the background; the
CNN adds a residual computed from all channels. Its last convolution starts at zero, so an
untrained CNN shows that composited base colour (training starts from a meaningful image).

Input/output follow torch's convention: (B, C, H, W) -> (B, 3, H, W).
"""
from __future__ import annotations

import torch
from torch import nn


class ScreenCNN(nn.Module):
    """features (B, C, H, W) rendered over zero -> RGB (B, 3, H, W)."""

    def __init__(self, in_channels: int, hidden: int = 32, layers: int = 3,
                 background: tuple[float, float, float] = (1.0, 1.0, 1.0)):
        super().__init__()
        if in_channels < 3:
            raise ValueError(f"the CNN needs >= 3 feature channels (first 3 = base colour), got {in_channels}")
        convs: list[nn.Module] = []
        ch = in_channels
        for _ in range(max(layers - 1, 0)):
            convs += [nn.Conv2d(ch, hidden, 3, padding=1), nn.SiLU()]
            ch = hidden
        last = nn.Conv2d(ch, 3, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        convs.append(last)
        self.net = nn.Sequential(*convs)
        self.register_buffer("background", torch.tensor(background, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 4:
            raise ValueError(f"ScreenCNN takes (B, C, H, W) features, got {tuple(features.shape)}")
        base = self.background.to(features.dtype) + features[:, :3]
        return base + self.net(features)
