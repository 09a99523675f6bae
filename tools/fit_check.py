"""How well a trained checkpoint fits its own training images, image by image.

    PYTHONPATH=. python tools/fit_check.py CHECKPOINT DATA_ROOT [--every 3] [--split train] [--tile 0] [--out FILE]

Scores both weight sets a checkpoint holds (``model``: what evaluate and export use, the
EMA average with recalibrated BatchNorm where the protocol has them; ``train_model``: the
raw trained weights) on every ``--every``-th image of ``--split`` (default: the training
split, so the test split is never read), at full size, bf16 autocast + channels_last
(fp32 where the CPU has no native bf16), threshold 0.5. Prints and writes (``--out``,
JSON) the pooled IoU and, per weight set, the images with the most false-alarm pixels.

Why: a model can fail on a small group of training scenes (thousands of false-alarm
pixels on a few cluttered images) while its validation IoU, on a split with few or none
of those scenes, looks normal (``docs/training.md``, the G protocol on the official split).
This check needs only the training images.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

from sgem.checkpoint import load_checkpoint, model_from_checkpoint
from sgem.data import load_split
from sgem.device import resolve_precision
from sgem.evaluate import evaluate_arrays, predict_probs
from sgem.io import atomic_write_json


def fit_check(checkpoint: str, data_root: str, *, split: str = "train", every: int = 3, tile: int = 0,
              top: int = 8) -> dict:
    state = load_checkpoint(checkpoint)
    stems, images, masks = load_split(data_root, split)
    keep = range(0, len(stems), every)
    stems, images, masks = [stems[i] for i in keep], [images[i] for i in keep], [masks[i] for i in keep]
    precision, channels_last = resolve_precision("auto", torch.device("cpu"))
    norm = state["normalization"]
    out = {"checkpoint": checkpoint, "split": split, "every": every, "images": len(stems), "tile": tile,
           "precision": precision, "threshold": 0.5, "weights": {}}
    for which in ("model", "train_model"):
        if which not in state:
            continue
        model, _ = model_from_checkpoint({**state, "model": state[which]})
        probs = predict_probs(model, images, mean=norm["mean"], std=norm["std"], precision=precision,
                              channels_last=channels_last, tile=tile)
        # the pooled IoU exactly as `sgem evaluate` computes it; the false alarms per image beside it
        iou = evaluate_arrays(probs, masks, curves=False)["iou"]
        fa = [int(((p > 0.5) & ~m).sum()) for p, m in zip(probs, masks)]
        order = np.argsort(-np.asarray(fa), kind="stable")[:top]
        out["weights"][which] = {"iou": iou, "false_alarm_pixels": int(sum(fa)),
                                 "images_over_100_false_alarm_pixels": int(sum(f > 100 for f in fa)),
                                 "worst": [[stems[i], fa[i]] for i in order]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1].strip())
    ap.add_argument("checkpoint")
    ap.add_argument("data_root")
    ap.add_argument("--split", default="train")
    ap.add_argument("--every", type=int, default=3, help="score every N-th image of the split (default 3)")
    ap.add_argument("--tile", type=int, default=0, help="predict in tiles of this size (0: whole images)")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    if a.every < 1:
        ap.error(f"--every must be at least 1, got {a.every}")
    for p in (a.checkpoint, a.data_root):
        if not os.path.exists(p):
            print(f"fit_check: {p}: not found", file=sys.stderr)
            return 2
    r = fit_check(a.checkpoint, a.data_root, split=a.split, every=a.every, tile=a.tile)
    for which, w in r["weights"].items():
        print(f"{which}: IoU {100 * w['iou']:.2f} on {r['images']} {a.split} images; "
              f"{w['false_alarm_pixels']} false-alarm pixels, "
              f"{w['images_over_100_false_alarm_pixels']} images over 100; worst {w['worst'][:5]}")
    if a.out:
        atomic_write_json(a.out, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
