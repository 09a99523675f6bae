"""Checkpoints of other IRSTD toolboxes, converted into sgem checkpoints.

The field's released weights (BasicIRSTD, LESPS, which follows BasicIRSTD, and the DNANet
repository) store the architectures sgem reimplements under their own module names.
:func:`import_checkpoint` unwraps the file (``state_dict``/``net``/``model`` wrappers,
``model.``/``module.`` prefixes), renames the keys by the model's rules below, checks that
every tensor sgem's model expects is there with the same shape (naming the first that is
not), and writes an sgem checkpoint carrying the normalisation the weights were trained
with. ``sgem evaluate``, ``predict``, ``export`` and ``bench`` then work on it as on sgem's
own, with sgem's metrics.

Normalisation: the toolboxes normalise grey values in 0-255 units, ``(v - mean) / std``
with their dataset's mean and std; sgem reads images in [0, 1], so both are divided by
255 (the same affine map).

Renaming rules (regular expressions applied in order to each key after the prefix is
removed), per model:

* ``acm`` (BasicIRSTD's ResNet-style blocks): ``convN``/``bnN`` of a residual block are
  sgem's ``body.0``/``body.1`` (first conv/BN) and ``body.3``/``body.4`` (second);
  ``downsample`` is ``down``; the FCN head's ``head.block.`` is ``head.``. Checked on
  LESPS's released ACM (297 tensors; its published NUDT-SIRST IoU reproduced,
  ``tests/test_importers.py``).
* ``dnanet`` (BasicIRSTD's DNANet, 1 input channel): the CBAM spatial gate's ``sa.conv1``
  is ``sa.conv``; the four deep-supervision heads ``final1`` ... ``final4`` are
  ``heads.0`` ... ``heads.3``; every other name is the same. Checked against BasicIRSTD's
  own DNANet code with the same weights (570 tensors; its sigmoid output equals the
  sigmoid of sgem's logits exactly).

* ``alcnet`` (BasicIRSTD's ``ASKCResNetFPN``): the ``acm`` rules. The reference's
  ``uplayer1``/``uplayer2`` (96 tensors, defined but never run) are left unused. Checked
  against BasicIRSTD's own code with the same weights: its sigmoid output equals the
  sigmoid of sgem's logits to 6e-8 (float rounding), 263 tensors.
* ``uiunet`` (BasicIRSTD's ``UIUNET``, the official UIU-Net's names): inside each RSU
  block of depth L (``UIUNET_DEPTH``) ``rebnconvin`` is ``inp``, ``rebnconvK`` is
  ``enc.{K-1}`` for K < L and ``bottom`` for K = L, ``rebnconvKd`` is ``dec.{L-1-K}``;
  a layer's ``conv_s1``/``bn_s1`` are ``0``/``1``; ``side1`` ... ``side6`` are
  ``sides.0`` ... ``sides.5``; in the fusions ``feature_high`` is ``high`` and the spatial
  gate's ``conv1`` is ``conv``. Checked against BasicIRSTD's own code with the same
  weights: outputs identical (942 tensors).

``tests/test_importers.py`` keeps both checks: the reference models' tensor names and
shapes (``tests/fixtures/basicirstd_*_keys.txt``) must map onto sgem's, and imported
deterministic weights must reproduce the reference code's output
(``tests/fixtures/basicirstd_outputs.json``).

ISNet is refused: its reference code needs a compiled deformable-convolution extension
(DCNv2) that could not be run here, so the mapping and the offset layout of sgem's
pure-torch deformable convolution have not been checked against it.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from .models import create_model

RESNET_BLOCK_RULES: list[tuple[str, str]] = [
    (r"\.conv1\.", ".body.0."), (r"\.bn1\.", ".body.1."),
    (r"\.conv2\.", ".body.3."), (r"\.bn2\.", ".body.4."),
    (r"\.downsample\.", ".down."),
    (r"^head\.block\.", "head."),
]

DNANET_RULES: list[tuple[str, Any]] = [
    (r"\.sa\.conv1\.", ".sa.conv."),
    (r"^final([1-4])\.", lambda m: f"heads.{int(m.group(1)) - 1}."),
]

# UIU-Net: the depth of each RSU block (RSU7 ... RSU4, RSU4F counts as 4)
UIUNET_DEPTH = {"stage1": 7, "stage2": 6, "stage3": 5, "stage4": 4, "stage5": 4, "stage6": 4,
                "stage5d": 4, "stage4d": 4, "stage3d": 5, "stage2d": 6, "stage1d": 7}


def _rsu_layer(m: re.Match) -> str:
    """``stageX.rebnconvK`` of an RSU block of depth L: K < L is encoder layer K-1, K = L the
    dilated bottom layer; ``rebnconvKd`` is decoder layer L-1-K; ``rebnconvin`` the input layer."""
    stage, k, d = m.group(1), m.group(2), m.group(3)
    if stage not in UIUNET_DEPTH:
        return m.group(0)
    if k == "in":
        return f"{stage}.inp."
    depth, k = UIUNET_DEPTH[stage], int(k)
    if d:
        return f"{stage}.dec.{depth - 1 - k}."
    return f"{stage}.bottom." if k == depth else f"{stage}.enc.{k - 1}."


UIUNET_RULES: list[tuple[str, Any]] = [
    (r"^(stage\w+)\.rebnconv(in|\d)(d?)\.", _rsu_layer),
    (r"\.conv_s1\.", ".0."), (r"\.bn_s1\.", ".1."),
    (r"^side([1-6])\.", lambda m: f"sides.{int(m.group(1)) - 1}."),
    (r"\.feature_high\.", ".high."),
    (r"\.bottomup\.3\.conv1\.", ".bottomup.3.conv."),
]

RULES: dict[str, list[tuple[str, Any]]] = {
    "acm": RESNET_BLOCK_RULES,
    "alcnet": RESNET_BLOCK_RULES,
    "dnanet": DNANET_RULES,
    "uiunet": UIUNET_RULES,
}

WRAPPERS = ("state_dict", "net", "model", "model_state_dict")
PREFIXES = ("module.", "model.")


def unwrap(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The tensor dict inside a loaded checkpoint, without wrappers or prefixes."""
    for _ in range(3):
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            key = next((k for k in WRAPPERS if k in obj), None)
            if key is None:
                raise ValueError(f"{source}: no weights found (top-level keys {sorted(obj)[:8]}; expected a state "
                                 f"dict or one under {', '.join(WRAPPERS)})")
            obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{source}: no weights found (expected a dict of tensors)")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in PREFIXES:
        if tensors and all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def rename(tensors: dict[str, torch.Tensor], model: str) -> dict[str, torch.Tensor]:
    rules = [(re.compile(a), b) for a, b in RULES[model]]
    out = {}
    for k, v in tensors.items():
        for pattern, repl in rules:
            k = pattern.sub(repl, k)
        out[k] = v
    return out


