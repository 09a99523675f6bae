"""Training engine: the paper's protocol by default, resumable, deterministic on request.

Protocol (sec. 4.2): 1500 epochs, batch 8, learning rate 1e-4, random 256x256 crops,
SoftIoU loss. The paper does not name the optimizer, the schedule or the augmentation;
the defaults follow DNANet's training script, which the paper builds on (same dataset,
same split, same 1500 epochs): Adam, cosine annealing from ``lr`` to ``min_lr`` = 1e-5
over the run, and random flips/transposes. Each is a named parameter.

Data path: the whole split is decoded once and kept as tensors on the training device;
crops, flips and normalisation are done there, so a fast GPU is not starved by a few CPU
cores decoding PNGs. Random numbers for sampling and augmentation come from a CPU
generator seeded by ``(seed, epoch)``: an epoch's batches do not depend on what ran
before, which is what makes resume exact.

Resume: ``checkpoint.pt`` in ``out_dir`` holds model, optimizer, scheduler, completed
epochs, RNG states, history, best metric and the resolved config; it is written
atomically (temp file, fsync, rename) every ``checkpoint_every`` epochs and at the end;
``keep_checkpoints`` names epochs whose checkpoint is also kept as ``checkpoint_eNNNN.pt``.
A rerun with the same config resumes from it; a run killed at any moment (SIGKILL
included) loses at most the epochs since the last checkpoint, and in deterministic mode
ends with bit-identical weights. DVCLive's history is rebuilt from the checkpoint's
history on resume, so it has each epoch exactly once.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_NAME, export_weights,  # noqa: F401  (re-exported)
                         load_checkpoint, model_from_checkpoint, restore_rng, rng_state, save_checkpoint)
from .data import image_stats, load_split, split_source, to_tensors, validate_dataset
from .device import cpu_name, resolve_device, resolve_precision
from .io import RunLock, atomic_write_json
from .losses import SoftIoULoss
from .models import create_model, pad_to_multiple

# keys that may differ between the run that wrote a checkpoint and the run resuming it
# (how a step is computed is not what is trained: precision, layout, compilation and graph
# capture may change between chunks of one run)
RESUMABLE_DIFFERENCES = {"out_dir", "data_root", "device", "checkpoint_every", "keep_checkpoints", "eval_every",
                         "progress", "dvclive", "num_threads", "on_config_change", "precision", "channels_last",
                         "compile", "cuda_graph", "allow_split_overlap"}


@dataclass
class TrainConfig:
    """Every knob of a training run. Defaults are the paper's protocol."""

    data_root: str = ""
    out_dir: str = "runs/sgem_unet"
    model: str = "sgem_unet"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"
    train_split_file: str | None = None
    eval_split: str = "test"
    eval_split_file: str | None = None
    epochs: int = 1500
    batch_size: int = 8
    lr: float = 1e-4
    optimizer: str = "adam"          # adam | adamw | sgd | adagrad
    weight_decay: float = 0.0
    momentum: float = 0.9            # sgd only
    scheduler: str = "cosine"        # cosine | constant | step
    min_lr: float = 1e-5             # cosine: final learning rate
    step_epochs: int = 0             # step: decay every N epochs (0: epochs // 3)
    step_gamma: float = 0.1
    crop_size: int = 256
    final_crop_size: int = 0         # the last final_epochs epochs use this crop (0: crop_size throughout)
    final_epochs: int = 0
    crop_targets: float = 0.0        # probability that a crop is placed over a target pixel (0: uniform crops)
    nonempty_batches: bool = False   # a batch whose crops hold no target pixel gets one crop moved over a target
    crop_false_alarms: float = 0.0   # probability that a crop is placed over the image's last recorded false alarm
    warmup_epochs: int = 0           # linear warm-up from lr/10 to lr, then the scheduler over the rest
    ema_decay: float = 0.0           # > 0: evaluate and export an exponential moving average of the weights
    grad_clip: float = 0.0           # > 0: clip the gradients' global norm to this before each step
    grad_clip_epochs: int = 0        # > 0: grad_clip applies in the first N epochs only, grad_clip_late after
    grad_clip_late: float = 0.0      # the clipping limit after grad_clip_epochs (0: none; the norms still logged)
    grad_clip_growth: float = 1.0    # > 1: after grad_clip_epochs the limit grows by this factor per epoch instead
    bn_recalibrate: bool = False     # at the end: BatchNorm statistics recomputed on the full-size train images
    augment: str = "flip"            # flip (h/v flips and transpose) | none
    loss_smooth: float = 1.0
    loss_reduction: str = "batch"    # batch | sample
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"             # auto | cpu | cuda[:N]
    precision: str = "fp32"          # fp32 | bf16 (autocast) | auto (bf16 + channels_last where native)
    channels_last: bool = False
    compile: bool = False
    cuda_graph: bool = False         # CUDA only: capture forward+loss+backward as one CUDA graph
    checkpoint_every: int = 10
    keep_checkpoints: str = ""       # epochs ("15,40,60") whose checkpoint is also kept (checkpoint_e0015.pt)
    eval_every: int = 0              # evaluate on eval_split every N epochs (0: only at the end)
    progress: bool = True
    dvclive: bool = True
    num_threads: int = 0             # CPU threads for torch (0: torch's default)
    on_config_change: str = "error"  # error | restart: what to do with a checkpoint of other settings
    allow_split_overlap: bool = False  # train and evaluation splits sharing images (refused by default)

    def validate(self) -> None:
        def bad(key: str, expected: str) -> None:
            raise ValueError(f"train config: {key}={getattr(self, key)!r}; expected {expected}")

        if not self.data_root:
            bad("data_root", "the dataset folder (images/, masks/, split lists)")
        for key in ("epochs", "batch_size", "crop_size", "checkpoint_every"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                bad(key, "an integer >= 1")
        for key in ("final_crop_size", "final_epochs", "warmup_epochs"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 0:
                bad(key, "an integer >= 0")
        for key in ("crop_size", "final_crop_size"):
            if getattr(self, key) % 16:
                bad(key, "a multiple of 16 (the U-Net pools 4 times)")
        if self.final_epochs > self.epochs:
            bad("final_epochs", f"at most epochs ({self.epochs})")
        if self.warmup_epochs >= self.epochs:
            bad("warmup_epochs", f"fewer than epochs ({self.epochs})")
        if not 0.0 <= self.crop_targets <= 1.0:
            bad("crop_targets", "a probability in [0, 1] (0: uniform random crops)")
        if not 0.0 <= self.crop_false_alarms <= 1.0:
            bad("crop_false_alarms", "a probability in [0, 1] (0: no crops placed over false alarms)")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            bad("grad_clip", "a number >= 0 (0: no clipping)")
        if not (isinstance(self.grad_clip_epochs, int) and 0 <= self.grad_clip_epochs < self.epochs):
            bad("grad_clip_epochs", f"an integer >= 0 and below epochs ({self.epochs}) (0: grad_clip in every epoch)")
        if self.grad_clip_epochs and not self.grad_clip > 0:
            bad("grad_clip_epochs", "0 unless grad_clip > 0 (it says for how many epochs grad_clip applies)")
        if not (math.isfinite(self.grad_clip_late) and self.grad_clip_late >= 0):
            bad("grad_clip_late", "a number >= 0 (0: no clipping after grad_clip_epochs)")
        if self.grad_clip_late and not self.grad_clip_epochs:
            bad("grad_clip_late", "0 unless grad_clip_epochs > 0 (the limit after those epochs)")
        if not (math.isfinite(self.grad_clip_growth) and self.grad_clip_growth >= 1.0):
            bad("grad_clip_growth", "a number >= 1 (1: the limit does not grow)")
        if self.grad_clip_growth > 1.0 and not (self.grad_clip_epochs and not self.grad_clip_late):
            bad("grad_clip_growth", "1 unless grad_clip_epochs > 0 and grad_clip_late is 0 "
                                    "(it makes grad_clip grow after those epochs instead of stopping)")
        if not 0.0 <= self.ema_decay < 1.0:
            bad("ema_decay", "a number in [0, 1) (0: no averaging)")
        if not self.lr > 0:
            bad("lr", "a positive number")
        if self.optimizer not in ("adam", "adamw", "sgd", "adagrad"):
            bad("optimizer", "one of adam, adamw, sgd, adagrad")
        if self.scheduler not in ("cosine", "constant", "step"):
            bad("scheduler", "one of cosine, constant, step")
        if self.augment not in ("flip", "none"):
            bad("augment", "'flip' or 'none'")
        if self.loss_reduction not in ("batch", "sample"):
            bad("loss_reduction", "'batch' or 'sample'")
        if self.precision not in ("fp32", "bf16", "auto"):
            bad("precision", "'fp32', 'bf16' or 'auto'")
        if self.eval_every < 0:
            bad("eval_every", "an integer >= 0")
        try:
            kept_ok = all(1 <= e <= self.epochs for e in self.kept_epochs)
        except ValueError:   # an entry that is not an integer
            kept_ok = False
        if not kept_ok:
            bad("keep_checkpoints", f"epochs in 1..{self.epochs} separated by commas, e.g. '15,40,60' ('': none)")
        if self.on_config_change not in ("error", "restart"):
            bad("on_config_change", "'error' or 'restart'")

    @property
    def kept_epochs(self) -> frozenset[int]:
        """The epochs of ``keep_checkpoints`` (a ValueError where one is not an integer)."""
        return frozenset(int(e) for e in self.keep_checkpoints.split(",") if e.strip())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Build from a mapping (a YAML section, say), every value checked against its
        field's type: a wrong type is an error naming the key, never a silent change
        (``deterministic: "false"`` would otherwise be true). The one conversion: a float
        field accepts a string that is a number, because YAML 1.1 reads ``1e-3`` as the
        string '1e-3'; and ``keep_checkpoints`` accepts an epoch or a list of epochs, as YAML
        reads ``60`` or ``[15, 40, 60]``."""
        if not isinstance(d, dict):
            raise ValueError(f"train config: expected a mapping of settings, got {type(d).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ValueError(f"train config: unknown key(s) {unknown}; known keys: {sorted(fields)}")
        d = dict(d)
        kept = d.get("keep_checkpoints")
        if isinstance(kept, list) or (isinstance(kept, int) and not isinstance(kept, bool)):
            d["keep_checkpoints"] = ",".join(str(e) for e in (kept if isinstance(kept, list) else [kept]))
        return cls(**{k: _checked(k, str(fields[k].type), v) for k, v in d.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _checked(key: str, typ: str, value: Any) -> Any:
    def bad(expected: str) -> ValueError:
        return ValueError(f"train config: {key}={value!r} ({type(value).__name__}); expected {expected}")

    if value is None and "None" in typ:
        return None
    base = typ.split("|")[0].strip()
    if base == "bool":
        if not isinstance(value, bool):
            raise bad("true or false (a YAML boolean, not a string or number)")
    elif base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
    elif base == "float":
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad("a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    elif base == "str":
        if not isinstance(value, str):
            raise bad("a string")
    elif base.startswith("dict"):
        if not isinstance(value, dict):
            raise bad("a mapping")
    return value


# ----------------------------------------------------------------------------- helpers

def set_determinism(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator that draws epoch ``epoch``'s order, crops and flips."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))


def build_optimizer(cfg: TrainConfig, params, *, fused: bool = False) -> torch.optim.Optimizer:
    """``fused`` (CUDA): Adam/AdamW update every parameter in one kernel launch; the
    arithmetic is Adam's, only the launches differ."""
    fused_kw = {"fused": True} if fused else {}
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused_kw)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused_kw)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adagrad(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch schedule; with ``warmup_epochs`` = W, W epochs rising linearly from
    lr/10 to lr come first and the schedule runs over the remaining epochs."""
    S = torch.optim.lr_scheduler
    rest = cfg.epochs - cfg.warmup_epochs
    if cfg.scheduler == "cosine":
        main: S.LRScheduler = S.CosineAnnealingLR(opt, T_max=rest, eta_min=cfg.min_lr)
    elif cfg.scheduler == "step":
        main = S.StepLR(opt, step_size=cfg.step_epochs or max(1, rest // 3), gamma=cfg.step_gamma)
    else:
        main = S.LambdaLR(opt, lambda _: 1.0)
    if not cfg.warmup_epochs:
        return main
    warm = S.LinearLR(opt, start_factor=0.1, end_factor=1.0, total_iters=cfg.warmup_epochs)
    return S.SequentialLR(opt, [warm, main], milestones=[cfg.warmup_epochs])


class WeightEMA:
    """Exponential moving average of a model's weights and floating-point buffers, updated
    after every optimizer step: ``ema = d * ema + (1 - d) * w`` with
    ``d = min(decay, (1 + n) / (10 + n))`` after n updates, so that the average does not
    drag the random initial weights along for the first thousand steps (the warm-up of
    TensorFlow's ExponentialMovingAverage with num_updates). Integer buffers (BatchNorm's
    batch counter) are copied."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0
        self._pairs: list[tuple[list[torch.Tensor], list[torch.Tensor]]] | None = None
        self._source: nn.Module | None = None

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        if self._source is not model:
            mine, theirs = self.module.state_dict(keep_vars=True), model.state_dict(keep_vars=True)
            fl = [(mine[k].data, theirs[k].data) for k in mine if mine[k].is_floating_point()]
            ints = [(mine[k].data, theirs[k].data) for k in mine if not mine[k].is_floating_point()]
            self._pairs = ([a for a, _ in fl], [b for _, b in fl]), ([a for a, _ in ints], [b for _, b in ints])
            self._source = model
        (ema_f, model_f), (ema_i, model_i) = self._pairs  # type: ignore[misc]
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(ema_f, model_f, 1.0 - d)
        for a, b in zip(ema_i, model_i):
            a.copy_(b)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: list[torch.Tensor], *, mean: float, std: float,
                          batch_size: int, channels_last: bool, autocast_dtype: torch.dtype | None) -> int:
    """Recompute every BatchNorm's running statistics over ``images`` (each (1, H, W) on
    the model's device, at full size, no augmentation): train-mode forward passes with
    cumulative averaging (the mean over batches of the batch statistics); the weights
    are not touched. Returns the number of images used.

    Why: a model trained on small crops (or whose weights are averaged) carries running
    statistics estimated under other conditions than the full test images; recomputing
    them costs one forward pass over the training split ("precise BN")."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    saved = [(m.momentum, m.training) for m in bns]
    was_training = model.training
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    device = images[0].device
    by_shape: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for im in images:
        by_shape.setdefault(tuple(im.shape), []).append(im)
    n = 0
    try:
        for group in by_shape.values():
            for i in range(0, len(group), batch_size):
                x = (torch.stack(group[i:i + batch_size]) - mean) / std
                x, _ = pad_to_multiple(x, 16)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    model(x)
                n += len(group[i:i + batch_size])
    finally:
        for m, (momentum, training) in zip(bns, saved):
            m.momentum = momentum
            m.train(training)
        model.train(was_training)
    return n


class DeviceData:
    """A split resident on the device: images (1,H,W) float32 in [0,1], masks uint8.

    Batches are assembled by one vectorised gather over a stacked copy of the split (no
    per-sample Python loop, a fixed number of device operations per batch, whatever
    the batch size): the host stays out of the way of a fast GPU, and a CUDA-graph
    step only needs the gathered batch copied into its static input.
    """

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray], device: torch.device) -> None:
        imgs, msks = to_tensors(images, masks, device)
        self.device = device
        self.sizes = torch.tensor([list(im.shape[-2:]) for im in imgs], dtype=torch.long, device=device)
        self._lists = (imgs, msks)
        self._stack: tuple[tuple[int, float], torch.Tensor, torch.Tensor] | None = None
        self._hw = (0, 0)
        self._targets: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        # hard negatives (``crop_false_alarms``): per image, the (row, col) of the most
        # confident false alarm of its last training crop that showed one (-1: none), and
        # the epoch that recorded it (0: never; merges the records of several processes)
        n = len(self.sizes)
        self.false_alarms = torch.full((n, 2), -1, dtype=torch.long, device=device)
        self.false_alarm_epoch = torch.zeros(n, dtype=torch.long, device=device)
        self.false_alarm_crops = torch.zeros((), dtype=torch.long, device=device)  # crops placed over one
        self._last: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int] | None = None

    def __len__(self) -> int:
        return len(self.sizes)

    def targets(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every target pixel, image by image: image i's (row, col) pairs are
        ``yx[start[i] : start[i] + count[i]]``. Built on first use (crops placed over a
        target); returns (yx, start, count)."""
        if self._targets is None:
            coords = [torch.nonzero(m[0] > 0) for m in self._lists[1]]
            count = torch.tensor([len(c) for c in coords], dtype=torch.long, device=self.device)
            self._targets = (torch.cat(coords), torch.cumsum(count, 0) - count, count)
        return self._targets

    def full_images(self) -> list[torch.Tensor]:
        """Every image at its own size, (1, H, W) on the device."""
        return list(self._lists[0])

    def _stacked(self, crop: int, pad_value: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and masks flattened to (N * H * W,), each padded at the bottom and right
        to a common (H, W) >= crop: images with ``pad_value``, masks with 0 (what cropping
        one image would pad). Built once per (crop, pad_value)."""
        key = (crop, float(pad_value))
        if self._stack is None or self._stack[0] != key:
            self._stack = None  # free the old copy first
            imgs, msks = self._lists
            H = max(crop, int(self.sizes[:, 0].max()))
            W = max(crop, int(self.sizes[:, 1].max()))
            si = torch.full((len(imgs), H, W), float(pad_value), dtype=torch.float32, device=self.device)
            sm = torch.zeros((len(imgs), H, W), dtype=torch.uint8, device=self.device)
            for i, (im, m) in enumerate(zip(imgs, msks)):
                h, w = im.shape[-2:]
                si[i, :h, :w] = im[0]
                sm[i, :h, :w] = m[0]
            self._hw = (H, W)
            self._stack = (key, si.view(-1), sm.view(-1))
        return self._stack[1], self._stack[2]

    def batch(self, idx: list[int], crop: int, gen: torch.Generator, augment: str, pad_value: float,
              crop_targets: float = 0.0, nonempty_batches: bool = False,
              crop_false_alarms: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Random crops (padded with ``pad_value`` where an image is smaller) and flips.

        Per sample, five integers are drawn from ``gen`` (crop row, crop column, then
        horizontal flip, vertical flip and transpose, each applied when odd), in that
        order; the crop offset is taken modulo the valid range of that image.

        ``crop_targets`` > 0: then four more integers per sample (after all the above):
        with probability ``crop_targets`` a sample of an image that has targets is
        placed over one of its target pixels, drawn uniformly, at a uniform offset among
        those that keep that pixel inside the crop. With 0 nothing more is drawn, so runs
        without it are unchanged.

        ``nonempty_batches``: then five more integers per sample (after all the above);
        if no crop of the batch holds a target pixel, one sample whose image has targets
        (drawn uniformly among them) is cropped again, placed over a target as above,
        with its own flips; a batch that holds a target is left as drawn. Decided on the
        device, without a host synchronisation.

        ``crop_false_alarms`` > 0: then three more integers per sample (after the
        ``crop_targets`` ones, before the ``nonempty_batches`` ones): with that
        probability a sample of an image with a recorded false alarm
        (:meth:`record_false_alarms`) is placed over it, at a uniform offset among those
        that keep it inside the crop (this takes precedence over ``crop_targets``).

        The crops drawn (images, offsets, flips) are kept for :meth:`record_false_alarms`.
        """
        self._stacked(crop, pad_value)
        r = torch.randint(0, 2**31 - 1, (len(idx), 5), generator=gen).to(self.device, non_blocking=True)
        sel = torch.as_tensor(idx, dtype=torch.long).to(self.device, non_blocking=True)
        hw = self.sizes[sel].clamp(min=crop)
        oy = r[:, 0] % (hw[:, 0] - crop + 1)
        ox = r[:, 1] % (hw[:, 1] - crop + 1)
        if crop_targets > 0:
            q = torch.randint(0, 2**31 - 1, (len(idx), 4), generator=gen).to(self.device, non_blocking=True)
            use, ty, tx = self._over_target(sel, q, hw, crop, crop_targets)
            oy = torch.where(use, ty, oy)
            ox = torch.where(use, tx, ox)
        if crop_false_alarms > 0:
            q = torch.randint(0, 2**31 - 1, (len(idx), 3), generator=gen).to(self.device, non_blocking=True)
            fa = self.false_alarms[sel]
            use = (q[:, 0].double() < crop_false_alarms * (2**31 - 1)) & (fa[:, 0] >= 0)
            fy, fx = _offsets_over(fa.clamp(min=0), q[:, 1:3], hw, crop).unbind(1)
            oy = torch.where(use, fy, oy)
            ox = torch.where(use, fx, ox)
            self.false_alarm_crops += use.sum()
        if augment == "flip":
            flip = (r[:, 2:5] % 2).bool()
        else:
            flip = torch.zeros((len(idx), 3), dtype=torch.bool, device=self.device)
        x, y = self._gather(sel, oy, ox, flip, crop)
        if nonempty_batches:
            q = torch.randint(0, 2**31 - 1, (len(idx), 5), generator=gen).to(self.device, non_blocking=True)
            has, ty, tx = self._over_target(sel, q[:, 1:], hw, crop, 1.0)
            j = torch.argmax(torch.where(has, q[:, 0], -1))       # uniform among samples with targets
            redo = (y.amax() == 0) & has[j]
            xj, yj = self._gather(sel[j, None], ty[j, None], tx[j, None], flip[j, None], crop)
            x[j] = torch.where(redo, xj[0], x[j])
            y[j] = torch.where(redo, yj[0], y[j])
            oy, ox = oy.clone(), ox.clone()
            oy[j] = torch.where(redo, ty[j], oy[j])
            ox[j] = torch.where(redo, tx[j], ox[j])
        self._last = (sel, oy, ox, flip, crop)
        return x, y.float()

    def record_false_alarms(self, logits: torch.Tensor, y: torch.Tensor, epoch: int, margin: int = 3) -> None:
        """Record, for each crop of the last :meth:`batch`, where the network called
        background a target: the pixel of highest logit among those above 0 (probability
        0.5, the evaluation threshold) that lie more than ``margin`` pixels from any target
        pixel (an error at a target's edge is a segmentation error, not a false alarm),
        mapped back through the crop's flips to its image's coordinates. A crop without
        such a pixel clears its image's record if that record lies inside the crop (the
        network no longer fires there); a record outside it is kept. On the device,
        without a host synchronisation; ``epoch`` (1-based) stamps the records."""
        if self._last is None:
            raise RuntimeError("record_false_alarms needs the crops of a batch drawn before it")
        sel, oy, ox, flip, crop = self._last
        b = len(sel)
        near = F.max_pool2d(y.float(), 2 * margin + 1, stride=1, padding=margin) if margin else y.float()
        score = torch.where(near.reshape(b, -1) > 0, float("-inf"), logits.detach().float().reshape(b, -1))
        best, k = score.max(dim=1)
        i, j = k // crop, k % crop
        t = flip[:, 2]
        p, q = torch.where(t, j, i), torch.where(t, i, j)   # a transpose swaps row and column
        row = oy + torch.where(flip[:, 1], crop - 1 - p, p)
        col = ox + torch.where(flip[:, 0], crop - 1 - q, q)
        h, w = self.sizes[sel].unbind(1)
        found = (best > 0) & (row < h) & (col < w)           # not in the padding of a small image
        prev = self.false_alarms[sel]
        inside = ((prev[:, 0] >= oy) & (prev[:, 0] < oy + crop) & (prev[:, 1] >= ox) & (prev[:, 1] < ox + crop))
        new = torch.where(found[:, None], torch.stack([row, col], 1),
                          torch.where(inside[:, None], torch.full_like(prev, -1), prev))
        self.false_alarms[sel] = new
        self.false_alarm_epoch[sel] = epoch

    def merge_false_alarms(self) -> None:
        """With several processes: every process takes, image by image, the record of the
        process that saw the image last (each image is in one process's share of an epoch;
        an image no process saw this epoch keeps the record all hold since the last merge)."""
        latest = self.false_alarm_epoch.clone()
        dist.all_reduce(latest, op=dist.ReduceOp.MAX)
        rank, world = dist.get_rank(), dist.get_world_size()
        holds = (self.false_alarm_epoch == latest) & (latest > 0)
        owner = torch.where(holds, rank, world)
        dist.all_reduce(owner, op=dist.ReduceOp.MIN)   # one contributor per image: the lowest rank holding it
        merged = torch.where((owner == rank)[:, None], self.false_alarms + 1, 0)
        dist.all_reduce(merged)  # 0 from the others
        self.false_alarms = torch.where((latest > 0)[:, None], merged - 1, self.false_alarms)
        self.false_alarm_epoch = latest

    def false_alarm_state(self) -> dict[str, torch.Tensor]:
        return {"yx": self.false_alarms.cpu(), "epoch": self.false_alarm_epoch.cpu()}

    def load_false_alarm_state(self, state: dict[str, torch.Tensor], where: str) -> None:
        yx, ep = state["yx"], state["epoch"]
        if tuple(yx.shape) != tuple(self.false_alarms.shape):
            raise ValueError(f"{where}: the checkpoint records false alarms for {yx.shape[0]} training images, "
                             f"the training split has {len(self)}; resume with the run's own training split")
        self.false_alarms = yx.to(self.device, torch.long)
        self.false_alarm_epoch = ep.to(self.device, torch.long)

    def _over_target(self, sel: torch.Tensor, q: torch.Tensor, hw: torch.Tensor, crop: int,
                     p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Crop offsets over a target pixel from four integers per sample ``q``: whether
        to use them (with probability ``p``, and only for images that have targets), and
        the row and column offset (a target pixel drawn uniformly, then an offset drawn
        uniformly among those that keep it inside the crop)."""
        yx, start, count = self.targets()
        count = count[sel]
        use = (q[:, 0].double() < p * (2**31 - 1)) & (count > 0)
        # an image without targets points at pixel 0 (any valid index): its crop is not used
        k = torch.where(count > 0, start[sel] + q[:, 1] % count.clamp(min=1), 0)
        t = yx[k] if len(yx) else torch.zeros_like(hw)
        tgt = _offsets_over(t, q[:, 2:4], hw, crop)
        return use, tgt[:, 0], tgt[:, 1]

    def _gather(self, sel: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor,
                crop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The crops at offsets (oy, ox) of images ``sel``, flipped as ``flip`` says
        (horizontal, vertical, transpose): (B, 1, crop, crop) images and uint8 masks."""
        images, masks = self._stack[1], self._stack[2]
        a = torch.arange(crop, device=self.device)
        # patch[i, j] = image[rows[i], cols[j]]; a transpose swaps the roles of i and j
        rows = oy[:, None] + torch.where(flip[:, 1:2], crop - 1 - a, a)   # (B, crop)
        cols = ox[:, None] + torch.where(flip[:, 0:1], crop - 1 - a, a)
        t = flip[:, 2, None, None]
        rr = torch.where(t, rows[:, None, :], rows[:, :, None])          # (B, crop, crop)
        cc = torch.where(t, cols[:, :, None], cols[:, None, :])
        H, W = self._hw
        flat = sel[:, None, None] * (H * W) + rr * W + cc
        return images[flat].unsqueeze(1), masks[flat].unsqueeze(1)


def _offsets_over(t: torch.Tensor, q: torch.Tensor, hw: torch.Tensor, crop: int) -> torch.Tensor:
    """Crop offsets (B, 2) that keep pixel ``t`` (B, 2) inside a crop of an image of size
    ``hw`` (B, 2, at least ``crop``), drawn uniformly among them from the integers ``q``."""
    lo = (t - crop + 1).clamp(min=0)
    hi = torch.minimum(t, hw - crop)
    return lo + q % (hi - lo + 1)


# ----------------------------------------------------------------------------- the step

class StepRunner:
    """One optimisation step on a batch: eager, or with forward, loss and backward
    captured once as a CUDA graph and replayed.

    Graph mode (``cuda_graph=True``, CUDA only) follows PyTorch's whole-network capture
    recipe: ``warmup`` eager steps on a side stream (cuDNN picks its algorithms, the
    optimizer creates its state), then one capture into static input/target buffers;
    every later step copies the batch into those buffers, replays the graph (one launch
    instead of hundreds) and calls the optimizer eagerly (fused Adam: a few launches), so
    the learning-rate schedule and the optimizer's state dict are exactly as in eager
    mode. The gradients live in the graph's memory pool and are overwritten by each
    replay, so ``zero_grad`` is never called after capture. Anything the capture cannot
    handle (a model with a host synchronisation, an old driver) makes the runner fall
    back to eager steps for the rest of the run, with the reason in ``fallback``.
    """

    def __init__(self, net: nn.Module, model: nn.Module, criterion: nn.Module, opt: torch.optim.Optimizer, *,
                 device: torch.device, autocast_dtype: torch.dtype | None, cuda_graph: bool,
                 warmup: int = 3, log: Callable[[str], None] | None = None,
                 after_step: Callable[[], None] | None = None, grad_clip: float = 0.0,
                 on_logits: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> None:
        self.net, self.model, self.criterion, self.opt = net, model, criterion, opt
        self.on_logits = on_logits  # sees each step's inference logits (detached) and targets
        self.grad_clip = grad_clip
        self.params = [p for p in model.parameters() if p.requires_grad]
        # with clipping, the epoch's gradient norms before clipping: sum, max, steps clipped
        self.norm_stats = torch.zeros(3, device=device)
        self.after_step = after_step or (lambda: None)
        self.device, self.dtype = device, autocast_dtype
        self.model_loss = getattr(model, "training_loss", None)
        self.warmup = warmup
        self.log = log or (lambda msg: warnings.warn(msg, stacklevel=3))
        self.mode = "eager"
        self.fallback: str | None = None
        if cuda_graph:
            if device.type != "cuda":
                self.fallback = f"cuda_graph needs a CUDA device (training on {device.type}); eager steps"
            elif isinstance(net, nn.parallel.DistributedDataParallel):
                self.fallback = "cuda_graph is not used with several processes (DDP); eager steps"
            else:
                self.mode = "graph"
            if self.fallback:
                self.log(self.fallback)
        self._warm = 0
        self._graph: Any = None
        self._static: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def _loss(self, x: torch.Tensor, y: torch.Tensor, cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's loss, and the logits that inference would give (detached)."""
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None,
                            cache_enabled=cache):
            logits = self.net(x)
        if self.model_loss is not None:  # a model's own loss (e.g. ISNet's edge term): output first
            return self.model_loss(logits, y, self.criterion), logits[0].detach()
        if isinstance(logits, (list, tuple)):  # deep supervision: the mean over all heads; the last infers
            return sum(self.criterion(o.float(), y) for o in logits) / len(logits), logits[-1].detach()
        return self.criterion(logits.float(), y), logits.detach()

    def _eager(self, x: torch.Tensor, y: torch.Tensor, acc: torch.Tensor) -> None:
        loss, head = self._loss(x, y)
        if self.on_logits is not None:
            self.on_logits(head, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self._clip()
        self.opt.step()
        self.after_step()
        acc += loss.detach()

    def _clip(self) -> None:
        if self.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
            s = self.norm_stats
            s[0] += norm
            s[1] = torch.maximum(s[1], norm)
            s[2] += norm > self.grad_clip

    def grad_stats(self, steps: int) -> dict[str, float]:
        """The gradient norms of the steps since the last call (one host sync), then reset:
        mean and max before clipping, the share of steps clipped, and the limit where there
        is one (``train/grad_clip``). Empty without clipping."""
        if self.grad_clip <= 0:
            return {}
        total, peak, clipped = self.norm_stats.tolist()
        self.norm_stats.zero_()
        limit = {"train/grad_clip": self.grad_clip} if math.isfinite(self.grad_clip) else {}
        return {"train/grad_norm_mean": total / max(steps, 1), "train/grad_norm_max": peak,
                "train/clipped_share": clipped / max(steps, 1), **limit}

    def __call__(self, x: torch.Tensor, y: torch.Tensor, acc: torch.Tensor) -> None:
        """Train on (x, y) and add the batch's loss to ``acc`` (a device scalar)."""
        if self.mode == "eager":
            return self._eager(x, y, acc)
        if self._graph is not None and self._static[0].shape != x.shape:  # type: ignore[index]
            self._graph, self._static, self._warm = None, None, 0  # a new crop size: capture again
        if self._graph is not None:
            sx, sy, sloss, shead = self._static  # type: ignore[misc]
            sx.copy_(x)
            sy.copy_(y)
            self._graph.replay()
            if self.on_logits is not None:
                self.on_logits(shead, sy)
            self._clip()
            self.opt.step()
            self.after_step()
            acc += sloss
            return None
        if self._warm < self.warmup:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._eager(x, y, acc)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._warm += 1
            return None
        try:
            self._capture(x, y)
        except Exception as exc:  # noqa: BLE001 (any failure: train on, eagerly)
            self._graph, self._static, self.mode = None, None, "eager"
            self.fallback = f"CUDA graph capture failed ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); " \
                            f"eager steps from here on"
            self.log(self.fallback)
            torch.cuda.synchronize(self.device)
            return self._eager(x, y, acc)
        return self(x, y, acc)  # the capture computed nothing: replay it on this batch

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        sx, sy = x.clone(), y.clone()
        self.opt.zero_grad(set_to_none=True)  # gradients are allocated inside the graph's pool
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            sloss, shead = self._loss(sx, sy, cache=False)
            sloss.backward()
        missing = [n for n, p in self.model.named_parameters() if p.requires_grad and p.grad is None]
        if missing:
            raise RuntimeError(f"no gradient captured for {missing[:3]}")
        self._graph, self._static = graph, (sx, sy, sloss.detach(), shead)


# ----------------------------------------------------------------------------- logging

class _Logger:
    """DVCLive when installed and enabled; always ``history.json`` in ``out_dir``."""

    def __init__(self, out_dir: Path, enabled: bool, history: list[dict[str, Any]], is_main: bool) -> None:
        self.out_dir = out_dir
        self.live = None
        self.is_main = is_main
        if is_main:  # the checkpoint's history is the source: history.json agrees with it from the start
            atomic_write_json(out_dir / "history.json", history)
        if not (enabled and is_main):
            return
        try:
            from dvclive import Live
        except ImportError:
            return
        import shutil

        live_dir = out_dir / "dvclive"
        # rebuild from the checkpoint's history: each epoch exactly once, even after a
        # kill between logging an epoch and checkpointing it
        shutil.rmtree(live_dir, ignore_errors=True)
        self.live = _open_live(Live, live_dir)
        for row in history:
            self._log(row)

    def _log(self, row: dict[str, Any]) -> None:
        assert self.live is not None
        self.live.step = int(row["epoch"]) - 1
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.live.log_metric(key, value)
        self.live.next_step()

    def log(self, row: dict[str, Any], history: list[dict[str, Any]], *, write_history: bool = True) -> None:
        if not self.is_main:
            return
        if self.live is not None:
            self._log(row)
        if write_history:
            atomic_write_json(self.out_dir / "history.json", history)

    def close(self) -> None:
        if self.live is not None:
            self.live.end()


def _inside_dvc_project() -> bool:
    if os.environ.get("DVC_ROOT"):  # running as a `dvc repro` / `dvc exp run` stage
        return True
    cwd = Path.cwd().resolve()
    return any((p / ".dvc").is_dir() for p in (cwd, *cwd.parents))


def _open_live(live_cls: Any, live_dir: Path) -> Any:
    """A DVCLive logger that never runs ``dvc init`` on its own.

    DVCLive (3.x) initialises a DVC repository in whatever git repository the working
    directory is in when it finds none. Inside a DVC project (this repository's
    pipeline) it is used as is; elsewhere it writes its files without touching the
    user's repository.
    """
    if _inside_dvc_project():
        return live_cls(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None)
    import dvclive.live as live_module

    original = live_module.get_dvc_repo
    live_module.get_dvc_repo = lambda: None
    try:
        return live_cls(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None)
    finally:
        live_module.get_dvc_repo = original


# ----------------------------------------------------------------------------- training

def _dist_info() -> tuple[int, int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


def _maybe_init_distributed(device: torch.device) -> bool:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return True
    return False


class Trainer:
    """One training run, in named steps (the shape of torchvision's reference scripts):

    * :meth:`setup`: config checked, device, distributed group, data on the device,
      model, optimizer, scheduler;
    * :meth:`resume`: state from ``out_dir/checkpoint.pt`` when there is one (or a
      restart, or a refusal, by ``on_config_change``);
    * :meth:`train_one_epoch`: the epoch's batches (drawn from ``(seed, epoch)`` alone)
      through the :class:`StepRunner`; returns the history row;
    * :meth:`evaluate`: the model on ``eval_split`` (every ``eval_every`` epochs and at the
      end; the best value is recorded, never used to pick a checkpoint);
    * :meth:`save`: the atomic checkpoint, then the history beside it;
    * :meth:`fit`: the loop, with the stop conditions of a chunked run.

    ``train()`` is ``Trainer(cfg).fit()``; the class is for callers that need a step
    alone (a notebook that inspects the model after setup, say).
    """

    def __init__(self, cfg: TrainConfig | dict[str, Any], *, log: Callable[[str], None] | None = None) -> None:
        self.cfg = TrainConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg
        self.log = log or (lambda msg: print(f"sgem train: {msg}", file=sys.stderr, flush=True))
        self.started_dist = False
        self.was_deterministic = torch.are_deterministic_algorithms_enabled()

    # -- setup ----------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        cfg.validate()
        device = resolve_device(cfg.device)
        self.started_dist = _maybe_init_distributed(device)
        self.rank, self.world, local_rank = _dist_info()
        if device.type == "cuda" and self.world > 1:
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        self.device = device
        self.is_main = self.rank == 0
        # precision 'auto': bf16 + channels_last where the device computes bf16 natively
        precision, auto_cl = resolve_precision(cfg.precision, device)
        self.precision, self.channels_last = precision, cfg.channels_last or auto_cl
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
        self.resolved = {"precision": precision, "channels_last": self.channels_last, "device": str(device),
                         "processor": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()}
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.out_dir = Path(cfg.out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ValueError(f"{self.out_dir}: is a file; out_dir must be a folder for the run")
        self.ckpt_path = self.out_dir / CHECKPOINT_NAME
        if self.is_main:  # one run per folder
            self.lock = RunLock(self.out_dir, notice=self.log).acquire()
        set_determinism(cfg.seed, cfg.deterministic)
        if self.is_main and self.out_dir.is_dir():  # temp files of a write killed half-way
            for stale in self.out_dir.glob(f".{CHECKPOINT_NAME}.*.tmp"):
                stale.unlink(missing_ok=True)
        self._check_splits()

        stems, images, masks = load_split(cfg.data_root, cfg.train_split, split_file=cfg.train_split_file)
        self.train_stems = len(stems)
        self.mean, self.std = image_stats(images)
        self.data = DeviceData(images, masks, device)
        del images, masks

        model = create_model(cfg.model, **cfg.model_kwargs).to(device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.ema = WeightEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.fused = device.type == "cuda" and cfg.optimizer in ("adam", "adamw")
        self.opt = build_optimizer(cfg, model.parameters(), fused=self.fused)
        self.sched = build_scheduler(cfg, self.opt)
        self.start_epoch, self.epoch = 0, 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"metric": "iou", "split": cfg.eval_split, "value": None, "epoch": None}

        per_rank = len(self.data) // self.world
        if per_rank < 1:
            raise ValueError(f"{cfg.data_root}: split '{cfg.train_split}' has {len(self.data)} images, "
                             f"fewer than the {self.world} training processes")
        self.per_rank = per_rank
        self.bsz = min(cfg.batch_size, per_rank)
        self.steps = per_rank // self.bsz

    def _check_splits(self) -> None:
        """The training and evaluation splits, validated together before epoch 1: a
        missing or broken evaluation file is found now, not after the last epoch, and a
        stem in both splits is refused unless ``allow_split_overlap``."""
        cfg = self.cfg
        train_src = split_source(cfg.data_root, cfg.train_split, cfg.train_split_file)
        eval_src = split_source(cfg.data_root, cfg.eval_split, cfg.eval_split_file)
        same = (train_src.stems_file or train_src.images).resolve() == (eval_src.stems_file or eval_src.images).resolve()
        if cfg.allow_split_overlap or same:
            if same and not cfg.allow_split_overlap:
                raise ValueError(f"train config: the training and evaluation splits are the same "
                                 f"({train_src.stems_file or train_src.images}); set allow_split_overlap: true "
                                 f"to evaluate on training images")
            validate_dataset(cfg.data_root, {cfg.eval_split: eval_src}).raise_if_bad()
            return
        names = {cfg.train_split: train_src, cfg.eval_split if cfg.eval_split != cfg.train_split
                 else f"{cfg.eval_split} (evaluation)": eval_src}
        validate_dataset(cfg.data_root, names).raise_if_bad()

    # -- resume ---------------------------------------------------------------------------
    def resume(self) -> None:
        cfg = self.cfg
        state = load_checkpoint(self.ckpt_path) if self.ckpt_path.is_file() else None
        if state is not None and (diffs := _config_differences(state["config"], cfg)):
            if cfg.on_config_change != "restart":
                raise ValueError(f"{self.ckpt_path}: cannot resume, the run's settings differ ({diffs}). "
                                 f"Use another out_dir, delete the checkpoint, or set on_config_change=restart.")
            previous = _free_name(self.ckpt_path.with_name("checkpoint.previous.pt"))
            if self.is_main:  # every earlier run is kept, numbered
                os.replace(self.ckpt_path, previous)
                warnings.warn(f"{self.ckpt_path}: settings changed ({diffs}); starting over "
                              f"(the old checkpoint is now {previous.name})", stacklevel=3)
            state = None
        if state is not None:
            # with weight averaging, "model" holds the averaged weights (what inference
            # uses) and "train_model" the weights being trained
            self.model.load_state_dict(state.get("train_model", state["model"]))
            if self.ema is not None:
                self.ema.module.load_state_dict(state["model"])
                self.ema.updates = int(state.get("ema_updates", 0))
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            self.start_epoch = self.epoch = int(state["epoch"])
            self.history, self.best = list(state["history"]), dict(state["best"])
            restore_rng(state["rng"])
            self.mean, self.std = state["normalization"]["mean"], state["normalization"]["std"]
            if cfg.crop_false_alarms > 0:  # same settings: the checkpoint holds the records
                self.data.load_false_alarm_state(state["false_alarms"], str(self.ckpt_path))
            _match_optimizer_to_params(self.opt, self.fused)
        self._build_step()

    def check_finite(self) -> None:
        """Stop at the epoch where a weight or a BatchNorm statistic stops being finite
        (a loss can stay finite while they overflow); the last checkpoint, written after
        the same check, is finite."""
        for what, module in (("model", self.model), ("averaged model", self.ema.module if self.ema else None)):
            if module is None:
                continue
            for name, t in module.state_dict().items():
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    last = self.history[-1]["epoch"] if self.history else self.start_epoch
                    raise FloatingPointError(
                        f"non-finite values in the {what}'s {name} after epoch {self.epoch}; stopped. The last "
                        f"checkpoint ({self.ckpt_path}, epoch {last}) is finite. Lower lr, or use precision='fp32'.")

    def check_ranks_agree(self) -> None:
        """With several processes, every rank must hold the same weights (DDP averages the
        gradients); a checksum per rank, compared before each checkpoint, catches ranks
        that train apart."""
        if self.world == 1:
            return
        with torch.no_grad():
            sums = [sum(p.detach().double().sum() for p in self.model.parameters()),
                    sum(p.detach().double().abs().sum() for p in self.model.parameters())]
            if self.cfg.crop_false_alarms > 0:  # the merged false-alarm records, too
                fa = self.data.false_alarms.double()
                sums.append((fa * torch.arange(1, len(fa) + 1, device=fa.device)[:, None]).sum())
            local = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=self.device) for v in sums])
        gathered = [torch.zeros_like(local) for _ in range(self.world)]
        dist.all_gather(gathered, local)
        ref = gathered[0].cpu()
        for r, g in enumerate(gathered[1:], 1):
            if not torch.allclose(g.cpu(), ref, rtol=1e-9, atol=1e-9):
                raise RuntimeError(f"training processes disagree after epoch {self.epoch}: rank {r}'s weights "
                                   f"(or false-alarm records) differ from rank 0's (checksums {g.tolist()} vs {ref.tolist()})")

    def _build_step(self) -> None:
        cfg, model = self.cfg, self.model
        net: nn.Module = model
        if self.world > 1:
            net = nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index]
                                                      if self.device.type == "cuda" else None)
        self.net = net
        step_fn = torch.compile(net) if cfg.compile else net
        criterion = SoftIoULoss(smooth=cfg.loss_smooth, reduction=cfg.loss_reduction)
        after_step = (lambda: self.ema.update(model)) if self.ema is not None else None
        on_logits = None
        if cfg.crop_false_alarms > 0:  # hard negatives: where each crop's false alarms were
            on_logits = lambda logits, y: self.data.record_false_alarms(logits, y, self.epoch + 1)  # noqa: E731
        self.runner = StepRunner(step_fn, model, criterion, self.opt, device=self.device,
                                 autocast_dtype=self.autocast_dtype, cuda_graph=cfg.cuda_graph, log=self.log,
                                 after_step=after_step, grad_clip=cfg.grad_clip, on_logits=on_logits)
        self.norm_mean = torch.tensor(self.mean, device=self.device)
        self.norm_std = torch.tensor(self.std, device=self.device)

    # -- one epoch ------------------------------------------------------------------------
    def train_one_epoch(self) -> dict[str, Any]:
        """Train epoch ``self.epoch + 1``; return its history row (loss, lr, time)."""
        cfg, data, epoch = self.cfg, self.data, self.epoch
        t0 = time.perf_counter()
        self.net.train()
        gen = epoch_generator(cfg.seed, epoch)
        perm = torch.randperm(len(data), generator=gen)[: self.per_rank * self.world]
        mine = perm[self.rank::self.world].tolist()
        loss_sum = torch.zeros((), device=self.device)
        crop = self.crop_for(epoch)
        self.runner.grad_clip = self.clip_for(epoch)
        for s in range(self.steps):
            idx = mine[s * self.bsz:(s + 1) * self.bsz]
            x, y = data.batch(idx, crop, gen, cfg.augment, pad_value=self.mean, crop_targets=cfg.crop_targets,
                              nonempty_batches=cfg.nonempty_batches, crop_false_alarms=cfg.crop_false_alarms)
            x = (x - self.norm_mean) / self.norm_std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            self.runner(x, y, loss_sum)
        lr = self.opt.param_groups[0]["lr"]
        self.sched.step()
        hard: dict[str, float] = {}
        if cfg.crop_false_alarms > 0:
            crops = data.false_alarm_crops.clone()
            data.false_alarm_crops.zero_()
            if self.world > 1:
                data.merge_false_alarms()
                dist.all_reduce(crops)
            hard = {"train/false_alarm_crops": float(crops) / (self.steps * self.bsz * self.world),
                    "train/false_alarm_images": int((data.false_alarms[:, 0] >= 0).sum())}
        if self.world > 1:
            dist.all_reduce(loss_sum)
            loss_sum /= self.world
        train_loss = float(loss_sum) / self.steps  # one host sync per epoch
        if not math.isfinite(train_loss):
            last_good = self.start_epoch if not self.history else self.history[-1]["epoch"]
            raise FloatingPointError(
                f"training loss is {train_loss} at epoch {epoch + 1}; stopped. The last good checkpoint "
                f"({self.ckpt_path}, epoch {last_good}) is kept. Lower lr, or use precision='fp32'.")
        self.epoch = epoch + 1
        elapsed = time.perf_counter() - t0
        return {"epoch": self.epoch, "train/loss": train_loss, "train/lr": lr, "train/seconds": elapsed,
                "train/images_per_s": self.steps * self.bsz * self.world / elapsed, "train/crop": crop,
                **self.runner.grad_stats(self.steps), **hard}

    def crop_for(self, epoch: int) -> int:
        """The crop size of (0-based) ``epoch``: ``final_crop_size`` in the last
        ``final_epochs`` epochs, ``crop_size`` before."""
        cfg = self.cfg
        if cfg.final_crop_size and cfg.final_epochs and epoch >= cfg.epochs - cfg.final_epochs:
            return cfg.final_crop_size
        return cfg.crop_size

    def clip_for(self, epoch: int) -> float:
        """The gradient-norm limit of (0-based) ``epoch``: ``grad_clip`` in the first
        ``grad_clip_epochs`` epochs (every epoch when 0), ``grad_clip_late`` after them;
        after them with no limit (``grad_clip_late`` 0) the norms are still measured and
        logged (an infinite limit clips nothing). With ``grad_clip_growth`` g > 1 the limit
        after them is ``grad_clip * g**k`` in the k-th epoch after them (k = 1, 2, ...): the
        clipping fades out over some epochs instead of stopping at once. Why: Adam's
        second-moment estimates, made on clipped gradients, are several times too small for
        the unclipped ones, so an abrupt end makes the next hundreds of steps several times
        larger (pilot O's loss rose from 0.19 to 0.26 where its clipping ended, at lr 1.7e-4);
        a limit that grows by g per epoch lets the estimates follow."""
        cfg = self.cfg
        if not cfg.grad_clip_epochs or epoch < cfg.grad_clip_epochs:
            return cfg.grad_clip
        if cfg.grad_clip_growth > 1.0:   # capped where it would overflow a float: no limit left
            k = epoch - cfg.grad_clip_epochs + 1
            return cfg.grad_clip * math.exp(min(k * math.log(cfg.grad_clip_growth), 700.0))
        return cfg.grad_clip_late or math.inf

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated, exported and used for inference: the moving
        average when ``ema_decay`` > 0, else the trained weights."""
        return self.ema.module if self.ema is not None else self.model

    def recalibrate_bn(self) -> int:
        """BatchNorm statistics of :attr:`eval_model` recomputed on the full-size training
        images (``bn_recalibrate``), at the end of the run."""
        images = self.data.full_images()
        n = recalibrate_batchnorm(self.eval_model, images, mean=self.mean, std=self.std, batch_size=self.bsz,
                                  channels_last=self.channels_last, autocast_dtype=self.autocast_dtype)
        self.log(f"BatchNorm statistics recomputed on {n} full-size training images")
        return n

    # -- evaluation -----------------------------------------------------------------------
    def evaluate(self, row: dict[str, Any]) -> None:
        """Score the model on ``eval_split`` into ``row`` (main process only)."""
        from .evaluate import evaluate_model

        cfg = self.cfg
        ev = evaluate_model(self.eval_model, cfg.data_root, cfg.eval_split, split_file=cfg.eval_split_file,
                            mean=self.mean, std=self.std, device=self.device, curves=False)
        for k in ("iou", "niou", "f1", "precision", "recall", "pd", "fa"):
            row[f"{cfg.eval_split}/{k}"] = ev[k]
        if ev["iou"] == ev["iou"] and (self.best["value"] is None or ev["iou"] > self.best["value"]):
            self.best = {"metric": "iou", "split": cfg.eval_split, "value": ev["iou"], "epoch": self.epoch}

    # -- checkpoint -----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.ema is not None:
            extra = {"train_model": self.model.state_dict(), "ema_updates": self.ema.updates}
        return {
            "format": CHECKPOINT_FORMAT, "epoch": self.epoch, "config": self.cfg.to_dict(), **extra,
            "model": self.eval_model.state_dict(), "resolved": self.resolved, "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "rng": rng_state(), "history": self.history, "best": self.best,
            "normalization": {"mean": float(self.mean), "std": float(self.std)},
            "versions": {"torch": str(torch.__version__), "sgem": _sgem_version()},
            "train_stems": self.train_stems,
            **({"false_alarms": self.data.false_alarm_state()} if self.cfg.crop_false_alarms > 0 else {}),
        }

    def save(self) -> None:
        if self.is_main:
            state = self.state()
            save_checkpoint(self.ckpt_path, state)
            if self.epoch in self.cfg.kept_epochs:   # a copy for later looks at this epoch's weights
                save_checkpoint(self.out_dir / f"checkpoint_e{self.epoch:04d}.pt", state)

    # -- the loop -------------------------------------------------------------------------
    def fit(self, *, stop_after_epochs: int | None = None, stop_after_seconds: float | None = None,
            on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
        call_start = time.perf_counter()
        try:
            self.setup()
            self.resume()
            return self._loop(call_start, stop_after_epochs, stop_after_seconds, on_epoch_end)
        finally:
            torch.use_deterministic_algorithms(self.was_deterministic)
            if getattr(self, "lock", None) is not None:
                self.lock.release()
            if self.started_dist:
                dist.destroy_process_group()

    def _loop(self, call_start: float, stop_after_epochs: int | None, stop_after_seconds: float | None,
              on_epoch_end: Callable[[int, dict[str, Any]], None] | None) -> dict[str, Any]:
        cfg = self.cfg
        logger = _Logger(self.out_dir, cfg.dvclive, self.history, self.is_main)
        progress = None
        if cfg.progress and self.is_main:
            from tqdm.auto import tqdm

            progress = tqdm(total=cfg.epochs, initial=self.start_epoch, desc=f"train {cfg.model}", unit="epoch")
        epochs_this_call, longest = 0, 0.0
        if (self.epoch >= cfg.epochs and self.history and self.is_main
                and f"{cfg.eval_split}/iou" not in self.history[-1]):
            # the final evaluation failed after the final checkpoint was written: do it now
            self.evaluate(self.history[-1])
            self.save()
            logger.log(self.history[-1], self.history, write_history=True)
        while self.epoch < cfg.epochs:
            row = self.train_one_epoch()
            epochs_this_call += 1
            final = self.epoch == cfg.epochs
            if final and cfg.bn_recalibrate:
                self.recalibrate_bn()
            self.check_finite()
            evaluate_now = (cfg.eval_every and self.epoch % cfg.eval_every == 0) or final
            if final and evaluate_now:
                # the final weights are on disk before the final evaluation, which may fail
                self.history.append(row)
                self.save()
                self.history.pop()
            if self.is_main and evaluate_now:
                self.evaluate(row)
            self.history.append(row)
            # the time budget's estimate of one more epoch: the call's first epoch holds any
            # compilation and the CUDA-graph capture (30 s against 0.9 s for a compiled GPU
            # step), so it is the estimate only until a second epoch has been timed
            if epochs_this_call == 2:
                longest = row["train/seconds"]
            else:
                longest = max(longest, row["train/seconds"])
            stop_now = ((stop_after_epochs is not None and epochs_this_call >= stop_after_epochs)
                        or (stop_after_seconds is not None
                            and time.perf_counter() - call_start + longest > stop_after_seconds))
            checkpoint_now = (self.epoch % cfg.checkpoint_every == 0 or self.epoch in cfg.kept_epochs
                              or final or stop_now)
            if checkpoint_now:
                self.check_ranks_agree()
                self.save()
            if self.world > 1:
                dist.barrier()
            # history.json is rewritten with each checkpoint, so it says what the checkpoint
            # holds (rewriting it every epoch costs a long GPU run minutes of fsyncs)
            logger.log(row, self.history, write_history=checkpoint_now)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{row['train/loss']:.4f}")
            if on_epoch_end is not None:
                on_epoch_end(self.epoch, row)
            if stop_now:
                break
        if progress is not None:
            progress.close()
        logger.close()
        summary = {"epochs_done": self.epoch, "epochs": cfg.epochs, "complete": self.epoch >= cfg.epochs,
                   "step_mode": self.runner.mode, "step_fallback": self.runner.fallback, "resolved": self.resolved,
                   "checkpoint": str(self.ckpt_path), "last": self.history[-1] if self.history else None,
                   "best": self.best}
        if self.is_main:
            atomic_write_json(self.out_dir / "train_summary.json", summary)
        return summary


def train(cfg: TrainConfig | dict[str, Any], *, stop_after_epochs: int | None = None,
          stop_after_seconds: float | None = None,
          on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
          log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train (or resume) a run; return the final summary (:class:`Trainer`).

    ``stop_after_epochs`` ends this call after that many epochs of *this* call;
    ``stop_after_seconds`` ends it after the epoch at which one more epoch of the longest
    length seen so far in this call (from its second epoch on: the first holds compilation
    and the CUDA-graph capture) would overrun that many seconds since the call started. Both are
    for chunked runs under a time limit; the checkpoint is written before returning.
    ``log`` receives one-line notices (a CUDA-graph fallback, say); by default they are
    printed to stderr at once.
    """
    return Trainer(cfg, log=log).fit(stop_after_epochs=stop_after_epochs, stop_after_seconds=stop_after_seconds,
                                     on_epoch_end=on_epoch_end)


def train_ablation(train_params: dict[str, Any], *, models: list[str], seeds: list[int] | None = None,
                   data_root: str | Path, runs_dir: str | Path, main_run: str | Path | None = None,
                   log: Callable[[str], None] | None = None) -> dict[str, list[Path]]:
    """Ablation runs under one protocol: each of ``models`` (and the protocol's own model
    at every seed other than its own) trained with ``train_params`` and each of ``seeds``
    (default: the protocol's seed), into ``runs_dir/<model>_s<seed>``; ``main_run`` is
    the protocol's own run (its model at its seed), trained already. Complete runs are left
    as they are, interrupted ones resumed. Returns the run folders by model, the protocol's
    model first, ready for :func:`sgem.report.ablation`."""
    base = TrainConfig.from_dict({**train_params, "data_root": str(data_root), "out_dir": str(runs_dir)})
    seeds = list(seeds) if seeds else [base.seed]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"ablation seeds {seeds}: each seed once")
    runs: dict[str, list[Path]] = {}
    for name in [base.model, *[m for m in models if m != base.model]]:
        runs[name] = []
        for seed in seeds:
            if name == base.model and seed == base.seed and main_run is not None:
                runs[name].append(Path(main_run))
                continue
            out = Path(runs_dir) / f"{name}_s{seed}"
            cfg = TrainConfig.from_dict({**base.to_dict(), "model": name, "seed": seed, "out_dir": str(out)})
            summary = train(cfg, log=log)
            if not summary["complete"]:
                raise RuntimeError(f"{out}: the ablation run stopped before its last epoch")
            runs[name].append(out)
    return runs


