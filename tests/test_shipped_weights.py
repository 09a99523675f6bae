"""Trained weights committed under reports/ load, and score what their reports say."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import real_dataset, tracked_files

from sgem.data import find_image, load_image, load_mask, read_split
from sgem.evaluate import evaluate_arrays, predict_probs
from sgem.train import model_from_checkpoint

REPO = Path(__file__).resolve().parents[1]
NUDT = real_dataset("NUDT-SIRST")   # data/NUDT-SIRST or $SGEM_DATA/NUDT-SIRST (conftest)
GPU_RUN = REPO / "reports" / "nudt_gpu_522ep"
WEIGHTS = REPO / "sgem" / "weights" / "sgem_unet_nudt.pt"


def test_gpu_run_weights_load_with_their_provenance():
    model, state = model_from_checkpoint(WEIGHTS)
    assert state["epoch"] == state["config"]["epochs"] == 522 and state["weights_dtype"] == "float16"
    assert state["config"]["model"] == "sgem_unet" and state["config"]["batch_size"] == 8
    summary = json.loads((GPU_RUN / "train_summary.json").read_text())
    assert summary["complete"] and summary["last"]["test/iou"] == pytest.approx(state["history"][-1]["test/iou"])


@pytest.mark.nudt
@pytest.mark.skipif(NUDT is None, reason="NUDT-SIRST not found (data/NUDT-SIRST or $SGEM_DATA)")
def test_gpu_run_weights_find_the_targets_of_a_few_test_images():
    """24 test images (not a benchmark: the full split is scored by `sgem evaluate`,
    `metrics.json`): the shipped weights must find nearly every target there."""
    model, state = model_from_checkpoint(WEIGHTS)
    stems = read_split(NUDT / "test.txt")[::28][:24]
    images = [load_image(find_image(NUDT / "images", s)) for s in stems]
    masks = [load_mask(find_image(NUDT / "masks", s)) for s in stems]
    norm = state["normalization"]
    probs = predict_probs(model, images, mean=norm["mean"], std=norm["std"])
    r = evaluate_arrays(probs, masks, curves=False)
    assert r["iou"] > 0.85 and r["pd"] > 0.9, r
    assert all(np.isfinite(p).all() for p in probs)


def test_predict_with_no_checkpoint_uses_the_shipped_weights(tmp_path, capsys):
    from PIL import Image

    from sgem.cli import main

    rng = np.random.default_rng(0)
    img = (rng.random((64, 80)) * 60 + 80).astype(np.uint8)
    img[30:33, 40:43] = 255                       # a small bright target
    Image.fromarray(img).save(tmp_path / "some.png")
    out = tmp_path / "pred"
    assert main(["predict", str(tmp_path / "some.png"), "--out", str(out)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("using the shipped weights") and "MODEL_CARD.md" in first
    mask = np.asarray(Image.open(out / "some_mask.png"))
    assert mask.shape == (64, 80) and mask[31, 41] == 255


def test_bf16_and_fp32_inference_agree_on_the_shipped_weights():
    from sgem.evaluate import predict_probs

    model, state = model_from_checkpoint(WEIGHTS)
    rng = np.random.default_rng(1)
    images = [rng.random((64, 64), dtype=np.float32) * 0.3 + 0.3 for _ in range(2)]
    for im in images:
        im[20:23, 30:33] = 1.0
    norm = state["normalization"]
    p32 = predict_probs(model, images, mean=norm["mean"], std=norm["std"])
    p16 = predict_probs(model, images, mean=norm["mean"], std=norm["std"], precision="bf16", channels_last=True)
    for a, b in zip(p32, p16):
        # bf16 moves probabilities near a target's edge a little; masks agree almost everywhere
        assert np.mean((a > 0.5) != (b > 0.5)) < 2e-3 and np.abs(a - b).mean() < 1e-3


CPU_RUN = REPO / "reports" / "cpu"


def test_cpu_profile_weights_load_with_their_provenance():
    model, state = model_from_checkpoint(CPU_RUN / "sgem_unet_cpu.pt")
    assert state["weights_dtype"] == "float16" and state["config"]["model"] == "sgem_unet"
    assert state["epoch"] == state["config"]["epochs"] and state["config"]["ema_decay"] > 0
    # the weights are the profile's: trained with params.cpu.yaml's protocol as it stands
    import yaml
    params = yaml.safe_load((REPO / "params.cpu.yaml").read_text())["train"]
    for key in ("epochs", "lr", "crop_size", "final_crop_size", "final_epochs", "grad_clip", "grad_clip_epochs",
                "ema_decay", "bn_recalibrate", "seed"):
        assert state["config"][key] == params[key], key
    metrics = json.loads((CPU_RUN / "metrics.json").read_text())
    assert metrics["epoch"] == state["epoch"] and metrics["selection"] == "last epoch"
    assert state["history"][-1]["test/iou"] == pytest.approx(metrics["iou"], abs=1e-4)


@pytest.mark.nudt
@pytest.mark.skipif(NUDT is None, reason="NUDT-SIRST not found (data/NUDT-SIRST or $SGEM_DATA)")
def test_cpu_profile_weights_score_a_few_test_images_as_the_full_split_did():
    """24 test images: the CPU profile's weights find most targets (its full-split IoU is
    ~77, `reports/cpu/metrics.json`)."""
    model, state = model_from_checkpoint(CPU_RUN / "sgem_unet_cpu.pt")
    stems = read_split(NUDT / "test.txt")[::28][:24]
    images = [load_image(find_image(NUDT / "images", s)) for s in stems]
    masks = [load_mask(find_image(NUDT / "masks", s)) for s in stems]
    norm = state["normalization"]
    r = evaluate_arrays(predict_probs(model, images, mean=norm["mean"], std=norm["std"]), masks, curves=False)
    assert r["iou"] > 0.6 and r["pd"] > 0.85, r


def test_committed_weights_record_paths_relative_to_the_repository():
    """A shipped weights file records where its run and data were as a reader's clone names them
    (runs/..., data/...), never the folders of the machine that trained it."""
    import torch
    for f in tracked_files("*.pt"):
        config = torch.load(REPO / f, map_location="cpu", weights_only=True).get("config", {})
        for key in ("out_dir", "data_root"):
            assert not str(config.get(key, "")).startswith("/"), (f, key, config.get(key))
