"""Stage 1 of the sequence backbone: pretrain it on complete data with random modality dropping, then save it.

REP (and MPLMM before it) pretrain MulT on complete samples while dropping modalities at random, freeze it, and only
then tune prompts. :func:`pretrain_sequence_backbone` does the same for :class:`SequenceModel`: every parameter of
the backbone and a temporary linear head on the pooled output train with cross-entropy; each training sample, every
epoch, drops each modality with probability ``drop_rate`` (never all of them), the dropped one replaced by the
placeholder every method later sees (one all-zero frame, through :class:`~hf_missing.MissingModalityCollator`).
The result is a normal checkpoint folder (``config.json`` + ``model.safetensors``) with a ``stage1.json`` report,
written atomically; the head is not saved.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from datasets import ClassLabel
from torch import nn

from ...atomic import atomic_folder
from ...data.collator import MissingModalityCollator
from ...missingness import MISSING_TYPE_COLUMN, ModalityPattern
from .configuration import SequenceConfig
from .interface import SequenceBackbone
from .modeling import SequenceModel

STAGE1_FILE = "stage1.json"
SAVED_FILES = re.compile(r"(config\.json|stage1\.json|model(-\d+-of-\d+)?\.safetensors(\.index\.json)?)")


@dataclass
class SequencePretrainSettings:
    """Hyper-parameters of stage 1.

    Attributes:
        drop_rate: probability that a training sample drops each modality in an epoch (redrawn when it would drop
            them all); 0 trains on complete samples only.
        label_column: the single-label class column.
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    drop_rate: float = 0.3
    seed: int = 0
    label_column: str = "label"

    def __post_init__(self) -> None:
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"drop_rate must lie in [0, 1) (the chance of dropping each modality), got "
                             f"{self.drop_rate!r}.")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be positive, got {self.epochs} and {self.batch_size}.")


def pretrain_sequence_backbone(dataset: Mapping[str, Any], backbone: SequenceConfig | SequenceModel,
                               output_dir: str | os.PathLike,
                               settings: SequencePretrainSettings | None = None) -> Path:
    """Train ``backbone`` (a config: a fresh model, seeded; a model: trained in place) on ``dataset["train"]`` with
    random modality dropping and save it to ``output_dir``: ``config.json``, ``model.safetensors`` and
    ``stage1.json`` (settings, seconds, training loss per epoch, validation accuracy on complete samples when
    ``dataset`` has a "validation" split). The folder appears whole or not at all; load it with
    ``AutoModel.from_pretrained(output_dir)`` (or with ``adapter=...`` to tune a method on the frozen backbone).

    Args:
        dataset: splits of complete samples: one column per modality of ``[T, F]`` frames (named as the modality)
            and a single-label class column.
        backbone: a :class:`SequenceConfig` or :class:`SequenceModel`.
        output_dir: the checkpoint folder to write.
        settings: stage-1 hyper-parameters.
    """
    settings = settings or SequencePretrainSettings()
    model, report = train_sequence_backbone(dataset, backbone, settings)
    with atomic_folder(output_dir, replaces=lambda name: SAVED_FILES.fullmatch(name) is not None) as staging:
        model.save_pretrained(staging)
        (staging / STAGE1_FILE).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return Path(output_dir)


def train_sequence_backbone(dataset: Mapping[str, Any], backbone: SequenceConfig | SequenceModel,
                            settings: SequencePretrainSettings) -> tuple[SequenceModel, dict[str, Any]]:
    """Stage 1 in memory: the trained model (frozen, in eval mode) and its report."""
    if not isinstance(dataset, Mapping) or "train" not in dataset:
        raise ValueError(f"Stage 1 takes splits by name (a DatasetDict or dict with 'train', optionally "
                         f"'validation'), got {type(dataset).__name__}; pass {{'train': your_dataset}}.")
    start = time.perf_counter()
    torch.manual_seed(settings.seed)
    model = backbone if isinstance(backbone, SequenceModel) else SequenceModel(backbone)
    interface = SequenceBackbone(model)
    train = dataset["train"]
    num_labels = _num_labels(train, settings.label_column)
    collator = MissingModalityCollator(SimpleNamespace(), modalities=interface.inputs,
                                       label_column=settings.label_column)
    _check_complete(train, collator)
    head = nn.Linear(interface.pooled_size, num_labels)
    optimizer = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    model.requires_grad_(True)
    losses = [_train_epoch(model, head, optimizer, train, collator, settings, epoch) for epoch in
              range(settings.epochs)]
    model.requires_grad_(False).eval()
    report = {"seconds": round(time.perf_counter() - start, 1), "train_size": len(train),
              "modalities": list(interface.modalities), "settings": asdict(settings),
              "train_loss_per_epoch": losses}
    if "validation" in dataset:
        report["validation_accuracy"] = _accuracy(model, head, dataset["validation"], collator, settings.batch_size)
    return model, report


