import math

import numpy as np
import pytest
import torch

from sgem.metrics import IRSTDMetrics, connected_components, match_targets


def blank(h=32, w=32):
    return np.zeros((h, w), dtype=bool)


def score(pred, gt, **kw):
    m = IRSTDMetrics(**kw)
    m.update(np.asarray(pred, dtype=np.float32), gt)
    return m.compute()


def test_two_targets_both_found():
    gt = blank()
    gt[3:6, 3:6] = True
    gt[20:22, 25:27] = True
    r = score(gt, gt)
    assert r["iou"] == 1.0 and r["niou"] == 1.0 and r["f1"] == 1.0
    assert r["pd"] == 1.0 and r["fa"] == 0.0
    assert r["counts"]["targets"] == 2


def test_centroid_exactly_3px_away_is_not_matched():
    gt, pred = blank(), blank()
    gt[10, 10] = True
    pred[10, 13] = True  # distance exactly 3.0
    r = score(pred, gt)
    assert r["pd"] == 0.0
    assert r["fa"] == pytest.approx(1 / (32 * 32))


def test_centroid_2_9px_away_is_matched():
    gt, pred = blank(), blank()
    gt[10, 10] = True
    # row 10, cols 10..15 plus (9|11, 13|14): 10 pixels, centroid (10, 12.9)
    pred[10, 10:16] = True
    pred[9, 13:15] = True
    pred[11, 13:15] = True
    cc = connected_components(pred)
    assert len(cc.areas) == 1
    np.testing.assert_allclose(cc.centroids[0], [10.0, 12.9])
    r = score(pred, gt)
    assert r["pd"] == 1.0 and r["fa"] == 0.0


def test_equal_area_false_alarm_correct_fa_differs_from_legacy():
    gt, pred = blank(), blank()
    gt[5:7, 5:7] = True
    pred[5:7, 5:7] = True        # matched, area 4
    pred[20:22, 20:22] = True    # false alarm, also area 4
    r = score(pred, gt)
    assert r["pd"] == 1.0
    assert r["fa"] == pytest.approx(4 / 1024)
    assert r["fa_legacy"] == 0.0  # the field's bug drops it because its area equals a matched one


def test_unequal_area_false_alarm_agrees_with_legacy():
    gt, pred = blank(), blank()
    gt[5:7, 5:7] = True
    pred[5:7, 5:7] = True
    pred[20:23, 20:23] = True  # area 9
    r = score(pred, gt)
    assert r["fa"] == r["fa_legacy"] == pytest.approx(9 / 1024)


def test_each_prediction_matches_one_target_at_most():
    gt, pred = blank(), blank()
    gt[10, 10] = True
    gt[10, 12] = True           # two targets 2 px apart
    pred[10, 11] = True         # one prediction between them
    r = score(pred, gt)
    assert r["pd"] == 0.5 and r["fa"] == 0.0


def test_empty_prediction():
    gt = blank()
    gt[4:6, 4:6] = True
    r = score(blank(), gt)
    assert r["iou"] == 0.0 and r["recall"] == 0.0 and r["f1"] == 0.0
    assert math.isnan(r["precision"])  # no predicted pixel: undefined, not 0 or 1
    assert r["pd"] == 0.0 and r["fa"] == 0.0


def test_empty_ground_truth():
    pred = blank()
    pred[4:6, 4:6] = True
    r = score(pred, blank())
    assert r["iou"] == 0.0 and r["precision"] == 0.0
    assert math.isnan(r["pd"]) and math.isnan(r["recall"])
    assert r["fa"] == pytest.approx(4 / 1024)


def test_empty_everything_and_niou_policy():
    assert math.isnan(score(blank(), blank())["iou"])
    assert math.isnan(score(blank(), blank())["niou"])
    assert score(blank(), blank(), niou_empty="one")["niou"] == 1.0
    assert score(blank(), blank(), niou_empty="zero")["niou"] == 0.0


def test_iou_is_accumulated_over_the_dataset_niou_per_image():
    m = IRSTDMetrics()
    gt1, p1 = blank(), blank()
    gt1[0:10, 0:10] = True
    p1[0:10, 0:10] = True          # IoU 1, 100 px
    gt2, p2 = blank(), blank()
    gt2[5, 5] = True
    p2[5, 6] = True                # IoU 0, 1 px each
    m.update(np.stack([p1, p2]).astype(np.float32), np.stack([gt1, gt2]))
    r = m.compute()
    assert r["iou"] == pytest.approx(100 / 102)
    assert r["niou"] == pytest.approx(0.5)
    assert r["f1"] == pytest.approx(2 * r["iou"] / (1 + r["iou"]))


