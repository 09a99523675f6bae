"""The semantic gap elimination module (SGEM), eqs. 1-3 of Deng & Yang.

    Q      = Linearization(Conv1x1(E3))                (1)
    K      = Linearization(Conv1x1(D1))                (2)
    Matrix = Softmax(Conv1x1(Q (x) K))                 (3)

The paper describes the module in words ("linear cross-attention between encoder layer 3
and decoder layer 1"; "per-channel convolutions restore the original three-dimensional
features"; "residual connections ensure the effective transmission of deep features")
but its Figure 1 is missing. Every choice made where the text is silent is listed in
``docs/architecture.md`` next to the sentence it serves; the ones that matter are
constructor arguments here.

Reading used (see docs/architecture.md for the reasons):

* ``Linearization`` flattens a feature map into tokens and applies a linear layer
  per token, so Q has shape (B, heads, d, N) with N = H*W of E3.
* ``Q (x) K`` is a *channel* (cross-covariance) correlation, as in XCiT and
  UCTransNet's channel cross-attention: Q K^T summed over positions gives a
  (d x d) matrix per head, so the cost is linear in the number of pixels and the
  module works at any input size. Q and K are L2-normalised over positions and scaled
  by a learnt per-head temperature, which keeps the softmax well conditioned.
* ``Conv1x1`` of eq. 3 acts on the stack of per-head correlation matrices (heads as
  channels: "talking heads"); ``Softmax`` then normalises each row to a probability
  distribution: the "semantic probability distribution matrix".
* The matrix re-weights value features taken from encoder layer 3 (what the removed
  skip used to carry); a depth-wise ("per-channel") 3x3 convolution and a 1x1
  projection restore the 3-D feature; a residual branch carries the deep features of
  decoder layer 1 (upsampled, 3x3 conv); a final 3x3 conv fuses the sum. The output
  is decoder layer 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ActFactory, ConvNormAct, NormFactory, default_act, default_norm


class Linearization(nn.Module):
    """Flatten (B, C, H, W) into per-pixel tokens and apply a linear layer to each token.

    Returns (B, C, H, W) again so that callers can keep a spatial layout; the linear
    layer is what the paper calls linearization (it is counted by module-level MAC
    counters as an ``nn.Linear`` over B*H*W tokens).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        tokens = self.linear(tokens)
        return tokens.transpose(1, 2).reshape(b, c, h, w)


class SGEM(nn.Module):
    """Semantic gap elimination module.

    Args:
        enc_channels: channels of encoder layer 3 (E3).
        dec_channels: channels of decoder layer 1 (D1).
        out_channels: channels of the output, which becomes decoder layer 2.
        dim: width of Q, K and V (the attention width).
        heads: number of attention heads; ``dim`` must be divisible by it.
        normalize_qk: L2-normalise Q and K over positions before the product (XCiT).
            Without it the logits grow with the number of pixels.
        refine: apply a final 3x3 ConvNormAct after the residual sum.
    """

    def __init__(
        self,
        enc_channels: int,
        dec_channels: int,
        out_channels: int,
        dim: int = 544,
        heads: int = 8,
        *,
        normalize_qk: bool = True,
        refine: bool = True,
        norm: NormFactory = default_norm,
        act: ActFactory = default_act,
    ) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"SGEM dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.normalize_qk = normalize_qk
        # eq. 1: Q = Linearization(Conv1x1(E3))
        self.q_conv = nn.Conv2d(enc_channels, dim, 1)
        self.q_lin = Linearization(dim)
        # eq. 2: K = Linearization(Conv1x1(D1)); computed at D1's own resolution and
        # then resampled to E3's grid (both steps are linear, so the order is free and
        # the cheap one is taken).
        self.k_conv = nn.Conv2d(dec_channels, dim, 1)
        self.k_lin = Linearization(dim)
        # values: encoder-3 features, the information the removed skip used to carry
        self.v_conv = nn.Conv2d(enc_channels, dim, 1)
        # eq. 3: Conv1x1 over the stack of per-head correlation matrices
        self.mix = nn.Conv2d(heads, heads, 1)
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        # per-channel convolution that restores the 3-D feature, then a projection
        self.restore = nn.Sequential(
            ConvNormAct(dim, dim, 3, groups=dim, norm=norm, act=act),
            ConvNormAct(dim, out_channels, 1, norm=norm, act=None),
        )
        # residual branch: deep features of D1 at E3's resolution
        self.deep = ConvNormAct(dec_channels, out_channels, 3, norm=norm, act=None)
        self.act = act()
        self.refine = ConvNormAct(out_channels, out_channels, 3, norm=norm, act=act) if refine else nn.Identity()

    def attention_matrix(self, e3: torch.Tensor, d1: torch.Tensor) -> torch.Tensor:
        """Eqs. 1-3: the (B, heads, d, d) semantic probability distribution matrix."""
        size = e3.shape[-2:]
        q = self.q_lin(self.q_conv(e3))
        k = self.k_lin(self.k_conv(d1))
        k = F.interpolate(k, size=size, mode="bilinear", align_corners=False)
        q = self._split_heads(q)
        k = self._split_heads(k)
        if self.normalize_qk:
            q = F.normalize(q, dim=-1)
            k = F.normalize(k, dim=-1)
        logits = torch.matmul(q, k.transpose(-2, -1)) * self.temperature  # Q (x) K
        return F.softmax(self.mix(logits), dim=-1)

    def forward(self, e3: torch.Tensor, d1: torch.Tensor) -> torch.Tensor:
        b, _, h, w = e3.shape
        matrix = self.attention_matrix(e3, d1)
        v = self._split_heads(self.v_conv(e3))
        y = torch.matmul(matrix, v).reshape(b, -1, h, w)
        deep = self.deep(F.interpolate(d1, size=(h, w), mode="bilinear", align_corners=False))
        return self.refine(self.act(self.restore(y) + deep))

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.reshape(b, self.heads, c // self.heads, h * w)
