"""UIU-Net: U-Net in U-Net (Wu, Hong & Chanussot, IEEE TIP 2023), ref. [5] of the paper.

A U^2-Net: every stage is itself a small U-Net (a residual U-block, RSU-L, with L - 2
poolings inside, or RSU-4F with dilations instead of poolings at the deepest stages).
Six encoder stages (widths 64, 128, 256, 512, 512, 512), five decoder stages; the skips
of decoder stages 2-5 go through an interactive cross-attention fusion (asymmetric:
the deep feature gives a channel attention, the shallow one a spatial attention, and
each re-weights the other). Six side outputs and their 1x1 fusion give seven logit maps
(deep supervision); the fused map is the prediction.

Configuration: the official one (in_ch 3 in the reference count: 54.50 G MACs,
50.54 M params at 256x256). Inputs must be multiples of 32 (five poolings).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import SpatialGate, check_input


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int, dilation: int = 1) -> None:
        super().__init__(nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation), nn.BatchNorm2d(out_ch),
                         nn.ReLU(inplace=True))


def _resize_like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return x if x.shape[-2:] == ref.shape[-2:] else F.interpolate(x, size=ref.shape[-2:], mode="bilinear",
                                                                  align_corners=False)


class RSU(nn.Module):
    """Residual U-block of depth L (RSU-L); ``dilated=True`` gives RSU-4F (no pooling,
    dilations 1, 2, 4 and 8 instead)."""

    def __init__(self, depth: int, in_ch: int, mid_ch: int, out_ch: int, dilated: bool = False) -> None:
        super().__init__()
        self.dilated = dilated
        n = depth - 1
        enc_dil = [2 ** i for i in range(n)] if dilated else [1] * n
        self.inp = ConvBNReLU(in_ch, out_ch)
        self.enc = nn.ModuleList(ConvBNReLU(out_ch if i == 0 else mid_ch, mid_ch, enc_dil[i]) for i in range(n))
        self.bottom = ConvBNReLU(mid_ch, mid_ch, 2 * enc_dil[-1])
        self.dec = nn.ModuleList(ConvBNReLU(2 * mid_ch, out_ch if i == n - 1 else mid_ch, enc_dil[n - 1 - i])
                                 for i in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hin = self.inp(x)
        h, skips = hin, []
        for i, conv in enumerate(self.enc):
            h = conv(h)
            skips.append(h)
            if not self.dilated and i < len(self.enc) - 1:
                h = F.max_pool2d(h, 2, ceil_mode=True)
        h = self.bottom(h)
        for conv, skip in zip(self.dec, reversed(skips)):
            h = conv(torch.cat([_resize_like(h, skip), skip], 1))
        return h + hin


class CrossAttentionFuse(nn.Module):
    """Asymmetric interactive fusion of a deep (high) and a shallow (low) feature; returns
    the low feature re-weighted by the high one's channel attention and the high feature
    re-weighted by a spatial attention of the (channel-attended) low one."""

    def __init__(self, high_ch: int, low_ch: int, out_ch: int, r: int = 4) -> None:
        super().__init__()
        if low_ch != out_ch:
            raise ValueError(f"low_ch ({low_ch}) must equal out_ch ({out_ch})")
        mid = out_ch // r
        self.high = nn.Sequential(nn.Conv2d(high_ch, out_ch, 1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))
        self.topdown = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(out_ch, mid, 1), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_ch, 1), nn.BatchNorm2d(out_ch), nn.Sigmoid())
        self.bottomup = nn.Sequential(nn.Conv2d(low_ch, mid, 1), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                                      SpatialGate(3), nn.Sigmoid())
        self.post = nn.Sequential(nn.Conv2d(out_ch, out_ch, 3, 1, 1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        high = self.high(high)
        channel = self.topdown(high)
        spatial = self.bottomup(low * channel)
        return self.post(2 * low * channel), self.post(2 * high * spatial)


class UIUNet(nn.Module):
    """U-Net in U-Net (see module docstring). Training returns the six side outputs and
    the fused one (last); eval returns the fused logits."""

    def __init__(self, in_channels: int = 1, num_classes: int = 1, deep_supervision: bool = True) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.size_multiple = 32
        self.deep_supervision = deep_supervision
        self.stage1 = RSU(7, in_channels, 32, 64)
        self.stage2 = RSU(6, 64, 32, 128)
        self.stage3 = RSU(5, 128, 64, 256)
        self.stage4 = RSU(4, 256, 128, 512)
        self.stage5 = RSU(4, 512, 256, 512, dilated=True)
        self.stage6 = RSU(4, 512, 256, 512, dilated=True)
        self.stage5d = RSU(4, 1024, 256, 512, dilated=True)
        self.stage4d = RSU(4, 1024, 128, 256)
        self.stage3d = RSU(5, 512, 64, 128)
        self.stage2d = RSU(6, 256, 32, 64)
        self.stage1d = RSU(7, 128, 16, 64)
        self.fuse5 = CrossAttentionFuse(512, 512, 512)
        self.fuse4 = CrossAttentionFuse(512, 512, 512)
        self.fuse3 = CrossAttentionFuse(256, 256, 256)
        self.fuse2 = CrossAttentionFuse(128, 128, 128)
        self.sides = nn.ModuleList(nn.Conv2d(c, num_classes, 3, padding=1) for c in (64, 64, 128, 256, 512, 512))
        self.outconv = nn.Conv2d(6 * num_classes, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        check_input(self, x)
        pool = lambda t: F.max_pool2d(t, 2, ceil_mode=True)  # noqa: E731
        h1 = self.stage1(x)
        h2 = self.stage2(pool(h1))
        h3 = self.stage3(pool(h2))
        h4 = self.stage4(pool(h3))
        h5 = self.stage5(pool(h4))
        h6 = self.stage6(pool(h5))
        d5 = self.stage5d(torch.cat(self.fuse5(_resize_like(h6, h5), h5), 1))
        d4 = self.stage4d(torch.cat(self.fuse4(_resize_like(d5, h4), h4), 1))
        d3 = self.stage3d(torch.cat(self.fuse3(_resize_like(d4, h3), h3), 1))
        d2 = self.stage2d(torch.cat(self.fuse2(_resize_like(d3, h2), h2), 1))
        d1 = self.stage1d(torch.cat([_resize_like(d2, h1), h1], 1))
        sides = [_resize_like(side(f), d1) for side, f in zip(self.sides, (d1, d2, d3, d4, d5, h6))]
        fused = self.outconv(torch.cat(sides, 1))
        if self.deep_supervision and self.training:
            return [*sides, fused]
        return fused
