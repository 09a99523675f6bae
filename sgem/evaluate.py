"""Evaluation and prediction with the same metrics for our models and anyone's outputs.

* :func:`evaluate_model` / ``sgem evaluate --checkpoint``: run a model on a split
  (full images, padded to a multiple of 16 by reflection and cropped back) and score it.
* :func:`evaluate_pred_dir` / ``sgem evaluate --pred-dir``: score saved maps of any
  method, PNGs named by stem: 8-bit maps are read as probability = value / 255, 16-bit
  maps as value / 65535, 1-bit maps as binary.
* :func:`predict_paths` / ``sgem predict``: binary masks, probability maps and overlays
  for images or folders of any size.

Probability maps are written as 16-bit PNGs (``<stem>.png`` under ``--save-pred``), so
re-scoring them with ``--pred-dir`` reproduces the in-memory point metrics (a
probability is on the same side of 0.5 after rounding to 16 bits, except one that is
exactly 0.5).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from .data import IMAGE_EXTS, load_image, load_split
from .io import atomic_write, atomic_write_json
from .metrics import IRSTDMetrics
from .models import pad_to_multiple


@torch.inference_mode()
def predict_probs(model: nn.Module, images: Sequence[np.ndarray], *, mean: float, std: float,
                  device: torch.device | str = "cpu", batch_size: int = 8, multiple: int = 16
                  ) -> list[np.ndarray]:
    """Probabilities (float32, each image's own size) for a list of grey images in [0, 1]."""
    device = torch.device(device)
    model.eval()
    out: list[np.ndarray] = []
    i = 0
    while i < len(images):
        j = i + 1
        while j < len(images) and j - i < batch_size and images[j].shape == images[i].shape:
            j += 1
        x = torch.from_numpy(np.stack(images[i:j])).unsqueeze(1).to(device)
        x = (x - mean) / std
        x, (h, w) = pad_to_multiple(x, multiple)
        probs = torch.sigmoid(model(x).float())[:, 0, :h, :w].cpu().numpy()
        out.extend(probs)
        i = j
    return out


def evaluate_arrays(probs: Iterable[np.ndarray], masks: Iterable[np.ndarray], *, curves: bool = True,
                    **metric_kwargs: Any) -> dict[str, Any]:
    metrics = IRSTDMetrics(**metric_kwargs) if curves else IRSTDMetrics(curve_thresholds=(), roc_bins=0,
                                                                         **metric_kwargs)
    for p, m in zip(probs, masks):
        metrics.update(p, m)
    return metrics.compute()


def evaluate_model(model: nn.Module, data_root: str | Path, split: str = "test", *, split_file: str | None = None,
                   mean: float, std: float, device: torch.device | str = "cpu", curves: bool = True,
                   save_pred: str | Path | None = None, **metric_kwargs: Any) -> dict[str, Any]:
    stems, images, masks = load_split(data_root, split, split_file=split_file)
    probs = predict_probs(model, images, mean=mean, std=std, device=device)
    if save_pred is not None:
        for stem, p in zip(stems, probs):
            save_probability_png(Path(save_pred) / f"{stem}.png", p)
    result = evaluate_arrays(probs, masks, curves=curves, **metric_kwargs)
    result["split"] = split
    result["data_root"] = str(data_root)
    return result


def evaluate_checkpoint(checkpoint: str | Path, data_root: str | Path, split: str = "test", *,
                        split_file: str | None = None, device: str = "cpu", curves: bool = True,
                        save_pred: str | Path | None = None, out: str | Path | None = None,
                        **metric_kwargs: Any) -> dict[str, Any]:
    from .checkpoint import model_from_checkpoint
    from .device import resolve_device
    from .profiling import environment_info

    dev = resolve_device(device)
    model, state = model_from_checkpoint(checkpoint, dev)
    norm = state["normalization"]
    result = evaluate_model(model, data_root, split, split_file=split_file, mean=norm["mean"], std=norm["std"],
                            device=dev, curves=curves, save_pred=save_pred, **metric_kwargs)
    result["checkpoint"] = {"path": str(checkpoint), "epoch": state["epoch"], "epochs": state["config"]["epochs"],
                            "model": state["config"]["model"], "selection": "last epoch"}
    result["environment"] = environment_info(dev)
    if out is not None:
        atomic_write_json(out, result)
    return result


def load_prediction(path: str | Path) -> np.ndarray:
    """A saved prediction map as probabilities in [0, 1] (see module docstring)."""
    with Image.open(path) as im:
        im.load()
        if im.mode == "1":
            return np.asarray(im, dtype=np.float32)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.float64) / 65535.0
        else:
            if im.mode != "L":
                im = im.convert("L")
            arr = np.asarray(im, dtype=np.float64) / 255.0
    if arr.min() < 0 or arr.max() > 1:
        raise ValueError(f"{path}: values outside the 8/16-bit range ({arr.min()}..{arr.max()})")
    return arr.astype(np.float32)


