"""A preset's training and evaluation run on a published dataset or any other, from the library's public pieces.

:func:`build_training` turns a :class:`~hf_missing.presets.Preset` and a dataset (a published dataset's folder, read
by the preset's loader, or any ``DatasetDict``, e.g. from :func:`hf_missing.data.sources.load_data`) into a ready
``transformers.Trainer`` (natural missingness read from the data and the preset's protocol simulated on top, the
backbone wrapped with the preset's method, the method's training hooks applied); :func:`train_and_save` trains it and
saves the adapter with its missing settings and an eval report. :func:`evaluate_adapter` reloads a saved adapter and
measures it under every missing pattern and rate. ``hf-missing train`` and ``hf-missing evaluate`` are thin wrappers
around these, for the paper presets and for a user's data alike.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import ClassLabel, Dataset, DatasetDict
from transformers import AutoModel, Trainer

from . import metrics
from .backbones.fused import build_fused_backbone
from .backbones.fused.alignment import alignment_splits
from .backbones.processing import load_processor
from .data import MissingModalityCollator, missing_settings, simulate_missing
from .data.loaders import DATASET_SPECS
from .evaluation import (
    TEST_RATES,
    PatternPredictions,
    grid_patterns,
    missing_grid,
    plot_metric_curves,
    predict_patterns,
)
from .loading import MISSING_SETTINGS_NAME, AdapterLoadError, read_json_file, resolve_adapter_dir
from .methods import prepare_for_evaluation, prepare_for_training
from .methods.options import is_int
from .modeling import MissingModalityForClassification
from .presets import FUSED_BACKBONE, Preset

REPORT_NAME = "eval_report.json"
PLOT_NAME = "robustness.png"
ADAPTER_SUBDIR = "adapter"
CURVE_PROTOCOLS = ("map", "redeem")  # the per-split protocols PatternPredictions can replay
FUSED_NAMES = ("fused", FUSED_BACKBONE)  # backbone names meaning the embedded default, aligned on the data


@dataclass
class TrainingRun:
    """Everything :func:`build_training` assembles; ``trainer`` is ready to ``train()``."""

    preset: Preset
    model: MissingModalityForClassification
    data: DatasetDict
    collator: Any
    trainer: Trainer
    eval_split: str


def load_dataset_for(preset: Preset, data_dir: str | Path | DatasetDict) -> DatasetDict:
    """The preset's dataset read from ``data_dir`` by its loader in :data:`DATASET_SPECS`; a ``DatasetDict`` is
    used as it is (it needs ``train`` and ``test`` splits)."""
    if isinstance(data_dir, DatasetDict):
        _check_splits(data_dir, "The dataset")
        return data_dir
    spec = DATASET_SPECS.get(preset.data.dataset)
    if spec is None:
        raise ValueError(f"Preset {preset.name!r} uses dataset {preset.data.dataset!r}, which has no folder loader; "
                         f"use one of {sorted(DATASET_SPECS)} (the emoji demo data runs with `hf-missing demo`).")
    data = spec.loader(data_dir, **preset.data.loader_options)
    _check_splits(data, f"{data_dir}: {preset.data.dataset}")
    return data


def _check_splits(data: DatasetDict, what: str) -> None:
    if "train" not in data or "test" not in data:
        raise ValueError(f"{what} needs labelled 'train' and 'test' splits; found {sorted(data)}.")


def resolve_backbone(backbone: str | Path, data: DatasetDict, cache_dir: str | Path | None = None) -> str:
    """``backbone`` as a loadable path or Hub id: ``"fused"`` (or the demo presets' name for it) is the embedded
    default, stage-1 aligned on ``data``'s complete training rows and cached under a key of that data
    (:func:`~hf_missing.backbones.fused.build_fused_backbone`); anything else is returned as it is."""
    if str(backbone) not in FUSED_NAMES:
        return str(backbone)
    return str(build_fused_backbone(cache_dir, alignment_splits(data)))


def label_names(split: Dataset, num_labels: int | None, task: str | None = None) -> list[str]:
    """Class names of ``split``: its ClassLabel, the ClassLabel list of MM-IMDb's ``genres``, else indices; the one
    output ``"label"`` of a regression task."""
    if task in metrics.REGRESSION_TASKS:
        return ["label"]
    features = split.features
    if isinstance(features["label"], ClassLabel):
        return list(features["label"].names)
    genres = getattr(features.get("genres"), "feature", None)
    if isinstance(genres, ClassLabel):
        return list(genres.names)
    if num_labels is None:
        raise ValueError("The dataset's labels carry no class names and the preset no label count.")
    return [str(i) for i in range(num_labels)]


def build_model(preset: Preset, backbone: str | Path, labels: Sequence[str]) -> MissingModalityForClassification:
    """The backbone wrapped with a fresh head for ``labels`` and the preset's method injected."""
    extra: dict[str, Any] = {}
    if preset.data.task == "multilabel":
        extra["problem_type"] = "multi_label_classification"
    if preset.data.task in metrics.REGRESSION_TASKS:
        extra["problem_type"] = "regression"
    if preset.max_text_len is not None:
        extra["max_text_len"] = preset.max_text_len
    return MissingModalityForClassification.from_pretrained(
        str(backbone), adapter=preset.method, adapter_options=preset.method_options, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)}, **extra)


