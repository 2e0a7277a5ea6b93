"""Run configuration, assembled from the config sections that plug-ins own.

A run (method x task x seed x preset) is described by a :class:`RunConfig`: the **shared**
sections of this module (``task``, ``train``, ``eval``), the network section of the task's
modality (``net`` or ``audio_net``, owned by the network modules), the sections that the chosen
method declares (``Method.config_schema``, e.g. ``mixit`` in ``methods/mixit.py``) or reads
(``Method.config_sections``, e.g. SURF reads its MixIT teacher's ``mixit``), and those the task
adds (``Task.config_schema``, e.g. ``perceptual`` on image tasks). A section is a dataclass
whose defaults are the paper's values; each field declares its own range check with
:func:`param`.

**Presets are data.** The scales (``smoke``, ``cpu``, ``paper``) are named in
``benchmark/presets.yaml``, which also holds the shared sections' values; every plug-in module
keeps its own values in a YAML file beside it (``methods/surf.py`` -> ``methods/surf.yaml``).
A preset file maps a preset name to rules; a rule is a mapping of dotted ``section.field`` keys
to values, or ``{method: [...], task: [...], set: {...}}`` to apply only to those runs::

    cpu:
      - set: {surf.ema_decay: 0.99}                       # every run with a surf section
      - method: [surf_rm, surf_sr]
        set: {train.steps: 800, surf.beta_decay_steps: 500}
      - task: fsdd2mix
        method: surf_sr
        set: {train.steps: 150}

Rules apply in four levels, later winning: rules without selectors, then ``method:`` rules, then
``task:`` rules, then rules with both; then the user's ``--set`` overrides. A rule without
``method:`` may only set the sections its own module owns; every rule of a task module names its
``task:``. Two files that set the same key to different values at the same level are an error.

Merging, dotted overrides (``train.steps=500``, ``net.ch_mult=1,2,2``, ``mixit:train.steps=3000``
for one method alone), type coercion and type errors go through OmegaConf structured configs:
OmegaConf is the field's convention (Hydra), it keeps the existing dataclasses as the schema, so
the resolved values (and the run hashes computed from them) are unchanged, and it reports unknown
keys with near-name suggestions.

The identity of a run (its results-store address) is a hash of the sections the method lists in
``Method.config_sections`` (plus its teacher's hash), so changing ``surf.*`` never invalidates a
MixIT teacher. Fields added after runs were stored are declared ``param(...,
omit_at_default=True)``: left out of the identity while at their default, so adding an option
changes no existing address.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from benchmark import CODE_VERSION

__all__ = [
    "PRESETS",
    "ConfigError",
    "EvalConfig",
    "RunConfig",
    "SectionSpec",
    "TaskConfig",
    "TrainConfig",
    "config_hash",
    "from_dict",
    "identity_dict",
    "param",
    "parse_overrides",
    "preset_description",
    "register_section",
    "resolve_config",
    "to_dict",
]

PRESETS_FILE = Path(__file__).resolve().parent / "presets.yaml"


class ConfigError(ValueError):
    """A preset, override or config value is invalid; the message says how to fix it."""


# --------------------------------------------------------------------------------------------
# Field declarations with their checks
# --------------------------------------------------------------------------------------------


def param(
    default: Any = dataclasses.MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[Any, ...] | None = None,
    finite: bool = False,
    omit_at_default: bool = False,
    identity: bool = True,
) -> Any:
    """A config field with its checks declared next to it (a ``dataclasses.field``).

    Args:
        default: the default (the paper's value); tuples are fine (immutable).
        ge, gt, le, lt: bounds, checked after every preset and override is applied.
        choices: the allowed values.
        finite: refuse NaN and infinities.
        omit_at_default: leave the field out of the run's identity while it is at its default
            (fields added after runs were stored, so that no existing address changes).
        identity: False for a setting that does not change what a run computes (e.g. how
            often a learning curve is measured): never part of the run's address.
    """
    meta = {
        key: value
        for key, value in dict(
            ge=ge, gt=gt, le=le, lt=lt, choices=choices, finite=finite or None
        ).items()
        if value is not None
    }
    if omit_at_default:
        meta["omit_at_default"] = True
    if not identity:
        meta["identity"] = False
    return field(default=default, metadata=meta)


def check_fields(section: Any, name: str, sources: Mapping[str, str] | None = None) -> None:
    """Check every field of ``section`` against its :func:`param` declaration, then the
    section's own ``validate()`` (cross-field rules) when it has one.

    Args:
        section: a section dataclass instance.
        name: the section's name in the run config (for messages).
        sources: ``"section.field" -> where its value came from`` (a preset file, ``--set``).

    Raises:
        ConfigError: the first violated check, naming the setting, its value and its source.
    """
    sources = sources or {}
    for f in fields(section):
        value = getattr(section, f.name)
        meta = f.metadata
        path = f"{name}.{f.name}"
        where = f" (set by {sources[path]})" if path in sources else ""
        if "choices" in meta and value not in meta["choices"]:
            valid = ", ".join(repr(c) for c in meta["choices"])
            raise ConfigError(f"{path} must be one of {valid}; got {value!r}{where}")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if meta.get("finite") and not math.isfinite(value):
            raise ConfigError(f"{path} must be a finite number, got {value}{where}")
        for key, ok, text in (
            ("ge", lambda v, b: v >= b, ">="),
            ("gt", lambda v, b: v > b, ">"),
            ("le", lambda v, b: v <= b, "<="),
            ("lt", lambda v, b: v < b, "<"),
        ):
            if key in meta and not ok(value, meta[key]):  # NaN fails every bound
                raise ConfigError(f"{path} must be {text} {meta[key]}, got {value}{where}")
    validate = getattr(section, "validate", None)
    if callable(validate):
        validate()


# --------------------------------------------------------------------------------------------
# Shared sections
# --------------------------------------------------------------------------------------------


@dataclass
class TaskConfig:
    """The task section every task has (tasks may extend it: ``Task.config_class``).

    Attributes:
        name: registered task name (``mnist``, ``fsdd2mix``, ...).
        num_sources: K, sources per evaluation/training mixture.
        seed: task seed for the fixed evaluation set, independent of the method seed.
        eval_mixtures: number of evaluation mixtures (5,000 in SURF/BASIS).
    """

    name: str = ""
    num_sources: int = param(2, ge=1)
    seed: int = 1234
    eval_mixtures: int = param(5000, ge=1)


@dataclass
class TrainConfig:
    """Optimisation settings (Adam).

    Attributes:
        steps: training iterations.
        batch_size: B, mixtures per iteration.
        lr: Adam learning rate (> 0).
        warmup_steps: linear learning-rate warm-up iterations.
        grad_clip: gradient-norm clip (0 disables).
        ckpt_every: iterations between checkpoints (also written on exit and at the end).
        log_every: iterations between training-curve records (the losses are read from the
            device only then).
        autocast: ``"off"`` or ``"bf16"``: the networks' forward passes (training, teacher
            solve, evaluation) under ``torch.autocast`` with bfloat16, their outputs cast back
            to float32 so that losses stay in full precision (:meth:`methods.base.Method.
            call_net`). Meant for CUDA; off by default, and changes results (README,
            "Performance").
        compile: ``"off"``, or a ``torch.compile`` mode for every network of the method
            (``"default"``, ``"reduce-overhead"``, which uses CUDA graphs, also for the teacher
            solve's network, ``"max-autotune"``), or ``"aot_eager"`` (graph capture without
            code generation, for checking). Off by default.
    """

    steps: int = param(1000, ge=0)
    batch_size: int = param(64, ge=1)
    lr: float = param(2e-4, gt=0.0, finite=True)
    warmup_steps: int = param(0, ge=0)
    grad_clip: float = param(1.0, ge=0.0, finite=True)
    ckpt_every: int = param(500, ge=1)
    log_every: int = param(25, ge=1)
    autocast: str = param("off", choices=("off", "bf16"), omit_at_default=True)
    compile: str = param(
        "off",
        choices=("off", "default", "reduce-overhead", "max-autotune", "aot_eager"),
        omit_at_default=True,
    )


@dataclass
class EvalConfig:
    """Evaluation settings.

    Attributes:
        batch_size: mixtures per forward pass.
        model: which weights to evaluate for methods with an EMA teacher: ``"ema"`` (the EMA
            teacher theta_T) or ``"student"`` (theta).
        euler_steps: sampler steps when a generative method separates (SURF: 5 Euler steps).
        every: training steps between learning-curve points (0: no curve): the task's curve
            metrics on the first ``curve_mixtures`` evaluation mixtures, recorded in
            ``eval_curve.csv`` against the step and the training wall time. Not part of the
            run's address: it does not change the trained model (the RNG states are restored
            around each point).
        curve_mixtures: evaluation mixtures per curve point (the first ones of the fixed set).
        demo_mixtures: the estimates of the first this-many evaluation mixtures are kept in
            ``demo.npz`` for the demo page (``python -m benchmark demo``); 0 keeps none.
    """

    batch_size: int = param(250, ge=1)
    model: str = param("ema", choices=("ema", "student"))
    euler_steps: int = param(5, ge=1)
    every: int = param(0, ge=0, identity=False)
    curve_mixtures: int = param(100, ge=1, identity=False)
    demo_mixtures: int = param(8, ge=0, identity=False)


# --------------------------------------------------------------------------------------------
# Section registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SectionSpec:
    """A config section and its owner.

    Attributes:
        name: the section's name (``cfg.<name>``, ``--set <name>.field=...``).
        schema: its dataclass.
        owner: module that owns it (its preset values live in the owner's YAML file).
        presets: that YAML file, or None.
        modality: for network sections: the task modality they serve (``"image"``,
            ``"audio"``); ``net`` in a method's ``config_sections`` stands for the network
            section of the task's modality.
    """

    name: str
    schema: type
    owner: str
    presets: Path | None = None
    modality: str | None = None


SECTIONS: dict[str, SectionSpec] = {}


def register_section(name: str, schema: type, modality: str | None = None) -> None:
    """Register a config section. Its owner is the module that defines ``schema``, and the
    owner's preset values live beside it (``methods/surf.py`` -> ``methods/surf.yaml``).

    The registry decorators register the ``config_schema`` of methods and tasks; network
    modules call this for their section with the ``modality`` they serve.

    Raises:
        ConfigError: ``schema`` is not a dataclass, or another schema is registered as ``name``.
    """
    import sys

    if not (isinstance(schema, type) and is_dataclass(schema)):
        raise ConfigError(f"config section {name!r} ({schema!r}) must be a dataclass")
    current = SECTIONS.get(name)
    if current is not None:
        if current.schema is not schema:
            raise ConfigError(
                f"config section {name!r} is declared twice, by {current.owner} and by "
                f"{schema.__module__}; give the new section another name"
            )
        return
    module_file = getattr(sys.modules.get(schema.__module__), "__file__", None)
    presets = Path(module_file).with_suffix(".yaml") if module_file else None
    SECTIONS[name] = SectionSpec(
        name,
        schema,
        schema.__module__,
        presets if presets and presets.is_file() else None,
        modality,
    )


_SHARED = {"task": TaskConfig, "train": TrainConfig, "eval": EvalConfig}
for _name, _schema in _SHARED.items():
    SECTIONS[_name] = SectionSpec(_name, _schema, __name__, PRESETS_FILE)


def network_section(modality: str) -> SectionSpec:
    """The network section registered for ``modality`` (``net`` for images, ``audio_net`` for
    audio).

    Raises:
        ConfigError: no network section serves that modality.
    """
    for spec in SECTIONS.values():
        if spec.modality == modality:
            return spec
    raise ConfigError(f"no network config section is registered for {modality!r} tasks")


# --------------------------------------------------------------------------------------------
# The run config
# --------------------------------------------------------------------------------------------


@dataclass
class RunConfig:
    """Everything that defines one run (method x task x seed x settings).

    Sections are attributes: ``cfg.train.steps``, ``cfg.surf.beta``; ``sections`` holds them by
    name in display order. ``network`` is the name of the run's network section (``net`` or
    ``audio_net``; ``""`` for methods without one).
    """

    method: str = ""
    seed: int = 0
    preset: str = "paper"
    sections: dict[str, Any] = field(default_factory=dict)
    network: str = ""
    teacher: str = ""  # hash of the run this run starts from ("" when none)
    overrides: tuple[str, ...] = ()  # the user's --set values that apply, for labelling rows

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("sections")
        if sections is not None and name in sections:
            return sections[name]
        if name.startswith("__") or sections is None:
            raise AttributeError(name)
        raise AttributeError(
            f"the run config of {self.__dict__.get('method')!r} has no section {name!r}; "
            f"its sections: {', '.join(sections)}"
        )


def to_dict(cfg: Any) -> Any:
    """Plain JSON-able data of a (nested) dataclass or :class:`RunConfig`; tuples become lists.
    A run config becomes ``{method, seed, preset, <section>: {...}, ..., teacher, overrides}``
    (the ``config.json`` layout)."""
    if isinstance(cfg, RunConfig):
        out: dict[str, Any] = {"method": cfg.method, "seed": cfg.seed, "preset": cfg.preset}
        out.update({name: to_dict(section) for name, section in cfg.sections.items()})
        out.update(teacher=cfg.teacher, overrides=list(cfg.overrides))
        return out
    if is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


def _registries() -> tuple[Any, Any]:
    from benchmark.registry import METHODS, TASKS  # late: the plug-ins import this module

    METHODS.load()
    TASKS.load()
    return METHODS, TASKS


def _run_sections(method_cls: Any, task_cls: Any) -> tuple[dict[str, type], str]:
    """The sections of a run of ``method_cls`` on ``task_cls`` by name, in display order, and
    the name of its network section (``""`` when the method lists none)."""
    wanted = list(method_cls.config_sections) + list(getattr(method_cls, "config_schema", {}))
    network = network_section(task_cls.modality).name if "net" in wanted else ""
    out: dict[str, type] = {"task": task_cls.config_class, "train": TrainConfig}
    if network:
        out[network] = SECTIONS[network].schema
    for name in wanted:
        name = network if name == "net" else name
        if name in out or name == "eval":
            continue
        if name not in SECTIONS:
            raise ConfigError(
                f"method {method_cls.name!r} lists config section {name!r}, which no plug-in "
                f"declares; known sections: {', '.join(sorted(SECTIONS))}"
            )
        out[name] = SECTIONS[name].schema
    out["eval"] = EvalConfig
    for name in task_cls.config_schema:
        out[name] = SECTIONS[name].schema
    return out, network


# --------------------------------------------------------------------------------------------
# Presets (YAML data files)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    source: str  # "methods/surf.yaml (cpu)"
    methods: tuple[str, ...] | None
    tasks: tuple[str, ...] | None
    values: tuple[tuple[str, Any], ...]

    @property
    def level(self) -> int:
        return (self.methods is not None) + 2 * (self.tasks is not None)


def _names(value: Any, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise ConfigError(f"{where}: method/task selectors take a name or a list of names")
    return tuple(items)


def _freeze(value: Any) -> Any:
    return tuple(_freeze(v) for v in value) if isinstance(value, (list, tuple)) else value


@functools.cache
def _load_preset_file(path: Path) -> dict[str, tuple[_Rule, ...]]:
    """Rules per preset of one YAML file.

    Raises:
        ConfigError: unreadable YAML or a malformed rule (names the file).
    """
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read preset file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"preset file {path} must map preset names to rules")
    short = _short(path)
    out: dict[str, tuple[_Rule, ...]] = {}
    for preset, rules in data.items():
        if preset == "presets":
            continue
        where = f"{short} ({preset})"
        if isinstance(rules, dict):
            rules = [rules]
        if not isinstance(rules, list):
            raise ConfigError(f"{where}: a preset holds a mapping of values or a list of rules")
        parsed = []
        for rule in rules:
            if not isinstance(rule, dict):
                raise ConfigError(f"{where}: every rule must be a mapping")
            if "set" in rule or "method" in rule or "task" in rule:
                unknown = set(rule) - {"set", "method", "task"}
                if unknown:
                    raise ConfigError(f"{where}: unknown rule keys {sorted(unknown)}")
                values = rule.get("set") or {}
            else:
                values = rule
            if not isinstance(values, dict) or not all("." in str(k) for k in values):
                raise ConfigError(f"{where}: values are `section.field: value` pairs")
            parsed.append(
                _Rule(
                    where,
                    _names(rule.get("method"), where),
                    _names(rule.get("task"), where),
                    tuple((str(k), _freeze(v)) for k, v in values.items()),
                )
            )
        out[str(preset)] = tuple(parsed)
    return out


def _short(path: Path) -> str:
    root = PRESETS_FILE.parent.parent
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)


@functools.lru_cache(maxsize=1)
def _preset_names() -> dict[str, str]:
    try:
        data = yaml.safe_load(PRESETS_FILE.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {PRESETS_FILE}: {exc}") from None
    return {str(k): str(v) for k, v in data["presets"].items()}


class _Presets(Mapping):
    """Preset name -> one-line description (``benchmark/presets.yaml``)."""

    def __getitem__(self, name: str) -> str:
        return _preset_names()[name]

    def __iter__(self):
        return iter(_preset_names())

    def __len__(self) -> int:
        return len(_preset_names())


#: preset name -> description, in the file's order (``smoke``, ``cpu``, ``paper``)
PRESETS: Mapping[str, str] = _Presets()


def preset_description(name: str) -> str:
    """One line describing preset ``name``."""
    return PRESETS[name]


def plugin_presets_file(cls: Any) -> Path | None:
    """The preset file of a plug-in class: ``cls.presets_file`` (relative to its module), or
    the module's own name with ``.yaml`` (``methods/surf.py`` -> ``methods/surf.yaml``) when
    that file exists."""
    import sys

    module = sys.modules.get(cls.__module__)
    origin = Path(getattr(module, "__file__", "") or ".")
    explicit = getattr(cls, "presets_file", None)
    path = origin.parent / explicit if explicit else origin.with_suffix(".yaml")
    return path if path.is_file() else None


def _collect_rules(
    preset: str, method_cls: Any, task_cls: Any, sections: dict[str, type]
) -> list[tuple[_Rule, str]]:
    """The rules of ``preset`` that apply to this run, sorted by level, each with the kind of
    file it came from (``shared``, ``section``, ``method``, ``task``)."""
    files: list[tuple[Path, str, set[str]]] = [(PRESETS_FILE, "shared", set(_SHARED))]
    for name in sections:
        spec = SECTIONS.get(name)
        if spec is not None and spec.presets is not None and spec.owner != __name__:
            owned = {s for s, sp in SECTIONS.items() if sp.owner == spec.owner}
            files.append((spec.presets, "section", owned))
    method_file = plugin_presets_file(method_cls)
    if method_file is not None:
        owned = {s for s, sp in SECTIONS.items() if sp.owner == method_cls.__module__}
        files.append((method_file, "method", owned))
    task_file = plugin_presets_file(task_cls)
    if task_file is not None:
        files.append((task_file, "task", set()))
    seen: set[Path] = set()
    rules: list[tuple[_Rule, str]] = []
    for path, kind, owned in files:
        if path in seen:
            continue
        seen.add(path)
        by_preset = _load_preset_file(path)
        unknown = set(by_preset) - set(PRESETS)
        if unknown:
            raise ConfigError(
                f"{_short(path)}: unknown preset(s) {sorted(unknown)}; presets: {list(PRESETS)}"
            )
        for rule in by_preset.get(preset, ()):
            if kind == "task" and rule.tasks is None:
                raise ConfigError(f"{rule.source}: rules of a task's preset file name their task")
            if rule.methods is None and rule.tasks is None and kind != "shared":
                foreign = sorted({k.split(".")[0] for k, _ in rule.values} - owned)
                if foreign:
                    raise ConfigError(
                        f"{rule.source}: a rule without `method:` may set only the sections "
                        f"this plug-in owns ({', '.join(sorted(owned))}), not {foreign}"
                    )
            if rule.methods is not None and method_cls.name not in rule.methods:
                continue
            if rule.tasks is not None and task_cls.name not in rule.tasks:
                continue
            rules.append((rule, kind))
    rules.sort(key=lambda item: item[0].level)  # stable: file order within a level
    return rules


# --------------------------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------------------------


def parse_overrides(items: list[str] | tuple[str, ...]) -> list[tuple[str | None, str, str]]:
    """Split ``--set`` items ``[method:]section.field=value`` into ``(method, key, value)``.

    Raises:
        ConfigError: an item without ``=`` or without a ``section.field`` key.
    """
    parsed = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.steps=500")
        key, value = item.split("=", 1)
        method = None
        if ":" in key:
            method, key = key.split(":", 1)
            method = method.strip()
        key = key.strip()
        if key.count(".") != 1 or not all(key.split(".")):
            raise ConfigError(
                f"--set {item!r}: the key must look like section.field (e.g. train.steps)"
            )
        parsed.append((method, key, value.strip()))
    return parsed


def _override_value(key: str, text: str) -> Any:
    """The value of ``--set key=text`` as OmegaConf's dotlist parser reads it (YAML scalars:
    ``500`` int, ``0.5`` float, ``true`` bool, ``[1,2]`` list, everything else a string)."""
    section, name = key.split(".")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"{key}={text}"]))[section][name]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"--set {key}={text}: {_omegaconf_reason(exc)}") from None


def _omegaconf_reason(exc: OmegaConfBaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _normalise(value: Any, typ: Any) -> Any:
    """Readings the command line has always accepted, before OmegaConf checks the type:
    ``1,2,2`` or ``(1,2,2)`` for a tuple field, an empty value for a string field, and a whole
    float such as ``2e5`` for an integer field."""
    origin = typing.get_origin(typ)
    if origin in (tuple, list) and isinstance(value, str):
        parts = value.replace("(", "").replace(")", "").replace("[", "").replace("]", "")
        return [p.strip() for p in parts.split(",") if p.strip()]
    if origin in (tuple, list) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    if typ is str and value is None:
        return ""
    if typ is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@functools.cache
def _hints(schema: type) -> dict[str, Any]:
    return typing.get_type_hints(schema)


@functools.cache
def _template(schema: type) -> Any:
    return OmegaConf.structured(schema)


@functools.lru_cache(maxsize=4096)
def _build(schema: type, layers: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]) -> Any:
    """The section ``schema`` with ``layers`` (source, ((field, value), ...)) merged in order
    by OmegaConf; cached, so callers copy the result."""
    node = _template(schema)
    if not layers:
        return schema()
    hints = _hints(schema)
    for source, values in layers:
        update = {k: _normalise(v, hints.get(k)) for k, v in values}
        try:
            node = OmegaConf.merge(node, update)
        except OmegaConfBaseException as exc:
            raise _LayerError(source, exc) from None
    try:
        return OmegaConf.to_object(node)
    except OmegaConfBaseException as exc:
        raise _LayerError(layers[-1][0], exc) from None


class _LayerError(Exception):
    def __init__(self, source: str, exc: OmegaConfBaseException) -> None:
        super().__init__(source)
        self.source = source
        self.key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
        self.reason = _omegaconf_reason(exc)


# --------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------


def resolve_config(
    method: str,
    task: str,
    seed: int,
    preset: str,
    overrides: list[tuple[str | None, str, str]] | None = None,
) -> RunConfig:
    """Build the :class:`RunConfig` of one run: section defaults, then the preset's rules, then
    the overrides that apply to ``method`` (unprefixed ones, and ``method:``-prefixed ones).

    Args:
        method: registered method name.
        task: registered task name.
        seed: the method seed.
        preset: preset name (``benchmark/presets.yaml``).
        overrides: :func:`parse_overrides` triples. An override of a section this run does not
            have is skipped here (the planner warns when no run uses it).

    Returns:
        A fresh config (callers may change it).

    Raises:
        ConfigError: unknown preset, method prefix, section or field (with near names), a value
            of the wrong type, or a value outside its declared range (naming the setting and
            where it was set).
        benchmark.registry.UnknownName: unknown method or task.
    """
    cfg = _resolve_cached(method, task, int(seed), preset, tuple(overrides or ()))
    return dataclasses.replace(
        cfg, sections={k: dataclasses.replace(v) for k, v in cfg.sections.items()}
    )


@functools.lru_cache(maxsize=4096)
def _resolve_cached(
    method: str, task: str, seed: int, preset: str, overrides: tuple[tuple[Any, str, str], ...]
) -> RunConfig:
    methods, tasks = _registries()
    if preset not in PRESETS:
        import difflib

        near = difflib.get_close_matches(preset, list(PRESETS), n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]!r}?" if near else ";"
        raise ConfigError(
            f"unknown preset {preset!r}{hint} valid presets: {', '.join(repr(p) for p in PRESETS)}"
        )
    method_cls, task_cls = methods.get(method), tasks.get(task)
    schemas, network = _run_sections(method_cls, task_cls)
    identity = {network if n == "net" else n for n in method_cls.config_sections}
    # per section, the layers of values in the order they apply: [(source, [(field, value)])]
    layers: dict[str, list[tuple[str, list[tuple[str, Any]]]]] = {n: [] for n in schemas}
    sources: dict[str, str] = {}
    same_level: dict[tuple[int, str], tuple[str, Any]] = {}

    def add(key: str, value: Any, source: str) -> None:
        section, name = key.split(".", 1)
        if section not in schemas:
            return  # a section of other runs (e.g. surf.* on a MixIT teacher)
        if layers[section] and layers[section][-1][0] == source:
            layers[section][-1][1].append((name, value))
        else:
            layers[section].append((source, [(name, value)]))
        sources[key] = source

    add("task.name", task, "the task name")
    for rule, _kind in _collect_rules(preset, method_cls, task_cls, schemas):
        for key, value in rule.values:
            _check_key(key, rule.source)
            first = same_level.setdefault((rule.level, key), (rule.source, value))
            if first[0] != rule.source and first[1] != value:
                raise ConfigError(
                    f"{key} is set to {first[1]!r} by {first[0]} and to {value!r} by "
                    f"{rule.source}, at the same level; keep it in one file"
                )
            add(key, value, rule.source)
    applied = []
    for prefix, key, text in overrides:
        where = f"--set {prefix + ':' if prefix else ''}{key}={text}"
        if prefix is not None and prefix not in methods:
            message = methods.unknown_message(prefix)
            raise ConfigError(
                f"{where}: {message.replace('unknown method', 'unknown method prefix')}"
            )
        _check_key(key, where)
        if prefix is not None and prefix != method:
            continue
        section = key.split(".")[0]
        if section in schemas:
            add(key, _override_value(key, text), where)
            if section in identity and _in_identity(schemas[section], key.split(".")[1]):
                applied.append(f"{key}={text}")  # label table rows only with what changes the run
    sections = {}
    for name, schema in schemas.items():
        frozen = tuple((src, tuple(vals)) for src, vals in layers[name])
        try:
            sections[name] = dataclasses.replace(_build(schema, frozen))
        except _LayerError as exc:
            key = f"{name}.{exc.key}" if exc.key else name
            raise ConfigError(f"{key}: {exc.reason} (set by {exc.source})") from None
    cfg = RunConfig(
        method=method,
        seed=seed,
        preset=preset,
        sections=sections,
        network=network,
        overrides=tuple(applied),
    )
    for name, section in sections.items():
        check_fields(section, name, sources)
    for cls in (method_cls, task_cls):
        cls.check_config(cfg)
    return cfg


def _in_identity(schema: type, name: str) -> bool:
    """Whether field ``name`` of ``schema`` can be part of a run's address."""
    return next((f.metadata.get("identity", True) for f in fields(schema) if f.name == name), True)


