"""SoftIoU loss (Deng & Yang, eq. 4).

Eq. 4 is ``-1/|C| * sum_C  sum(y_true*y_pred) / sum(y_true + y_pred - y_true*y_pred)``
with ``y_pred = sigmoid(logits)``. With one class (target vs background) this is minus a
soft IoU. The field's code (DNANet, BasicIRSTD) minimises ``1 - soft IoU`` with a
smoothing term of 1 in numerator and denominator, summing over the whole batch (one IoU
per batch); that is the default here. The constant 1 does not change gradients.
``reduction="sample"`` computes one IoU per image and averages (MSHNet's form).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn


def soft_iou_loss(logits: torch.Tensor, target: torch.Tensor, *, smooth: float = 1.0,
                  reduction: Literal["batch", "sample"] = "batch") -> torch.Tensor:
    """Functional form of :class:`SoftIoULoss`."""
    if logits.shape != target.shape:
        raise ValueError(f"logits shape {tuple(logits.shape)} and target shape {tuple(target.shape)} differ")
    if reduction not in ("batch", "sample"):
        raise ValueError(f"reduction must be 'batch' or 'sample', got {reduction!r}")
    if smooth < 0:
        raise ValueError(f"smooth must be >= 0, got {smooth}")
    p = torch.sigmoid(logits.float())
    g = target.float()
    dims = tuple(range(p.ndim)) if reduction == "batch" else tuple(range(1, p.ndim))
    inter = (p * g).sum(dims)
    union = p.sum(dims) + g.sum(dims) - inter
    iou = (inter + smooth) / (union + smooth)
    return 1.0 - iou.mean()


class SoftIoULoss(nn.Module):
    """``1 - (sum p*g + smooth) / (sum p + sum g - sum p*g + smooth)``, p = sigmoid(logits).

    Args:
        smooth: added to numerator and denominator (field default 1).
        reduction: ``"batch"`` sums over the whole batch (field default, eq. 4 with one
            class); ``"sample"`` takes one IoU per image and averages.
    """

    def __init__(self, smooth: float = 1.0, reduction: Literal["batch", "sample"] = "batch") -> None:
        super().__init__()
        if reduction not in ("batch", "sample"):
            raise ValueError(f"reduction must be 'batch' or 'sample', got {reduction!r}")
        self.smooth = smooth
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_iou_loss(logits, target, smooth=self.smooth, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"smooth={self.smooth}, reduction={self.reduction!r}"
