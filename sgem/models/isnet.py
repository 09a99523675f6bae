"""ISNet: shape matters (Zhang et al., CVPR 2022), ref. [6] of the paper.

The configuration IRSTD toolboxes run (BasicIRSTD's ``ISNet``): the ACM-style residual
encoder-decoder (stem at 1/4, layers [4, 4, 4], widths [8, 16, 32, 64]) whose two skip
fusions are TTOA blocks (two orthogonal deformable convolutions, 1x3 and 3x1, that gate
the deep feature with the shallow one), plus a full-resolution *shape* branch: the image
gradient magnitude is lifted to 64 channels and refined by three "TFD" blocks (two
residual blocks and a gated spatial convolution each), gated by side outputs of the
encoder-decoder; the resulting edge map re-weights the last decoder feature before the
head.

Deformable convolution: :class:`DeformConv2d`, pure torch (bilinear sampling per kernel
tap through ``grid_sample``), because no CPU build of torchvision is available to this
project; with zero offsets (their initialisation) it is an ordinary convolution, which a
test checks. Its cost on a GPU is higher than a fused CUDA kernel's.

Differences from the reference code, on purpose: modules the reference defines but its
forward never calls (an unused edge-refinement path, ``head2``, attention layers) are
left out. Training returns the prediction and the edge logits; :meth:`ISNet.training_loss`
is the toolboxes' loss: the engine's criterion (SoftIoU) on the prediction plus 10 x BCE
of the edge map against the target's boundary. The reference takes a Canny edge map of
the binary mask; here the boundary is the mask minus its 3x3 erosion, which is what
Canny finds on a binary mask up to its thinning.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .acm import FCNHead, ResidualBackbone, _stage


class DeformConv2d(nn.Module):
    """Deformable convolution v1 (Dai et al. 2017) with its offset branch ("DCN pack").

    Offsets come from a convolution with the same kernel, initialised to zero; channel
    2k holds the vertical and 2k+1 the horizontal offset of kernel tap k (row-major),
    in pixels. Samples outside the image are zero.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: tuple[int, int], padding: tuple[int, int],
                 bias: bool = True) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.padding = padding
        kh, kw = kernel_size
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, kh, kw))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        self.conv_offset = nn.Conv2d(in_ch, 2 * kh * kw, kernel_size, padding=padding)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        kh, kw = self.kernel_size
        ph, pw = self.padding
        offset = self.conv_offset(x)
        ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1)
        xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w)
        samples = []
        for k in range(kh * kw):
            i, j = divmod(k, kw)
            py = ys + (i - ph) + offset[:, 2 * k]
            px = xs + (j - pw) + offset[:, 2 * k + 1]
            grid = torch.stack([2 * px / max(w - 1, 1) - 1, 2 * py / max(h - 1, 1) - 1], dim=-1)
            samples.append(F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True))
        cols = torch.stack(samples, dim=2)  # (B, C, K, H, W)
        out = torch.einsum("bckhw,ock->bohw", cols, self.weight.view(self.weight.shape[0], c, kh * kw))
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)


class TTOA(nn.Module):
    """Two orthogonal deformable convolutions of the shallow feature gate the deep one."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.preprocess = nn.Sequential(nn.Conv2d(channels, channels // 2, 1), nn.Conv2d(channels // 2, channels, 1))
        self.dcn_row = DeformConv2d(channels, channels, (1, 3), (0, 1))
        self.dcn_col = DeformConv2d(channels, channels, (3, 1), (1, 0))

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        low, high = self.preprocess(low), self.preprocess(high)
        col = low + torch.sigmoid(self.dcn_col(low)) * high
        row = low + torch.sigmoid(self.dcn_row(low)) * high
        return row + col


class BasicBlock2(nn.Module):
    """A residual block that also returns its residual branch (after ReLU)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        branch = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(x + branch), F.relu(branch)


