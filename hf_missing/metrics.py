"""``compute_metrics`` factories for ``transformers.Trainer``, offline (scikit-learn), with a breakdown per
missing pattern, served as an ``evaluate`` metric.

:data:`METRIC_MODULE` is a local ``evaluate.Metric`` script (``metric_module/missing_modality_metrics.py``, shipped
with the package, never downloaded): ``evaluate.load(METRIC_MODULE, config_name=task)`` (:func:`load_metric`) gives
an ``EvaluationModule`` with ``add_batch`` / ``compute`` that ``evaluate.combine`` can join with others;
:func:`for_task` computes through it. The arithmetic is :func:`classification_metrics` (scikit-learn).

Multi-label metrics follow the MAP family: sigmoid(logits) >= 0.5, F1 macro / micro / samples /
weighted (with the names the right way round: the released code writes samples and weighted swapped).
Binary AUROC follows MAP on Hateful Memes: softmax over two logits (or sigmoid of one logit).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import evaluate
import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from transformers import EvalPrediction

from .missingness import DEFAULT_MODALITIES

TASKS = ("single_label", "multilabel", "binary")
METRIC_MODULE = str(Path(__file__).resolve().parent / "metric_module" / "missing_modality_metrics.py")
PATTERN_SEPARATOR = "/"  # per-pattern keys are "<pattern>/<metric>"


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def classification_metrics(task: str, logits: np.ndarray, labels: np.ndarray,
                           threshold: float = 0.5) -> dict[str, float]:
    """Metrics of one task on numpy logits and labels."""
    if task == "multilabel":
        predictions = (_sigmoid(logits) >= threshold).astype(int)
        labels = labels.astype(int)
        return {f"f1_{avg}": float(f1_score(labels, predictions, average=avg, zero_division=0))
                for avg in ("macro", "micro", "samples", "weighted")}
    if task == "binary":
        scores = _sigmoid(logits.reshape(-1)) if logits.ndim == 1 or logits.shape[-1] == 1 else _softmax(logits)[:, 1]
        labels = labels.reshape(-1).astype(int)
        out = {"accuracy": float(accuracy_score(labels, scores >= 0.5))}
        out["auroc"] = float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else float("nan")
        return out
    if task == "single_label":
        predictions = logits.argmax(axis=-1)
        return {"accuracy": float(accuracy_score(labels, predictions)),
                "f1_macro": float(f1_score(labels, predictions, average="macro", zero_division=0))}
    raise ValueError(f"Unknown task {task!r}; choose one of {list(TASKS)}.")


def load_metric(task: str) -> evaluate.EvaluationModule:
    """The ``evaluate`` metric of ``task`` (overall and per missing pattern), loaded offline from
    :data:`METRIC_MODULE`; combine it with others through ``evaluate.combine``."""
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; choose one of {list(TASKS)}.")
    return evaluate.load(METRIC_MODULE, config_name=task, keep_in_memory=True)


def for_task(task: str, *, per_pattern: bool = True, modalities: Sequence[str] = DEFAULT_MODALITIES,
             threshold: float = 0.5) -> Callable[[EvalPrediction], dict[str, float]]:
    """A ``compute_metrics`` for ``Trainer`` computed by :func:`load_metric`'s ``evaluate`` module: overall
    metrics, and per missing pattern (``missing_text/accuracy``, ...) from the ``missing_type`` that the model
    returns with its logits."""
    module = load_metric(task)
    modalities = tuple(modalities)

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        logits = _first(prediction.predictions)
        labels = np.asarray(prediction.label_ids)
        codes = _missing_types(prediction)
        breakdown = per_pattern and codes is not None
        results = module.compute(predictions=logits, references=labels,
                                 missing_type=codes if breakdown else np.zeros(len(labels), dtype=np.int64),
                                 modalities=modalities, threshold=threshold)
        return results if breakdown else {k: v for k, v in results.items() if PATTERN_SEPARATOR not in k}

    return compute_metrics


def per_pattern_metrics(task: str, logits: np.ndarray, labels: np.ndarray, codes: np.ndarray, names: list[str],
                        threshold: float = 0.5) -> dict[str, float]:
    """The same metrics on each missing pattern's samples, keyed ``"<pattern>/<metric>"``."""
    unknown = sorted(set(np.unique(codes).tolist()) - set(range(len(names))))
    if unknown:
        raise ValueError(f"missing_type codes {unknown} have no pattern among {names}; the metrics were built for "
                         f"other modalities than the model's: pass for_task(..., modalities=model.config.modalities).")
    out: dict[str, float] = {}
    for code, name in enumerate(names):
        rows = codes == code
        if rows.any():
            for key, value in classification_metrics(task, logits[rows], labels[rows], threshold).items():
                out[f"{name}{PATTERN_SEPARATOR}{key}"] = value
            out[f"{name}{PATTERN_SEPARATOR}count"] = float(rows.sum())
    return out


def _first(predictions: Any) -> np.ndarray:
    return np.asarray(predictions[0] if isinstance(predictions, tuple | list) else predictions)


def _missing_types(prediction: EvalPrediction) -> np.ndarray | None:
    """The model returns ``missing_type`` after the logits; Trainer passes it on in ``predictions``."""
    predictions = prediction.predictions
    if isinstance(predictions, tuple | list) and len(predictions) > 1:
        return np.asarray(predictions[1]).reshape(-1).astype(int)
    return None
