"""Checkpoint I/O: the format, atomic save, safe load, the model rebuilt from a
checkpoint, compact inference exports, and the RNG state a resume restores.

A full checkpoint (``checkpoint.pt`` in a run folder, written by :mod:`sgem.train`) holds
model, optimizer, scheduler, completed epochs, RNG states, history, best metric, the
resolved config and the normalisation; an export (:func:`export_weights`) keeps what
inference needs. Both are plain ``torch.save`` dicts tagged with :data:`CHECKPOINT_FORMAT`
and loaded with ``weights_only=True`` (no arbitrary code runs from a checkpoint file).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .io import atomic_write
from .models import create_model

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "sgem-checkpoint-v1"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write atomically; a failed write (a full disk, say) leaves the previous file and
    raises an OSError that names the file."""
    try:
        atomic_write(path, lambda fh: torch.save(state, fh), binary=True)
    except (OSError, RuntimeError) as exc:  # torch reports a short write as a RuntimeError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OSError(f"{path}: could not write the checkpoint ({first[:200]}); is the disk full? "
                      f"The previous checkpoint, if any, is unchanged") from exc


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check that it is one of ours."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot load checkpoint ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an sgem checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    return state


def model_from_checkpoint(state_or_path: dict[str, Any] | str | Path, device: str | torch.device = "cpu"
                          ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained model (eval mode) and return it with the checkpoint."""
    state = state_or_path if isinstance(state_or_path, dict) else load_checkpoint(state_or_path)
    where = state_or_path if not isinstance(state_or_path, dict) else "checkpoint"
    bad = [k for k, v in state["model"].items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{where}: {len(bad)} weight tensor(s) hold NaN or infinite values (e.g. {bad[0]}); "
                         f"a diverged run's weights give meaningless predictions")
    cfg = state["config"]
    model = create_model(cfg["model"], **cfg.get("model_kwargs", {}))
    weights = {k: v.float() if v.is_floating_point() else v for k, v in state["model"].items()}
    model.load_state_dict(weights)
    return model.to(device).eval(), state


def export_weights(checkpoint: str | Path, out: str | Path, *, half: bool = True) -> dict[str, Any]:
    """A compact checkpoint for inference: model weights (fp16 by default), config,
    normalisation, epoch and history; no optimizer or RNG state. ``sgem evaluate`` and
    ``sgem predict`` load it like a full checkpoint (weights are cast back to fp32)."""
    state = load_checkpoint(checkpoint)
    slim = {k: state[k] for k in ("format", "epoch", "config", "history", "best", "normalization", "versions")
            if k in state}
    slim["model"] = {k: (v.half() if half and v.is_floating_point() else v) for k, v in state["model"].items()}
    slim["weights_dtype"] = "float16" if half else "float32"
    save_checkpoint(Path(out), slim)
    return {"out": str(out), "bytes": Path(out).stat().st_size, "epoch": slim["epoch"],
            "weights_dtype": slim["weights_dtype"]}


def rng_state() -> dict[str, Any]:
    """Every global RNG's state, in a form ``weights_only`` loading accepts."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_NAME", "export_weights", "load_checkpoint", "model_from_checkpoint",
           "restore_rng", "rng_state", "save_checkpoint"]
