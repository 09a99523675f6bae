"""Does the training-split fit check rank runs as the test split does? The ten official-split
runs that have both a fit check (`fit_check/*.json`: every third official training image, 221,
full size) and a last-epoch test row, side by side, with their rank correlation.

This reads test rows that were published before it was written; it is a check of the fit check
as a gate, after the fact, and selects nothing.

    PYTHONPATH=. python reports/cpu_pilots/fit_vs_test.py

writes `fit_vs_test.md` and `fit_vs_test.png` beside this file.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
from scipy import stats

from sgem.io import atomic_write_text
from sgem.plots import save

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _history(path: str) -> dict:
    return json.loads((REPO / path).read_text())[-1]


def _ablation(model: str, seed: int) -> dict:
    runs = json.loads((REPO / "reports/cpu/train/ablation.json").read_text())["models"][model]["runs"]
    run = next(r for r in runs if r["seed"] == seed)
    return {"test/iou": run["iou"], "test/fa": run["fa"]}


# (protocol, model, seed, fit check file, where the last-epoch test row is)
RUNS = [("B", "sgem_unet", 0, "B_official_sgem_unet_s0", lambda: _ablation("sgem_unet", 0)),
        ("B", "sgem_unet", 1, "B_official_sgem_unet_s1", lambda: _ablation("sgem_unet", 1)),
        ("B", "unet", 0, "B_official_unet_s0", lambda: _ablation("unet", 0)),
        ("B", "unet", 1, "B_official_unet_s1", lambda: _ablation("unet", 1)),
        ("G", "sgem_unet", 0, "G_official_sgem_unet_s0", lambda: _history("reports/cpu_pilots/G_official/sgem_unet_s0_history.json")),
        ("G", "unet", 0, "G_official_unet_s0", lambda: _history("reports/cpu_pilots/G_official/unet_s0_history.json")),
        ("L", "sgem_unet", 0, "L_official_sgem_unet_s0", lambda: _history("reports/cpu_pilots/L_official/sgem_unet_s0_history.json")),
        ("O", "sgem_unet", 0, "O_official_sgem_unet_s0", lambda: _history("reports/cpu_pilots/O_official/sgem_unet_s0_history.json")),
        ("O", "sgem_unet", 1, "O_official_sgem_unet_s1", lambda: _history("reports/cpu_pilots/O_official/sgem_unet_s1_history.json")),
        ("O", "unet", 0, "O_official_unet_s0", lambda: _history("reports/cpu_pilots/O_official/unet_s0_history.json"))]


def rows() -> list[dict]:
    out = []
    for protocol, model, seed, fit, test in RUNS:
        check = json.loads((HERE / "fit_check" / f"{fit}.json").read_text())
        w = check["weights"]["model"]
        t = test()
        out.append({"run": f"{protocol}, `{model}`, seed {seed}", "protocol": protocol, "model": model,
                    "precision": check["precision"], "fit_iou": w["iou"], "over_100": w["images_over_100_false_alarm_pixels"],
                    "test_iou": t["test/iou"], "test_fa": t["test/fa"]})
    return out


def markdown(rs: list[dict]) -> str:
    rho, p = stats.spearmanr([r["fit_iou"] for r in rs], [r["test_iou"] for r in rs])
    r_p, _ = stats.pearsonr([r["fit_iou"] for r in rs], [r["test_iou"] for r in rs])
    lines = ["| run (official split) | fit check IoU (EMA weights) | training images over 100 false-alarm pixels | fit check precision | test IoU | test Fa (1e-6) |",
             "|---|---|---|---|---|---|"]
    for r in sorted(rs, key=lambda r: r["fit_iou"]):
        lines.append(f"| {r['run']} | {100 * r['fit_iou']:.2f} | {r['over_100']} | {r['precision']} | {100 * r['test_iou']:.2f} | {r['test_fa'] * 1e6:.1f} |")
    lines.append("")
    rest = sorted(rs, key=lambda r: r["fit_iou"])[1:]
    rho9, p9 = stats.spearmanr([r["fit_iou"] for r in rest], [r["test_iou"] for r in rest])
    r9, _ = stats.pearsonr([r["fit_iou"] for r in rest], [r["test_iou"] for r in rest])
    gap = [r["test_iou"] - r["fit_iou"] for r in rs]
    lines.append(f"Spearman rank correlation of fit check IoU and test IoU over the {len(rs)} runs: "
                 f"{rho:.3f} (p = {p:.1e}); Pearson: {r_p:.3f}. Without the lowest ({sorted(rs, key=lambda r: r['fit_iou'])[0]['run']}), "
                 f"which dominates Pearson's: Spearman {rho9:.3f} (p = {p9:.1e}), Pearson {r9:.3f}. "
                 f"The test IoU is above the fit check's in every run, by {100 * min(gap):.2f} to {100 * max(gap):.2f} points.")
    return "\n".join(lines) + "\n"


# where each point's label goes (fit check %, test %), so that the cluster of B's runs stays legible
LABEL_AT = {"B sgem_unet s0": (62.0, 78.4), "B sgem_unet s1": (74.5, 74.2), "B unet s1": (62.0, 79.6),
            "B unet s0": (76.6, 76.4), "O sgem_unet s0": (63.5, 81.0), "G unet s0": (78.6, 77.6),
            "O unet s0": (79.4, 82.6), "L sgem_unet s0": (60.5, 75.4), "O sgem_unet s1": (58.5, 73.6),
            "G sgem_unet s0": (53.0, 62.4)}


def figure(rs: list[dict]) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    colours = {"B": "C0", "G": "C3", "L": "C2", "O": "C1"}
    for r in rs:
        ax.scatter(100 * r["fit_iou"], 100 * r["test_iou"], color=colours[r["protocol"]],
                   marker="o" if r["model"] == "sgem_unet" else "s", s=45, zorder=3)
        label = f"{r['protocol']} {r['model']} s{r['run'][-1]}"
        ax.annotate(f"{label} ({r['over_100']})", (100 * r["fit_iou"], 100 * r["test_iou"]), xytext=LABEL_AT[label],
                    fontsize=7, arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.6})
    ax.set_xlim(50, 85)
    ax.set_ylim(60, 84)
    ax.set_xlabel("fit check IoU on 221 training images, EMA weights (%)")
    ax.set_ylabel("test IoU, last epoch (%)")
    ax.set_title("Training-split fit check against the test split, official-split cpu runs\n"
                 "(circles sgem_unet, squares unet; in brackets: training images over 100 false-alarm pixels)",
                 fontsize=9)
    return fig


if __name__ == "__main__":
    rs = rows()
    atomic_write_text(HERE / "fit_vs_test.md", markdown(rs))
    save(figure(rs), HERE / "fit_vs_test.png")
    print(markdown(rs))
