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
from .imageio import read_prediction
from .io import atomic_write, atomic_write_json
from .metrics import IRSTDMetrics
from .models import pad_to_multiple


DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "sgem_unet_nudt.pt"


def default_checkpoint() -> Path:
    """The weights shipped with the package (``sgem/weights/MODEL_CARD.md``), used by
    ``sgem predict`` and ``sgem evaluate`` when no checkpoint is given."""
    if not DEFAULT_WEIGHTS.is_file():
        raise FileNotFoundError(f"{DEFAULT_WEIGHTS}: the shipped weights are missing from this installation; "
                                f"give --checkpoint")
    return DEFAULT_WEIGHTS


@torch.inference_mode()
def predict_probs(model: nn.Module, images: Sequence[np.ndarray], *, mean: float, std: float,
                  device: torch.device | str = "cpu", batch_size: int = 8, multiple: int = 16,
                  precision: str = "fp32", channels_last: bool = False, tile: int = 0) -> list[np.ndarray]:
    """Probabilities (float32, each image's own size) for a list of grey images in [0, 1].

    ``precision`` 'bf16' runs the model under bf16 autocast (the probabilities are
    computed in float32 from its logits); ``channels_last`` converts model and input.
    ``tile`` > 0: an image larger than ``tile`` on a side is predicted in overlapping
    ``tile`` x ``tile`` windows (a quarter of a tile's overlap; probabilities averaged
    where windows overlap), so memory stays bounded whatever the image size."""
    device = torch.device(device)
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16' here (resolve 'auto' first), got {precision!r}")
    if tile and (tile % multiple or tile < 2 * multiple):
        raise ValueError(f"tile must be a multiple of {multiple} and at least {2 * multiple}, got {tile}")
    model.eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    def run(x: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            return torch.sigmoid(model(x).float())
    out: list[np.ndarray] = []
    i = 0
    while i < len(images):
        if tile and max(images[i].shape) > tile:  # one large image: overlapping tiles, bounded memory
            x = (torch.from_numpy(np.ascontiguousarray(images[i]))[None, None].to(device) - mean) / std
            out.append(_tiled(run, x, tile, multiple).cpu().numpy())
            i += 1
            continue
        j = i + 1
        while j < len(images) and j - i < batch_size and images[j].shape == images[i].shape:
            j += 1
        x = torch.from_numpy(np.stack(images[i:j])).unsqueeze(1).to(device)
        x = (x - mean) / std
        x, (h, w) = pad_to_multiple(x, multiple)
        probs = run(x)[:, 0, :h, :w].cpu().numpy()
        out.extend(probs)
        i = j
    return out


def _tiled(run, x: torch.Tensor, tile: int, multiple: int) -> torch.Tensor:
    """(H, W) probabilities of one normalised (1, 1, H, W) image from overlapping windows."""
    x, (h, w) = pad_to_multiple(x, multiple)
    H, W = x.shape[-2:]
    th, tw = min(tile, H), min(tile, W)
    step_h, step_w = max(multiple, th - th // 4), max(multiple, tw - tw // 4)

    def starts(size: int, t: int, step: int) -> list[int]:
        s = list(range(0, size - t + 1, step))
        return s if s[-1] == size - t else s + [size - t]

    acc = torch.zeros((H, W), dtype=torch.float32, device=x.device)
    cnt = torch.zeros((H, W), dtype=torch.float32, device=x.device)
    for y0 in starts(H, th, step_h):
        for x0 in starts(W, tw, step_w):
            acc[y0:y0 + th, x0:x0 + tw] += run(x[..., y0:y0 + th, x0:x0 + tw])[0, 0]
            cnt[y0:y0 + th, x0:x0 + tw] += 1
    return (acc / cnt)[:h, :w]


def evaluate_arrays(probs: Iterable[np.ndarray], masks: Iterable[np.ndarray], *, curves: bool = True,
                    **metric_kwargs: Any) -> dict[str, Any]:
    metrics = IRSTDMetrics(**metric_kwargs) if curves else IRSTDMetrics(curve_thresholds=(), roc_bins=0,
                                                                         **metric_kwargs)
    for p, m in zip(probs, masks):
        metrics.update(p, m)
    return metrics.compute()


def evaluate_model(model: nn.Module, data_root: str | Path, split: str = "test", *, split_file: str | None = None,
                   mean: float, std: float, device: torch.device | str = "cpu", curves: bool = True,
                   save_pred: str | Path | None = None, precision: str = "fp32", channels_last: bool = False,
                   **metric_kwargs: Any) -> dict[str, Any]:
    stems, images, masks = load_split(data_root, split, split_file=split_file)
    probs = predict_probs(model, images, mean=mean, std=std, device=device, precision=precision,
                          channels_last=channels_last)
    if save_pred is not None:
        for stem, p in zip(stems, probs):
            save_probability_png(Path(save_pred) / f"{stem}.png", p)
    result = evaluate_arrays(probs, masks, curves=curves, **metric_kwargs)
    result["split"] = split
    result["data_root"] = str(data_root)
    return result


BACKENDS = ("torch", "onnxruntime", "openvino")


def load_for_inference(checkpoint: str | Path, *, backend: str = "torch", device: torch.device | str = "cpu",
                       precision: str = "fp32") -> tuple[Any, dict[str, float], dict[str, Any]]:
    """(model, normalisation, description) for a PyTorch checkpoint (backend 'torch') or an
    exported ONNX file (backend 'onnxruntime' or 'openvino', :mod:`sgem.deploy`)."""
    if backend in ("onnxruntime", "openvino"):
        from .deploy import OnnxModel, OpenVinoModel

        if Path(checkpoint).suffix.lower() != ".onnx":
            raise ValueError(f"{checkpoint}: the {backend} backend takes an .onnx file "
                             f"(sgem export --format onnx makes one)")
        model = OnnxModel(checkpoint) if backend == "onnxruntime" else OpenVinoModel(checkpoint, precision=precision)
        return model, model.normalization(), {"path": str(checkpoint), "backend": backend,
                                             "model": model.meta.get("model"), "selection": "exported",
                                             "onnx_precision": model.meta.get("precision")}
    if backend != "torch":
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    from .checkpoint import model_from_checkpoint

    if Path(checkpoint).suffix.lower() == ".onnx":
        raise ValueError(f"{checkpoint}: an ONNX file; use --backend onnxruntime or openvino")
    model, state = model_from_checkpoint(checkpoint, device)
    info = {"path": str(checkpoint), "backend": backend, "epoch": state["epoch"],
            "epochs": state["config"]["epochs"], "model": state["config"]["model"], "selection": "last epoch"}
    if "imported_from" in state:
        info.update(selection="as released", imported_from=state["imported_from"])
    return model, state["normalization"], info


def evaluate_checkpoint(checkpoint: str | Path, data_root: str | Path, split: str = "test", *,
                        split_file: str | None = None, device: str = "cpu", curves: bool = True,
                        save_pred: str | Path | None = None, out: str | Path | None = None,
                        precision: str = "fp32", backend: str = "torch", **metric_kwargs: Any) -> dict[str, Any]:
    from .device import resolve_device, resolve_precision
    from .profiling import environment_info

    dev = resolve_device(device)
    prec, channels_last = resolve_precision(precision, dev)
    backend_precision = prec
    if backend != "torch":  # the runtime's own precision (OpenVINO: bf16 on request); no autocast there
        prec, channels_last = "fp32", False
    model, norm, info = load_for_inference(checkpoint, backend=backend, device=dev, precision=backend_precision)
    result = evaluate_model(model, data_root, split, split_file=split_file, mean=norm["mean"], std=norm["std"],
                            device=dev, curves=curves, save_pred=save_pred, precision=prec,
                            channels_last=channels_last, **metric_kwargs)
    result["checkpoint"] = info
    result["inference"] = {"backend": backend, "precision": prec if backend == "torch" else backend_precision,
                           "channels_last": channels_last, "requested": precision}
    result["environment"] = environment_info(dev)
    if out is not None:
        atomic_write_json(out, result)
    return result


def load_prediction(path: str | Path) -> np.ndarray:
    """A saved prediction map as probabilities in [0, 1] (:func:`sgem.imageio.read_prediction`:
    8-bit maps / 255, 16-bit / 65535, float as is, and any map holding only 0 and 1 as binary)."""
    return read_prediction(path)


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


def predict_paths(checkpoint: str | Path | None, paths: Sequence[str | Path], out_dir: str | Path, *,
                  device: str = "cpu", threshold: float = 0.5, precision: str = "auto",
                  tile: int = 1024, backend: str = "torch") -> list[dict[str, Any]]:
    """Write ``<stem>_mask.png`` (0/255), ``<stem>_prob.png`` (16-bit) and ``<stem>_overlay.png``.
    ``checkpoint`` None: the shipped weights (:func:`default_checkpoint`). Images larger
    than ``tile`` on a side are predicted in overlapping tiles (0: never)."""
    from .device import resolve_device, resolve_precision

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: is a file; --out must be a folder for the predictions")
    files = _expand(paths)
    by_stem: dict[str, list[Path]] = {}
    for f in files:
        by_stem.setdefault(f.stem, []).append(f)
    clashes = {k: v for k, v in by_stem.items() if len(v) > 1}
    if clashes:
        k, v = next(iter(clashes.items()))
        raise ValueError(f"{len(clashes)} name(s) occur in several inputs and would overwrite each other's "
                         f"outputs (e.g. '{k}': {', '.join(map(str, v))}); predict them into separate --out folders")
    dev = resolve_device(device)
    prec, channels_last = resolve_precision(precision, dev)
    backend_precision = prec
    if backend != "torch":
        prec, channels_last = "fp32", False
    model, norm, _ = load_for_inference(checkpoint if checkpoint is not None else default_checkpoint(),
                                        backend=backend, device=dev, precision=backend_precision)
    written = []
    for f in files:
        image = load_image(f)
        prob = predict_probs(model, [image], mean=norm["mean"], std=norm["std"], device=dev, precision=prec,
                             channels_last=channels_last, tile=tile)[0]
        mask = prob > threshold
        save_png(out_dir / f"{f.stem}_mask.png", (mask * 255).astype(np.uint8))
        save_probability_png(out_dir / f"{f.stem}_prob.png", prob)
        save_png(out_dir / f"{f.stem}_overlay.png", overlay(image, mask))
        written.append({"image": str(f), "size": list(image.shape), "target_pixels": int(mask.sum())})
    return written
