"""Complexity and speed of a model, with the protocol stated next to every number.

Complexity (always at batch 1, as IRSTD tables count it):

* ``params``: every parameter of the model (not only those of modules that run).
* ``macs_module``: multiply-accumulates from module hooks, ptflops' ``pytorch`` backend
  with functional counting off. This is the convention of the paper's Table 1 and of
  thop ("FLOPs" in IRSTD tables are MACs). It does not see matrix products or softmax
  written as functions, so it under-counts attention.
* ``macs_full``: the same backend with functional counting on, so ``torch.matmul``,
  ``F.softmax`` and ``F.interpolate`` are added: the module count plus what the
  attention's matrix products cost.
* ``flops_torch``: ``torch.utils.flop_counter`` (FLOPs = 2 x MACs of convolutions and
  matrix products only; no norms or activations), a second, independent full count.

Speed: forward pass only (no data loading, no pre/post-processing), ``model.eval()``,
``torch.inference_mode()``, fixed random input already on the device, ``warmup``
untimed runs, then ``runs`` timed runs each bracketed by device synchronisation
(CUDA events on GPU, ``perf_counter`` on CPU). Latency median and p90 are reported;
FPS = batch / median latency.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import platform
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from .device import cpu_details, cpu_name, resolve_device  # noqa: F401  (re-exported)
from .models import create_model

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PROTOCOL = ("forward only, model.eval() + inference_mode, random input resident on the device, "
            "{warmup} warm-up runs, {runs} timed runs each synchronised; latency median/p90; "
            "FPS = batch / median latency; MACs at batch 1")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _transposed_conv_per_output(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
    """thop's count for a transposed convolution: output elements x (in/groups x kernel area),
    which counts the zeros the stride inserts (stride^2 times the real work)."""
    k = int(np.prod(module.kernel_size))
    macs = output.numel() * (module.in_channels // module.groups) * k
    if module.bias is not None:
        macs += output.numel()
    module.__flops__ += int(macs)


def _deform_conv(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
    """A deformable convolution costs what the same convolution costs (its offset branch is
    an ordinary nn.Conv2d, counted on its own); bilinear sampling is not counted."""
    k = int(np.prod(module.kernel_size))
    macs = output.numel() * module.weight.shape[1] * k + (output.numel() if module.bias is not None else 0)
    module.__flops__ += int(macs)


def count_macs(model: nn.Module, input_shape: tuple[int, int, int], *, functional: bool,
               transposed: str = "input") -> int:
    """MACs at batch 1 through ptflops' pytorch backend (named explicitly: its default differs).

    ``transposed="output"`` counts transposed convolutions as thop does (per output
    pixel, stride^2 too many), to reproduce published tables; the default counts the
    real multiply-accumulates.
    """
    from ._optional import require

    get_model_complexity_info = require("ptflops", "counting MACs").get_model_complexity_info

    if transposed not in ("input", "output"):
        raise ValueError(f"transposed must be 'input' or 'output', got {transposed!r}")
    from .models.isnet import DeformConv2d

    hooks: dict[Any, Any] = {DeformConv2d: _deform_conv}
    if transposed == "output":
        hooks.update({nn.ConvTranspose1d: _transposed_conv_per_output, nn.ConvTranspose2d: _transposed_conv_per_output})
    m = copy.deepcopy(model).float().cpu().eval()
    with torch.no_grad():
        macs, _ = get_model_complexity_info(
            m, tuple(input_shape), as_strings=False, print_per_layer_stat=False, ost=io.StringIO(),
            backend="pytorch", custom_modules_hooks=hooks, backend_specific_config={"count_functional": functional})
    if macs is None:
        raise RuntimeError(f"ptflops could not count {type(model).__name__} at input {input_shape}")
    return int(macs)


def count_flops_torch(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """FLOPs at batch 1 from ``torch.utils.flop_counter`` (convolutions and matrix products)."""
    from torch.utils.flop_counter import FlopCounterMode

    m = copy.deepcopy(model).float().cpu().eval()
    x = torch.randn(1, *input_shape)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        m(x)
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(model: nn.Module, x: torch.Tensor) -> float:
    """Milliseconds of one ``model(x)``, bracketed by device synchronisation (CUDA events on
    a GPU, ``perf_counter`` on the CPU)."""
    if x.device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        model(x)
        end.record()
        torch.cuda.synchronize(x.device)
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    model(x)
    return (time.perf_counter() - t0) * 1e3


def latency_stats(times_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(times_ms)
    return {"median": float(np.median(arr)), "p90": float(np.percentile(arr, 90)), "mean": float(arr.mean()),
            "min": float(arr.min()), "std": float(arr.std())}


def measure_latency(model: nn.Module, x: torch.Tensor, *, warmup: int = 10, runs: int = 50,
                    precision: str = "fp32") -> dict[str, float]:
    """Latency of ``model(x)`` in milliseconds (see the module docstring for the protocol)."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    device = x.device
    dtype = PRECISIONS[precision]
    autocast = (torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None
                else contextlib.nullcontext())
    model.eval()
    with torch.inference_mode(), autocast:
        for _ in range(warmup):
            model(x)
        _sync(device)
        times = [time_forward(model, x) for _ in range(runs)]
    return {**latency_stats(times), "runs": runs, "warmup": warmup}