def _num_labels(split: Any, column: str) -> int:
    feature = split.features.get(column)
    if isinstance(feature, ClassLabel):
        return feature.num_classes
    if feature is None or not str(getattr(feature, "dtype", "")).startswith("int"):
        raise ValueError(f"Stage 1 trains a temporary single-label head on the {column!r} column, but it is "
                         f"{feature}; pass a dataset with integer class labels (label_column= names another "
                         "column).")
    return int(max(split[column])) + 1


def _check_complete(split: Any, collator: MissingModalityCollator) -> None:
    """Stage 1 trains on complete samples: every modality column present and non-empty in every row."""
    for spec in collator.inputs:
        column = collator.column(spec.name)
        if column not in split.column_names:
            raise ValueError(f"Stage 1 needs a {column!r} column of [T, {spec.width}] frames for the {spec.name} "
                             f"modality; the data has {split.column_names}.")
        absent = [i for i, value in enumerate(split[column]) if spec.is_absent(value)]
        if absent:
            raise ValueError(f"Stage 1 trains on complete samples, but rows {absent[:10]} have no {spec.name}; drop "
                             f"them first, e.g. dataset.filter(lambda s: len(s[{column!r}] or []) > 0).")


def _dropped_codes(indices: list[int], patterns: ModalityPattern, drop_rate: float, seed: int,
                   epoch: int) -> list[int]:
    """Each sample's missing-type code for this epoch: each modality dropped with ``drop_rate``, never all (a draw
    that drops all keeps one at random). Seeded by (seed, epoch, sample index): the same whatever the batching."""
    codes = []
    for index in indices:
        rng = np.random.default_rng([seed, epoch, index])
        dropped = rng.random(len(patterns.modalities)) < drop_rate
        if dropped.all():
            dropped[rng.integers(len(dropped))] = False
        codes.append(patterns.code(tuple(m for m, d in zip(patterns.modalities, dropped, strict=True) if d)))
    return codes


def _batches(split: Any, order: list[int], batch_size: int) -> Any:
    for begin in range(0, len(order), batch_size):
        indices = order[begin:begin + batch_size]
        rows = split[indices]
        yield indices, [dict(zip(rows, values, strict=True)) for values in zip(*rows.values(), strict=True)]


def _forward(model: SequenceModel, head: nn.Linear, collator: MissingModalityCollator,
             samples: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    batch = collator(samples)
    names = {n for spec in collator.inputs for n in spec.input_names}
    return head(model(**{k: v for k, v in batch.items() if k in names}).pooler_output), batch["labels"]


def _train_epoch(model: SequenceModel, head: nn.Linear, optimizer: torch.optim.Optimizer, split: Any,
                 collator: MissingModalityCollator, settings: SequencePretrainSettings, epoch: int) -> float:
    """One pass over ``split`` in a seeded order; returns the mean training loss."""
    model.train()
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(settings.seed + epoch)).tolist()
    total = 0.0
    for indices, samples in _batches(split, order, settings.batch_size):
        codes = _dropped_codes(indices, collator.patterns, settings.drop_rate, settings.seed, epoch)
        for sample, code in zip(samples, codes, strict=True):
            sample[MISSING_TYPE_COLUMN] = code
        logits, labels = _forward(model, head, collator, samples)
        loss = nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(indices)
    return round(total / len(split), 6)


def _accuracy(model: SequenceModel, head: nn.Linear, split: Any, collator: MissingModalityCollator,
              batch_size: int) -> float:
    """Accuracy of the temporary head on complete samples of ``split``."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for _, samples in _batches(split, list(range(len(split))), batch_size):
            for sample in samples:
                sample[MISSING_TYPE_COLUMN] = 0
            logits, labels = _forward(model, head, collator, samples)
            correct += int((logits.argmax(-1) == labels).sum())
    return round(correct / len(split), 4)
