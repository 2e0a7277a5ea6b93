"""Plug-in registries for methods and tasks.

Adding a method is adding one module to ``methods/`` that decorates its class with
:func:`register_method`; adding a task is the same in ``tasks/``. Every module of those packages
is imported on first lookup, so nothing else needs editing.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

__all__ = [
    "get_method",
    "get_task",
    "method_names",
    "register_method",
    "register_task",
    "task_names",
]

_METHODS: dict[str, Any] = {}
_TASKS: dict[str, Any] = {}
_loaded: set[str] = set()


def _load(package: str) -> None:
    if package in _loaded:
        return
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
    _loaded.add(package)


def register_method(cls: Any) -> Any:
    """Class decorator: register a :class:`methods.base.Method` under ``cls.name``."""
    if cls.name in _METHODS and _METHODS[cls.name] is not cls:
        raise ValueError(f"method {cls.name!r} is registered twice")
    _METHODS[cls.name] = cls
    return cls


def register_task(cls: Any) -> Any:
    """Class decorator: register a :class:`tasks.base.Task` under ``cls.name``."""
    if cls.name in _TASKS and _TASKS[cls.name] is not cls:
        raise ValueError(f"task {cls.name!r} is registered twice")
    _TASKS[cls.name] = cls
    return cls


def method_names() -> list[str]:
    """Registered method names (the runnable ones, sorted; ``mixture`` reference excluded)."""
    _load("methods")
    return sorted(n for n, c in _METHODS.items() if not getattr(c, "reference_only", False))


def task_names() -> list[str]:
    """Registered task names, sorted."""
    _load("tasks")
    return sorted(_TASKS)


def get_method(name: str) -> Any:
    """The method class registered as ``name``.

    Raises:
        KeyError: unknown name; the message lists the valid ones.
    """
    _load("methods")
    if name not in _METHODS:
        raise KeyError(f"unknown method {name!r}; valid methods: {', '.join(method_names())}")
    return _METHODS[name]


def get_task(name: str) -> Any:
    """The task class registered as ``name``.

    Raises:
        KeyError: unknown name; the message lists the valid ones.
    """
    _load("tasks")
    if name not in _TASKS:
        raise KeyError(f"unknown task {name!r}; valid tasks: {', '.join(task_names())}")
    return _TASKS[name]
