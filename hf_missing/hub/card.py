"""The model card of an adapter: ``model_cards/adapter_card.md`` rendered with the base model, the method and its
paper, the missing-modality protocol, the results per missing pattern (as model-index ``EvalResult`` rows) and a
loading snippet."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors import safe_open

from ..data import missing_settings
from ..loading import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    CONFIG_NAME,
    is_repo_id,
    method_name,
    method_options,
    read_json_file,
)
from ..methods import METHODS

CARD_TEMPLATE = Path(__file__).resolve().parents[2] / "model_cards" / "adapter_card.md"
SKIPPED_METRICS = ("loss", "runtime", "samples_per_second", "steps_per_second", "epoch", "count")
OVERALL = "all"
TASK_TYPE = "multimodal-classification"


def adapter_card(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    backbone: str | None = None,
    results: Mapping[str, Any] | None = None,
    plot_file: str | None = None,
    missing: Any = None,
    dataset: str | None = None,
    split: str = "test",
    tags: list[str] | None = None,
) -> ModelCard:
    """The model card of the adapter saved in ``folder`` (see :func:`~hf_missing.hub.push.push_adapter` for the
    arguments)."""
    folder = Path(folder)
    adapter_config, config = read_json_file(folder / ADAPTER_CONFIG_NAME), read_json_file(folder / CONFIG_NAME)
    method = method_name(adapter_config, str(folder))
    backbone = backbone or config.get("backbone_name_or_path") or adapter_config.get("base_model_name_or_path")
    by_pattern = results_by_pattern(results or {})
    backbone_type = (config.get("backbone_config") or {}).get("model_type", "")
    card_data = ModelCardData(
        model_name=repo_id.split("/")[-1],
        base_model=backbone if backbone and is_repo_id(backbone) else None,
        library_name="peft",
        tags=list(dict.fromkeys(["hf-missing", "missing-modality", "multimodal", method, backbone_type,
                                 *(tags or [])])),
        datasets=[dataset] if dataset and is_repo_id(dataset) else None,
        metrics=sorted({m for metrics in by_pattern.values() for m in metrics}) or None,
        eval_results=_eval_results(by_pattern, dataset, split) or None,
    )
    spec = METHODS[method]
    return ModelCard.from_template(
        card_data, template_path=str(CARD_TEMPLATE), repo_id=repo_id, title=repo_id, method=method, backbone=backbone,
        backbone_type=backbone_type, summary=spec.summary, paper=spec.paper, citation=spec.citation,
        options=method_options(adapter_config, method), settings=adapter_config["model_settings"],
        adapter_bytes=(folder / ADAPTER_WEIGHTS_NAME).stat().st_size,
        adapter_params=_count_parameters(folder / ADAPTER_WEIGHTS_NAME),
        files=sorted(p.name for p in folder.iterdir() if p.name != "README.md"),
        missing=_missing_protocol(missing, config), results=by_pattern, dataset=dataset, split=split,
        plot_file=plot_file,
    )


def results_by_pattern(results: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{pattern: {metric: value}}`` from ``Trainer.evaluate()`` output (``eval_accuracy`` is the overall
    ``"all"`` row, ``eval_missing_text/accuracy`` a pattern's) or from an already nested mapping."""
    table: dict[str, dict[str, float]] = {}
    for key, value in results.items():
        if isinstance(value, Mapping):
            table.setdefault(key, {}).update({m: float(v) for m, v in value.items() if m not in SKIPPED_METRICS})
            continue
        name = key.removeprefix("eval_")
        pattern, _, metric = name.rpartition("/")
        if metric not in SKIPPED_METRICS and isinstance(value, int | float):
            table.setdefault(pattern or OVERALL, {})[metric] = float(value)
    return table


def _eval_results(by_pattern: dict[str, dict[str, float]], dataset: str | None, split: str) -> list[EvalResult]:
    return [
        EvalResult(task_type=TASK_TYPE, task_name="Classification with missing modalities", dataset_type=dataset,
                   dataset_name=dataset, dataset_config=pattern, dataset_split=split, metric_type=metric,
                   metric_name=f"{metric} ({pattern})", metric_value=value)
        for pattern, metrics in by_pattern.items()
        for metric, value in metrics.items()
    ]


def _missing_protocol(missing: Any, config: dict[str, Any]) -> dict[str, Any] | None:
    """rate / pattern / protocol / seed / both_ratio of the simulated data, the natural (in the data) and simulated
    counts per split and pattern, plus the model's policy."""
    if missing is None:
        return None
    if isinstance(missing, DatasetDict):
        missing = next(iter(missing.values()))
    if isinstance(missing, Dataset):
        missing = missing_settings(missing)
    keys = ("rate", "pattern", "protocol", "seed", "both_ratio", "shares", "natural_counts", "simulated_counts")
    return {**{k: missing[k] for k in keys if k in missing}, "policy": config.get("missing_policy"),
            "modalities": config.get("modalities")}


def _count_parameters(path: Path) -> int:
    """Number of values stored in a safetensors file (read from its header only)."""
    with safe_open(str(path), framework="pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 (safe_open is no dict)
