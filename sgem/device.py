"""Where computations run: the device resolver and the precision resolver, shared by
training, evaluation, prediction and profiling.

``precision="auto"`` means bf16 autocast with channels_last where the device computes
bf16 natively; elsewhere fp32, with channels_last on a CPU (oneDNN's convolutions are
faster in that layout in fp32 too: 1.15-1.19x for a training step of sgem_unet at 128x128,
batch 8, and 1.29x for batch-1 inference on a Xeon without native bf16; 1.17x batch-1 on one
with AMX; docs/training.md, reports/bench_cpu_deploy*.md) and without it on a CUDA device (no
bf16 there means no tensor-core layout to gain):

* CUDA: ``torch.cuda.is_bf16_supported()`` (Ampere and newer);
* CPU: the processor advertises AMX-BF16 or AVX512-BF16 (``/proc/cpuinfo`` flags on
  Linux). Without them PyTorch still runs bf16, but by emulation, often slower than
  fp32 (an AMD Zen 4 has AVX512-BF16 and is counted as native; measure before relying
  on it: ``sgem bench --device cpu --mode fp32 bf16+cl``).
"""

from __future__ import annotations

import contextlib
import functools
import platform

import torch

PRECISION_CHOICES = ("fp32", "bf16", "auto")


def resolve_device(device: str) -> torch.device:
    """'auto' (CUDA when available), 'cpu' or 'cuda[:N]', checked."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available "
                           f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    return dev


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields in ``/proc/cpuinfo`` (Linux; empty elsewhere), read once
    per process."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if not line.strip():
                    break                       # the first processor's block is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_name() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


# the instruction sets that decide which inference and training paths are fast on a CPU
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8")


def cpu_details() -> dict[str, object]:
    """What a CPU speed figure must carry beyond the name, which is often generic ('Intel(R)
    Xeon(R) Processor' under a hypervisor covers CPUs with and without AMX): family and model
    numbers, the speed-relevant instruction sets the operating system exposes (a virtual
    machine may hide some the hardware has), whether bf16 is native, and the vector code
    path PyTorch dispatches to."""
    fields, flags = _cpuinfo(), _cpu_flags()
    return {"cpu_family_model": f"{fields['cpu family']}/{fields['model']}" if "cpu family" in fields and
            "model" in fields else None,
            "cpu_isa": [f for f in ISA_FLAGS if f in flags],
            "cpu_native_bf16": native_bf16("cpu"),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def _cpu_flags() -> set[str]:
    return set(_cpuinfo().get("flags", "").split())


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 natively (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bool({"amx_bf16", "avx512_bf16"} & _cpu_flags())


def resolve_precision(precision: str, device: torch.device | str) -> tuple[str, bool]:
    """(precision, channels_last) for a requested precision: 'auto' becomes bf16 with
    channels_last on a native-bf16 device, fp32 with channels_last on any other CPU and fp32
    without it on any other CUDA device; 'fp32' and 'bf16' stay (channels_last then as the
    caller chooses: False here)."""
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}")
    if precision != "auto":
        return precision, False
    device = torch.device(device)
    return ("bf16", True) if native_bf16(device) else ("fp32", device.type == "cpu")


__all__ = ["PRECISION_CHOICES", "cpu_details", "cpu_name", "native_bf16", "resolve_device", "resolve_precision"]