def test_non_square_and_mixed_sizes_use_each_images_pixels():
    m = IRSTDMetrics()
    a_gt, a_pr = np.zeros((20, 50), bool), np.zeros((20, 50), bool)
    a_gt[2, 2] = True
    a_pr[2, 2] = True
    a_pr[15, 40] = True  # 1 false-alarm pixel
    b_gt, b_pr = np.zeros((64, 30), bool), np.zeros((64, 30), bool)
    b_gt[60:62, 1:3] = True
    b_pr[60:62, 1:3] = True
    m.update(a_pr.astype(np.float32), a_gt)
    m.update(b_pr.astype(np.float32), b_gt)
    r = m.compute()
    assert r["pd"] == 1.0
    assert r["fa"] == pytest.approx(1 / (20 * 50 + 64 * 30))


def test_streaming_equals_one_shot_and_torch_equals_numpy():
    rng = np.random.default_rng(0)
    probs = rng.random((6, 1, 24, 40)).astype(np.float32) ** 4
    gts = rng.random((6, 1, 24, 40)) > 0.95
    one = IRSTDMetrics()
    one.update(probs, gts)
    parts = IRSTDMetrics()
    parts.update(torch.from_numpy(probs[:2]), torch.from_numpy(gts[:2]))
    parts.update(torch.from_numpy(probs[2:]), torch.from_numpy(gts[2:]))
    assert parts.compute() == one.compute()


def test_eight_connectivity_joins_diagonal_pixels():
    mask = blank()
    mask[3, 3] = mask[4, 4] = True
    assert len(connected_components(mask, 8).areas) == 1
    assert len(connected_components(mask, 4).areas) == 2


def test_threshold_is_strict():
    gt = blank()
    gt[3, 3] = True
    pred = gt.astype(np.float32) * 0.5
    assert score(pred, gt)["iou"] == 0.0          # 0.5 is not > 0.5
    assert score(pred + gt * 0.01, gt)["iou"] == 1.0


def test_curves_agree_with_point_metrics_and_are_monotone():
    rng = np.random.default_rng(1)
    gts = np.zeros((4, 32, 32), bool)
    probs = rng.random((4, 32, 32)).astype(np.float32) * 0.6
    for i in range(4):
        gts[i, 8 + i:11 + i, 8:11] = True
        probs[i][gts[i]] = 0.55 + 0.1 * i
    m = IRSTDMetrics(curve_thresholds=(0.1, 0.3, 0.5, 0.7))
    m.update(probs, gts)
    r = m.compute()
    curve = r["pd_fa_curve"]
    k = curve["threshold"].index(0.5)
    assert curve["pd"][k] == r["pd"] and curve["fa"][k] == r["fa"]
    assert all(a >= b for a, b in zip(curve["fa"], curve["fa"][1:]))
    roc = r["roc"]
    j = roc["threshold"].index(0.5)
    assert roc["tpr"][j] == pytest.approx(r["recall"])
    assert roc["fpr"][j] == pytest.approx(r["counts"]["fp"] / (gts.size - gts.sum()))
    assert all(a >= b for a, b in zip(roc["tpr"], roc["tpr"][1:]))
    assert 0.5 < roc["auc"] <= 1.0


def test_perfect_separation_has_roc_auc_one():
    gt = blank()
    gt[5:8, 5:8] = True
    r = score(np.where(gt, 0.9, 0.1), gt)
    assert r["roc"]["auc"] == pytest.approx(1.0)


def test_logits_are_rejected_with_advice():
    gt = blank()
    with pytest.raises(ValueError, match="sigmoid"):
        score(np.full((32, 32), 3.0), gt)


def test_non_binary_target_is_rejected():
    gt = blank().astype(np.uint8) * 255
    gt[2, 2] = 255
    with pytest.raises(ValueError, match="binary"):
        score(np.zeros((32, 32)), gt)


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match="differ"):
        score(np.zeros((32, 32)), blank(16, 16))
    with pytest.raises(ValueError, match="one channel"):
        IRSTDMetrics().update(np.zeros((1, 3, 8, 8)), np.zeros((1, 3, 8, 8), bool))


def test_match_targets_counts_unmatched_component_pixels():
    gt, pred = blank(), blank()
    gt[10, 10] = True
    pred[9, 10] = True   # first in raster order, 1 px away
    pred[10, 11] = True  # joins the first (8-connected)
    pred[20, 20] = True
    res = match_targets(connected_components(gt), connected_components(pred))
    assert res.n_matched == 1 and res.fa_pixels == 1
