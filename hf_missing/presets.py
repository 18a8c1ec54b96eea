"""Presets: the papers' settings per (method, dataset), stored as JSON in the top-level ``hub_configs/``.

``load_preset("rep-mmimdb")`` validates the file and returns a :class:`Preset` holding the method config
(built with :func:`hf_missing.get_method_config`), the ``TrainingArguments`` keyword arguments and the
data settings (dataset, task, metric and the missing-modality protocol for
:func:`hf_missing.simulate_missing`). A preset file has exactly these keys::

    {"name": "<file stem>", "description": str, "reference": str,
     "method": str, "method_options": {<method config field>: value},
     "model": {"backbone": str, "max_text_len": int | null},
     "data": {"dataset": str, "task": str, "metric": str, "loader_options": {...},
              "missing": {"rate": float, "pattern": str, "protocol": str, "seed": int, "both_ratio": float}},
     "training": {<TrainingArguments field>: value, ..., "effective_batch_size": int}}

``hub_configs`` is a package of data files that sits beside ``hf_missing`` both in a source checkout
(editable installs) and in site-packages (wheels), so it is found next to this package either way.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from transformers import TrainingArguments

from .data.loaders import DATASET_SPECS
from .data.simulate import PROTOCOLS
from .methods import METHODS, MissingMethodConfig, get_method_config, list_methods
from .metrics import TASKS

PRESET_DIR = Path(__file__).resolve().parent.parent / "hub_configs"
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "multilabel": ("f1_macro", "f1_micro", "f1_samples", "f1_weighted"),
    "single_label": ("accuracy", "f1_macro"),
    "binary": ("accuracy", "auroc"),
    "regression": ("acc2_non0", "f1_non0", "acc2_has0", "f1_has0", "acc7", "acc5", "mae", "corr"),
    "regression_sims": ("acc2", "f1", "acc3", "acc5", "mae", "corr"),
}
DEMO_DATASETS = ("emoji", "emoji_speech")  # the embedded tasks' data: text + image, and text + image + audio
FUSED_BACKBONE = "hf_missing/fused-minilm-effnet-lite0"  # the demo presets' name for the embedded default

_SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "": {"name": str, "description": str, "reference": str, "method": str, "method_options": dict, "model": dict,
         "data": dict, "training": dict},
    "model": {"backbone": str, "max_text_len": (int, type(None))},
    "data": {"dataset": str, "task": str, "metric": str, "loader_options": dict, "missing": dict},
    "data.missing": {"rate": float, "pattern": str, "protocol": str, "seed": int, "both_ratio": float},
}


class PresetError(ValueError):
    """A preset file that does not match the schema; the message names the file and the fix."""


@dataclass(frozen=True)
class MissingSettings:
    """The missing-modality protocol of a preset (METHODS_REFERENCE §2)."""

    rate: float
    pattern: str
    protocol: str
    seed: int
    both_ratio: float

    def simulate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`hf_missing.simulate_missing`."""
        return {"rate": self.rate, "pattern": self.pattern, "protocol": self.protocol, "seed": self.seed,
                "both_ratio": self.both_ratio}


@dataclass(frozen=True)
class DataSettings:
    """Dataset, task (for ``metrics.for_task``), selection metric, loader options and missing protocol."""

    dataset: str
    task: str
    metric: str
    missing: MissingSettings
    loader_options: dict[str, Any] = field(default_factory=dict)

    @property
    def num_labels(self) -> int | None:
        """Classes of a published dataset; ``None`` for the demo data (read it from the dataset)."""
        spec = DATASET_SPECS.get(self.dataset)
        return spec.num_labels if spec else None


