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

from .io import atomic_write_text
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
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "stage": stage,
        "command": f"dvc repro {stage}  (papermill notebooks/{stage.split('@')[0]}.ipynb with these params)",
        "params": params,
        "versions": {"sgem": __version__, "torch": str(torch.__version__), "cuda": torch.version.cuda,
                     "python": platform.python_version()},
        "device": device,
        "git_commit": commit,
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