def evaluate_pred_dir(pred_dir: str | Path, data_root: str | Path, split: str = "test", *,
                      split_file: str | None = None, suffix: str = "", curves: bool = True,
                      out: str | Path | None = None, **metric_kwargs: Any) -> dict[str, Any]:
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"{pred_dir}: prediction folder not found")
    stems, _, masks = load_split(data_root, split, split_file=split_file)
    probs, missing = [], []
    for stem, mask in zip(stems, masks):
        path = next((pred_dir / f"{stem}{suffix}{e}" for e in IMAGE_EXTS if (pred_dir / f"{stem}{suffix}{e}").is_file()),
                    None)
        if path is None:
            missing.append(f"{stem}{suffix}.png")
            continue
        p = load_prediction(path)
        if p.shape != mask.shape:
            raise ValueError(f"{path}: prediction is {p.shape[1]}x{p.shape[0]} but the mask of '{stem}' is "
                             f"{mask.shape[1]}x{mask.shape[0]} (width x height)")
        probs.append(p)
    if missing:
        raise FileNotFoundError(f"{pred_dir}: {len(missing)} prediction(s) missing for split '{split}', "
                                f"e.g. {', '.join(missing[:5])}")
    result = evaluate_arrays(probs, masks, curves=curves, **metric_kwargs)
    result.update({"split": split, "data_root": str(data_root), "pred_dir": str(pred_dir)})
    if out is not None:
        atomic_write_json(out, result)
    return result


def save_probability_png(path: str | Path, prob: np.ndarray) -> None:
    arr = np.round(np.clip(prob, 0.0, 1.0) * 65535.0).astype(np.uint16)
    atomic_write(path, lambda fh: Image.fromarray(arr).save(fh, format="PNG"), binary=True)


def save_png(path: str | Path, array: np.ndarray) -> None:
    atomic_write(path, lambda fh: Image.fromarray(array).save(fh, format="PNG"), binary=True)


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB uint8: the grey image with the predicted targets' outlines in red."""
    from scipy import ndimage

    grey = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    rgb = np.stack([grey] * 3, axis=-1)
    edge = mask & ~ndimage.binary_erosion(mask)
    ring = ndimage.binary_dilation(mask, iterations=2) & ~mask
    rgb[edge | ring] = (255, 0, 0)
    return rgb


def _expand(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such image or folder")
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTS)}) found in {', '.join(map(str, paths))}")
    return files


def predict_paths(checkpoint: str | Path, paths: Sequence[str | Path], out_dir: str | Path, *,
                  device: str = "cpu", threshold: float = 0.5) -> list[dict[str, Any]]:
    """Write ``<stem>_mask.png`` (0/255), ``<stem>_prob.png`` (16-bit) and ``<stem>_overlay.png``."""
    from .checkpoint import model_from_checkpoint
    from .device import resolve_device

    dev = resolve_device(device)
    model, state = model_from_checkpoint(checkpoint, dev)
    norm = state["normalization"]
    out_dir = Path(out_dir)
    written = []
    for f in _expand(paths):
        image = load_image(f)
        prob = predict_probs(model, [image], mean=norm["mean"], std=norm["std"], device=dev)[0]
        mask = prob > threshold
        save_png(out_dir / f"{f.stem}_mask.png", (mask * 255).astype(np.uint8))
        save_probability_png(out_dir / f"{f.stem}_prob.png", prob)
        save_png(out_dir / f"{f.stem}_overlay.png", overlay(image, mask))
        written.append({"image": str(f), "size": list(image.shape), "target_pixels": int(mask.sum())})
    return written
