"""Table 1 regenerated: the paper's rows beside the rows this run measured.

Every measured row says where it comes from (dataset, device, protocol); paper rows are
labelled ``paper``. Written as CSV and markdown.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

from .io import atomic_write_json, atomic_write_text
from .paper import PAPER_DATASET, PAPER_DEVICE, TABLE1

COLUMNS = ["model", "source", "dataset", "IoU source", "IoU", "F1", "nIoU", "Pd", "Fa (1e-6)", "FLOPs (G)", "Params (M)",
           "FPS", "FPS device", "FPS protocol"]


def paper_rows() -> list[dict[str, Any]]:
    return [{"model": r["model"], "source": "paper", "dataset": PAPER_DATASET, "IoU source": "paper",
             "IoU": r["iou"], "F1": r["f1"],
             "nIoU": None, "Pd": None, "Fa (1e-6)": None, "FLOPs (G)": r["gflops"], "Params (M)": r["params_m"],
             "FPS": r["fps"], "FPS device": PAPER_DEVICE, "FPS protocol": "not stated"} for r in TABLE1]


def measured_row(model: str, *, bench: dict[str, Any] | None, environment: dict[str, Any] | None,
                 metrics: dict[str, Any] | None = None, dataset: str | None = None, label: str | None = None
                 ) -> dict[str, Any]:
    """A row measured by this project: complexity and speed from a ``sgem bench`` row; IoU
    and the other accuracy metrics from this project's evaluation when ``metrics`` is
    given, else the paper's (if the paper has the model), marked in "IoU source"."""
    row: dict[str, Any] = {"model": label or model, "source": "measured"}
    if metrics:
        row.update({"dataset": dataset, "IoU source": "this run", "IoU": 100 * metrics["iou"],
                    "F1": 100 * metrics["f1"], "nIoU": 100 * metrics["niou"], "Pd": 100 * metrics["pd"],
                    "Fa (1e-6)": 1e6 * metrics["fa"]})
    else:
        paper = next((r for r in TABLE1 if r["registry"] == model), None)
        if paper:
            row.update({"dataset": PAPER_DATASET, "IoU source": "paper", "IoU": paper["iou"], "F1": paper["f1"]})
    if bench:
        row.update({"FLOPs (G)": bench["macs_module"] / 1e9, "Params (M)": bench["params"] / 1e6, "FPS": bench["fps"],
                    "FPS protocol": f"batch {bench['batch']}, {bench['precision']}, forward only, median of "
                                    f"{bench['runs']} interleaved runs (sgem bench)"})
    if environment:
        row["FPS device"] = environment.get("gpu") or f"{environment['cpu']} ({environment['torch_threads']} threads)"
    return row


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) >= 0.1 or v == 0 else f"{v:.3g}"
    return str(v)


