"""ACM: asymmetric contextual modulation (Dai et al., WACV 2021), ref. [1] of the paper.

A small residual U-Net (stem at 1/4 resolution, three residual stages, two
transposed-convolution decoder steps) whose skip fusions are asymmetric bi-directional
modulations: the deep feature is summarised by global pooling (top-down channel
attention) and the shallow one by point-wise convolutions (bottom-up attention), each
re-weighting the other: ``2 * x_low * w_top + 2 * x_high * w_bottom``.

Configurations:

* ``acm`` (registered): layers [3, 3, 3], widths [8, 16, 32, 64], the configuration of
  BasicIRSTD's ResUNet ACM (reference: 0.402 G MACs, 0.398 M params at 3x256x256; see
  ``docs/baselines.md`` for the transposed-convolution counting difference).
* The paper's ACM row (1.31 G, 1.54 M) is a larger configuration not identified yet.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import check_input


class ResidualBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False), nn.BatchNorm2d(out_ch))
        self.down = (nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
                     if stride != 1 or in_ch != out_ch else nn.Identity())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.down(x))


def _stage(in_ch: int, out_ch: int, blocks: int, stride: int) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(in_ch, out_ch, stride), *[ResidualBlock(out_ch, out_ch) for _ in range(blocks - 1)])


def stem(in_channels: int, width: int) -> nn.Sequential:
    """The ACM family's stem: input BN, three 3x3 convs (the first strided), 3x3 max-pool:
    1/4 resolution, 2 x width channels."""
    return nn.Sequential(
        nn.BatchNorm2d(in_channels),
        nn.Conv2d(in_channels, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        nn.Conv2d(width, 2 * width, 3, 1, 1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1))


def encoder(layers: Sequence[int], widths: Sequence[int]) -> tuple[nn.Sequential, nn.Sequential, nn.Sequential]:
    """The three residual stages after the stem (strides 1, 2, 2)."""
    c = list(widths)
    return _stage(c[1], c[1], layers[0], 1), _stage(c[1], c[2], layers[1], 2), _stage(c[2], c[3], layers[2], 2)


class AsymBiChaFuse(nn.Module):
    """Asymmetric bi-directional channel fusion of a deep (high) and shallow (low) feature."""

    def __init__(self, channels: int, r: int = 4) -> None:
        super().__init__()
        inter = max(1, channels // r)
        self.topdown = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, inter, 1), nn.BatchNorm2d(inter), nn.ReLU(inplace=True),
            nn.Conv2d(inter, channels, 1), nn.BatchNorm2d(channels), nn.Sigmoid())
        self.bottomup = nn.Sequential(
            nn.Conv2d(channels, inter, 1), nn.BatchNorm2d(inter), nn.ReLU(inplace=True),
            nn.Conv2d(inter, channels, 1), nn.BatchNorm2d(channels), nn.Sigmoid())
        self.post = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.BatchNorm2d(channels), nn.ReLU(inplace=True))

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        return self.post(2 * low * self.topdown(high) + 2 * high * self.bottomup(low))


class FCNHead(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        inter = in_ch // 4
        super().__init__(nn.Conv2d(in_ch, inter, 3, 1, 1, bias=False), nn.BatchNorm2d(inter), nn.ReLU(inplace=True),
                         nn.Dropout(0.1), nn.Conv2d(inter, out_ch, 1))


class ResidualBackbone(nn.Module):
    """The ACM family's encoder (ACM, ALCNet, ISNet): :func:`stem` then three residual
    stages at 1/4, 1/8 and 1/16 of the input. Subclasses add their decoders."""

    def __init__(self, in_channels: int, layers: Sequence[int], widths: Sequence[int]) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.size_multiple = 16
        self.stem = stem(in_channels, widths[0])
        self.layer1, self.layer2, self.layer3 = encoder(layers, widths)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        check_input(self, x)
        c1 = self.layer1(self.stem(x))
        c2 = self.layer2(c1)
        return c1, c2, self.layer3(c2)


class ACMNet(ResidualBackbone):
    """ASKC residual U-Net (see module docstring)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 1, layers: Sequence[int] = (4, 4, 4),
                 widths: Sequence[int] = (8, 16, 32, 64), r: int = 4) -> None:
        super().__init__(in_channels, layers, widths)
        c = list(widths)
        self.deconv2 = nn.ConvTranspose2d(c[3], c[2], 4, 2, 1)
        self.fuse2 = AsymBiChaFuse(c[2], r)
        self.uplayer2 = _stage(c[2], c[2], layers[1], 1)
        self.deconv1 = nn.ConvTranspose2d(c[2], c[1], 4, 2, 1)
        self.fuse1 = AsymBiChaFuse(c[1], r)
        self.uplayer1 = _stage(c[1], c[1], layers[0], 1)
        self.head = FCNHead(c[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        c1, c2, c3 = self.encode(x)
        up2 = self.uplayer2(self.fuse2(self.deconv2(c3), c2))
        up1 = self.uplayer1(self.fuse1(self.deconv1(up2), c1))
        return F.interpolate(self.head(up1), size=(h, w), mode="bilinear", align_corners=False)
