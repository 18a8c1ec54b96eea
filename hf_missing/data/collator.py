"""``MissingModalityCollator``: raw samples -> model inputs with placeholders for absent modalities."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ..context import POLICIES
from ..missingness import DEFAULT_MODALITIES, MISSING_TYPE_COLUMN, ModalityPattern
from .modalities import ModalityInputs, TextInputs, resolve_inputs
from .simulate import SAMPLE_INDEX_COLUMN


class MissingModalityCollator:
    """Builds a batch for :class:`~hf_missing.MissingModalityForClassification` from raw samples.

    Works as ``Trainer(data_collator=...)`` on datasets that keep one raw column per modality (PIL ``image``,
    ``text`` strings, ``[T, F]`` feature sequences), lazily: no preprocessing is stored. Each sample's
    ``missing_type`` (an integer code or a pattern name such as ``"missing_text"``) decides which modalities are
    dropped; a sample whose value is absent (``None``, blank text, an image with no pixels: the modality's
    ``is_absent``) must be marked missing, as :func:`~hf_missing.simulate_missing` marks it. Labels (class indices,
    or multi-hot lists) are emitted when every sample of the batch has one; a batch where only some do raises.

    Args:
        processor: the backbone's processor (``tokenizer`` and ``image_processor`` for text and images).
        policy: "dummy" (the papers' placeholders: empty text, all-ones pixels after normalisation, zero
            features), "mask" (placeholders, and the model removes the missing tokens from attention) or "zero"
            (placeholders, and the model zeroes the missing modality's features). Emitted as ``missing_policy``
            so the model applies the same policy.
        modalities: the model's modalities in order: names (``"text"``, ``"image"``) or declarations
            (:mod:`hf_missing.data.modalities`); pass ``model.interface.inputs`` for any other backbone.
        columns: the dataset column of each modality (default: its name); ``text_column`` and ``image_column``
            set the two usual ones.
        max_length: truncation length of the text.
        redraw_rate: MPLMM's protocol: redraw each training sample's pattern every epoch, incomplete
            with this probability (uniform over patterns); needs the ``sample_index`` column that
            ``simulate_missing(protocol="per_epoch")`` adds. Call :meth:`set_epoch` each epoch
            (``trainer_callbacks.RedrawMissingCallback`` does).
        regression: labels are real targets (a number, or a list of numbers, per sample) emitted as float32, for a
            model with ``problem_type="regression"`` (MOSI / MOSEI / CH-SIMS sentiment); otherwise they are class
            indices or multi-hot rows.
    """

    def __init__(self, processor: Any, policy: str = "dummy", *, text_column: str = "text",
                 image_column: str = "image", label_column: str = "label", max_length: int | None = None,
                 modalities: Sequence[str | ModalityInputs] = DEFAULT_MODALITIES,
                 columns: dict[str, str] | None = None, redraw_rate: float | None = None, seed: int = 0,
                 regression: bool = False) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {list(POLICIES)}, got {policy!r}.")
        if redraw_rate is not None and not 0.0 <= redraw_rate <= 1.0:
            raise ValueError(f"redraw_rate must lie in [0, 1], got {redraw_rate}.")
        self.processor, self.policy, self.label_column = processor, policy, label_column
        self.inputs = tuple(replace(m, max_length=max_length) if isinstance(m, TextInputs) and max_length else m
                            for m in resolve_inputs(modalities))
        self.patterns = ModalityPattern(tuple(m.name for m in self.inputs))
        unknown = sorted(set(columns or {}) - set(self.patterns.modalities))
        if unknown:
            raise ValueError(f"columns names {unknown}, which are not modalities {list(self.patterns.modalities)}.")
        self.columns = {"text": text_column, "image": image_column, **(columns or {})}
        self.redraw_rate, self.seed, self.epoch = redraw_rate, seed, 0
        self.regression = regression

    def column(self, modality: str) -> str:
        """The dataset column that holds ``modality``."""
        return self.columns.get(modality, modality)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if not features:
            raise ValueError("Cannot collate an empty batch; the data loader handed over no samples.")
        codes = self._codes(features)
        present = self.patterns.present(codes)
        batch: dict[str, Any] = {}
        for k, modality in enumerate(self.inputs):
            values = [self._value(modality, f, i) if present[i, k] else None for i, f in enumerate(features)]
            batch.update(modality.collate(values, self.processor))
        batch[MISSING_TYPE_COLUMN] = codes
        batch["missing_policy"] = self.policy
        labels = self._labels(features)
        if labels is not None:
            batch["labels"] = labels
        return batch

    def _labels(self, features: list[dict[str, Any]]) -> torch.Tensor | None:
        """Labels of every sample, or None when no sample has one (the column is absent or all None)."""
        unlabelled = [i for i, f in enumerate(features) if f.get(self.label_column) is None]
        if len(unlabelled) == len(features):
            return None
        if unlabelled:
            raise ValueError(
                f"Samples {unlabelled[:10]} of this batch have no {self.label_column!r} (absent or None) while the "
                f"others have one; a batch is labelled for every sample or for none. Drop or fill the unlabelled "
                f"samples, e.g. dataset.filter(lambda s: s[{self.label_column!r}] is not None)."
            )
        values = [f[self.label_column] for f in features]
        return _regression_targets(values, self.label_column) if self.regression else _labels(values)

    def _codes(self, features: list[dict[str, Any]]) -> torch.Tensor:
        if self.redraw_rate is not None:
            return torch.tensor([int(self.patterns.codes(f.get(MISSING_TYPE_COLUMN, 0))[0]) or self._redraw(f)
                                 for f in features])
        if MISSING_TYPE_COLUMN not in features[0]:
            raise ValueError(
                f"Samples have no {MISSING_TYPE_COLUMN!r} column; run hf_missing.simulate_missing on the dataset "
                "(rate=0.0 for complete data) or pass redraw_rate= to redraw patterns per epoch."
            )
        return self.patterns.codes([f[MISSING_TYPE_COLUMN] for f in features])

    def _redraw(self, sample: dict[str, Any]) -> int:
        if SAMPLE_INDEX_COLUMN not in sample:
            raise ValueError(f"redraw_rate needs the {SAMPLE_INDEX_COLUMN!r} column; run "
                             "simulate_missing(..., protocol='per_epoch') first.")
        rng = np.random.default_rng([self.seed, self.epoch, int(sample[SAMPLE_INDEX_COLUMN])])
        if rng.random() >= self.redraw_rate:
            return 0
        return int(rng.integers(1, self.patterns.num_patterns))

    def _value(self, modality: ModalityInputs, sample: dict[str, Any], i: int) -> Any:
        column = self.column(modality.name)
        value = sample.get(column)
        if modality.is_absent(value):
            missing = self.patterns.names[self.patterns.code((modality.name,))]
            raise ValueError(f"Sample {i} has no {column!r} (absent, None or empty) but its missing_type says the "
                             f"{modality.name} is present; run hf_missing.simulate_missing on the dataset (it marks "
                             f"naturally missing values itself, with columns= mapping modalities to columns), mark "
                             f"the sample {missing}, or supply the {modality.name}.")
        return modality.check_value(value, i, column)


def _labels(values: list[Any]) -> torch.Tensor:
    """Multi-hot rows -> float ``[B, C]``; class indices (ints or integral floats) -> long ``[B]``."""
    if isinstance(values[0], list | tuple | np.ndarray):
        try:
            return torch.tensor(np.asarray(values, dtype=np.float32))
        except (TypeError, ValueError) as err:
            raise ValueError(f"Multi-label targets must be multi-hot rows of equal length (num_labels numbers) for "
                             f"every sample; got {[v if np.ndim(v) == 0 else len(v) for v in values][:10]} "
                             f"(row lengths or values): {err}") from err
    return torch.tensor([_class_index(value, i) for i, value in enumerate(values)], dtype=torch.long)


def _regression_targets(values: list[Any], column: str) -> torch.Tensor:
    """Real targets -> finite float32 ``[B]`` (or ``[B, C]``)."""
    try:
        targets = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"Regression targets in {column!r} must be numbers (or equal-length lists of numbers): "
                         f"{err}") from err
    bad = ~np.isfinite(targets)
    if bad.any():
        rows = sorted(set(np.argwhere(bad)[:, 0].tolist()))
        raise ValueError(f"Regression targets of samples {rows[:10]} are NaN or infinite; clean or drop them.")
    return torch.from_numpy(targets)


def _class_index(value: Any, sample: int) -> int:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, numbers.Integral) or (isinstance(value, numbers.Real) and float(value).is_integer()):
        return int(value)
    hint = ("encode class names as indices with dataset.class_encode_column(...)" if isinstance(value, str) else
            "single-label targets are class indices (a float such as 1.7 would be truncated to the wrong class); "
            "give multi-label targets as a multi-hot list per sample, or pass regression=True for real targets")
    raise ValueError(f"The label of sample {sample} is {value!r}; {hint}.")
