"""Backends: the targets a model can be quantized for, and their registry.

``get_backend(name)`` returns a registered backend; a module
``systolic_sdk.backends.<name>`` that registers itself on import is found on demand,
so adding a backend is one new module here, for example::

    from systolic_sdk.backends import Backend, register_backend
    from systolic_sdk.quantization.rules import default_rules

    rules = default_rules()          # op_type -> OpRule; replace or drop entries
    register_backend(Backend(name="mine", rules=rules, forms=..., runner=...))
"""

from __future__ import annotations

import importlib
import pkgutil

from systolic_sdk.backends.base import Backend, adapt
from systolic_sdk.errors import SdkError

_REGISTRY: dict[str, Backend] = {}
_NOT_BACKENDS = {"base"}


def register_backend(backend: Backend, replace: bool = False) -> Backend:
    """Register ``backend`` under ``backend.name`` (an existing name needs replace=True)."""
    if not backend.name or not isinstance(backend.name, str):
        raise SdkError("a backend needs a non-empty name")
    if backend.name in _REGISTRY and not replace and _REGISTRY[backend.name] is not backend:
        raise SdkError(f"backend '{backend.name}' is already registered")
    _REGISTRY[backend.name] = backend
    return backend


def unregister_backend(name: str) -> None:
    """Remove a registered backend (no error if absent)."""
    _REGISTRY.pop(name, None)


def _discover(name: str) -> None:
    if name in _NOT_BACKENDS or not name.isidentifier():
        return
    if any(m.name == name for m in pkgutil.iter_modules(__path__)):
        importlib.import_module(f"{__name__}.{name}")


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``; SdkError listing the available names if none."""
    if name not in _REGISTRY:
        _discover(name)
    if name not in _REGISTRY:
        names = ", ".join(available_backends()) or "none"
        raise SdkError(f"unknown backend '{name}' (available: {names})")
    return _REGISTRY[name]


def available_backends() -> list[str]:
    """Names of all backends: registered ones and modules here that register on import."""
    for mod in pkgutil.iter_modules(__path__):
        if mod.name not in _NOT_BACKENDS and mod.name not in _REGISTRY:
            try:
                _discover(mod.name)
            except Exception:  # a broken optional backend must not hide the others
                continue
    return sorted(_REGISTRY)


from systolic_sdk.backends import cpu_ort as _cpu_ort  # noqa: E402,F401  (registers "cpu")

__all__ = [
    "Backend",
    "adapt",
    "available_backends",
    "get_backend",
    "register_backend",
    "unregister_backend",
]
