"""Optional dependencies: imported where a command needs them, with a one-line message
naming what to install when they are missing (the package itself needs only torch,
numpy, scipy, pillow, pyyaml and tqdm)."""

from __future__ import annotations

import importlib
from types import ModuleType

# module -> (pip name, the extra of this package that brings it)
KNOWN = {
    "ptflops": ("ptflops", "profile"),
    "matplotlib": ("matplotlib", "plots"),
    "seaborn": ("seaborn", "plots"),
    "dvclive": ("dvclive", "pipeline"),
    "onnx": ("onnx", "deploy"),
    "onnxruntime": ("onnxruntime", "deploy"),
    "openvino": ("openvino", "deploy"),
}


class MissingDependency(RuntimeError):
    """An optional package a command needs is not installed."""


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependency` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        pip_name, extra = KNOWN.get(top, (top, None))
        hint = f"pip install {pip_name}" + (f" (or the package's [{extra}] extra)" if extra else "")
        raise MissingDependency(f"{purpose} needs {pip_name}, which is not installed: {hint}") from exc