@dataclass(frozen=True)
class Preset:
    """A validated preset. ``method_config`` is freshly built on every :func:`load_preset` call."""

    name: str
    description: str
    reference: str
    method: str
    method_options: dict[str, Any]
    method_config: MissingMethodConfig
    backbone: str
    max_text_len: int | None
    data: DataSettings
    training: dict[str, Any]
    effective_batch_size: int
    source: Path

    def training_kwargs(self, num_devices: int = 1, per_device_train_batch_size: int | None = None) -> dict[str, Any]:
        """``TrainingArguments`` kwargs; gradient accumulation reaches the paper's effective batch size."""
        batch = per_device_train_batch_size or self.training["per_device_train_batch_size"]
        per_step = batch * num_devices
        if num_devices < 1 or self.effective_batch_size % per_step:
            raise ValueError(
                f"Preset {self.name!r}: effective batch size {self.effective_batch_size} is not a multiple of "
                f"per_device_train_batch_size x num_devices = {batch} x {num_devices}; pick a batch size that "
                "divides it."
            )
        return {**self.training, "per_device_train_batch_size": batch,
                "gradient_accumulation_steps": self.effective_batch_size // per_step}

    def with_settings(self, *, dataset: str | None = None, task: str | None = None, backbone: str | None = None,
                      missing: dict[str, Any] | None = None, training: dict[str, Any] | None = None) -> Preset:
        """This preset for other data or settings: ``dataset`` (a name for reports), ``task`` (the metric becomes
        the task's first), ``backbone``, ``missing`` (any of rate / pattern / protocol / seed / both_ratio) and
        ``training`` (``TrainingArguments`` fields, checked as :func:`training_overrides` checks them)."""
        if task is not None and task not in TASKS:
            raise ValueError(f"Unknown task {task!r}; choose one of {list(TASKS)}.")
        protocol = (missing or {}).get("protocol")
        if protocol is not None and protocol not in PROTOCOLS:
            raise ValueError(f"Unknown protocol {protocol!r}; choose one of {list(PROTOCOLS)}.")
        data = replace(self.data, dataset=dataset or self.data.dataset, task=task or self.data.task,
                       metric=TASK_METRICS[task][0] if task and task != self.data.task else self.data.metric,
                       missing=replace(self.data.missing, **(missing or {})))
        _check_types(training or {}, TrainingArguments, "training", Path("--training-args"))
        return replace(self, backbone=backbone or self.backbone, data=data, training={**self.training,
                                                                                      **(training or {})})

    def training_arguments(self, output_dir: str, num_devices: int = 1, **overrides: Any) -> TrainingArguments:
        """``TrainingArguments`` for this preset; ``overrides`` win (e.g. ``fp16=False`` on a CPU), and a
        ``per_device_train_batch_size`` override keeps the effective batch size."""
        kwargs = self.training_kwargs(num_devices, overrides.pop("per_device_train_batch_size", None))
        return TrainingArguments(output_dir=output_dir, **{**kwargs, **overrides})


def list_presets() -> list[str]:
    """Names accepted by :func:`load_preset` (the JSON files in ``hub_configs/``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def method_preset(method: str, options: dict[str, Any] | None = None, suffix: str = "demo") -> Preset:
    """The method's ``<method>-<suffix>`` preset (e.g. ``rep-speech-demo``), else its ``<method>-demo`` preset
    (CPU-sized settings on the embedded default), else the baseline's training settings with the method's defaults;
    ``options`` override the preset's method options."""
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; known methods: {list_methods()}.")
    available = list_presets()
    name = next((n for n in (f"{method}-{suffix}", f"{method}-demo") if n in available), None)
    preset = load_preset(name) if name else replace(load_preset("baseline-demo"), name=f"{method}-demo",
                                                    method=method, method_options={})
    merged = {**preset.method_options, **(options or {})}
    return replace(preset, method_options=merged, method_config=get_method_config(method, **merged))


def training_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``TrainingArguments`` fields from ``key=value`` strings (``--training-args learning_rate=1e-3 fp16=true``):
    each value is read as JSON when it parses (numbers, true / false, null, lists), else as a string, then checked
    against the field's type; an unknown field or a wrong type raises."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--training-args takes key=value pairs, got {pair!r}; e.g. learning_rate=1e-3.")
        try:
            values[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[key.strip()] = raw
    _check_types(values, TrainingArguments, "training", Path("--training-args"))
    return values


def load_preset(name_or_path: str | Path) -> Preset:
    """Load and validate a preset by name (``"rep-mmimdb"``) or from a JSON file path."""
    path = Path(name_or_path)
    if path.suffix != ".json":
        path = PRESET_DIR / f"{name_or_path}.json"
        if not path.is_file():
            raise PresetError(f"Unknown preset {str(name_or_path)!r}; available: {list_presets()}.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise PresetError(f"{path}: not valid JSON ({err}).") from err
    return _build(raw, path)


def _build(raw: Any, path: Path) -> Preset:
    _validate(raw, path)
    data, missing, training = raw["data"], raw["data"]["missing"], dict(raw["training"])
    effective = training.pop("effective_batch_size")
    try:
        config = get_method_config(raw["method"], **raw["method_options"])
    except (TypeError, ValueError) as err:
        raise PresetError(f"{path}: method_options do not build a {raw['method']} config: {err}") from err
    return Preset(
        name=raw["name"], description=raw["description"], reference=raw["reference"], method=raw["method"],
        method_options=dict(raw["method_options"]), method_config=config, backbone=raw["model"]["backbone"],
        max_text_len=raw["model"]["max_text_len"],
        data=DataSettings(dataset=data["dataset"], task=data["task"], metric=data["metric"],
                          missing=MissingSettings(**missing), loader_options=dict(data["loader_options"])),
        training=training, effective_batch_size=effective, source=path,
    )


# ---- validation ---------------------------------------------------------------------------------
def _validate(raw: Any, path: Path) -> None:
    for section, schema in _SCHEMA.items():
        _check_section(_section(raw, section), schema, section, path)
    if raw["name"] != path.stem:
        raise PresetError(f"{path}: 'name' is {raw['name']!r} but the file is {path.name}; make them match.")
    if raw["method"] not in METHODS:
        raise PresetError(f"{path}: unknown method {raw['method']!r}; known methods: {list_methods()}.")
    _check_types(raw["method_options"], METHODS[raw["method"]].config_cls, "method_options", path)
    _check_data(raw["data"], path)
    _check_training(raw["training"], path)


def _section(raw: Any, section: str) -> Any:
    value = raw
    for key in filter(None, section.split(".")):
        value = value[key]
    return value


def _check_section(values: Any, schema: dict[str, type | tuple[type, ...]], section: str, path: Path) -> None:
    where = f"'{section}'" if section else "the top level"
    if not isinstance(values, dict):
        raise PresetError(f"{path}: {where} must be a JSON object, got {type(values).__name__}.")
    unknown, missing = sorted(set(values) - set(schema)), sorted(set(schema) - set(values))
    if unknown or missing:
        raise PresetError(f"{path}: in {where}, unknown key(s) {unknown} and missing key(s) {missing}; "
                          f"the keys are {sorted(schema)}.")
    for key, expected in schema.items():
        if not _is_instance(values[key], expected):
            raise PresetError(f"{path}: {section + '.' if section else ''}{key} must be {_type_names(expected)}, "
                              f"got {values[key]!r}.")


def _check_data(data: dict[str, Any], path: Path) -> None:
    dataset, task, metric = data["dataset"], data["task"], data["metric"]
    known = [*DATASET_SPECS, *DEMO_DATASETS]
    if dataset not in known:
        raise PresetError(f"{path}: unknown dataset {dataset!r}; known: {known}.")
    if task not in TASKS:
        raise PresetError(f"{path}: unknown task {task!r}; choose one of {list(TASKS)}.")
    spec = DATASET_SPECS.get(dataset)
    if spec and (task, metric) != (spec.task, spec.metric):
        raise PresetError(f"{path}: {dataset} is evaluated as task {spec.task!r} with metric {spec.metric!r} in "
                          f"the papers; got task {task!r}, metric {metric!r}.")
    if metric not in TASK_METRICS[task]:
        raise PresetError(f"{path}: metric {metric!r} is not computed for task {task!r}; use one of "
                          f"{list(TASK_METRICS[task])}.")
    if data["missing"]["protocol"] not in PROTOCOLS:
        raise PresetError(f"{path}: unknown protocol {data['missing']['protocol']!r}; use one of {list(PROTOCOLS)}.")
    _check_loader_options(data["loader_options"], spec, path)


def _check_loader_options(options: dict[str, Any], spec: Any, path: Path) -> None:
    allowed = [p for p in inspect.signature(spec.loader).parameters if p != "root"] if spec else []
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise PresetError(f"{path}: data.loader_options {unknown} are not options of this dataset's loader; "
                          f"allowed: {allowed}.")


def _check_training(training: dict[str, Any], path: Path) -> None:
    for key in ("effective_batch_size", "per_device_train_batch_size"):
        if not _is_instance(training.get(key), int) or training[key] < 1:
            raise PresetError(f"{path}: training.{key} must be a positive integer, got {training.get(key)!r}.")
    if "gradient_accumulation_steps" in training:
        raise PresetError(f"{path}: set training.effective_batch_size, not gradient_accumulation_steps; the "
                          "accumulation is derived from it and the number of devices.")
    rest = {k: v for k, v in training.items() if k != "effective_batch_size"}
    _check_types(rest, TrainingArguments, "training", path)


def _check_types(values: dict[str, Any], cls: type, section: str, path: Path) -> None:
    """Unknown keys and JSON type mismatches against the dataclass ``cls``'s annotated fields."""
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise PresetError(f"{path}: {section} has unknown key(s) {unknown}; see {cls.__name__}'s fields.")
    for key, value in values.items():
        expected = _json_types(hints[key])
        if expected and not _is_instance(value, expected):
            raise PresetError(f"{path}: {section}.{key} must be {_type_names(expected)}, got {value!r}.")


def _json_types(annotation: Any) -> tuple[type, ...]:
    """The JSON-compatible Python types an annotation accepts; empty when it cannot be checked."""
    is_union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    args = typing.get_args(annotation) if is_union else (annotation,)
    origins = tuple(typing.get_origin(a) or a for a in args)
    plain = tuple(t for t in origins if t in (bool, int, float, str, list, dict, type(None)))
    return plain if len(plain) == len(origins) or str in plain else ()


def _is_instance(value: Any, expected: type | tuple[type, ...]) -> bool:
    expected = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool):
        return bool in expected
    if isinstance(value, int) and float in expected:
        return True
    return isinstance(value, expected)


def _type_names(expected: type | tuple[type, ...]) -> str:
    expected = expected if isinstance(expected, tuple) else (expected,)
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "an object", type(None): "null"}
    return " or ".join(names.get(t, t.__name__) for t in expected)