def build_training(preset: Preset, data_dir: str | Path | DatasetDict, output_dir: str | Path,
                   backbone: str | Path | None = None, cache_dir: str | Path | None = None,
                   **overrides: Any) -> TrainingRun:
    """Model, simulated data, collator and ``Trainer`` of ``preset`` on a dataset.

    Args:
        preset: from :func:`hf_missing.load_preset` (or :func:`hf_missing.presets.method_preset` with
            :meth:`~hf_missing.presets.Preset.with_settings` for a user's data).
        data_dir: a published dataset's folder in its layout (see ``hf_missing.data.loaders``), or a
            ``DatasetDict`` with ``train`` and ``test`` splits (``validation`` optional) whose columns are the
            modality names and ``label``; values absent in it are natural missingness.
        output_dir: the ``Trainer``'s output folder.
        backbone: a path or Hub id replacing the preset's backbone; ``"fused"`` is the embedded default
            (:func:`resolve_backbone`).
        cache_dir: where the fused backbone's alignments are cached (default ``$HF_MISSING_CACHE``).
        overrides: ``TrainingArguments`` fields that win over the preset's (``fp16=False``, ``max_steps=2``).
    """
    raw = load_dataset_for(preset, data_dir)
    backbone = resolve_backbone(backbone or preset.backbone, raw, cache_dir)
    model = build_model(preset, backbone, label_names(raw["train"], preset.data.num_labels, preset.data.task))
    data = simulate_missing(raw, **preset.data.missing.simulate_kwargs(), modalities=model.interface.inputs)
    collator = MissingModalityCollator(load_processor(backbone), max_length=preset.max_text_len,
                                       modalities=model.interface.inputs,
                                       regression=preset.data.task in metrics.REGRESSION_TASKS)
    train, collator = prepare_for_training(model, data["train"], collator)
    eval_split = "validation" if "validation" in data else "test"
    evaluation = prepare_for_evaluation(model, data[eval_split], collator)
    trainer = Trainer(model=model, args=preset.training_arguments(str(output_dir), **overrides), train_dataset=train,
                      eval_dataset=evaluation, data_collator=collator,
                      compute_metrics=metrics.for_task(preset.data.task, modalities=model.config.modalities))
    return TrainingRun(preset, model, data, collator, trainer, eval_split)


def train_and_save(run: TrainingRun) -> dict[str, Any]:
    """Train, evaluate on the eval split, save the adapter (with the training split's missing settings in
    ``missing_settings.json``) under ``<output_dir>/adapter`` and write ``eval_report.json``; the report."""
    run.trainer.train()
    results = run.trainer.evaluate()
    output_dir = Path(run.trainer.args.output_dir)
    adapter_dir = output_dir / ADAPTER_SUBDIR
    run.model.save_pretrained(adapter_dir)
    settings = missing_settings(run.data["train"])
    _write_json(adapter_dir / MISSING_SETTINGS_NAME, settings)
    report = {"preset": run.preset.name, "method": run.preset.method, "dataset": run.preset.data.dataset,
              "eval_split": run.eval_split, "missing": settings, "eval": results, "adapter_dir": str(adapter_dir),
              "trainable_parameters": sum(p.numel() for p in run.model.parameters() if p.requires_grad)}
    _write_json(output_dir / REPORT_NAME, report)
    return report


# ---- evaluation ---------------------------------------------------------------------------------
def saved_missing_settings(adapter_dir: str | Path) -> dict[str, Any] | None:
    """The missing settings :func:`train_and_save` stored beside the adapter, or None."""
    path = Path(adapter_dir) / MISSING_SETTINGS_NAME
    if not path.is_file():
        return None
    settings = read_json_file(path)  # beside a downloaded adapter: untrusted, so the values used are checked
    checks = {"rate": _is_fraction, "both_ratio": _is_fraction, "seed": lambda v: is_int(v) and v >= 0,
              "protocol": lambda v: isinstance(v, str), "pattern": lambda v: isinstance(v, str | dict)}
    bad = {k: v for k, v in settings.items() if k in checks and not checks[k](v)}
    if bad:
        raise AdapterLoadError(f"{path} holds invalid missing settings {bad!r:.200} (rate and both_ratio in [0, 1], "
                               "seed a non-negative int, protocol a name, pattern a name or shares); delete the file "
                               "to evaluate with the preset's settings.")
    return settings


