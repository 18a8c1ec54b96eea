"""``compute_metrics`` factories for ``transformers.Trainer``, offline (scikit-learn), with a breakdown per
missing pattern, served as an ``evaluate`` metric.

:data:`METRIC_MODULE` is a local ``evaluate.Metric`` script (``metric_module/missing_modality_metrics.py``, shipped
with the package, never downloaded): ``evaluate.load(METRIC_MODULE, config_name=task)`` (:func:`load_metric`) gives
an ``EvaluationModule`` with ``add_batch`` / ``compute`` that ``evaluate.combine`` can join with others;
:func:`for_task` computes through it. The arithmetic is :func:`classification_metrics` (scikit-learn).

Multi-label metrics follow the MAP family: sigmoid(logits) >= 0.5, F1 macro / micro / samples /
weighted (with the names the right way round: the released code writes samples and weighted swapped).
Binary AUROC follows MAP on Hateful Memes: softmax over two logits (or sigmoid of one logit).

Sentiment regression (one real output per sample) follows MMSA's ``MetricsTop`` (thuiar/MMSA
``src/MMSA/utils/metricsTop.py``), which the MOSI / MOSEI / CH-SIMS papers report:

- ``"regression"`` (``__eval_mosei_regression``, used for MOSI and MOSEI): ``mae`` mean |pred - label|;
  ``corr`` Pearson correlation; ``acc2_non0`` / ``f1_non0`` (MMSA's ``Non0_acc_2`` / ``Non0_F1_score``) accuracy and
  weighted F1 of ``> 0`` on the samples whose label is not 0; ``acc2_has0`` / ``f1_has0`` (``Has0_acc_2`` /
  ``Has0_F1_score``) the same of ``>= 0`` on every sample; ``acc5`` / ``acc7`` accuracy of
  ``round(clip(x, -2, 2))`` / ``round(clip(x, -3, 3))`` (numpy's round: halves to even).
- ``"regression_sims"`` (``__eval_sims_regression``): predictions and labels clipped to [-1, 1] first; ``acc2``
  classes (-1, 0] / (0, 1], ``acc3`` [-1, -0.1] / (-0.1, 0.1] / (0.1, 1], ``acc5`` with bounds -0.7, -0.1, 0.1,
  0.7; ``f1`` weighted F1 of the two classes; ``mae`` and ``corr`` of the clipped values.

A correlation of constant predictions, and the non-zero metrics of a set whose labels are all 0, are NaN.
MPLMM (REP's audio code, zrguo/MPLMM ``src/eval_metrics.py``) and MulT report the binary accuracy as ``acc2_non0``
(``exclude_zero=True``) but call ``f1_score(preds, truth)`` with the arguments swapped, which weights the F1 by the
predicted classes' counts instead of the labels'; their F1 can therefore differ slightly from ``f1_non0``. For CH-SIMS
MPLMM takes every sample with ``> 0`` (as ``acc2`` here) and its MAE on unclipped values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, roc_auc_score
from transformers import EvalPrediction

from .missingness import DEFAULT_MODALITIES

if TYPE_CHECKING:
    import evaluate

TASKS = ("single_label", "multilabel", "binary", "regression", "regression_sims")
REGRESSION_TASKS = ("regression", "regression_sims")
METRIC_MODULE = str(Path(__file__).resolve().parent / "metric_module" / "missing_modality_metrics.py")
PATTERN_SEPARATOR = "/"  # per-pattern keys are "<pattern>/<metric>"


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def classification_metrics(task: str, logits: np.ndarray, labels: np.ndarray,
                           threshold: float = 0.5) -> dict[str, float]:
    """Metrics of one task on numpy logits (or regression outputs) and labels."""
    if task in REGRESSION_TASKS:
        return regression_metrics(task, logits, labels)
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


def regression_metrics(task: str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """MMSA's sentiment metrics (module docstring) of one real output per sample."""
    predictions, labels = _one_output(predictions, labels)
    if task == "regression_sims":
        return _sims_metrics(np.clip(predictions, -1.0, 1.0), np.clip(labels, -1.0, 1.0))
    non_zero = labels != 0
    out = {"mae": float(mean_absolute_error(labels, predictions)), "corr": _pearson(predictions, labels)}
    out.update(_binary("non0", labels[non_zero] > 0, predictions[non_zero] > 0))
    out.update(_binary("has0", labels >= 0, predictions >= 0))
    for classes, bound in ((5, 2.0), (7, 3.0)):
        out[f"acc{classes}"] = float(accuracy_score(np.round(np.clip(labels, -bound, bound)),
                                                    np.round(np.clip(predictions, -bound, bound))))
    return out


def _sims_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    out = {}
    for classes, bounds in ((2, [0.0]), (3, [-0.1, 0.1]), (5, [-0.7, -0.1, 0.1, 0.7])):
        truth, guess = np.digitize(labels, bounds, right=True), np.digitize(predictions, bounds, right=True)
        out[f"acc{classes}"] = float(accuracy_score(truth, guess))
        if classes == 2:
            out["f1"] = float(f1_score(truth, guess, average="weighted"))
    out["mae"] = float(mean_absolute_error(labels, predictions))
    out["corr"] = _pearson(predictions, labels)
    return out


def _one_output(predictions: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    predictions, labels = np.asarray(predictions, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if predictions.size != len(predictions) or labels.size != len(labels) or len(predictions) != len(labels):
        raise ValueError(f"The sentiment metrics read one output and one label per sample; got outputs of shape "
                         f"{predictions.shape} and labels of shape {labels.shape}. Use num_labels=1.")
    return predictions.reshape(-1), labels.reshape(-1)


def _binary(name: str, truth: np.ndarray, guess: np.ndarray) -> dict[str, float]:
    if not len(truth):
        return {f"acc2_{name}": float("nan"), f"f1_{name}": float("nan")}
    return {f"acc2_{name}": float(accuracy_score(truth, guess)),
            f"f1_{name}": float(f1_score(truth, guess, average="weighted"))}


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r (scipy), NaN where it is undefined (fewer than 2 samples, or a constant side)."""
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(pearsonr(x, y).statistic)


def load_metric(task: str) -> evaluate.EvaluationModule:
    """The ``evaluate`` metric of ``task`` (overall and per missing pattern), loaded offline from
    :data:`METRIC_MODULE`; combine it with others through ``evaluate.combine``."""
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; choose one of {list(TASKS)}.")
    import evaluate  # imported when needed: it takes seconds, and most runs never load the metric module

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
