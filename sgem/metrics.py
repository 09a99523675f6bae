"""IRSTD metrics, streaming: ``update()`` per batch or image, ``compute()`` at the end.

Definitions follow the field (``docs/protocols.md`` states each with its source):

* **IoU** (often "mIoU"): prediction = probability > threshold (0.5, i.e. logit > 0);
  intersection and union accumulated over the whole dataset, divided once. Foreground
  only.
* **nIoU**: the same per image, then the mean over images. An image whose union is
  empty (no target, no prediction) has no IoU; ``niou_empty`` says what to do with it:
  ``"skip"`` (default: leave it out of the mean), ``"one"`` (count it as perfect) or
  ``"zero"`` (what ACM/DNANet's ``SamplewiseSigmoidMetric`` effectively does, since it
  divides 0 by ``eps``).
* **precision / recall / F1**: pixel level, from dataset-accumulated TP, FP, FN.
  F1 = 2TP / (2TP + FP + FN), so F1 = 2 IoU / (1 + IoU) with the same accumulators.
* **Pd / Fa**: 8-connected components of prediction and ground truth. For each
  ground-truth component in label order, the first still-unmatched predicted component
  whose centroid is *strictly* closer than 3 px (Euclidean) is matched and removed.
  Pd = matched ground-truth components / all ground-truth components.
  Fa = pixels of unmatched predicted components / all pixels (each image's own h*w).
* **Fa (legacy)**: DNANet, SCTransNet, MSHNet and the mmseg framework drop every
  predicted component whose *area* equals the area of some matched component ("areas
  not in the list of matched areas"), so Fa comes out too low. It is reported only as
  ``fa_legacy``, for comparison with old tables; ``fa`` is the correct one.
* **Curves**: Pd and Fa at each probability threshold in ``curve_thresholds``; pixel ROC
  (TPR against FPR) from a histogram of probabilities with ``roc_bins`` bins, so it
  streams in constant memory. A pixel is positive when probability > threshold,
  the same strict rule as the point metrics.

Undefined ratios (0/0: e.g. precision with no predicted pixel, Pd with no target) are
``nan``, never a made-up 0 or 1.

Inputs are torch tensors or NumPy arrays shaped (H, W), (N, H, W) or (N, 1, H, W), of
any size. Predictions must be probabilities in [0, 1] (or boolean masks); passing logits
is an error, not a silently wrong curve. Targets must be binary (bool, or values in
{0, 1}).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import torch
from scipy import ndimage

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)
DEFAULT_CURVE_THRESHOLDS: tuple[float, ...] = tuple(round(x, 2) for x in np.arange(0.05, 0.951, 0.05))


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


def as_batch(x: Any, name: str) -> np.ndarray:
    """Convert a tensor/array shaped (H,W), (N,H,W) or (N,1,H,W) to a NumPy (N,H,W) array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.float16, torch.bfloat16):  # NumPy has no bfloat16
            x = x.float()
        x = x.numpy()
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[None]
    elif x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"{name}: expected one channel in a (N, 1, H, W) batch, got shape {x.shape}")
        x = x[:, 0]
    elif x.ndim != 3:
        raise ValueError(f"{name}: expected shape (H, W), (N, H, W) or (N, 1, H, W), got {x.shape}")
    return x


def check_probabilities(pred: np.ndarray, name: str = "pred") -> np.ndarray:
    if pred.dtype == bool:
        return pred.astype(np.float32)
    if not np.issubdtype(pred.dtype, np.number):
        raise TypeError(f"{name}: expected a numeric array of probabilities, got dtype {pred.dtype}")
    if pred.size:
        lo, hi = float(np.min(pred)), float(np.max(pred))
        if math.isnan(lo) or math.isnan(hi):
            raise ValueError(f"{name}: contains NaN")
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"{name}: values must be probabilities in [0, 1], got range [{lo:.4g}, {hi:.4g}]; "
                f"apply a sigmoid to logits (or divide 8-bit maps by 255) first")
    return pred


def check_binary_target(target: np.ndarray, name: str = "target") -> np.ndarray:
    if target.dtype == bool:
        return target
    if not np.issubdtype(target.dtype, np.number):
        raise TypeError(f"{name}: expected a binary mask, got dtype {target.dtype}")
    bad = (target != 0) & (target != 1)
    if bad.any():
        values = np.unique(target[bad])[:5]
        raise ValueError(
            f"{name}: masks must be binary (bool or values in {{0, 1}}); found {values.tolist()}. "
            f"Threshold or rescale the mask first (an 8-bit mask: mask > 127)")
    return target.astype(bool)


@dataclass(frozen=True)
class Components:
    centroids: np.ndarray  # (n, 2) row, col
    areas: np.ndarray      # (n,)