def to_markdown(rows: Sequence[dict[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})
    return buf.getvalue()


def write_table(rows: Sequence[dict[str, Any]], out_stem: str | Path, *, preamble: str = "") -> tuple[Path, Path]:
    out_stem = Path(out_stem)
    md, csv_path = out_stem.with_suffix(".md"), out_stem.with_suffix(".csv")
    atomic_write_text(md, (preamble + "\n\n" if preamble else "") + to_markdown(rows))
    atomic_write_text(csv_path, to_csv(rows))
    return md, csv_path


def provenance(stage: str, params: dict[str, Any], *, device: str | None = None) -> dict[str, Any]:
    """How a report was produced: the command, params, versions, device, commit and time."""
    import datetime
    import platform
    import subprocess

    import torch

    from . import __version__

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        # tracked files that differ from that commit: the report was made from these edits too
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True, timeout=10)
        modified = sorted(line[3:] for line in status.stdout.splitlines()) if commit and status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        commit = modified = None
    return {
        "stage": stage,
        "command": f"dvc repro {stage}  (papermill notebooks/{stage.split('@')[0]}.ipynb with these params)",
        "params": params,
        "versions": {"sgem": __version__, "torch": str(torch.__version__), "cuda": torch.version.cuda,
                     "python": platform.python_version()},
        "device": device,
        "git_commit": commit,
        "git_modified": modified,   # [] for a clean checkout; null outside git
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# ----------------------------------------------------------------------------- the ablation

ABLATION_METRICS = ("iou", "niou", "f1", "pd", "fa")


def ablation(runs: dict[str, list[str | Path]], split: str = "test") -> dict[str, Any]:
    """Models trained under one protocol with several seeds, side by side: for each model
    its runs' last-epoch ``split`` metrics (from each run's checkpoint history, i.e. the
    protocol's own evaluation, no selection), their mean and range, and every model's
    mean IoU minus the first model's, beside the seed-to-seed spread."""
    from .checkpoint import load_checkpoint

    models: dict[str, Any] = {}
    for name, paths in runs.items():
        rows = []
        for p in paths:
            p = Path(p)
            state = load_checkpoint(p / "checkpoint.pt" if p.is_dir() else p)
            last = state["history"][-1]
            if f"{split}/iou" not in last or state["epoch"] != state["config"]["epochs"]:
                raise ValueError(f"{p}: not a complete run with {split} metrics at its last epoch")
            rows.append({"run": str(p), "seed": state["config"]["seed"], "model": state["config"]["model"],
                         "epochs": state["epoch"], "wall_s": round(sum(r["train/seconds"] for r in state["history"])),
                         "resolved": state.get("resolved"),
                         **{k: last[f"{split}/{k}"] for k in ABLATION_METRICS}})
        ious = [r["iou"] for r in rows]
        models[name] = {"runs": rows, "mean": {k: sum(r[k] for r in rows) / len(rows) for k in ABLATION_METRICS},
                        "iou_range": [min(ious), max(ious)], "seeds": [r["seed"] for r in rows]}
    names = list(models)
    ref = models[names[0]]
    spread = max(m["iou_range"][1] - m["iou_range"][0] for m in models.values())
    for name in names:
        models[name]["iou_minus_first"] = models[name]["mean"]["iou"] - ref["mean"]["iou"]
    return {"split": split, "models": models, "order": names, "largest_seed_range_iou": spread}


def ablation_markdown(report: dict[str, Any]) -> str:
    names = report["order"]
    lines = ["| model | seeds | IoU (mean) | IoU per seed | nIoU | F1 | Pd | Fa (x1e-6) | IoU - " + names[0] + " |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        m = report["models"][name]
        per = ", ".join(f"{100 * r['iou']:.2f}" for r in m["runs"])
        mean = m["mean"]
        lines.append(f"| {name} | {', '.join(map(str, m['seeds']))} | {100 * mean['iou']:.2f} | {per} | "
                     f"{100 * mean['niou']:.2f} | {100 * mean['f1']:.2f} | {100 * mean['pd']:.2f} | "
                     f"{1e6 * mean['fa']:.2f} | {100 * m['iou_minus_first']:+.2f} |")
    spread = 100 * report["largest_seed_range_iou"]
    lines.append("")
    if min(len(report["models"][n]["runs"]) for n in names) < 2:
        lines.append("One seed per model (at least for one of them): the seed-to-seed spread is not measured, so "
                     "this difference cannot be told apart from the variation between seeds of one model.")
    else:
        n = min(len(report["models"][m]["runs"]) for m in names)
        diffs = [abs(100 * report["models"][m]["iou_minus_first"]) for m in names[1:]]
        verdict = ("larger than" if diffs and min(diffs) > spread else "not larger than")
        quoted = ", ".join(f"{d:.2f}" for d in diffs)
        lines.append(f"Largest seed-to-seed range of IoU within one model: {spread:.2f} points, over {n} seeds per "
                     f"model. The difference between the models' means ({quoted} points) is {verdict} that "
                     f"range" + (f"; with {n} seeds per model this is an indication, not a statistical test."
                                 if n < 5 else "."))
    return "\n".join(lines) + "\n"


def write_ablation(report: dict[str, Any], out_stem: str | Path, intro: str) -> str:
    """``out_stem``.json (the report) and ``out_stem``.md (``intro``, then the table);
    returns the markdown."""
    out_stem = Path(out_stem)
    md = f"{intro}\n\n" + ablation_markdown(report)
    atomic_write_json(out_stem.with_name(out_stem.name + ".json"), report)
    atomic_write_text(out_stem.with_name(out_stem.name + ".md"), md)
    return md
