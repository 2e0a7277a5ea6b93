"""Plug-in registries: one :class:`Registry` class for every pluggable kind (after
lm-evaluation-harness's ``Registry``).

A method is one module holding a :class:`methods.base.Method` subclass decorated with
:func:`register_method`; a task is the same with :class:`tasks.base.Task` and
:func:`register_task`. The module declares its own config sections (dataclasses whose defaults are
the paper's values) and keeps its preset values in a YAML file beside it
(``benchmark.config``), so adding a method edits no file of the harness.

Plug-ins are found in three places, in this order, the first time a name is looked up:

1. the built-in packages ``methods/`` and ``tasks/`` (every module not starting with ``_``);
2. the entry-point groups ``surf_benchmark.methods`` and ``surf_benchmark.tasks`` of installed
   distributions (``[project.entry-points."surf_benchmark.methods"] mine = "my_pkg.my_method"``;
   the value is the module to import, which registers its classes);
3. the modules named by ``--plugins a.b,c.d`` and the ``BENCHMARK_PLUGINS`` environment variable
   (comma-separated), imported by :func:`load_plugins`.

``python -m benchmark list`` shows where each plug-in came from (:meth:`Registry.origin`).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
import pkgutil
from typing import Any, Generic, TypeVar

__all__ = [
    "METHODS",
    "TASKS",
    "PluginError",
    "Registry",
    "UnknownName",
    "get_method",
    "get_task",
    "load_plugins",
    "method_names",
    "plugin_modules",
    "register_method",
    "register_task",
    "task_names",
]

T = TypeVar("T")

#: environment variable naming extra plug-in modules (comma-separated), like ``--plugins``
PLUGINS_ENV = "BENCHMARK_PLUGINS"


class UnknownName(KeyError):
    """A name that is not registered; the message suggests near names and lists the valid ones."""

    def __str__(self) -> str:  # KeyError quotes its argument; show the sentence as written
        return str(self.args[0]) if self.args else ""


class PluginError(ImportError):
    """A plug-in module could not be imported or registers something invalid."""


class Registry(Generic[T]):
    """Name -> class registry of one plug-in kind, with a base-class check, near-name
    suggestions and lazy discovery (built-in packages, entry points).

    Args:
        kind: what is registered (``"method"``), for messages.
        base: ``"module:Class"`` every registered class must subclass (resolved on first use,
            so that the registry module imports nothing heavy).
        packages: built-in packages whose modules are imported on first lookup.
        entry_point_group: entry-point group of installed plug-in distributions.
    """

    def __init__(
        self,
        kind: str,
        base: str | None = None,
        packages: tuple[str, ...] = (),
        entry_point_group: str | None = None,
    ) -> None:
        self.kind = kind
        self._base_path = base
        self._packages = packages
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._origins: dict[str, str] = {}
        self._loaded = False
        self._loading = False

    # -- registration --------------------------------------------------------------------
    def _base(self) -> type | None:
        if self._base_path is None:
            return None
        module, _, attr = self._base_path.partition(":")
        return getattr(importlib.import_module(module), attr)

    def add(self, name: str, obj: T, origin: str | None = None) -> T:
        """Register ``obj`` under ``name``.

        Raises:
            PluginError: ``obj`` is not a subclass of the registry's base class, or another
                object is already registered under ``name``.
        """
        base = self._base()
        if base is not None and not (isinstance(obj, type) and issubclass(obj, base)):
            raise PluginError(
                f"{self.kind} {name!r} ({obj!r}) must be a subclass of "
                f"{base.__module__}.{base.__qualname__}"
            )
        current = self._items.get(name)
        if current is not None and current is not obj:
            raise PluginError(
                f"{self.kind} {name!r} is registered twice: by module {current.__module__} and "
                f"by module {getattr(obj, '__module__', '?')}; rename one of them"
            )
        self._items[name] = obj
        self._origins[name] = origin or ""
        return obj

    def register(self, obj: T) -> T:
        """Class decorator: register ``obj`` under its ``name`` attribute."""
        return self.add(obj.name, obj)  # type: ignore[attr-defined]

    # -- discovery -----------------------------------------------------------------------
    def load(self) -> None:
        """Import the built-in packages and the entry points (once)."""
        if self._loaded or self._loading:
            return
        self._loading = True
        try:
            for package in self._packages:
                pkg = importlib.import_module(package)
                for info in pkgutil.iter_modules(pkg.__path__):
                    if not info.name.startswith("_"):
                        module = f"{package}.{info.name}"
                        importlib.import_module(module)
            if self.entry_point_group:
                for ep in importlib.metadata.entry_points(group=self.entry_point_group):
                    dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "?"
                    try:
                        ep.load()
                    except Exception as exc:  # noqa: BLE001 - reported with its source
                        raise PluginError(
                            f"the {self.kind} plug-in entry point {ep.name!r} = {ep.value!r} "
                            f"of {dist} failed to import: {type(exc).__name__}: {exc}"
                        ) from exc
            load_plugins()
            self._loaded = True
        finally:
            self._loading = False

    # -- lookup --------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self.load()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self.load()
        return name in self._items

    def get(self, name: str) -> T:
        """The object registered as ``name``.

        Raises:
            UnknownName: unknown name; the message suggests near names and lists the valid ones.
        """
        self.load()
        if name not in self._items:
            raise UnknownName(self.unknown_message(name))
        return self._items[name]

    def unknown_message(self, name: str, valid: list[str] | None = None) -> str:
        """``unknown method 'mixitt'; did you mean 'mixit'? valid methods: ...``."""
        valid = sorted(self._items) if valid is None else valid
        near = difflib.get_close_matches(str(name), valid, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ";"
        return f"unknown {self.kind} {name!r}{hint} valid {self.kind}s: {', '.join(valid)}"

    def origin(self, name: str) -> str:
        """Where ``name`` comes from: ``built in (methods/surf.py)``, ``entry point mine =
        my_pkg.mod (my-dist 1.0)`` or ``plug-in module my_pkg.mod (--plugins)``."""
        obj = self.get(name)
        if self._origins.get(name):
            return self._origins[name]
        module = getattr(obj, "__module__", "?")
        if module.split(".")[0] in self._packages:
            return f"built in ({module.replace('.', '/')}.py)"
        if self.entry_point_group:
            for ep in importlib.metadata.entry_points(group=self.entry_point_group):
                if module == ep.module or module.startswith(ep.module + "."):
                    dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "?"
                    return f"entry point {ep.name} = {ep.value} ({dist})"
        if module in _plugin_modules:
            return f"plug-in module {module} (--plugins / {PLUGINS_ENV})"
        return f"module {module}"


# --------------------------------------------------------------------------------------------
# extra plug-in modules (--plugins, BENCHMARK_PLUGINS)
# --------------------------------------------------------------------------------------------

_plugin_modules: list[str] = []


def plugin_modules() -> list[str]:
    """The extra plug-in modules imported so far (``--plugins`` and ``BENCHMARK_PLUGINS``), in
    order; recorded in every run's ``config.json`` so that its job imports them too."""
    return list(_plugin_modules)