def _is_fraction(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def replay_protocol(settings: dict[str, Any]) -> dict[str, Any]:
    """``protocol`` / ``seed`` / ``both_ratio`` for :meth:`PatternPredictions.at`; protocols drawn over several
    splits at once (RAGPT's) are replayed with MAP's per-split draw."""
    protocol = settings.get("protocol", "map")
    return {"protocol": protocol if protocol in CURVE_PROTOCOLS else "map", "seed": settings.get("seed", 0),
            "both_ratio": settings.get("both_ratio", 0.5)}


def task_of(model: MissingModalityForClassification) -> str:
    """The ``metrics.for_task`` task of a model's head: multilabel or regression (MOSI / MOSEI sentiment; pass
    ``task="regression_sims"`` for CH-SIMS) when its problem type says so, else single_label."""
    problem = model.config.problem_type
    return {"multi_label_classification": "multilabel", "regression": "regression"}.get(problem, "single_label")


def evaluate_adapter(adapter: str | Path, preset: Preset | None, data_dir: str | Path | DatasetDict,
                     rates: Sequence[float] = TEST_RATES, task: str | None = None) -> dict[str, Any]:
    """Reload ``adapter`` (a folder or Hub repo id) and evaluate it on the test split of the preset's dataset (or of
    a ``DatasetDict``): per-pattern metrics (with a ``natural`` row where the data lacks values), its train-pattern
    row of :func:`missing_grid` and metric-vs-missing-rate curves. ``task`` defaults to the preset's, else the one
    the model's head implies (:func:`task_of`); the summary records it."""
    adapter_dir = resolve_adapter_dir(adapter)
    if adapter_dir is None:
        raise ValueError(f"{adapter} is not an hf_missing adapter (no adapter_config.json, or a full checkpoint).")
    if preset is None and not isinstance(data_dir, DatasetDict):
        raise ValueError("Without a preset, pass the data as a DatasetDict (hf_missing.data.sources.load_data).")
    model = AutoModel.from_pretrained(str(adapter))  # the name, not the download folder: a Hub adapter stays remote
    test = load_dataset_for(preset, data_dir)["test"] if preset else data_dir["test"]
    collator = MissingModalityCollator(load_processor(model.config.backbone_name_or_path),
                                       max_length=model.config.max_text_len, modalities=model.interface.inputs,
                                       regression=model.config.problem_type == "regression")
    test = prepare_for_evaluation(model, test, collator)
    task = task or (preset.data.task if preset else task_of(model))
    predictions = predict_patterns(model, test, collator, task)
    train = saved_missing_settings(adapter_dir) or (preset.data.missing.simulate_kwargs() if preset else {})
    return {**summarise(predictions, train, rates), "task": task}


def summarise(predictions: PatternPredictions, train: dict[str, Any], rates: Sequence[float]) -> dict[str, Any]:
    """Per-pattern metrics, the train-pattern grid row at the training rate, and one curve per test pattern."""
    protocol = replay_protocol(train)
    pattern = train.get("pattern", "both")
    train_pattern = pattern if isinstance(pattern, str) else json.dumps(pattern, sort_keys=True)
    grid = missing_grid({train_pattern: predictions}, rate=train.get("rate", 0.7), **protocol)
    return {"train_missing": train, "per_pattern": predictions.per_pattern(), "grid": grid,
            "curves": {p: predictions.curve(rates, p, **protocol)
                       for p in grid_patterns(predictions.patterns.modalities)}}


def pattern_table(per_pattern: dict[str, dict[str, float]], metric_names: Sequence[str]) -> str:
    """A markdown table: one row per missing pattern, one column per metric."""
    lines = ["| pattern | " + " | ".join(metric_names) + " |", "|---|" + "---|" * len(metric_names)]
    for pattern, values in per_pattern.items():
        lines.append(f"| {pattern} | " + " | ".join(f"{values[m]:.4f}" for m in metric_names) + " |")
    return "\n".join(lines)


def write_evaluation(summary: dict[str, Any], folder: str | Path, metric: str, title: str = "") -> Path:
    """Write ``results.json``, ``report.md`` (per-pattern table and grid row) and ``robustness.png``
    (``metric`` vs test missing rate, one line per test pattern) into ``folder``; the folder."""
    folder = Path(folder)
    _write_json(folder / "results.json", summary)
    plot_metric_curves(summary["curves"], folder / PLOT_NAME, metric=metric, xlabel="test missing rate (%)",
                       title=title)
    names = list(next(iter(summary["per_pattern"].values())))
    train = summary["train_missing"]
    (train_pattern, row), = summary["grid"].items()
    report = [f"# {title}", "", "## Every test sample under one pattern", "",
              pattern_table(summary["per_pattern"], names), "",
              f"## Trained with {100 * train.get('rate', 0.7):.0f}% missing '{train_pattern}', tested at that rate", "",
              pattern_table(row, names), "", f"![robustness]({PLOT_NAME})", ""]
    (folder / "report.md").write_text("\n".join(report), encoding="utf-8")
    return folder


def read_results(path: str | Path) -> dict[str, Any]:
    """Metrics for :func:`hf_missing.push_adapter` from a JSON file: a ``results.json`` of
    :func:`write_evaluation` (its per-pattern table), an ``eval_report.json`` of :func:`train_and_save` (its
    ``Trainer.evaluate()`` output), or the metrics themselves."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    for key in ("per_pattern", "eval"):
        if isinstance(data.get(key), dict):
            return data[key]
    return data


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
