"""Side-by-side speed of every registered model, measured in one process.

Protocol: the same device, input 1x{C}x256x256 random data resident on the device,
``eval()`` + ``inference_mode``; for each (batch, mode) setting every model is warmed
up (at least ``warmup`` runs each and, interleaved, at least ``warmup_s`` seconds in all,
so that a GPU's clocks have ramped up), then timed **interleaved** (A B C A B C ...; one
forward of each model per round, each bracketed by device synchronisation: CUDA events
on a GPU) so that clock or thermal drift hits all models alike; an optional time budget
per setting caps the rounds (each row says how many it got). A mode is a precision
(fp32, bf16 or fp16 autocast) with optional ``+cl`` (channels_last weights and input)
and ``+graph`` (CUDA only: the forward captured once as a CUDA graph and replayed, which
removes the host's per-layer launch cost; the output is the same computation). On CUDA,
``cudnn.benchmark`` is on (each model's convolution algorithms are chosen during warm-up)
and the TF32 settings in force are recorded. Reported per model and setting: params,
module-level MACs (paper convention, batch 1; null where ptflops is not installed),
latency median and p90, FPS = batch / median, and FPS as a ratio to ``sgem_unet``'s.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .io import atomic_write_json, atomic_write_text
from .models import create_model, list_models
from .profiling import PRECISIONS, count_params, cpu_description, environment_info, latency_stats, resolve_device

REFERENCE = "sgem_unet"


def parse_mode(mode: str) -> tuple[str, bool, bool]:
    """'bf16+cl+graph' -> ('bf16', True, True); a clear error for anything else."""
    precision, *flags = mode.split("+")
    unknown = [f for f in flags if f not in ("cl", "graph")]
    if precision not in PRECISIONS or unknown or len(set(flags)) != len(flags):
        raise ValueError(f"bench mode {mode!r}: expected a precision ({', '.join(PRECISIONS)}) "
                         f"optionally followed by +cl and/or +graph, e.g. 'bf16+cl+graph'")
    return precision, "cl" in flags, "graph" in flags


def _module_macs(model: nn.Module, shape: tuple[int, int, int]) -> int | None:
    from ._optional import MissingDependency
    from .profiling import count_macs

    try:
        return count_macs(model, shape, functional=False)
    except MissingDependency:  # ptflops is optional for timing
        return None


def _forward_fn(model: nn.Module, x: torch.Tensor, dtype: torch.dtype | None, graph: bool) -> Callable[[], Any]:
    """A no-argument callable that runs ``model(x)`` once (graph: replays a captured forward)."""
    ctx = (lambda: torch.autocast(x.device.type, dtype=dtype, cache_enabled=not graph)) if dtype is not None \
        else contextlib.nullcontext
    if not graph:
        def run() -> Any:
            with ctx():
                return model(x)
        return run
    side = torch.cuda.Stream(x.device)
    side.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(side):
        for _ in range(3):
            with ctx():
                model(x)
    torch.cuda.current_stream(x.device).wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g), ctx():
        model(x)
    return g.replay


def _time(fn: Callable[[], Any], device: torch.device) -> float:
    """Milliseconds of one ``fn()``, bracketed by device synchronisation."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def bench(models: Sequence[str] | None = None, *, device: str = "cpu", batches: Sequence[int] = (1, 8),
          precisions: Sequence[str] | None = None, modes: Sequence[str] | None = None, size: int = 256,
          channels: int = 1, runs: int = 25, warmup: int = 3, warmup_s: float = 0.0,
          budget_s: float | None = None, min_runs: int = 3) -> dict[str, Any]:
    """Time every model (see module docstring). ``modes`` (e.g. ``["fp32", "bf16+cl+graph"]``)
    overrides ``precisions`` (plain eager modes). ``budget_s`` caps the timed rounds of each
    (batch, mode) setting: rounds stop once it is spent and ``min_runs`` are done; each
    row records the rounds it really got."""
    dev = resolve_device(device)
    names = list(models or list_models())
    unknown = [n for n in names if n not in list_models()]
    if unknown:
        raise KeyError(f"unknown model(s) {unknown}; registered: {', '.join(list_models())}")
    if modes is None:
        modes = list(precisions or (["fp32", "bf16"] if dev.type == "cuda" else ["fp32"]))
    parsed = {m: parse_mode(m) for m in modes}
    for m, (precision, _, graph) in parsed.items():
        if dev.type != "cuda" and (precision == "fp16" or graph):
            raise ValueError(f"bench mode {m!r} needs a CUDA device")
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    cuda_flags: dict[str, Any] = {}
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        cuda_flags = {"cudnn_benchmark": True, "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                      "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                      "float32_matmul_precision": torch.get_float32_matmul_precision()}
    base = {n: create_model(n, in_channels=channels).eval() for n in names}
    complexity = {n: {"params": count_params(m), "macs_module": _module_macs(m, (channels, size, size))}
                  for n, m in base.items()}
    results: list[dict[str, Any]] = []
    for mode, (precision, cl, graph) in parsed.items():
        dtype = PRECISIONS[precision]
        fmt = torch.channels_last if cl else torch.contiguous_format
        nets = {n: m.to(dev).to(memory_format=fmt) for n, m in base.items()}
        for batch in batches:
            x = torch.randn(batch, channels, size, size, device=dev).contiguous(memory_format=fmt)
            times: dict[str, list[float]] = {n: [] for n in names}
            with torch.inference_mode():
                fns = {n: _forward_fn(nets[n], x, dtype, graph) for n in names}
                start = time.perf_counter()
                done = 0
                while done < warmup or time.perf_counter() - start < warmup_s:
                    for n in names:
                        _time(fns[n], dev)
                    done += 1
                start = time.perf_counter()
                for r in range(runs):
                    if budget_s is not None and r >= min_runs and time.perf_counter() - start > budget_s:
                        break
                    for n in names:
                        times[n].append(_time(fns[n], dev))
            del fns
            rows = []
            for n in names:
                stats = latency_stats(times[n])
                rows.append({"model": n, "batch": batch, "mode": mode, "precision": precision,
                             "channels_last": cl, "cuda_graph": graph,
                             "params": complexity[n]["params"], "macs_module": complexity[n]["macs_module"],
                             "latency_ms_median": stats["median"], "latency_ms_p90": stats["p90"],
                             "fps": batch / (stats["median"] / 1e3), "runs": len(times[n]),
                             "warmup_runs": done})
            ref = next((r["fps"] for r in rows if r["model"] == REFERENCE), None)
            for r in rows:
                r["fps_ratio_to_sgem_unet"] = r["fps"] / ref if ref else None
            results.extend(rows)
    return {"device": str(dev), "environment": environment_info(dev) | cuda_flags, "input": [channels, size, size],
            "warmup": warmup, "warmup_s": warmup_s, "budget_s": budget_s,
            "protocol": __doc__.split("Protocol: ", 1)[1].strip(), "results": results}


