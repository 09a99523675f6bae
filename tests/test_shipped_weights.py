"""Trained weights committed under reports/ load, and score what their reports say."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sgem.data import find_image, load_image, load_mask, read_split
from sgem.evaluate import evaluate_arrays, predict_probs
from sgem.train import model_from_checkpoint

REPO = Path(__file__).resolve().parents[1]
NUDT = REPO.parent / "shared" / "datasets" / "NUDT-SIRST"
GPU_RUN = REPO / "reports" / "nudt_gpu_522ep"


def test_gpu_run_weights_load_with_their_provenance():
    model, state = model_from_checkpoint(GPU_RUN / "sgem_unet_fp16.pt")
    assert state["epoch"] == state["config"]["epochs"] == 522 and state["weights_dtype"] == "float16"
    assert state["config"]["model"] == "sgem_unet" and state["config"]["batch_size"] == 8
    summary = json.loads((GPU_RUN / "train_summary.json").read_text())
    assert summary["complete"] and summary["last"]["test/iou"] == pytest.approx(state["history"][-1]["test/iou"])


@pytest.mark.nudt
@pytest.mark.skipif(not NUDT.is_dir(), reason="NUDT-SIRST copy not present beside the repository")
def test_gpu_run_weights_find_the_targets_of_a_few_test_images():
    """24 test images (not a benchmark: the full split is scored by `sgem evaluate`,
    `metrics.json`): the shipped weights must find nearly every target there."""
    model, state = model_from_checkpoint(GPU_RUN / "sgem_unet_fp16.pt")
    stems = read_split(NUDT / "test.txt")[::28][:24]
    images = [load_image(find_image(NUDT / "images", s)) for s in stems]
    masks = [load_mask(find_image(NUDT / "masks", s)) for s in stems]
    norm = state["normalization"]
    probs = predict_probs(model, images, mean=norm["mean"], std=norm["std"])
    r = evaluate_arrays(probs, masks, curves=False)
    assert r["iou"] > 0.85 and r["pd"] > 0.9, r
    assert all(np.isfinite(p).all() for p in probs)
