"""Evaluation under missing modalities, for any trained model.

:func:`predict_patterns` runs a model once per missing pattern over a test set (every sample complete, then
every sample without text, ...). Since a sample's prediction depends only on its own inputs and pattern,
any test protocol can then be read off these logits without running the model again: a missing rate and
pattern drawn exactly as :func:`hf_missing.simulate_missing` draws them (:meth:`PatternPredictions.at`),
metric-vs-missing-rate curves (:meth:`PatternPredictions.curve`) and MemPrompt's train pattern x test
pattern grid (:func:`missing_grid`).

Natural missingness (values absent in the test data) is kept: under a forced pattern a sample also lacks what it
lacks in the data, a pattern row is measured on the samples that can be seen under it (the "complete" row on the
naturally complete ones), the ``natural`` row measures every sample as the data has it, and test rates count the
natural and the simulated missingness together, as :func:`hf_missing.simulate_missing` does.
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

from .data.simulate import ONLY_PREFIX, combined_table, natural_table, pattern_counts, pattern_shares, split_key
from .metrics import classification_metrics
from .missingness import MISSING_TYPE_COLUMN, ModalityPattern

TEST_PATTERNS = ("text", "image", "both")  # the demo's (text + image) training and test patterns
TEST_RATES = tuple(i / 10 for i in range(11))  # the test missing rates of robustness curves
NATURAL_ROW = "natural"  # per_pattern's row of the samples as the data has them


@dataclass
class PatternPredictions:
    """Logits of every test sample under every missing pattern.

    Attributes:
        logits: pattern name (``complete``, ``missing_text``, ...) -> ``[N, C]`` logits.
        labels: ``[N]`` or ``[N, C]`` targets.
        task: "single_label", "multilabel" or "binary" (:func:`hf_missing.metrics.classification_metrics`).
        patterns: the modality patterns the names refer to.
        seconds: wall time of the forward passes (all patterns).
        natural: ``[N]`` codes of what each sample lacks in the data (None: every sample complete). Under pattern
            p a sample's logits are those of p plus its natural missingness (its natural pattern where nothing
            would be left).
    """

    logits: dict[str, np.ndarray]
    labels: np.ndarray
    task: str
    patterns: ModalityPattern
    seconds: float = 0.0
    natural: np.ndarray | None = None

    def codes_at(self, rate: float, pattern: str | Mapping[str, float] = "both", protocol: str = "map",
                 seed: int = 0, both_ratio: float = 0.5, split: str = "test") -> np.ndarray:
        """The pattern codes ``simulate_missing(dataset, rate, pattern, protocol, seed)[split]`` assigns to these
        samples (tables are keyed by the split's name)."""
        if protocol not in ("map", "redeem"):
            raise ValueError(f"Per-split protocols only ('map', 'redeem'); got {protocol!r}.")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must lie in [0, 1], got {rate}.")
        shares = pattern_shares(pattern, self.patterns.modalities, both_ratio)
        natural = self.natural_codes()
        counts = pattern_counts(len(natural), rate, shares, protocol)
        return combined_table(natural, counts, self.patterns, seed, key=split_key(split))

    def natural_codes(self) -> np.ndarray:
        """``[N]`` natural pattern codes (zeros when the data lacks nothing)."""
        return np.zeros(len(self.labels), dtype=np.int64) if self.natural is None else np.asarray(self.natural)

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
        """Metrics with every sample under one pattern, for each pattern: over the samples that can be seen under
        it (those whose natural missingness it includes; a pattern no sample reaches has no row), and, where some
        samples lack a modality in the data, a ``natural`` row with every sample as the data has it."""
        natural = self.natural_codes()
        compose = composition(self.patterns)
        out = {}
        for code, name in enumerate(self.patterns.names):
            rows = compose[code, natural] == code
            if rows.any():
                out[name] = classification_metrics(self.task, self.logits[name][rows], self.labels[rows])
        if natural.any():
            out[NATURAL_ROW] = classification_metrics(self.task, self.logits["complete"], self.labels)
        return out


def composition(patterns: ModalityPattern) -> np.ndarray:
    """``[P, P]``: entry (forced, natural) is the code of a sample lacking both patterns' modalities, or ``natural``
    where that would leave no modality."""
    missing = (~patterns.present_matrix()).numpy()
    lookup = {tuple(row): code for code, row in enumerate(missing.tolist())}
    table = np.empty((patterns.num_patterns, patterns.num_patterns), dtype=np.int64)
    for forced in range(patterns.num_patterns):
        for natural in range(patterns.num_patterns):
            union = tuple((missing[forced] | missing[natural]).tolist())
            table[forced, natural] = lookup.get(union, natural)
    return table


def predict_patterns(model: torch.nn.Module, dataset: Dataset, collator: Any, task: str,
                     batch_size: int = 64, progress: bool = True) -> PatternPredictions:
    """Run ``model`` over ``dataset`` once per missing pattern (the collator inserts the placeholders); values
    absent in the data stay missing under every pattern (see the module docstring)."""
    patterns = ModalityPattern(tuple(model.config.modalities))
    natural = _natural_codes(model, dataset, collator, patterns)
    compose = composition(patterns)
    was_training = model.training
    model.eval()
    logits, labels, start = {}, None, time.perf_counter()
    try:
        for code, name in enumerate(patterns.names):
            logits[name], labels = _predict(model, dataset, collator, compose[code, natural], batch_size,
                                            progress and name)
    finally:
        model.train(was_training)
    return PatternPredictions(logits, labels, task, patterns, time.perf_counter() - start,
                              natural if natural.any() else None)


def _natural_codes(model: torch.nn.Module, dataset: Dataset, collator: Any, patterns: ModalityPattern) -> np.ndarray:
    """What each sample lacks in the data, read with the collator's modality declarations and columns (else the
    model's declarations and the modalities' names)."""
    inputs = getattr(collator, "inputs", None) or model.interface.inputs
    column = collator.column if callable(getattr(collator, "column", None)) else str
    tests = {m.name: m.is_absent for m in inputs}
    return natural_table(dataset, patterns, tests, {m: column(m) for m in patterns.modalities}, "test")


def _predict(model: torch.nn.Module, dataset: Dataset, collator: Any, codes: np.ndarray, batch_size: int,
             progress: str | bool) -> tuple[np.ndarray, np.ndarray]:
    device = next(model.parameters()).device
    data = dataset.select_columns([c for c in dataset.column_names if c != MISSING_TYPE_COLUMN])
    outputs, targets = [], []
    starts = range(0, len(data), batch_size)
    for start in tqdm(starts, desc=f"predict {progress}", disable=not progress, leave=False):
        rows = data[start:start + batch_size]
        features = [dict(zip(rows, values, strict=True)) | {MISSING_TYPE_COLUMN: int(code)}
                    for values, code in zip(zip(*rows.values(), strict=True), codes[start:start + batch_size],
                                            strict=True)]
        batch = collator(features)
        labels = batch.pop("labels")
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with torch.no_grad():
            outputs.append(model(**inputs).logits.float().cpu().numpy())
        targets.append(labels.numpy())
    return np.concatenate(outputs), np.concatenate(targets)


def grid_patterns(modalities: Sequence[str]) -> tuple[str, ...]:
    """The test patterns of grids and curves: each modality missing alone, from three modalities on each modality
    left alone (``only_<m>``: REP Table 2's columns), and "both" (every incomplete pattern)."""
    alone = tuple(f"{ONLY_PREFIX}{m}" for m in modalities) if len(modalities) > 2 else ()
    return (*modalities, *alone, "both")


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
