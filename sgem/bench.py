"""Side-by-side speed of every registered model, measured in one process.

Protocol: the same device, input 1x{C}x256x256 random data resident on the device,
``eval()`` + ``inference_mode``; for each (batch, precision) setting every model is warmed
up, then timed **interleaved** (A B C A B C ...; one forward of each model per round,
each bracketed by device synchronisation) so that clock or thermal drift hits all models
alike; an optional time budget per setting caps the rounds (each row says how many it
got). Reported per model and setting: params, module-level MACs (paper convention,
batch 1), latency median and p90, FPS = batch / median, and FPS as a ratio to
``sgem_unet``'s.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from .io import atomic_write_json, atomic_write_text
from .models import create_model, list_models
from .profiling import (PRECISIONS, count_macs, count_params, environment_info, latency_stats, resolve_device,
                        time_forward)

REFERENCE = "sgem_unet"


def bench(models: Sequence[str] | None = None, *, device: str = "cpu", batches: Sequence[int] = (1, 8),
          precisions: Sequence[str] | None = None, size: int = 256, channels: int = 1, runs: int = 25,
          warmup: int = 3, budget_s: float | None = None, min_runs: int = 3) -> dict[str, Any]:
    """Time every model (see module docstring). ``budget_s`` caps the timed rounds of each
    (batch, precision) setting: rounds stop once it is spent and ``min_runs`` are done;
    each row records the rounds it really got."""
    dev = resolve_device(device)
    names = list(models or list_models())
    unknown = [n for n in names if n not in list_models()]
    if unknown:
        raise KeyError(f"unknown model(s) {unknown}; registered: {', '.join(list_models())}")
    precisions = list(precisions or (["fp32", "bf16"] if dev.type == "cuda" else ["fp32"]))
    if "fp16" in precisions and dev.type != "cuda":
        raise ValueError("fp16 needs a CUDA device")
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    nets = {n: create_model(n, in_channels=channels).to(dev).eval() for n in names}
    complexity = {n: {"params": count_params(m), "macs_module": count_macs(m, (channels, size, size), functional=False)}
                  for n, m in nets.items()}
    results: list[dict[str, Any]] = []
    for precision in precisions:
        dtype = PRECISIONS[precision]
        for batch in batches:
            x = torch.randn(batch, channels, size, size, device=dev)
            times: dict[str, list[float]] = {n: [] for n in names}
            ctx = torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
            with torch.inference_mode(), ctx:
                for n in names:
                    for _ in range(warmup):
                        time_forward(nets[n], x)
                start = time.perf_counter()
                for r in range(runs):
                    if budget_s is not None and r >= min_runs and time.perf_counter() - start > budget_s:
                        break
                    for n in names:
                        times[n].append(time_forward(nets[n], x))
            rows = []
            for n in names:
                stats = latency_stats(times[n])
                rows.append({"model": n, "batch": batch, "precision": precision,
                             "params": complexity[n]["params"], "macs_module": complexity[n]["macs_module"],
                             "latency_ms_median": stats["median"], "latency_ms_p90": stats["p90"],
                             "fps": batch / (stats["median"] / 1e3), "runs": len(times[n]), "warmup": warmup})
            ref = next((r["fps"] for r in rows if r["model"] == REFERENCE), None)
            for r in rows:
                r["fps_ratio_to_sgem_unet"] = r["fps"] / ref if ref else None
            results.extend(rows)
    return {"device": str(dev), "environment": environment_info(dev), "input": [channels, size, size],
            "protocol": __doc__.split("Protocol: ", 1)[1].strip(), "results": results}


def sgem_speedups(report: dict[str, Any]) -> list[str]:
    """'SGEM is xN the FPS of M' lines for DNANet and ACM (the paper's claims) per setting."""
    lines = []
    claims = {"dnanet": 12.7, "acm": 3.3}
    for r in report["results"]:
        if r["model"] in claims and r["fps_ratio_to_sgem_unet"]:
            lines.append(f"batch {r['batch']}, {r['precision']}: sgem_unet FPS = {1 / r['fps_ratio_to_sgem_unet']:.2f} x "
                         f"{r['model']}'s (the paper claims x{claims[r['model']]} on an RTX 3090)")
    return lines


def to_markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    where = env.get("gpu") or f"{env['cpu']}, {env['torch_threads']} threads"
    head = (f"Speed of every registered model on {report['device']} ({where}); torch {env['torch']}, "
            f"CUDA {env['cuda']}. Input {'x'.join(map(str, report['input']))} per image. "
            f"Protocol: {report['protocol']}\n\n")
    lines = ["| model | batch | precision | params (M) | MACs (G, module) | latency median (ms) | p90 (ms) | FPS "
             "| FPS / sgem_unet FPS |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        ratio = f"{r['fps_ratio_to_sgem_unet']:.3f}" if r["fps_ratio_to_sgem_unet"] else "-"
        lines.append(f"| {r['model']} | {r['batch']} | {r['precision']} | {r['params'] / 1e6:.3f} | "
                     f"{r['macs_module'] / 1e9:.3f} | {r['latency_ms_median']:.2f} | {r['latency_ms_p90']:.2f} | "
                     f"{r['fps']:.2f} | {ratio} |")
    tail = "\n\n" + "\n".join(f"- {s}" for s in sgem_speedups(report)) + "\n"
    return head + "\n".join(lines) + tail


def write_report(report: dict[str, Any], out_dir: str | Path = "reports", command: str | None = None,
                 name: str | None = None) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    stem = name or f"bench_{report['device'].split(':')[0]}"
    report = {**report, "command": command}
    j = atomic_write_json(out_dir / f"{stem}.json", report)
    md = atomic_write_text(out_dir / f"{stem}.md",
                           (f"Command: `{command}`\n\n" if command else "") + to_markdown(report))
    return j, md
