"""Does BatchNorm recalibration change how a checkpoint fits its own training images?

For each checkpoint and each weight set it holds (``model``: the EMA, ``train_model``: the
raw weights), the pooled IoU and the images over 100 false-alarm pixels on every third
image of the official training split (as ``tools/fit_check.py``), with the statistics as
saved and again after recomputing them (``sgem.train.recalibrate_batchnorm``) on all
full-size training images. bf16 + channels_last. The test split is not read.

    PYTHONPATH=. python reports/cpu_pilots/bn_recal_check.py DATA CHECKPOINT [CHECKPOINT ...]
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from sgem.checkpoint import load_checkpoint, model_from_checkpoint
from sgem.data import load_split
from sgem.evaluate import evaluate_arrays, predict_probs
from sgem.train import recalibrate_batchnorm


def main(data: str, checkpoints: list[str]) -> None:
    stems, images, masks = load_split(data, "train")
    keep = range(0, len(stems), 3)
    sub = [(stems[i], images[i], masks[i]) for i in keep]
    full = [torch.from_numpy(np.asarray(x, dtype=np.float32))[None] for x in images]

    def score(model, norm, tag):
        probs = predict_probs(model, [s[1] for s in sub], mean=norm["mean"], std=norm["std"],
                              precision="bf16", channels_last=True, tile=0)
        iou = evaluate_arrays(probs, [s[2] for s in sub], curves=False)["iou"]
        fa = [int(((p > 0.5) & ~s[2]).sum()) for p, s in zip(probs, sub)]
        worst = np.argsort(-np.asarray(fa), kind="stable")[:4]
        print(f"  {tag}: IoU {100 * iou:.2f}, images over 100 false-alarm pixels: {sum(f > 100 for f in fa)}, "
              f"worst {[(sub[i][0], fa[i]) for i in worst]}", flush=True)

    for ck in checkpoints:
        state = load_checkpoint(ck)
        norm = state["normalization"]
        print(f"{ck} (epoch {state['epoch']})")
        for which in ("model", "train_model"):
            if which not in state:
                continue
            model, _ = model_from_checkpoint({**state, "model": state[which]})
            score(model.eval(), norm, f"{which} as saved")
            recalibrate_batchnorm(model, full, mean=norm["mean"], std=norm["std"], batch_size=8,
                                  channels_last=True, autocast_dtype=torch.bfloat16)
            score(model.eval(), norm, f"{which} recalibrated on {len(full)} images")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: bn_recal_check.py DATA CHECKPOINT [CHECKPOINT ...]")
    main(sys.argv[1], sys.argv[2:])
