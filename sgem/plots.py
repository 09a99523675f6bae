"""Figures for the pipeline's notebooks (matplotlib/seaborn, Agg backend, PNG files).

Each function draws one figure from library objects (a dataset, a history, a metrics
dict, a model) and saves it atomically; notebooks only call them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402
from scipy import ndimage  # noqa: E402

from .io import atomic_write  # noqa: E402
from .metrics import connected_components, match_targets  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")


def save(fig: plt.Figure, path: str | Path, dpi: int = 110) -> Path:
    path = Path(path)
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight"), binary=True)
    plt.close(fig)
    return path


def _outline(mask: np.ndarray) -> np.ndarray:
    return ndimage.binary_dilation(mask, iterations=2) & ~mask


def dataset_overview(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], stems: Sequence[str],
                     title: str, n: int = 8) -> plt.Figure:
    """Sample images with targets outlined; target-size and target-contrast histograms."""
    n = min(n, len(images))
    cols = min(4, n)
    rows = -(-n // cols)
    fig = plt.figure(figsize=(3.2 * cols, 3.2 * rows + 3.2))
    gs = fig.add_gridspec(rows + 1, cols)
    for k in range(n):
        ax = fig.add_subplot(gs[k // cols, k % cols])
        rgb = np.repeat(images[k][..., None], 3, axis=2)
        rgb[_outline(masks[k])] = (1.0, 0.1, 0.1)
        ax.imshow(rgb)
        ax.set_title(f"{stems[k]} ({int(masks[k].sum())} px)", fontsize=9)
        ax.axis("off")
    sizes, contrast = [], []
    for im, m in zip(images, masks):
        cc = connected_components(m)
        sizes.extend(cc.areas.tolist())
        if m.any():
            ring = ndimage.binary_dilation(m, iterations=4) & ~m
            contrast.append(255 * (im[m].mean() - im[ring].mean()))
    ax = fig.add_subplot(gs[rows, : max(1, cols // 2)])
    sns.histplot(sizes, bins=30, ax=ax, color="tab:blue")
    ax.set_xlabel("target size (pixels per 8-connected component)")
    ax.set_ylabel("targets")
    ax = fig.add_subplot(gs[rows, max(1, cols // 2):])
    sns.histplot(contrast, bins=30, ax=ax, color="tab:orange")
    ax.set_xlabel("target contrast: mean(target) - mean(4-px ring) (grey levels)")
    ax.set_ylabel("images")
    fig.suptitle(title)
    return fig


def training_curves(history: Sequence[dict[str, Any]], title: str) -> plt.Figure:
    """Training loss and learning rate per epoch, and evaluation metrics where logged."""
    epochs = [r["epoch"] for r in history]
    eval_keys = sorted({k for r in history for k in r if not k.startswith("train/")} - {"epoch"})
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    axes[0].plot(epochs, [r["train/loss"] for r in history], marker="." if len(epochs) < 50 else None)
    axes[0].set(xlabel="epoch", ylabel="SoftIoU loss (train)", title="training loss")
    axes[1].plot(epochs, [r["train/lr"] for r in history], color="tab:green")
    axes[1].set(xlabel="epoch", ylabel="learning rate", title="schedule")
    for key in [k for k in eval_keys if k.split("/")[-1] in ("iou", "niou", "f1", "pd")]:
        pts = [(r["epoch"], r[key]) for r in history if key in r]
        axes[2].plot(*zip(*pts), marker="o", label=key)
    axes[2].set(xlabel="epoch", ylabel="score", title="evaluation", ylim=(0, 1))
    if eval_keys:
        axes[2].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def runs_comparison(runs: dict[str, Sequence[dict[str, Any]]], title: str,
                    metrics: Sequence[str] = ("iou", "niou", "f1", "pd")) -> plt.Figure:
    """Several runs of one protocol side by side: training loss per epoch (log scale) and
    each run's last-epoch test metrics (the last history row holding ``test/<metric>``)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / max(1, len(runs))
    shown: list[float] = []
    for i, (name, history) in enumerate(runs.items()):
        a.plot([r["epoch"] for r in history], [r["train/loss"] for r in history], label=name, linewidth=1)
        last = next((r for r in reversed(history) if f"test/{metrics[0]}" in r), None)
        if last is None:
            continue
        xs = np.arange(len(metrics)) + (i - (len(runs) - 1) / 2) * width
        vals = [100 * last[f"test/{m}"] for m in metrics]
        shown += vals
        bars = b.bar(xs, vals, width, label=f"{name}: epoch {last['epoch']}")
        b.bar_label(bars, fmt="%.2f", fontsize=7, padding=1, rotation=90 if len(runs) > 2 else 0)
    a.set_yscale("log")
    a.set(xlabel="epoch", ylabel="SoftIoU loss (train, log)", title="training loss")
    a.legend(fontsize=8)
    names = {"iou": "IoU", "niou": "nIoU", "f1": "F1", "pd": "Pd", "precision": "precision", "recall": "recall"}
    b.set_xticks(np.arange(len(metrics)), [names.get(m, m) for m in metrics])
    b.set(ylabel="%", title="test split, last epoch", ylim=(max(0, min(shown, default=0) - 10), 104))
    b.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=max(1, len(runs)))
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def pd_fa_and_roc(metrics: dict[str, Any], title: str) -> plt.Figure:
    """Pd against Fa over probability thresholds, and the pixel ROC."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    c = metrics["pd_fa_curve"]
    fa = np.asarray(c["fa"]) * 1e6
    a.plot(fa, c["pd"], marker="o")
    for t, x, y in zip(c["threshold"], fa, c["pd"]):
        if round(t * 100) % 20 == 10 or t == 0.5:
            a.annotate(f"{t:.2f}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
    a.scatter([metrics["fa"] * 1e6], [metrics["pd"]], color="red", zorder=5, label="threshold 0.5")
    a.set(xlabel="Fa (x1e-6, false-alarm pixels / all pixels)", ylabel="Pd (detected / all targets)",
          title="Pd-Fa over probability thresholds")
    a.legend()
    r = metrics["roc"]
    b.plot(r["fpr"], r["tpr"], label=f"AUC {r['auc']:.4f}")
    b.set_xscale("symlog", linthresh=1e-5)
    b.set(xlabel="false positive rate (pixels, symlog)", ylabel="true positive rate (pixels)", title="pixel ROC")
    b.legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def qualitative_grid(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], probs: Sequence[np.ndarray],
                     stems: Sequence[str], threshold: float = 0.5, title: str = "") -> plt.Figure:
    """Image, ground truth, prediction; detected targets green, misses yellow, false alarms red."""
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n), squeeze=False)
    for k in range(n):
        det = probs[k] > threshold
        gt_cc, pr_cc = connected_components(masks[k]), connected_components(det)
        res = match_targets(gt_cc, pr_cc)
        axes[k, 0].imshow(images[k], cmap="gray")
        axes[k, 0].set_title(stems[k], fontsize=9)
        axes[k, 1].imshow(masks[k], cmap="gray")
        axes[k, 1].set_title(f"ground truth ({res.n_targets} targets)", fontsize=9)
        axes[k, 2].imshow(probs[k], cmap="magma", vmin=0, vmax=1)
        axes[k, 2].set_title(f"prediction: {res.n_matched} found, {res.n_targets - res.n_matched} missed, "
                             f"{res.n_pred - res.n_matched} false", fontsize=9)
        for g, j in zip(gt_cc.centroids, res.matches):
            colour = "lime" if j >= 0 else "yellow"
            axes[k, 2].add_patch(plt.Circle((g[1], g[0]), 8, fill=False, color=colour, lw=1.5))
        for j, p in enumerate(pr_cc.centroids):
            if j not in res.matches:
                axes[k, 2].add_patch(plt.Circle((p[1], p[0]), 8, fill=False, color="red", lw=1.5))
        for ax in axes[k]:
            ax.axis("off")
    fig.suptitle(title + "\ngreen: detected target, yellow: missed target, red: false alarm")
    fig.tight_layout()
    return fig


def fps_vs_iou(rows: Sequence[dict[str, Any]], title: str) -> plt.Figure:
    """FPS (log) against IoU. Each row: model, iou (x100), fps, group (the legend entry,
    e.g. "paper: RTX 3090" or "measured FPS (CPU), IoU of this run")."""
    fig, ax = plt.subplots(figsize=(9, 6))
    styles = [("o", "none", "tab:blue"), ("s", "tab:red", "tab:red"), ("D", "none", "tab:red"),
              ("^", "tab:green", "tab:green")]
    groups = list(dict.fromkeys(r["group"] for r in rows))
    placed: list[tuple[float, float]] = []
    for group, (marker, face, edge) in zip(groups, styles * (len(groups) // len(styles) + 1)):
        pts = [r for r in rows if r["group"] == group and r.get("iou") is not None and r.get("fps")]
        if not pts:
            continue
        ax.scatter([r["fps"] for r in pts], [r["iou"] for r in pts], marker=marker, s=60, facecolors=face,
                   edgecolors=edge, label=group)
        for r in sorted(pts, key=lambda r: -r["fps"]):
            # labels are placed right to left; one beside a point already labelled nearby (within
            # 0.2 decades and 1.5 IoU points) goes below-left of its point, so the two stay readable
            near = any(abs(np.log10(r["fps"] / f)) < 0.2 and abs(r["iou"] - i) < 1.5 for f, i in placed)
            ax.annotate(r["model"], (r["fps"], r["iou"]), textcoords="offset points",
                        xytext=(-5, -12) if near else (5, 4), ha="right" if near else "left", fontsize=8)
            placed.append((r["fps"], r["iou"]))
    ax.set_xscale("log")
    ax.set(xlabel="frames per second (log scale)", ylabel="IoU (x100)", title=title)
    # below the axes: inside, it can hide a point
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=1)
    fig.tight_layout()
    return fig


@torch.inference_mode()
def sgem_maps(model: torch.nn.Module, images: Sequence[np.ndarray], stems: Sequence[str], *, mean: float,
              std: float) -> plt.Figure:
    """For a few images: the input, the SGEM's output (D2, channel mean), the semantic
    probability matrix of head 0 (eq. 3), and the final probability map."""
    from .models import SGEM, pad_to_multiple

    sgem = getattr(model, "dec2", None)
    if not isinstance(sgem, SGEM):
        raise ValueError(f"{type(model).__name__} has no SGEM at dec2 (is it the 'unet' ablation?)")
    captured: dict[str, torch.Tensor] = {}

    def hook(mod, inputs, output):
        captured["d2"] = output
        captured["matrix"] = mod.attention_matrix(*inputs)

    handle = sgem.register_forward_hook(hook)
    try:
        n = len(images)
        fig, axes = plt.subplots(n, 4, figsize=(13, 3.2 * n), squeeze=False)
        device = next(model.parameters()).device
        for k, im in enumerate(images):
            x = ((torch.from_numpy(im)[None, None] - mean) / std).to(device)
            x, (h, w) = pad_to_multiple(x)
            prob = torch.sigmoid(model(x).float())[0, 0, :h, :w].cpu().numpy()
            d2 = captured["d2"][0].float().abs().mean(0).cpu().numpy()
            mat = captured["matrix"][0, 0].float().cpu().numpy()
            axes[k, 0].imshow(im, cmap="gray")
            axes[k, 0].set_title(stems[k], fontsize=9)
            axes[k, 1].imshow(d2, cmap="viridis")
            axes[k, 1].set_title(f"SGEM output D2, mean |channel| ({d2.shape[0]}x{d2.shape[1]})", fontsize=9)
            axes[k, 2].imshow(mat, cmap="rocket", vmin=0)
            axes[k, 2].set_title(f"probability matrix, head 0 ({mat.shape[0]}x{mat.shape[1]}, rows sum to 1)",
                                 fontsize=9)
            axes[k, 3].imshow(prob, cmap="magma", vmin=0, vmax=1)
            axes[k, 3].set_title("output probability", fontsize=9)
            for ax in axes[k]:
                ax.axis("off")
        fig.tight_layout()
        return fig
    finally:
        handle.remove()


@torch.inference_mode()
def architecture_diagram(model: torch.nn.Module, size: int = 256, title: str = "") -> plt.Figure:
    """A U-Net diagram drawn from the model: each stage's output shape and parameters come
    from forward hooks on a dummy input, the connections from the model's structure."""
    from .models import SGEM

    stages = ["enc1", "enc2", "enc3", "enc4", "enc5", "dec1", "dec2", "dec3", "dec4", "head"]
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [getattr(model, s).register_forward_hook(
        lambda m, i, o, s=s: shapes.__setitem__(s, tuple(o.shape[1:]))) for s in stages]
    try:
        model.eval()
        dev = next(model.parameters()).device
        model(torch.zeros(1, getattr(model, "in_channels", 1), size, size, device=dev))
    finally:
        for h in handles:
            h.remove()
    pos = {"enc1": (0, 4), "enc2": (1, 3), "enc3": (2, 2), "enc4": (3, 1), "enc5": (4, 0),
           "dec1": (5, 1), "dec2": (6, 2), "dec3": (7, 3), "dec4": (8, 4), "head": (9, 4)}
    fig, ax = plt.subplots(figsize=(14, 6))
    is_sgem = isinstance(getattr(model, "dec2", None), SGEM)
    for s in stages:
        x, y = pos[s]
        params = sum(p.numel() for p in getattr(model, s).parameters()) / 1e6
        c, h, w = shapes[s]
        colour = "#f4a261" if (s == "dec2" and is_sgem) else "#8ecae6" if s.startswith("enc") else "#b7e4c7"
        ax.add_patch(plt.Rectangle((x - 0.42, -y - 0.35), 0.84, 0.7, color=colour, ec="black"))
        name = "SGEM" if (s == "dec2" and is_sgem) else s
        ax.text(x, -y + 0.12, name, ha="center", va="center", fontsize=10, weight="bold")
        ax.text(x, -y - 0.15, f"{c}x{h}x{w}\n{params:.2f} M", ha="center", va="center", fontsize=7.5)
    def arrow(a, b, style="-", colour="black"):
        (x0, y0), (x1, y1) = pos[a], pos[b]
        ax.annotate("", xy=(x1, -y1), xytext=(x0, -y0), arrowprops=dict(arrowstyle="->", ls=style, color=colour,
                                                                          shrinkA=22, shrinkB=22))
    for a, b in zip(stages, stages[1:]):
        arrow(a, b)
    skips = [("enc4", "dec1"), ("enc2", "dec3"), ("enc1", "dec4")] + ([] if is_sgem else [("enc3", "dec2")])
    for a, b in skips:
        arrow(a, b, "--", "tab:blue")
    if is_sgem:
        arrow("enc3", "dec2", "-", "tab:red")
    ax.set_xlim(-0.7, 9.7)
    ax.set_ylim(-4.7, 0.7)
    ax.axis("off")
    total = sum(p.numel() for p in model.parameters()) / 1e6
    ax.set_title(title or f"{type(model).__name__}: {total:.2f} M parameters, input 1x{size}x{size}. "
                 "Dashed: skip connections; red: E3 into the SGEM (which also takes D1)")
    return fig