def _check_key(key: str, where: str) -> None:
    """Refuse a ``section.field`` key whose section or field no plug-in declares."""
    import difflib

    section, name = key.split(".", 1)
    if section not in SECTIONS:
        near = difflib.get_close_matches(section, list(SECTIONS), n=2, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
        raise ConfigError(
            f"{where}: unknown config section {section!r}{hint} sections: "
            f"{', '.join(repr(n) for n in sorted(SECTIONS))}"
        )
    valid = _section_fields(section)
    if name not in valid:
        near = difflib.get_close_matches(name, sorted(valid), n=2, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
        raise ConfigError(
            f"{where}: unknown config field {key!r}{hint} fields of {section}: "
            f"{', '.join(repr(n) for n in sorted(valid))}"
        )


def _section_fields(section: str) -> set[str]:
    """Every field a section can have (for ``task``: the fields of every task's section)."""
    names = {f.name for f in fields(SECTIONS[section].schema)}
    if section == "task":
        from benchmark.registry import TASKS

        for name in TASKS.names():
            names |= {f.name for f in fields(TASKS.get(name).config_class)}
    return names


def from_dict(data: dict[str, Any]) -> RunConfig:
    """The :class:`RunConfig` stored in a run's ``config.json`` (``"config"`` entry).

    Sections the run does not have (stored by older versions, which kept every section) and
    fields no longer declared are ignored; the values stored are taken as they are.

    Raises:
        ConfigError: a stored value of the wrong type.
        benchmark.registry.UnknownName: a method or task that is not registered (e.g. a plug-in
            that is not installed).
    """
    methods, tasks = _registries()
    method_cls = methods.get(data["method"])
    task_cls = tasks.get(data["task"]["name"])
    schemas, network = _run_sections(method_cls, task_cls)
    sections = {}
    for name, schema in schemas.items():
        stored = data.get(name) or {}
        valid = {f.name for f in fields(schema)}
        values = tuple((k, _freeze(v)) for k, v in stored.items() if k in valid)
        try:
            sections[name] = dataclasses.replace(_build(schema, (("config.json", values),)))
        except _LayerError as exc:
            raise ConfigError(f"config.json: {name}.{exc.key}: {exc.reason}") from None
    return RunConfig(
        method=data["method"],
        seed=int(data.get("seed", 0)),
        preset=data.get("preset", "paper"),
        sections=sections,
        network=network,
        teacher=data.get("teacher", "") or "",
        overrides=tuple(data.get("overrides") or ()),
    )


# --------------------------------------------------------------------------------------------
# Identity
# --------------------------------------------------------------------------------------------


def identity_dict(cfg: RunConfig, sections: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The part of a config that defines a run's identity: code version, method, seed, the
    listed sections (default: the method's ``config_sections``; ``net`` stands for the run's
    network section) and, for methods with a teacher, the teacher's hash.

    Fields declared ``omit_at_default`` are left out while at their default.
    """
    from benchmark.registry import METHODS

    method_cls = METHODS.get(cfg.method)
    listed = tuple(method_cls.config_sections if sections is None else sections)
    data: dict[str, Any] = {"code_version": CODE_VERSION, "method": cfg.method, "seed": cfg.seed}
    for name in listed:
        if name == "teacher":  # the teacher's address, listed explicitly by older callers
            data["teacher"] = cfg.teacher
            continue
        name = (cfg.network or name) if name == "net" else name
        section = cfg.sections[name]
        values = to_dict(section)
        for f in fields(section):
            if f.metadata.get("identity") is False or (
                f.metadata.get("omit_at_default") and getattr(section, f.name) == f.default
            ):
                del values[f.name]
        data[name] = values
    if method_cls.teacher_method:
        data["teacher"] = cfg.teacher
    return data


def config_hash(cfg: RunConfig, sections: tuple[str, ...] | None = None) -> str:
    """Stable 16-hex-digit hash of :func:`identity_dict` (the results-store address)."""
    blob = json.dumps(identity_dict(cfg, sections), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