def cpu_description(env: dict[str, Any]) -> str:
    """The CPU as a report names it: its name, then family/model and the speed-relevant
    instruction sets where ``env`` (from :func:`environment_info`) records them."""
    extra = [f"family/model {env['cpu_family_model']}"] if env.get("cpu_family_model") else []
    if env.get("cpu_isa"):
        extra.append(" ".join(env["cpu_isa"]).upper())
    return f"{env['cpu']} ({'; '.join(extra)})" if extra else env["cpu"]


def environment_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Device, library versions and thread count: what a speed figure must carry."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "cpu": cpu_name(),
        **cpu_details(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["driver_capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    return info


def profile_model(
    model: str | nn.Module,
    *,
    size: int | tuple[int, int] = 256,
    channels: int | None = None,
    batch: int = 1,
    device: str = "cpu",
    precision: str = "fp32",
    warmup: int = 10,
    runs: int = 50,
    timing: bool = True,
    model_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Parameters, MACs (module-level and full), latency and FPS of a model.

    ``model`` is a registered name or a module. ``channels`` defaults to the model's
    ``in_channels``. Returns a JSON-ready dict.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    dev = resolve_device(device)
    if precision == "fp16" and dev.type != "cuda":
        raise ValueError("precision 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on the CPU")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    name = model if isinstance(model, str) else type(model).__name__
    kwargs = dict(model_kwargs or {})
    if isinstance(model, str):
        if channels is not None:
            kwargs.setdefault("in_channels", channels)
        model = create_model(model, **kwargs)
    in_ch = channels if channels is not None else getattr(model, "in_channels", 1)
    h, w = (size, size) if isinstance(size, int) else size
    shape = (in_ch, h, w)
    if hasattr(model, "size_multiple"):  # fail with the model's own message; ptflops would swallow it
        from .models.blocks import check_input

        check_input(model, torch.empty(1, *shape, device="meta"))

    result: dict[str, Any] = {
        "model": name,
        "model_kwargs": kwargs,
        "input_shape": [batch, *shape],
        "params": count_params(model),
        "macs_module": count_macs(model, shape, functional=False),
        "macs_full": count_macs(model, shape, functional=True),
        "flops_torch": count_flops_torch(model, shape),
    }
    result["params_m"] = result["params"] / 1e6
    result["gmacs_module"] = result["macs_module"] / 1e9
    result["gmacs_full"] = result["macs_full"] / 1e9
    result["gflops_torch"] = result["flops_torch"] / 1e9
    if timing:
        model = model.to(dev).eval()
        x = torch.randn(batch, *shape, device=dev)
        lat = measure_latency(model, x, warmup=warmup, runs=runs, precision=precision)
        result["latency_ms"] = lat
        result["fps"] = batch / (lat["median"] / 1e3)
        result["precision"] = precision
        result["protocol"] = PROTOCOL.format(warmup=warmup, runs=runs)
    result["environment"] = environment_info(dev)
    return result


def format_profile(r: dict[str, Any]) -> str:
    """Human-readable summary of :func:`profile_model`'s result."""
    env = r["environment"]
    where = env.get("gpu") or cpu_description(env)
    lines = [
        f"model            {r['model']}  input {'x'.join(map(str, r['input_shape']))}",
        f"params           {r['params_m']:.3f} M",
        f"MACs (module)    {r['gmacs_module']:.3f} G   <- paper convention (thop / ptflops pytorch backend)",
        f"MACs (full)      {r['gmacs_full']:.3f} G   (+ matmul, softmax, interpolate)",
        f"FLOPs (torch)    {r['gflops_torch']:.3f} G   (torch.utils.flop_counter: 2 x conv/matmul MACs)",
    ]
    if "latency_ms" in r:
        lat = r["latency_ms"]
        lines += [
            f"latency          median {lat['median']:.2f} ms, p90 {lat['p90']:.2f} ms "
            f"({lat['runs']} runs after {lat['warmup']} warm-up, {r['precision']})",
            f"FPS              {r['fps']:.1f}",
        ]
    lines.append(f"device           {env['device']} ({where}); torch {env['torch']}, CUDA {env['cuda']}, "
                 f"{env['torch_threads']} threads")
    return "\n".join(lines)


__all__ = ["count_flops_torch", "cpu_description", "count_macs", "count_params", "environment_info", "format_profile",
           "measure_latency", "profile_model"]