def load_plugins(modules: list[str] | tuple[str, ...] | None = None) -> None:
    """Import extra plug-in modules: ``modules`` and those named in ``$BENCHMARK_PLUGINS``.

    Each module registers its methods/tasks when imported. Already imported ones are skipped.

    Raises:
        PluginError: a module that cannot be imported (the message names it and the reason).
    """
    names = list(modules or [])
    names += [m for m in os.environ.get(PLUGINS_ENV, "").split(",")]
    for name in (n.strip() for n in names):
        if not name or name in _plugin_modules:
            continue
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise PluginError(
                f"plug-in module {name!r} cannot be imported ({exc}); check the name given to "
                f"--plugins / {PLUGINS_ENV} and that its package is installed or on PYTHONPATH"
            ) from None
        _plugin_modules.append(name)


METHODS: Registry[Any] = Registry(
    "method", "methods.base:Method", ("methods",), "surf_benchmark.methods"
)
TASKS: Registry[Any] = Registry("task", "tasks.base:Task", ("tasks",), "surf_benchmark.tasks")


def _register_sections(cls: Any) -> None:
    from benchmark.config import register_section

    for name, schema in getattr(cls, "config_schema", {}).items():
        register_section(name, schema)


def register_method(cls: Any) -> Any:
    """Class decorator: register a :class:`methods.base.Method` under ``cls.name``, and the
    config sections it declares (``cls.config_schema``)."""
    METHODS.register(cls)
    _register_sections(cls)
    return cls


def register_task(cls: Any) -> Any:
    """Class decorator: register a :class:`tasks.base.Task` under ``cls.name``, and the config
    sections it adds to every run on it (``cls.config_schema``)."""
    TASKS.register(cls)
    _register_sections(cls)
    return cls


def method_names() -> list[str]:
    """Registered method names (the runnable ones, sorted; ``reference_only`` rows excluded)."""
    return [n for n in METHODS.names() if not getattr(METHODS.get(n), "reference_only", False)]


def task_names() -> list[str]:
    """Registered task names, sorted."""
    return TASKS.names()


def get_method(name: str) -> Any:
    """The method class registered as ``name``.

    Raises:
        UnknownName: unknown name (a ``KeyError``); the message lists the valid ones.
    """
    return METHODS.get(name)


def get_task(name: str) -> Any:
    """The task class registered as ``name``.

    Raises:
        UnknownName: unknown name (a ``KeyError``); the message lists the valid ones.
    """
    return TASKS.get(name)