def import_checkpoint(src: str | Path, model: str, *, mean: float, std: float, out: str | Path,
                      model_kwargs: dict[str, Any] | None = None, toolbox: str = "") -> dict[str, Any]:
    """Convert ``src`` (another toolbox's checkpoint) into an sgem checkpoint at ``out``.

    ``mean`` and ``std``: the normalisation the weights were trained with, in 0-255 grey
    units (as the toolboxes state it). Returns a summary (tensors, unused source keys)."""
    src = Path(src)
    if model not in RULES:
        raise ValueError(f"no import rules for model '{model}' (available: {', '.join(sorted(RULES))})")
    if not std > 0 or not 0 <= mean <= 255:
        raise ValueError(f"mean={mean}, std={std}: expected the training normalisation in 0-255 grey units "
                         f"(0 <= mean <= 255, std > 0)")
    if not src.is_file():
        raise FileNotFoundError(f"{src}: checkpoint not found")
    raw = src.read_bytes()
    try:
        import io

        loaded = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{src}: cannot load ({str(exc).splitlines()[0][:200]})") from None
    tensors = rename(unwrap(loaded, str(src)), model)
    kwargs = dict(model_kwargs or {})
    net = create_model(model, **kwargs)
    expected = net.state_dict()
    for k, v in expected.items():
        if k not in tensors:
            raise ValueError(f"{src}: does not match sgem's '{model}' {kwargs or ''}: tensor '{k}' "
                             f"{tuple(v.shape)} is missing (after renaming)")
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise ValueError(f"{src}: does not match sgem's '{model}': tensor '{k}' is {tuple(tensors[k].shape)} "
                             f"in the file, {tuple(v.shape)} in sgem's model")
    unused = sorted(set(tensors) - set(expected))
    weights = {k: tensors[k].to(expected[k].dtype) for k in expected}
    net.load_state_dict(weights)  # strict: a final check
    state = {
        "format": CHECKPOINT_FORMAT, "epoch": None,
        "config": {"model": model, "model_kwargs": kwargs, "epochs": None},
        "model": weights, "history": [], "best": None,
        "normalization": {"mean": mean / 255.0, "std": std / 255.0, "source_units": "0-255",
                          "source_mean": mean, "source_std": std},
        "imported_from": {"file": src.name, "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest(),
                          "toolbox": toolbox, "unused_keys": unused},
        "versions": {"torch": str(torch.__version__)},
    }
    save_checkpoint(out, state)
    return {"out": str(out), "model": model, "tensors": len(weights), "unused_source_keys": unused,
            "normalization": state["normalization"]}