class GatedSpatialConv(nn.Module):
    """1x1 convolution of features re-weighted by (1 + a gate) computed from the features
    and a one-channel guidance map (gated shape CNN)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.BatchNorm2d(ch + 1), nn.Conv2d(ch + 1, ch + 1, 1), nn.ReLU(),
                                  nn.Conv2d(ch + 1, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())
        self.conv = nn.Conv2d(ch, ch, 1, bias=False)

    def forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        return self.conv(x * (self.gate(torch.cat([x, guide], 1)) + 1))


class TFD(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.res1 = BasicBlock2(ch)
        self.res2 = BasicBlock2(ch)
        self.gate = GatedSpatialConv(ch)

    def forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        u1, delta = self.res1(x)
        _, u2 = self.res2(u1)
        return 3 * delta + u2 + self.gate(u2, guide)


def gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    """|grad| of the first channel by central differences (zero padding), eps 1e-6."""
    x0 = x[:, :1]
    kv = x.new_tensor([[0, -1, 0], [0, 0, 0], [0, 1, 0]]).view(1, 1, 3, 3)
    kh = x.new_tensor([[0, 0, 0], [-1, 0, 1], [0, 0, 0]]).view(1, 1, 3, 3)
    return torch.sqrt(F.conv2d(x0, kv, padding=1) ** 2 + F.conv2d(x0, kh, padding=1) ** 2 + 1e-6)


class ISNet(ResidualBackbone):
    def __init__(self, in_channels: int = 1, num_classes: int = 1, layers: Sequence[int] = (4, 4, 4),
                 widths: Sequence[int] = (8, 16, 32, 64), shape_width: int = 64) -> None:
        super().__init__(in_channels, layers, widths)
        c = list(widths)
        self.deconv2 = nn.ConvTranspose2d(c[3], c[2], 4, 2, 1)
        self.ttoa_low = TTOA(c[2])
        self.uplayer2 = _stage(c[2], c[2], layers[1], 1)
        self.deconv1 = nn.ConvTranspose2d(c[2], c[1], 4, 2, 1)
        self.ttoa_high = TTOA(c[1])
        self.uplayer1 = _stage(c[1], c[1], layers[0], 1)
        self.head = FCNHead(c[1], num_classes)
        # shape branch
        self.dsn1 = nn.Conv2d(c[3], 1, 1)
        self.dsn2 = nn.Conv2d(c[2], 1, 1)
        self.dsn3 = nn.Conv2d(c[1], 1, 1)
        self.lift = nn.Conv2d(1, shape_width, 1)
        self.tfd = nn.ModuleList(TFD(shape_width) for _ in range(3))
        self.edge = nn.Conv2d(shape_width, 1, 1, bias=False)

    edge_weight = 10.0

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        size = x.shape[-2:]
        full = lambda t: F.interpolate(t, size=size, mode="bilinear", align_corners=True)  # noqa: E731
        c1, c2, c3 = self.encode(x)
        up2 = self.uplayer2(self.ttoa_low(self.deconv2(c3), c2))
        up1 = self.uplayer1(self.ttoa_high(self.deconv1(up2), c1))
        shape = self.lift(gradient_magnitude(x))
        for tfd, side in zip(self.tfd, (self.dsn1(c3), self.dsn2(up2), self.dsn3(up1))):
            shape = tfd(shape, full(side))
        edge_logits = self.edge(shape)
        edge = torch.sigmoid(edge_logits)
        up1 = F.interpolate(up1, size=size, mode="bilinear", align_corners=False)
        pred = self.head(edge * up1 + up1)
        return (pred, edge_logits) if self.training else pred

    def training_loss(self, outputs: tuple[torch.Tensor, torch.Tensor], target: torch.Tensor,
                      criterion: nn.Module) -> torch.Tensor:
        """criterion(prediction) + 10 x BCE(edge, boundary of the target)."""
        pred, edge_logits = outputs
        return criterion(pred.float(), target) + self.edge_weight * F.binary_cross_entropy_with_logits(
            edge_logits.float(), mask_boundary(target))


def mask_boundary(mask: torch.Tensor) -> torch.Tensor:
    """Pixels of a binary (B, 1, H, W) mask whose 3x3 neighbourhood leaves the mask."""
    eroded = -F.max_pool2d(-mask, 3, stride=1, padding=1)
    return (mask - eroded).clamp_(0, 1)
