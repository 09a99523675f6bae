"""Small building blocks shared by the U-Net family.

Each block has one job and takes its normalisation and activation as arguments
(the timm convention), so a variant can swap BatchNorm for GroupNorm without a new class.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

NormFactory = Callable[[int], nn.Module]
ActFactory = Callable[[], nn.Module]


def default_norm(channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels)


def default_act() -> nn.Module:
    return nn.ReLU(inplace=True)


class ConvNormAct(nn.Sequential):
    """Convolution (no bias: the norm has one), normalisation, activation."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        *,
        groups: int = 1,
        norm: NormFactory = default_norm,
        act: ActFactory | None = default_act,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, groups=groups, bias=False),
            norm(out_ch),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class DoubleConv(nn.Sequential):
    """Two 3x3 ConvNormAct: the U-Net stage (Ronneberger et al., 2015)."""

    def __init__(self, in_ch: int, out_ch: int, *, norm: NormFactory = default_norm, act: ActFactory = default_act):
        super().__init__(
            ConvNormAct(in_ch, out_ch, 3, norm=norm, act=act),
            ConvNormAct(out_ch, out_ch, 3, norm=norm, act=act),
        )


class UpBlock(nn.Module):
    """U-Net decoder block: upsample x2 (bilinear), join the skip, two convolutions."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, *, norm: NormFactory = default_norm,
                 act: ActFactory = default_act) -> None:
        super().__init__()
        self.conv = DoubleConv(in_ch + skip_ch, out_ch, norm=norm, act=act)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], dim=1))


class SpatialGate(nn.Module):
    """Mean and max over channels, one convolution: a one-channel logit map (the spatial
    attention of CBAM, used by DNANet with a 7x7 kernel and UIU-Net with 3x3)."""

    def __init__(self, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1))


def check_input(model: nn.Module, x: torch.Tensor) -> None:
    """Raise a ValueError that says what would work if ``model`` cannot take ``x``.

    Uses the model's ``in_channels`` and ``size_multiple`` (2 ** number of poolings).
    """
    name = type(model).__name__
    if x.ndim != 4:
        raise ValueError(f"{name}: expected a 4-D batch (B, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != model.in_channels:
        raise ValueError(f"{name}: model takes {model.in_channels} input channel(s), got {x.shape[1]} "
                         f"(shape {tuple(x.shape)})")
    h, w = x.shape[-2:]
    m = model.size_multiple
    if h % m or w % m:
        raise ValueError(f"{name}: height and width must be multiples of {m}; got {h}x{w}. "
                         f"Pad to {-(-h // m) * m}x{-(-w // m) * m} (sgem.models.pad_to_multiple) or crop.")
