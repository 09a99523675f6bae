"""Name -> constructor registry (one factory builds every model, as in timm/smp)."""

from __future__ import annotations

from typing import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_model(name: str, description: str = "") -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = fn
        _DESCRIPTIONS[name] = description or (fn.__doc__ or "").strip().splitlines()[0]
        return fn
    return wrap


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_REGISTRY)


def describe_model(name: str) -> str:
    _check(name)
    return _DESCRIPTIONS[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; keyword arguments go to its constructor."""
    _check(name)
    try:
        return _REGISTRY[name](**kwargs)
    except TypeError as exc:  # unknown keyword: say which model and what it takes
        raise TypeError(f"create_model({name!r}): {exc}") from exc


def _check(name: str) -> None:
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