def connected_components(mask: np.ndarray, connectivity: Literal[4, 8] = 8) -> Components:
    """Components of a 2-D boolean mask, in raster order of their first pixel
    (the order of scikit-image's ``label``/``regionprops``)."""
    structure = EIGHT_CONNECTED if connectivity == 8 else FOUR_CONNECTED
    labels, n = ndimage.label(mask, structure=structure)
    if n == 0:
        return Components(np.zeros((0, 2)), np.zeros((0,), dtype=np.int64))
    rows, cols = np.nonzero(labels)
    idx = labels[rows, cols]
    areas = np.bincount(idx, minlength=n + 1)[1:]
    cy = np.bincount(idx, weights=rows, minlength=n + 1)[1:] / areas
    cx = np.bincount(idx, weights=cols, minlength=n + 1)[1:] / areas
    return Components(np.stack([cy, cx], axis=1), areas.astype(np.int64))


@dataclass(frozen=True)
class MatchResult:
    n_targets: int
    n_matched: int
    n_pred: int
    fa_pixels: int         # area of unmatched predicted components (correct)
    fa_pixels_legacy: int  # "areas not in the matched areas" (the field's old bug)
    matches: tuple[int, ...] = ()  # for each ground-truth component, its predicted component or -1


def match_targets(gt: Components, pred: Components, max_distance: float = 3.0) -> MatchResult:
    """Greedy centroid matching as the field does it (see module docstring)."""
    available = list(range(len(pred.areas)))
    matched: list[int] = []
    matches: list[int] = []
    for g in gt.centroids:
        hit = -1
        for pos, j in enumerate(available):
            if float(np.hypot(*(pred.centroids[j] - g))) < max_distance:
                hit = j
                matched.append(j)
                del available[pos]
                break
        matches.append(hit)
    fa = int(pred.areas[available].sum()) if available else 0
    matched_areas = set(int(a) for a in pred.areas[matched])
    fa_legacy = int(sum(int(a) for a in pred.areas if int(a) not in matched_areas))
    return MatchResult(len(gt.areas), len(matched), len(pred.areas), fa, fa_legacy, tuple(matches))


class _PdFaAccumulator:
    def __init__(self) -> None:
        self.n_targets = self.n_matched = self.n_pred = 0
        self.fa_pixels = self.fa_pixels_legacy = self.pixels = 0

    def add(self, r: MatchResult, pixels: int) -> None:
        self.n_targets += r.n_targets
        self.n_matched += r.n_matched
        self.n_pred += r.n_pred
        self.fa_pixels += r.fa_pixels
        self.fa_pixels_legacy += r.fa_pixels_legacy
        self.pixels += pixels

    def result(self) -> dict[str, float]:
        return {
            "pd": _ratio(self.n_matched, self.n_targets),
            "fa": _ratio(self.fa_pixels, self.pixels),
            "fa_legacy": _ratio(self.fa_pixels_legacy, self.pixels),
        }


