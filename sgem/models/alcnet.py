"""ALCNet as IRSTD toolboxes run it (Dai et al., IEEE TGRS 2021, ref. [3] of the paper).

The configuration behind the reference count (BasicIRSTD's ``ALCNet``, an ASKC
ResNet-FPN): the ACM stem at 1/4 resolution, three residual stages (layers [4, 4, 4],
widths [8, 16, 32, 64]), then three transposed convolutions back up, the first two
followed by asymmetric bi-directional fusions with the encoder features, and an FCN head
at 1/2 resolution, upsampled to the input size.

Differences from the reference, on purpose:

* The reference code defines two decoder stages (``uplayer1``, ``uplayer2``) that its
  forward pass never calls; they hold 0.093 M of its 0.520 M parameters (thop, which
  counts only modules that run, reports 0.427 M). They are left out here: a parameter
  that never runs is not part of the model.
* The paper's own ALCNet has a multiscale local contrast module that this toolbox
  version does not; the paper's Table 1 row (4.34 G, 0.37 M) is another configuration.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .acm import AsymBiChaFuse, FCNHead, ResidualBackbone


class ALCNet(ResidualBackbone):
    def __init__(self, in_channels: int = 1, num_classes: int = 1, layers: Sequence[int] = (4, 4, 4),
                 widths: Sequence[int] = (8, 16, 32, 64), r: int = 4) -> None:
        super().__init__(in_channels, layers, widths)
        c = list(widths)
        self.deconv2 = nn.ConvTranspose2d(c[3], c[2], 4, 2, 1)
        self.fuse23 = AsymBiChaFuse(c[2], r)
        self.deconv1 = nn.ConvTranspose2d(c[2], c[1], 4, 2, 1)
        self.fuse12 = AsymBiChaFuse(c[1], r)
        self.deconv0 = nn.ConvTranspose2d(c[1], c[0], 4, 2, 1)
        self.head = FCNHead(c[0], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        c1, c2, out = self.encode(x)
        out = self.fuse23(self.deconv2(out), c2)
        out = self.fuse12(self.deconv1(out), c1)
        pred = self.head(self.deconv0(out))
        return F.interpolate(pred, size=(h, w), mode="bilinear", align_corners=False)
