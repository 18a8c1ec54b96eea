"""Numbers a reader can trust: means over seeds with 95% intervals, and paired comparisons of two methods.

A method-vs-reference difference is judged twice, on the same seeds and the same test items:

- over training seeds: the per-seed accuracy differences, their mean and Student-t 95% interval (training
  randomness: initialisation, missing table, batch order);
- over test items: a paired bootstrap. Each resample draws the test items with replacement, the same items for
  every seed and both methods, and takes the mean over seeds of the accuracy difference on them (which test items
  happened to be drawn; Efron & Tibshirani's paired bootstrap, percentile interval).

A difference is called significant only when both 95% intervals exclude 0 on the same side: beating the reference
must survive both a new training seed and a new test set.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
RESAMPLES = 10_000


def mean_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (0 for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    sem = statistics.stdev(values) / math.sqrt(len(values))
    return mean, float(stats.t.ppf((1 + level) / 2, len(values) - 1) * sem)


def paired_bootstrap(correct: np.ndarray, reference: np.ndarray, resamples: int = RESAMPLES, level: float = LEVEL,
                     seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean accuracy difference ``correct - reference`` (both ``[seeds, items]`` of 0/1,
    the same test items in the same order) under resampling of the test items, shared by every seed and both
    methods."""
    correct, reference = np.asarray(correct, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if correct.shape != reference.shape or correct.ndim != 2:
        raise ValueError(f"Paired comparison needs two [seeds, items] arrays of one shape; got {correct.shape} and "
                         f"{reference.shape} (were both methods run on the same seeds and test split?).")
    per_item = (correct - reference).mean(axis=0)
    items = len(per_item)
    draws = np.random.default_rng(seed).integers(0, items, size=(resamples, items), dtype=np.int32)  # with replacement
    replicates = per_item[draws].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Comparison:
    """``method - reference`` in accuracy points: the mean over seeds, the seed interval's half-width, the bootstrap
    interval over test items, and whether both exclude 0 on the same side."""

    difference: float
    seed_half_width: float
    item_low: float
    item_high: float
    seeds: int
    significant: bool

    def cell(self) -> str:
        """``+1.5 ± 1.4 [+0.2, +2.9]*`` (* significant)."""
        mark = "*" if self.significant else ""
        return (f"{self.difference:+.1f} ± {self.seed_half_width:.1f} "
                f"[{self.item_low:+.1f}, {self.item_high:+.1f}]{mark}")

    def to_dict(self) -> dict[str, float | int | bool]:
        return asdict(self)


def compare(correct: np.ndarray, reference: np.ndarray, seed: int = 0) -> Comparison:
    """Compare per-sample correctness ``[seeds, items]`` of a method with a reference's (points)."""
    correct, reference = np.asarray(correct, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    low, high = paired_bootstrap(correct, reference, seed=seed)
    difference, half = mean_interval(list(100 * (correct.mean(axis=1) - reference.mean(axis=1))))
    seeds = correct.shape[0]
    by_seeds = seeds >= 2 and (difference - half > 0 or difference + half < 0)
    by_items = low > 0 or high < 0
    same_side = (difference > 0) == (low > 0)
    return Comparison(difference, half, 100 * low, 100 * high, seeds, by_seeds and by_items and same_side)
