import numpy as np
import pytest
import torch

from sgem.losses import SoftIoULoss, soft_iou_loss


def _masks():
    g = torch.zeros(2, 1, 16, 16)
    g[0, 0, 3:6, 4:7] = 1
    g[1, 0, 10:12, 1:3] = 1
    return g


def test_ideal_prediction_has_zero_loss():
    g = _masks()
    logits = (g * 2 - 1) * 100.0
    assert SoftIoULoss()(logits, g).item() == pytest.approx(0.0, abs=1e-6)


def test_worst_prediction_approaches_one():
    g = _masks()
    logits = (1 - g * 2) * 100.0  # everything inverted
    loss = SoftIoULoss(smooth=1.0)(logits, g).item()
    n = 2 * 16 * 16  # union covers every pixel, intersection is empty
    assert loss == pytest.approx(1 - 1 / (n + 1), abs=1e-6)
    assert SoftIoULoss(smooth=0.0)(logits, g).item() == pytest.approx(1.0, abs=1e-6)


def _eq4_float64(logits, target):
    """Eq. 4 literally, in float64: minus the mean over classes (one here) of the soft IoU."""
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    y = target.astype(np.float64)
    return -np.sum(y * p) / np.sum(y + p - y * p)


def test_matches_direct_float64_evaluation_of_eq4():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 1, 32, 32)) * 3
    target = (rng.random((4, 1, 32, 32)) > 0.9).astype(np.float64)
    loss = soft_iou_loss(torch.from_numpy(logits), torch.from_numpy(target), smooth=0.0)
    # 1 - IoU = 1 + eq. 4: the constant does not change gradients
    assert loss.item() == pytest.approx(1 + _eq4_float64(logits, target), rel=1e-5)


def test_field_form_with_smoothing_float64():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3, 1, 8, 8))
    target = (rng.random((3, 1, 8, 8)) > 0.7).astype(np.float64)
    p = 1 / (1 + np.exp(-logits))
    inter = (p * target).sum()
    expected = 1 - (inter + 1) / (p.sum() + target.sum() - inter + 1)
    got = soft_iou_loss(torch.from_numpy(logits), torch.from_numpy(target)).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_per_sample_form_is_mean_of_sample_ious():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(3, 1, 8, 8))
    target = (rng.random((3, 1, 8, 8)) > 0.7).astype(np.float64)
    p = 1 / (1 + np.exp(-logits))
    ious = [((p[i] * target[i]).sum() + 1) / (p[i].sum() + target[i].sum() - (p[i] * target[i]).sum() + 1)
            for i in range(3)]
    got = soft_iou_loss(torch.from_numpy(logits), torch.from_numpy(target), reduction="sample").item()
    assert got == pytest.approx(1 - np.mean(ious), rel=1e-6)
    batch = soft_iou_loss(torch.from_numpy(logits), torch.from_numpy(target), reduction="batch").item()
    assert batch != pytest.approx(got, rel=1e-6)


def test_gradient_is_finite_and_points_the_right_way():
    g = _masks()
    logits = torch.zeros_like(g, requires_grad=True)
    SoftIoULoss()(logits, g).backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad[g == 1] < 0).all()  # raise logits on targets
    assert (logits.grad[g == 0] > 0).all()  # lower them on background


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="shape"):
        soft_iou_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match="reduction"):
        SoftIoULoss(reduction="mean")
