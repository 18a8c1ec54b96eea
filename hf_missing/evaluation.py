"""Evaluation under missing modalities, for any trained model.

:func:`predict_patterns` runs a model once per missing pattern over a test set (every sample complete, then
every sample without text, ...). Since a sample's prediction depends only on its own inputs and pattern,
any test protocol can then be read off these logits without running the model again: a missing rate and
pattern drawn exactly as :func:`hf_missing.simulate_missing` draws them (:meth:`PatternPredictions.at`),
metric-vs-missing-rate curves (:meth:`PatternPredictions.curve`) and MemPrompt's train pattern x test
pattern grid (:func:`missing_grid`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from tqdm.auto import tqdm

from .data.simulate import missing_table, pattern_counts, pattern_shares, split_key
from .metrics import classification_metrics
from .missingness import MISSING_TYPE_COLUMN, ModalityPattern

TEST_PATTERNS = ("text", "image", "both")  # the demo's (text + image) training and test patterns
TEST_RATES = tuple(i / 10 for i in range(11))  # the test missing rates of robustness curves


@dataclass
class PatternPredictions:
    """Logits of every test sample under every missing pattern.

    Attributes:
        logits: pattern name (``complete``, ``missing_text``, ...) -> ``[N, C]`` logits.
        labels: ``[N]`` or ``[N, C]`` targets.
        task: "single_label", "multilabel" or "binary" (:func:`hf_missing.metrics.classification_metrics`).
        patterns: the modality patterns the names refer to.
        seconds: wall time of the forward passes (all patterns).
    """

    logits: dict[str, np.ndarray]
    labels: np.ndarray
    task: str
    patterns: ModalityPattern
    seconds: float = 0.0

    def codes_at(self, rate: float, pattern: str | Mapping[str, float] = "both", protocol: str = "map",
                 seed: int = 0, both_ratio: float = 0.5, split: str = "test") -> np.ndarray:
        """The pattern codes ``simulate_missing(dataset, rate, pattern, protocol, seed)[split]`` assigns to these
        samples (tables are keyed by the split's name)."""
        if protocol not in ("map", "redeem"):
            raise ValueError(f"Per-split protocols only ('map', 'redeem'); got {protocol!r}.")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must lie in [0, 1], got {rate}.")
        shares = pattern_shares(pattern, self.patterns.modalities, both_ratio)
        n = len(self.labels)
        return missing_table(n, pattern_counts(n, rate, shares, protocol), self.patterns, seed, key=split_key(split))

    def metrics(self, codes: np.ndarray) -> dict[str, float]:
        """Metrics when sample i is seen under pattern ``codes[i]``."""
        stacked = np.stack([self.logits[name] for name in self.patterns.names])
        chosen = stacked[np.asarray(codes), np.arange(len(codes))]
        return classification_metrics(self.task, chosen, self.labels)

    def at(self, rate: float, pattern: str | Mapping[str, float] = "both", **protocol: Any) -> dict[str, float]:
        """Metrics at one test missing rate and pattern (``protocol``: protocol, seed, both_ratio)."""
        return self.metrics(self.codes_at(rate, pattern, **protocol))

    def curve(self, rates: Sequence[float], pattern: str | Mapping[str, float] = "both",
              **protocol: Any) -> list[dict[str, float]]:
        """Metric-vs-test-missing-rate curve: one metrics dict (with its ``rate``) per rate."""
        return [{"rate": float(r), **self.at(r, pattern, **protocol)} for r in rates]

    def per_pattern(self) -> dict[str, dict[str, float]]:
        """Metrics with every sample under one pattern, for each pattern."""
        return {name: classification_metrics(self.task, self.logits[name], self.labels)
                for name in self.patterns.names}


def predict_patterns(model: torch.nn.Module, dataset: Dataset, collator: Any, task: str,
                     batch_size: int = 64, progress: bool = True) -> PatternPredictions:
    """Run ``model`` over ``dataset`` once per missing pattern (the collator inserts the placeholders)."""
    patterns = ModalityPattern(tuple(model.config.modalities))
    was_training = model.training
    model.eval()
    logits, labels, start = {}, None, time.perf_counter()
    try:
        for code, name in enumerate(patterns.names):
            logits[name], labels = _predict(model, dataset, collator, code, batch_size, progress and name)
    finally:
        model.train(was_training)
    return PatternPredictions(logits, labels, task, patterns, time.perf_counter() - start)


def _predict(model: torch.nn.Module, dataset: Dataset, collator: Any, code: int, batch_size: int,
             progress: str | bool) -> tuple[np.ndarray, np.ndarray]:
    device = next(model.parameters()).device
    data = dataset.select_columns([c for c in dataset.column_names if c != MISSING_TYPE_COLUMN])
    outputs, targets = [], []
    starts = range(0, len(data), batch_size)
    for start in tqdm(starts, desc=f"predict {progress}", disable=not progress, leave=False):
        rows = data[start:start + batch_size]
        features = [dict(zip(rows, values, strict=True)) | {MISSING_TYPE_COLUMN: code}
                    for values in zip(*rows.values(), strict=True)]
        batch = collator(features)
        labels = batch.pop("labels")
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with torch.no_grad():
            outputs.append(model(**inputs).logits.float().cpu().numpy())
        targets.append(labels.numpy())
    return np.concatenate(outputs), np.concatenate(targets)


def grid_patterns(modalities: Sequence[str]) -> tuple[str, ...]:
    """The test patterns of grids and curves: each modality missing alone, and "both" (every incomplete pattern)."""
    return (*modalities, "both")


def missing_grid(predictions: Mapping[str, PatternPredictions], rate: float = 0.7,
                 patterns: Sequence[str] | None = None, **protocol: Any) -> dict[str, dict[str, dict]]:
    """MemPrompt's Table 1: for models trained under each pattern (keys of ``predictions``), the metrics
    under each test pattern at ``rate`` (default :func:`grid_patterns` of the model's modalities):
    ``grid[train][test] -> metrics``."""
    return {train: {test: p.at(rate, test, **protocol) for test in patterns or grid_patterns(p.patterns.modalities)}
            for train, p in predictions.items()}


def plot_metric_curves(curves: dict[str, list[dict[str, float]]], path: Path, metric: str, xlabel: str,
                       title: str = "") -> None:
    """``metric`` vs test missing rate, one line per curve (points as ``PatternPredictions.curve`` returns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ax.plot([100 * p["rate"] for p in curve], [p[metric] for p in curve], marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
