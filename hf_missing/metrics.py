"""``compute_metrics`` factories for ``transformers.Trainer``, offline (scikit-learn), with a breakdown per
missing pattern.

Multi-label metrics follow the MAP family: sigmoid(logits) >= 0.5, F1 macro / micro / samples /
weighted (with the names the right way round: the released code writes samples and weighted swapped).
Binary AUROC follows MAP on Hateful Memes: softmax over two logits (or sigmoid of one logit).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from transformers import EvalPrediction

from .missingness import DEFAULT_MODALITIES, ModalityPattern

TASKS = ("single_label", "multilabel", "binary")


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


def for_task(task: str, *, per_pattern: bool = True, modalities: Sequence[str] = DEFAULT_MODALITIES,
             threshold: float = 0.5) -> Callable[[EvalPrediction], dict[str, float]]:
    """A ``compute_metrics`` for ``Trainer``: overall metrics, and per missing pattern
    (``missing_text/accuracy``, ...) from the ``missing_type`` that the model returns with its logits."""
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; choose one of {list(TASKS)}.")
    names = ModalityPattern(tuple(modalities)).names

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        logits = _first(prediction.predictions)
        labels = np.asarray(prediction.label_ids)
        metrics = classification_metrics(task, logits, labels, threshold)
        codes = _missing_types(prediction)
        if per_pattern and codes is not None:
            metrics.update(per_pattern_metrics(task, logits, labels, codes, names, threshold))
        return metrics

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
                out[f"{name}/{key}"] = value
            out[f"{name}/count"] = float(rows.sum())
    return out


def _first(predictions: Any) -> np.ndarray:
    return np.asarray(predictions[0] if isinstance(predictions, tuple | list) else predictions)


def _missing_types(prediction: EvalPrediction) -> np.ndarray | None:
    """The model returns ``missing_type`` after the logits; Trainer passes it on in ``predictions``."""
    predictions = prediction.predictions
    if isinstance(predictions, tuple | list) and len(predictions) > 1:
        return np.asarray(predictions[1]).reshape(-1).astype(int)
    return None