class IRSTDMetrics:
    """All IRSTD metrics in one streaming object.

    Args:
        threshold: probability above which a pixel is a detection (strict ``>``).
        match_distance: centroid distance under which (strictly) a target is detected.
        connectivity: 8 (field default) or 4.
        niou_empty: how nIoU treats an image with an empty union: "skip", "one", "zero".
        curve_thresholds: probability thresholds of the Pd-Fa curve (``()`` disables it).
        roc_bins: bins of the pixel-ROC histogram (0 disables it).

    Example:
        >>> m = IRSTDMetrics()
        >>> for probs, masks in batches:   # probabilities in [0, 1], binary masks
        ...     m.update(probs, masks)
        >>> m.compute()["iou"]
    """

    def __init__(
        self,
        threshold: float = 0.5,
        *,
        match_distance: float = 3.0,
        connectivity: Literal[4, 8] = 8,
        niou_empty: Literal["skip", "one", "zero"] = "skip",
        curve_thresholds: Sequence[float] = DEFAULT_CURVE_THRESHOLDS,
        roc_bins: int = 1000,
    ) -> None:
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        if niou_empty not in ("skip", "one", "zero"):
            raise ValueError(f"niou_empty must be 'skip', 'one' or 'zero', got {niou_empty!r}")
        if connectivity not in (4, 8):
            raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
        bad = [t for t in curve_thresholds if not 0.0 <= t < 1.0]
        if bad:
            raise ValueError(f"curve_thresholds must lie in [0, 1), got {bad}")
        if roc_bins < 0:
            raise ValueError(f"roc_bins must be >= 0, got {roc_bins}")
        self.threshold = float(threshold)
        self.match_distance = float(match_distance)
        self.connectivity = connectivity
        self.niou_empty = niou_empty
        self.curve_thresholds = tuple(float(t) for t in curve_thresholds)
        self.roc_bins = int(roc_bins)
        self.reset()

    def reset(self) -> None:
        self.tp = self.fp = self.fn = 0
        self.n_images = 0
        self._niou_sum = 0.0
        self._niou_count = 0
        self._pdfa = _PdFaAccumulator()
        self._curve = [_PdFaAccumulator() for _ in self.curve_thresholds]
        # slot 0: p == 0 exactly; slot k: p in ((k-1)/bins, k/bins]
        self._roc_pos = np.zeros(self.roc_bins + 1, dtype=np.int64)
        self._roc_neg = np.zeros(self.roc_bins + 1, dtype=np.int64)

    def update(self, pred: Any, target: Any) -> None:
        """Add a batch: ``pred`` probabilities in [0, 1], ``target`` binary masks."""
        p = check_probabilities(as_batch(pred, "pred"))
        t = check_binary_target(as_batch(target, "target"))
        if p.shape != t.shape:
            raise ValueError(f"pred shape {p.shape} and target shape {t.shape} differ")
        for pi, ti in zip(p, t):
            self._update_image(pi, ti)

    def _update_image(self, prob: np.ndarray, gt: np.ndarray) -> None:
        det = prob > self.threshold
        tp = int(np.count_nonzero(det & gt))
        fp = int(np.count_nonzero(det & ~gt))
        fn = int(np.count_nonzero(~det & gt))
        self.tp += tp
        self.fp += fp
        self.fn += fn
        self.n_images += 1
        union = tp + fp + fn
        if union:
            self._niou_sum += tp / union
            self._niou_count += 1
        elif self.niou_empty != "skip":
            self._niou_sum += 1.0 if self.niou_empty == "one" else 0.0
            self._niou_count += 1

        pixels = int(gt.size)
        gt_cc = connected_components(gt, self.connectivity)
        self._pdfa.add(match_targets(gt_cc, connected_components(det, self.connectivity), self.match_distance),
                       pixels)
        for thr, acc in zip(self.curve_thresholds, self._curve):
            det_t = prob > thr
            acc.add(match_targets(gt_cc, connected_components(det_t, self.connectivity), self.match_distance),
                    pixels)
        if self.roc_bins:
            slots = np.ceil(prob.astype(np.float64) * self.roc_bins).astype(np.int64)
            np.clip(slots, 0, self.roc_bins, out=slots)
            self._roc_pos += np.bincount(slots[gt], minlength=self.roc_bins + 1)
            self._roc_neg += np.bincount(slots[~gt], minlength=self.roc_bins + 1)

    def compute(self) -> dict[str, Any]:
        """Metrics as plain Python numbers and lists (JSON-ready)."""
        tp, fp, fn = self.tp, self.fp, self.fn
        out: dict[str, Any] = {
            "iou": _ratio(tp, tp + fp + fn),
            "niou": _ratio(self._niou_sum, self._niou_count),
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            **self._pdfa.result(),
            "threshold": self.threshold,
            "counts": {
                "images": self.n_images, "tp": tp, "fp": fp, "fn": fn,
                "targets": self._pdfa.n_targets, "detected_targets": self._pdfa.n_matched,
                "pred_components": self._pdfa.n_pred, "false_alarm_pixels": self._pdfa.fa_pixels,
                "false_alarm_pixels_legacy": self._pdfa.fa_pixels_legacy, "pixels": self._pdfa.pixels,
                "niou_images": self._niou_count,
            },
        }
        if self.curve_thresholds:
            res = [acc.result() for acc in self._curve]
            out["pd_fa_curve"] = {
                "threshold": list(self.curve_thresholds),
                "pd": [r["pd"] for r in res],
                "fa": [r["fa"] for r in res],
            }
        if self.roc_bins:
            out["roc"] = self._roc()
        return out

    def _roc(self) -> dict[str, Any]:
        # positives at threshold k/bins: slots > k
        pos_above = np.concatenate([np.cumsum(self._roc_pos[::-1])[::-1][1:], [0]])
        neg_above = np.concatenate([np.cumsum(self._roc_neg[::-1])[::-1][1:], [0]])
        n_pos, n_neg = int(self._roc_pos.sum()), int(self._roc_neg.sum())
        tpr = pos_above / n_pos if n_pos else np.full(len(pos_above), math.nan)
        fpr = neg_above / n_neg if n_neg else np.full(len(neg_above), math.nan)
        thresholds = np.arange(self.roc_bins + 1) / self.roc_bins
        # area under (FPR, TPR) with the end points (1, 1) and (0, 0)
        if n_pos and n_neg:
            x = np.concatenate([[1.0], fpr, [0.0]])
            y = np.concatenate([[1.0], tpr, [0.0]])
            auc = float(-np.trapezoid(y, x))
        else:
            auc = math.nan
        return {"threshold": thresholds.tolist(), "tpr": tpr.tolist(), "fpr": fpr.tolist(), "auc": auc}
