"""The SGEM U-Net (Deng & Yang, sec. 3.1) and its plain-skip ablation.

A 5-level U-Net: encoder stages E1..E5 (two 3x3 ConvNormAct each, 2x2 max-pool between
stages) and decoder stages D1..D4 (bilinear x2 upsample, join the skip, two convs).
In ``sgem_unet`` the skip from E3 to decoder stage 2 is removed and decoder stage 2 *is*
the SGEM, fed with E3 and D1 (sec. 3.1: "this output is then employed as the result for
the second layer of the decoder"). In ``unet`` decoder stage 2 is an ordinary decoder
block with the E3 skip: the ablation the paper does not show.

Widths (32, 64, 128, 256, 512) and the SGEM width 544 (8 heads x 68) are calibrated so that at
1x1x256x256 the SGEM U-Net has the paper's 8.69 M parameters and 15.92 G MACs within
3 % (docs/architecture.md gives the numbers).
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ActFactory, DoubleConv, NormFactory, UpBlock, check_input, default_act, default_norm
from .sgem_module import SGEM


class UNet(nn.Module):
    """U-Net with an optional SGEM in place of decoder stage 2.

    Args:
        in_channels: image channels (1: infrared images are single-band; NUDT-SIRST's
            RGB PNGs carry three equal channels, see ``sgem.data``).
        num_classes: output channels (logits).
        widths: channels of E1..E5; decoder stage i has the width of E(5-i).
        decoder2: ``"sgem"`` (the paper) or ``"skip"`` (plain U-Net decoder block).
        sgem_dim, sgem_heads, sgem_refine, sgem_normalize_qk: see :class:`SGEM`.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        widths: Sequence[int] = (32, 64, 128, 256, 512),
        decoder2: Literal["sgem", "skip"] = "sgem",
        sgem_dim: int = 544,
        sgem_heads: int = 8,
        sgem_refine: bool = True,
        sgem_normalize_qk: bool = True,
        head_prior: float | None = 0.01,
        norm: NormFactory = default_norm,
        act: ActFactory = default_act,
    ) -> None:
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"widths must list 5 encoder widths (E1..E5), got {list(widths)}")
        if decoder2 not in ("sgem", "skip"):
            raise ValueError(f"decoder2 must be 'sgem' or 'skip', got {decoder2!r}")
        if in_channels < 1 or num_classes < 1:
            raise ValueError(f"in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}")
        w1, w2, w3, w4, w5 = widths
        self.in_channels = in_channels
        self.decoder2_kind = decoder2
        self.size_multiple = 2 ** (len(widths) - 1)

        self.enc1 = DoubleConv(in_channels, w1, norm=norm, act=act)
        self.enc2 = DoubleConv(w1, w2, norm=norm, act=act)
        self.enc3 = DoubleConv(w2, w3, norm=norm, act=act)
        self.enc4 = DoubleConv(w3, w4, norm=norm, act=act)
        self.enc5 = DoubleConv(w4, w5, norm=norm, act=act)

        self.dec1 = UpBlock(w5, w4, w4, norm=norm, act=act)
        if decoder2 == "sgem":
            self.dec2: nn.Module = SGEM(w3, w4, w3, dim=sgem_dim, heads=sgem_heads, refine=sgem_refine,
                                        normalize_qk=sgem_normalize_qk, norm=norm, act=act)
        else:
            self.dec2 = UpBlock(w4, w3, w3, norm=norm, act=act)
        self.dec3 = UpBlock(w3, w2, w2, norm=norm, act=act)
        self.dec4 = UpBlock(w2, w1, w1, norm=norm, act=act)
        self.head = nn.Conv2d(w1, num_classes, 1)
        if head_prior is not None:
            # start every pixel at probability head_prior instead of 0.5 (RetinaNet's prior
            # init): targets cover ~0.1 % of an IRSTD image, so a 0.5 start makes the first
            # epochs spend themselves on switching the background off
            if not 0.0 < head_prior < 1.0:
                raise ValueError(f"head_prior must be in (0, 1) or None, got {head_prior}")
            nn.init.constant_(self.head.bias, -math.log((1 - head_prior) / head_prior))

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError that says what would work if ``x`` cannot be taken."""
        check_input(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        e4 = self.enc4(F.max_pool2d(e3, 2))
        e5 = self.enc5(F.max_pool2d(e4, 2))
        d1 = self.dec1(e5, e4)
        d2 = self.dec2(e3, d1) if self.decoder2_kind == "sgem" else self.dec2(d1, e3)
        d3 = self.dec3(d2, e2)
        d4 = self.dec4(d3, e1)
        return self.head(d4)


def pad_to_multiple(x: torch.Tensor, multiple: int = 16, mode: str = "reflect") -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (…, H, W) on the bottom and right to multiples of ``multiple``.

    Returns the padded tensor and the original (H, W), so that outputs can be cropped
    back with ``y[..., :H, :W]``. Reflect padding falls back to replicate for inputs
    smaller than the pad.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    if mode == "reflect" and (ph >= h or pw >= w):
        mode = "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)
