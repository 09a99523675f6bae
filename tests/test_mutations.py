"""Tests aimed at one-line mistakes that would change reported numbers without any
other test noticing (each names the mistake it catches)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sgem.imageio import read_mask
from sgem.metrics import IRSTDMetrics, connected_components, match_targets
from sgem.models.sgem_module import SGEM


def _score(pred: np.ndarray, gt: np.ndarray) -> dict:
    m = IRSTDMetrics(curve_thresholds=(), roc_bins=0)
    m.update(pred.astype(np.float32), gt)
    return m.compute()


def test_default_connectivity_is_8():
    """Mistake: the metric's default connectivity switched from 8 to 4."""
    gt = np.zeros((16, 16), bool)
    gt[5, 5] = gt[6, 6] = True              # diagonal neighbours: one target under 8-connectivity
    r = _score(gt, gt)
    assert r["counts"]["targets"] == 1 and r["pd"] == 1.0
    assert len(connected_components(gt).areas) == 1 and len(connected_components(gt, 4).areas) == 2


def test_pd_matches_the_first_component_in_raster_order_not_the_nearest():
    """Mistake: matching the nearest predicted component instead of the first within 3 px."""
    gt = np.zeros((20, 20), bool)
    gt[10, 10] = gt[10, 13] = True           # targets A (10,10) and B (10,13)
    pred = np.zeros((20, 20), bool)
    pred[8, 10] = True                       # P1: 2 px from A, first in raster order, 3.6 px from B
    pred[10, 11] = True                      # P2: 1 px from A, 2 px from B
    r = match_targets(connected_components(gt), connected_components(pred))
    assert r.matches == (0, 1) and r.n_matched == 2 and r.fa_pixels == 0
    assert _score(pred, gt)["pd"] == 1.0     # nearest-first would leave B unmatched (Pd 0.5)


def test_legacy_fa_with_several_matched_components_of_different_areas():
    """Mistake in the field's old Fa ('areas not among the matched areas'): with matched
    areas {4, 9}, an unmatched component of area 9 is wrongly dropped; one of area 5 counts."""
    gt = np.zeros((40, 40), bool)
    gt[5:7, 5:7] = True                      # target 1, matched by a 2x2 (area 4)
    gt[20:23, 20:23] = True                  # target 2, matched by a 3x3 (area 9)
    pred = gt.copy()
    pred[30:33, 2:5] = True                  # unmatched, area 9 (same area as a matched one)
    pred[2, 30:35] = True                    # unmatched, area 5
    r = match_targets(connected_components(gt), connected_components(pred))
    assert r.n_matched == 2 and r.fa_pixels == 14 and r.fa_pixels_legacy == 5


def test_mask_threshold_is_above_127(tmp_path):
    """Mistake: the 8-bit mask threshold moved from > 127 to >= 127."""
    Image.fromarray(np.array([[0, 127, 128, 255]], np.uint8)).save(tmp_path / "m.png")
    mask, strict = read_mask(tmp_path / "m.png")
    assert mask.tolist() == [[False, False, True, True]] and not strict


def test_sgem_correlates_q_from_encoder_3_with_k_from_decoder_1():
    """Mistake: Q and K swapped in the SGEM's product (eqs. 1-3: Q from E3, K from D1)."""
    torch.manual_seed(0)
    m = SGEM(enc_channels=6, dec_channels=10, out_channels=6, dim=8, heads=2).eval()
    e3, d1 = torch.randn(1, 6, 8, 8), torch.randn(1, 10, 4, 4)
    q = m.q_lin(m.q_conv(e3)).reshape(1, 2, 4, 64)
    k = F.interpolate(m.k_lin(m.k_conv(d1)), size=(8, 8), mode="bilinear", align_corners=False).reshape(1, 2, 4, 64)
    logits = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1) * m.temperature
    expected = torch.softmax(m.mix(logits), dim=-1)
    got = m.attention_matrix(e3, d1)
    assert torch.allclose(got, expected, atol=1e-6)
    swapped = torch.softmax(m.mix(logits.transpose(-2, -1)), dim=-1)
    assert not torch.allclose(got, swapped, atol=1e-3)     # the test can tell the two apart
