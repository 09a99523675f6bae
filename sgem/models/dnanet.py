"""DNANet: dense nested attention network (Li et al., IEEE TIP 2023), ref. [2] of the paper.

A UNet++-style dense nested encoder-decoder in which every node is a residual block
with channel and spatial attention (CBAM), every node also receives the down-sampled
output of the node above it (the "dense nested interactive module"), and a final
"feature pyramid fusion" joins the deepest nodes of each level. With deep supervision
the network returns four logit maps (nodes 0,1 / 0,2 / 0,3 and the fused output); the
last is the prediction.

Configuration used by IRSTD toolboxes for NUDT-SIRST: ResNet-18-style blocks with
[2, 2, 2, 2] blocks per level, widths [16, 32, 64, 128, 256], 3 input channels in the
reference count (14.28 G MACs, 4.697 M params at 256x256).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import SpatialGate, check_input


class ChannelAttention(nn.Module):
    def __init__(self, channels: int, ratio: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // ratio)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.fc2(self.relu(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        mx = self.fc2(self.relu(self.fc1(F.adaptive_max_pool2d(x, 1))))
        return torch.sigmoid(avg + mx)


class SpatialAttention(SpatialGate):
    """CBAM's spatial attention: the gate's logits through a sigmoid (7x7 kernel)."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(super().forward(x))


class ResCBAMBlock(nn.Module):
    """Basic residual block (two 3x3 conv-BN) with channel then spatial attention."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (nn.Sequential(nn.Conv2d(in_ch, out_ch, 1), nn.BatchNorm2d(out_ch))
                         if in_ch != out_ch else nn.Identity())
        self.ca = ChannelAttention(out_ch)
        self.sa = SpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.ca(out) * out
        out = self.sa(out) * out
        return self.relu(out + residual)


def _layer(in_ch: int, out_ch: int, blocks: int = 1) -> nn.Sequential:
    return nn.Sequential(ResCBAMBlock(in_ch, out_ch), *[ResCBAMBlock(out_ch, out_ch) for _ in range(blocks - 1)])


def _up(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=True)


def _down(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=True)


class DNANet(nn.Module):
    """Dense nested attention network (see module docstring)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 1, widths: Sequence[int] = (16, 32, 64, 128, 256),
                 blocks: Sequence[int] = (2, 2, 2, 2), deep_supervision: bool = True) -> None:
        super().__init__()
        f, b = list(widths), list(blocks)
        self.in_channels = in_channels
        self.size_multiple = 16
        self.deep_supervision = deep_supervision
        self.conv0_0 = _layer(in_channels, f[0])
        self.conv1_0 = _layer(f[0], f[1], b[0])
        self.conv2_0 = _layer(f[1], f[2], b[1])
        self.conv3_0 = _layer(f[2], f[3], b[2])
        self.conv4_0 = _layer(f[3], f[4], b[3])

        self.conv0_1 = _layer(f[0] + f[1], f[0])
        self.conv1_1 = _layer(f[1] + f[2] + f[0], f[1], b[0])
        self.conv2_1 = _layer(f[2] + f[3] + f[1], f[2], b[1])
        self.conv3_1 = _layer(f[3] + f[4] + f[2], f[3], b[2])

        self.conv0_2 = _layer(f[0] * 2 + f[1], f[0])
        self.conv1_2 = _layer(f[1] * 2 + f[2] + f[0], f[1], b[0])
        self.conv2_2 = _layer(f[2] * 2 + f[3] + f[1], f[2], b[1])

        self.conv0_3 = _layer(f[0] * 3 + f[1], f[0])
        self.conv1_3 = _layer(f[1] * 3 + f[2] + f[0], f[1], b[0])

        self.conv0_4 = _layer(f[0] * 4 + f[1], f[0])
        self.conv0_4_final = _layer(f[0] * 5, f[0])

        self.conv0_4_1x1 = nn.Conv2d(f[4], f[0], 1)
        self.conv0_3_1x1 = nn.Conv2d(f[3], f[0], 1)
        self.conv0_2_1x1 = nn.Conv2d(f[2], f[0], 1)
        self.conv0_1_1x1 = nn.Conv2d(f[1], f[0], 1)

        n_heads = 4 if deep_supervision else 1
        self.heads = nn.ModuleList(nn.Conv2d(f[0], num_classes, 1) for _ in range(n_heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        check_input(self, x)
        pool = lambda t: F.max_pool2d(t, 2)  # noqa: E731
        x0_0 = self.conv0_0(x)
        x1_0 = self.conv1_0(pool(x0_0))
        x0_1 = self.conv0_1(torch.cat([x0_0, _up(x1_0, 2)], 1))
        x2_0 = self.conv2_0(pool(x1_0))
        x1_1 = self.conv1_1(torch.cat([x1_0, _up(x2_0, 2), _down(x0_1)], 1))
        x0_2 = self.conv0_2(torch.cat([x0_0, x0_1, _up(x1_1, 2)], 1))
        x3_0 = self.conv3_0(pool(x2_0))
        x2_1 = self.conv2_1(torch.cat([x2_0, _up(x3_0, 2), _down(x1_1)], 1))
        x1_2 = self.conv1_2(torch.cat([x1_0, x1_1, _up(x2_1, 2), _down(x0_2)], 1))
        x0_3 = self.conv0_3(torch.cat([x0_0, x0_1, x0_2, _up(x1_2, 2)], 1))
        x4_0 = self.conv4_0(pool(x3_0))
        x3_1 = self.conv3_1(torch.cat([x3_0, _up(x4_0, 2), _down(x2_1)], 1))
        x2_2 = self.conv2_2(torch.cat([x2_0, x2_1, _up(x3_1, 2), _down(x1_2)], 1))
        x1_3 = self.conv1_3(torch.cat([x1_0, x1_1, x1_2, _up(x2_2, 2), _down(x0_3)], 1))
        x0_4 = self.conv0_4(torch.cat([x0_0, x0_1, x0_2, x0_3, _up(x1_3, 2)], 1))
        fused = self.conv0_4_final(torch.cat([
            _up(self.conv0_4_1x1(x4_0), 16), _up(self.conv0_3_1x1(x3_1), 8),
            _up(self.conv0_2_1x1(x2_2), 4), _up(self.conv0_1_1x1(x1_3), 2), x0_4], 1))
        if not self.deep_supervision:
            return self.heads[0](fused)
        outs = [head(t) for head, t in zip(self.heads, (x0_1, x0_2, x0_3, fused))]
        return outs if self.training else outs[-1]