def sgem_speedups(report: dict[str, Any]) -> list[str]:
    """'SGEM is xN the FPS of M' lines for DNANet and ACM (the paper's claims) per setting."""
    lines = []
    claims = {"dnanet": 12.7, "acm": 3.3}
    for r in report["results"]:
        if r["model"] in claims and r["fps_ratio_to_sgem_unet"]:
            lines.append(f"batch {r['batch']}, {r.get('mode', r['precision'])}: sgem_unet FPS = {1 / r['fps_ratio_to_sgem_unet']:.2f} x "
                         f"{r['model']}'s (the paper claims x{claims[r['model']]} on an RTX 3090)")
    return lines


def to_markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    where = env.get("gpu") or f"{cpu_description(env)}, {env['torch_threads']} threads"
    head = (f"Speed of every registered model on {report['device']} ({where}); torch {env['torch']}, "
            f"CUDA {env['cuda']}. Input {'x'.join(map(str, report['input']))} per image. "
            f"Protocol: {report['protocol']}\n\n")
    lines = ["| model | batch | mode | params (M) | MACs (G, module) | latency median (ms) | p90 (ms) | FPS "
             "| FPS / sgem_unet FPS |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        ratio = f"{r['fps_ratio_to_sgem_unet']:.3f}" if r["fps_ratio_to_sgem_unet"] else "-"
        macs = "-" if r["macs_module"] is None else f"{r['macs_module'] / 1e9:.3f}"
        lines.append(f"| {r['model']} | {r['batch']} | {r.get('mode', r['precision'])} | {r['params'] / 1e6:.3f} | "
                     f"{macs} | {r['latency_ms_median']:.2f} | {r['latency_ms_p90']:.2f} | "
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
