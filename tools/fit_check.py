"""How well a trained checkpoint fits its own training images, image by image.

    PYTHONPATH=. python tools/fit_check.py CHECKPOINT DATA_ROOT [--every 3] [--split train] [--tile 0]
        [--bn-recalibrate] [--out FILE] [--show K --show-out PNG]

Scores both weight sets a checkpoint holds (``model``: what evaluate and export use, the
EMA average with recalibrated BatchNorm where the protocol has them; ``train_model``: the
raw trained weights) on every ``--every``-th image of ``--split`` (default: the training
split, so the test split is never read), at full size, bf16 autocast + channels_last
(fp32 where the CPU has no native bf16), threshold 0.5. Prints and writes (``--out``,
JSON) the pooled IoU and, per weight set, the images with the most false-alarm pixels.
``--bn-recalibrate`` scores each weight set a second time after recomputing its BatchNorm
statistics on every full-size image of the split (what training's ``bn_recalibrate`` does).
``--show K --show-out PNG`` draws the K images with the most false-alarm pixels under the
``model`` weights (image, ground truth, prediction with its false alarms circled in red), to
see what the network fires on.

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
from sgem.data import load_split, to_tensors
from sgem.device import resolve_precision
from sgem.evaluate import evaluate_arrays, predict_probs
from sgem.io import atomic_write_json
from sgem.train import recalibrate_batchnorm


def _score(model, images, masks, stems, *, norm: dict, precision: str, channels_last: bool, tile: int,
           top: int) -> tuple[dict, list[np.ndarray], np.ndarray]:
    """The summary, the probability maps and the images' order, most false-alarm pixels first."""
    probs = predict_probs(model, images, mean=norm["mean"], std=norm["std"], precision=precision,
                          channels_last=channels_last, tile=tile)
    # the pooled IoU exactly as `sgem evaluate` computes it; the false alarms per image beside it
    iou = evaluate_arrays(probs, masks, curves=False)["iou"]
    fa = [int(((p > 0.5) & ~m).sum()) for p, m in zip(probs, masks)]
    order = np.argsort(-np.asarray(fa), kind="stable")
    return {"iou": iou, "false_alarm_pixels": int(sum(fa)),
            "images_over_100_false_alarm_pixels": int(sum(f > 100 for f in fa)),
            "worst": [[stems[i], fa[i]] for i in order[:top]]}, probs, order


def fit_check(checkpoint: str, data_root: str, *, split: str = "train", every: int = 3, tile: int = 0,
              top: int = 8, bn_recalibrate: bool = False, show: int = 0, show_out: str | None = None) -> dict:
    """``bn_recalibrate``: also score each weight set after recomputing its BatchNorm
    statistics (``sgem.train.recalibrate_batchnorm``, what training's ``bn_recalibrate``
    does) on every full-size image of ``split``, under ``recalibrated``. ``show`` > 0: write
    to ``show_out`` the qualitative grid (``sgem.plots.qualitative_grid``) of the ``show``
    scored images with the most false-alarm pixels under the ``model`` weights, from the maps
    just scored."""
    state = load_checkpoint(checkpoint)
    all_stems, all_images, all_masks = load_split(data_root, split)
    keep = range(0, len(all_stems), every)
    stems, images, masks = ([x[i] for i in keep] for x in (all_stems, all_images, all_masks))
    precision, channels_last = resolve_precision("auto", torch.device("cpu"))
    norm = state["normalization"]
    kw = dict(norm=norm, precision=precision, channels_last=channels_last, tile=tile, top=top)
    out = {"checkpoint": checkpoint, "epoch": state.get("epoch"), "split": split, "every": every,
           "images": len(stems), "tile": tile, "precision": precision, "threshold": 0.5, "weights": {}}
    if bn_recalibrate:
        out["recalibrated"] = {}
        full, _ = to_tensors(all_images, [])
    for which in ("model", "train_model"):
        if which not in state:
            continue
        model, _ = model_from_checkpoint({**state, "model": state[which]})
        out["weights"][which], probs, order = _score(model, images, masks, stems, **kw)
        if which == "model" and show:
            from sgem.plots import qualitative_grid, save

            pick = order[:show]
            save(qualitative_grid([images[i] for i in pick], [masks[i] for i in pick], [probs[i] for i in pick],
                                  [stems[i] for i in pick],
                                  title=f"{checkpoint}: the {len(pick)} {split} images with the most false-alarm pixels"),
                 show_out)
        if bn_recalibrate:
            recalibrate_batchnorm(model, full, mean=norm["mean"], std=norm["std"],
                                  batch_size=state["config"]["batch_size"],   # as training's recalibration
                                  channels_last=channels_last,
                                  autocast_dtype=torch.bfloat16 if precision == "bf16" else None)
            out["recalibrated"][which] = _score(model.eval(), images, masks, stems, **kw)[0]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1].strip())
    ap.add_argument("checkpoint")
    ap.add_argument("data_root")
    ap.add_argument("--split", default="train")
    ap.add_argument("--every", type=int, default=3, help="score every N-th image of the split (default 3)")
    ap.add_argument("--tile", type=int, default=0, help="predict in tiles of this size (0: whole images)")
    ap.add_argument("--bn-recalibrate", action="store_true",
                    help="also score each weight set with BatchNorm statistics recomputed on every image of the split")
    ap.add_argument("--out")
    ap.add_argument("--show", type=int, default=0,
                    help="draw the K images with the most false-alarm pixels (model weights) to --show-out")
    ap.add_argument("--show-out", help="PNG file for --show")
    a = ap.parse_args(argv)
    if a.every < 1:
        ap.error(f"--every must be at least 1, got {a.every}")
    if a.show < 0 or (a.show > 0) != bool(a.show_out):
        ap.error(f"--show K (K >= 1) and --show-out PNG go together, got --show {a.show} --show-out {a.show_out}")
    for p in (a.checkpoint, a.data_root):
        if not os.path.exists(p):
            print(f"fit_check: {p}: not found", file=sys.stderr)
            return 2
    r = fit_check(a.checkpoint, a.data_root, split=a.split, every=a.every, tile=a.tile,
                  bn_recalibrate=a.bn_recalibrate, show=a.show, show_out=a.show_out)
    rows = list(r["weights"].items())
    rows += [(f"{k} recalibrated", w) for k, w in r.get("recalibrated", {}).items()]
    for which, w in rows:
        print(f"{which}: IoU {100 * w['iou']:.2f} on {r['images']} {a.split} images; "
              f"{w['false_alarm_pixels']} false-alarm pixels, "
              f"{w['images_over_100_false_alarm_pixels']} images over 100; worst {w['worst'][:5]}")
    if a.out:
        atomic_write_json(a.out, r)
    if a.show:
        print(f"fit_check: wrote {a.show_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
