"""Where a training step's GPU time goes, for several models in one process (docs/gpu.md).

    python3 -u tools/gpu_profile.py DATA_ROOT OUT_JSON [--models sgem_unet unet]

For each model, on the training split's own batches (batch 8, 256x256, bf16 autocast +
channels_last, as the paper-scale run trains): the step's throughput eager and as a CUDA
graph (``tools/gpu_check.py``'s probe, median over timed steps), then ``torch.profiler``
over 5 eager steps after warm-up: GPU time per step and the kernels that take it, grouped
(convolution forward/backward, normalisation, upsampling, element-wise, optimizer, other).
The models are profiled one after another in one process on one device, so their ratios
are comparable; absolute figures depend on the card and the software stack.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

# gpu_check beside this file (importing it puts this checkout's sgem on the path too)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import _say, _steps  # noqa: E402

GROUPS = [  # first match wins; names as cuDNN / PyTorch kernels show them
    ("conv backward (weights)", ("wgrad", "convolution_backward_weight")),
    ("conv backward (data)", ("dgrad",)),
    ("upsampling", ("upsample", "bilinear", "interp")),
    ("normalisation", ("batch_norm", "batchnorm", "bn_", "welford", "norm")),
    ("convolution / matmul", ("conv", "gemm", "xmma", "cutlass", "sm90", "implicit", "fprop", "nhwc")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("reduction", ("reduce",)),
    ("element-wise", ("elementwise", "vectorized", "unrolled", "copy", "relu", "sigmoid", "add", "mul", "fill")),
]


def _group(name: str) -> str:
    low = name.lower()
    for group, keys in GROUPS:
        if any(k in low for k in keys):
            return group
    return "other"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--models", nargs="+", default=["sgem_unet", "unet"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--probe-steps", type=int, default=40)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--upsample-bf16", action="store_true",
                    help="an experiment, not the paper's model: bilinear upsampling in bf16 (autocast runs it "
                         "in fp32) by patching torch.nn.functional.interpolate for this process")
    ap.add_argument("--compile", nargs="*", default=[], metavar="MODE",
                    help="an experiment: also time the step with the forward torch.compile'd in these modes "
                         "(default, max-autotune-no-cudagraphs, ...), eager and under the CUDA-graph capture")
    ap.add_argument("--no-profile", action="store_true", help="throughput only, no torch.profiler pass")
    args = ap.parse_args()
    if args.upsample_bf16:
        _patch_interpolate_bf16()
    from sgem.data import image_stats, load_split
    from sgem.io import atomic_write_json
    from sgem.profiling import environment_info
    from sgem.train import DeviceData

    dev = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    result: dict = {"environment": environment_info(dev), "batch": args.batch, "models": {},
                    "upsample_bf16": args.upsample_bf16, "compile": args.compile}
    _, images, masks = load_split(args.data, "train")
    mean, std = image_stats(images)
    data = DeviceData(images, masks, dev)
    on_gpu = dev.type == "cuda"
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_gpu else [])
    for name in args.models:
        entry: dict = {"throughput": {}}
        kw = dict(batch=args.batch, n=args.probe_steps, precision="bf16", channels_last=True, mean=mean, std=std)
        settings = [("bf16+cl eager", False, None), ("bf16+cl graph", True, None)]
        for mode in args.compile:
            settings += [(f"bf16+cl compile[{mode}] eager", False, mode), (f"bf16+cl compile[{mode}] graph", True, mode)]
        for label, graph, mode in settings:
            if graph and not on_gpu:
                continue
            t0 = time.perf_counter()
            try:
                losses, times, runner = _steps(data, name, cuda_graph=graph, compile_mode=mode,
                                               timed_from=min(10 if mode else 5, args.probe_steps - 1), **kw)
            except Exception as exc:  # an experiment: record the failure and go on with the next setting
                entry["throughput"][label] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                _say(f"{name} {label}: FAILED {type(exc).__name__}: {str(exc)[:200]}")
                continue
            med, wall = statistics.median(times), time.perf_counter() - t0
            entry["throughput"][label] = {"step_ms_median": med * 1e3, "images_per_s": args.batch / med,
                                          "wall_s": wall, "loss_first_last": [losses[0], losses[-1]],
                                          "step_mode": runner.mode, "fallback": runner.fallback}
            _say(f"{name} {label}: {med * 1e3:.2f} ms/step, {args.batch / med:.0f} images/s "
                 f"({runner.mode}{', fallback: ' + runner.fallback if runner.fallback else ''}; "
                 f"{wall:.0f} s with compilation; loss {losses[0]:.4f} -> {losses[-1]:.4f})")
            result["models"][name] = entry
            atomic_write_json(args.out, result)  # after every setting: a run stopped at a time limit keeps what it measured
        if args.no_profile:
            continue
        # the profile: 10 warm-up steps then 5 profiled (a fresh model and runner, eager)
        with torch.profiler.profile(activities=acts, schedule=torch.profiler.schedule(wait=0, warmup=10, active=5,
                                                                              repeat=1)) as prof:
            _steps(data, name, batch=args.batch, n=15, precision="bf16", channels_last=True, cuda_graph=False,
                   mean=mean, std=std, after_step=prof.step)
        kernels: dict = defaultdict(lambda: [0.0, 0])
        for ev in prof.key_averages():
            if on_gpu:  # GPU kernels
                t = getattr(ev, "self_device_time_total", None) or getattr(ev, "self_cuda_time_total", 0)
                t = t if ev.device_type == torch.autograd.DeviceType.CUDA else 0
            else:  # a CPU dry run: the operators' own CPU time
                t = ev.self_cpu_time_total if ev.key.startswith("aten::") else 0
            # annotations on the GPU timeline (the profiler's step, the optimizer's step) span kernels
            # that are counted on their own: leaving them in would count that time twice
            if t and not ev.key.startswith(("ProfilerStep", "Optimizer.")):
                kernels[ev.key][0] += t / 5.0  # us per step
                kernels[ev.key][1] += ev.count // 5
        total = sum(v[0] for v in kernels.values())
        groups: dict = defaultdict(float)
        for k, (t, _) in kernels.items():
            groups[_group(k)] += t
        top = sorted(kernels.items(), key=lambda kv: -kv[1][0])
        entry["gpu_us_per_step"] = total
        entry["kernels_per_step"] = sum(v[1] for v in kernels.values())
        entry["groups_us_per_step"] = dict(sorted(groups.items(), key=lambda kv: -kv[1]))
        entry["top_kernels"] = [{"name": k[:160], "us_per_step": t, "calls_per_step": c} for k, (t, c) in top]
        result["models"][name] = entry
        _say(f"{name}: {'GPU' if on_gpu else 'CPU'} {total / 1e3:.2f} ms/step in {entry['kernels_per_step']} kernels; "
             + ", ".join(f"{g} {t / 1e3:.2f}" for g, t in entry["groups_us_per_step"].items()))
        for k, (t, c) in top[:6]:
            _say(f"   {t / 1e3:6.2f} ms  x{c:<4d} {k[:110]}")
    atomic_write_json(args.out, result)
    return 0


def _patch_interpolate_bf16() -> None:
    """Under autocast, run F.interpolate on bf16 tensors in bf16 instead of autocast's fp32."""
    import torch.nn.functional as F

    orig = F.interpolate

    def interpolate(x, *a, **kw):
        if torch.is_autocast_enabled(x.device.type) and x.is_floating_point():
            with torch.autocast(x.device.type, enabled=False):
                return orig(x.to(torch.bfloat16), *a, **kw)
        return orig(x, *a, **kw)

    F.interpolate = interpolate


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, OSError) as exc:   # a bad dataset or output path: the message, not a traceback
        print(f"gpu_profile: error: {exc}", file=sys.stderr)
        sys.exit(2)