def _match_optimizer_to_params(opt: torch.optim.Optimizer, fused: bool) -> None:
    """After loading a saved optimizer state (which may come from another device, layout
    or fused setting): the flags are this run's, every state tensor has its parameter's
    device and memory layout, and Adam's step counter is where the fused kernel wants it
    (the parameter's device) or where the plain one does (the CPU)."""
    for group in opt.param_groups:
        if "fused" in group:
            group["fused"] = fused or None
            if fused:
                group["foreach"] = None
        for p in group["params"]:
            st = opt.state.get(p, {})
            for k, v in list(st.items()):
                if not isinstance(v, torch.Tensor):
                    continue
                if k == "step":
                    st[k] = v.to(device=p.device if fused else "cpu", dtype=torch.float32)
                elif v.shape == p.shape:
                    st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)
                else:
                    st[k] = v.to(p.device)


def _free_name(path: Path) -> Path:
    """``path``, or ``<stem>-2<suffix>``, ``-3``, ... : the first that does not exist."""
    n = 1
    candidate = path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def _config_differences(saved: dict[str, Any], cfg: TrainConfig) -> str:
    """'' when a checkpoint of ``saved`` settings can be resumed under ``cfg``, else what differs."""
    now = cfg.to_dict()
    defaults = TrainConfig().to_dict()  # a key an older checkpoint lacks had its default then
    diffs = [k for k in sorted(set(saved) | set(now))
             if k not in RESUMABLE_DIFFERENCES and _norm(saved.get(k, defaults.get(k))) != _norm(now.get(k))]
    return ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {now.get(k)!r}" for k in diffs)


def _norm(v: Any) -> Any:
    return json.loads(json.dumps(v)) if isinstance(v, (dict, list, tuple)) else v


def _sgem_version() -> str:
    from . import __version__
    return __version__
