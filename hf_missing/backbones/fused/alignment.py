"""Stage 1 of the fused backbone: align the image tokens with MiniLM on complete data, once, and cache the result.

:func:`build_fused_backbone` trains only the image projection, the image type and position embeddings (and a
temporary head) on complete labelled training data (the emoji set by default) and saves a regular HF checkpoint
(``config.json`` + ``model.safetensors`` + tokenizer + image processor) in the cache. Stage 1 uses the data's labels,
so a checkpoint belongs to the data it was aligned on: its folder name ends in a key of that data (the training and
validation splits' fingerprints and sizes, the label names) and of the stage-1 settings, and ``stage1.json`` records
them. Another dataset gets its own alignment (:func:`alignment_splits` picks its complete rows), never the emoji one.

With ``feature_modalities`` (e.g. ``{"audio": 96}`` for the spoken emoji set) the checkpoint carries a frame embedding
per feature modality and stage 1 trains it too (projection, type and position embeddings) on complete samples; the
feature modalities are part of the key, so a three-modality checkpoint never shares a folder with a text + image one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import ClassLabel, Value
from torch import nn

from ...cache import default_cache_dir
from ...data.emoji import load_emoji_dataset
from ...data.modalities import absence_test
from ...data.simulate import natural_table
from ...missingness import DEFAULT_MODALITIES, ModalityPattern
from .configuration import CHECKPOINT_VERSION, DEFAULT_IMAGE_SIZE
from .modeling import FusedModel
from .processing import FusedProcessor

STAGE1_FILE = "stage1.json"
ALIGNMENT_SPLITS = ("train", "validation")
VALIDATION_SHARE = 0.1  # of the complete training rows, when the data has no validation split


@dataclass
class Stage1Settings:
    """Hyper-parameters of stage-1 alignment (projection, image type/position embeddings, temporary head)."""

    image_size: int = DEFAULT_IMAGE_SIZE
    epochs: int = 3
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    seed: int = 0


def alignment_record(dataset: Mapping[str, Any], settings: Stage1Settings,
                     feature_modalities: Mapping[str, int] | None = None) -> dict[str, Any]:
    """What a stage-1 checkpoint is aligned on: each split's ``datasets`` fingerprint and size, the label names, the
    stage-1 settings and, when there are any, the feature modalities (name -> frame width, in order; a text + image
    record has no such entry, so its key is the one it always had). (An in-memory dataset built without a fixed
    fingerprint gets a fresh one per process, so it is aligned again rather than matched to another's checkpoint.)"""
    splits = {name: {"fingerprint": getattr(dataset[name], "_fingerprint", None), "rows": len(dataset[name])}
              for name in ALIGNMENT_SPLITS}
    label = getattr(dataset["train"], "features", {}).get("label")
    record = {"splits": splits, "labels": list(getattr(label, "names", []) or []), "settings": asdict(settings)}
    if feature_modalities:
        record["feature_modalities"] = [[name, int(width)] for name, width in feature_modalities.items()]
    return record


def alignment_key(record: Mapping[str, Any]) -> str:
    """A short hash of :func:`alignment_record`: the suffix of the checkpoint's folder name."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:12]


def fused_checkpoint_dir(cache_dir: str | os.PathLike | None = None, image_size: int = DEFAULT_IMAGE_SIZE,
                         key: str = "") -> Path:
    """Where :func:`build_fused_backbone` keeps the checkpoint aligned on the data of ``key``
    (:func:`alignment_key`) under ``$HF_MISSING_CACHE`` or ~/.cache/hf_missing."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"fused-minilm-effnetlite0-{image_size}px-v{CHECKPOINT_VERSION}-aligned-{key}"


def alignment_splits(data: Mapping[str, Any], seed: int = 0) -> dict[str, Any]:
    """The ``train`` / ``validation`` splits stage 1 can use from a user's ``DatasetDict``: its rows with both text
    and image (stage 1 aligns complete pairs), ``validation`` carved from them (``VALIDATION_SHARE``) when the data
    has none. Stage 1 trains a temporary single-label head, so multi-label data raises."""
    label = data["train"].features.get("label")
    if not (isinstance(label, ClassLabel) or (isinstance(label, Value) and label.dtype.startswith("int"))):
        raise ValueError(f"Stage-1 alignment of the fused backbone trains a temporary single-label head, but the "
                         f"'label' column is {label}; for multi-label data pass --backbone <an aligned fused "
                         "checkpoint folder> or a CLIP / ViLT checkpoint.")
    complete = {name: _complete_rows(split, name) for name, split in data.items() if name in ("train", "validation")}
    if "validation" not in complete:
        carved = complete["train"].train_test_split(test_size=VALIDATION_SHARE, seed=seed)
        complete = {"train": carved["train"], "validation": carved["test"]}
    return complete


def _complete_rows(split: Any, name: str, modalities: tuple[str, ...] = DEFAULT_MODALITIES) -> Any:
    patterns = ModalityPattern(modalities)
    codes = natural_table(split, patterns, {m: absence_test(m) for m in modalities}, {m: m for m in modalities}, name)
    rows = (codes == 0).nonzero()[0]
    return split if len(rows) == len(split) else split.select(rows)


def build_fused_backbone(cache_dir: str | os.PathLike | None = None, dataset: Any = None,
                         settings: Stage1Settings | None = None,
                         feature_modalities: Mapping[str, int] | None = None) -> Path:
    """The stage-1 fused checkpoint folder, trained and saved on first use.

    Stage 1 freezes MiniLM and EfficientNet-Lite0 and trains the image projection, the image type and
    position embeddings and a temporary linear head on the complete training split (the emoji categories by
    default), then saves ``config.json`` + ``model.safetensors``, the tokenizer, the image processor and
    ``stage1.json`` (time, validation accuracy, what it was aligned on) in a folder keyed by the data
    (:func:`fused_checkpoint_dir`): another dataset is aligned anew, never served the emoji checkpoint. Load the
    result with ``AutoModel.from_pretrained(path)`` and the processor with ``FusedProcessor.from_pretrained(path)``.

    Args:
        cache_dir: cache root (default ``$HF_MISSING_CACHE`` or ``~/.cache/hf_missing``).
        dataset: an emoji-like ``DatasetDict`` with "train" and "validation" splits of complete samples (``image``,
            ``text``, single-label ``label``; :func:`alignment_splits` makes them from a user's data); defaults to
            :func:`hf_missing.data.emoji.load_emoji_dataset`.
        settings: stage-1 hyper-parameters.
        feature_modalities: further modalities as frame sequences, name -> frame width (``{"audio": 96}`` for
            :func:`hf_missing.data.emoji_speech.load_emoji_speech_dataset`); each is a column of ``[T, width]`` frames
            in ``dataset``, and stage 1 trains its frame embedding as well.
    """
    settings = settings or Stage1Settings()
    if dataset is None:
        dataset = load_emoji_dataset(None if cache_dir is None else Path(cache_dir) / "emoji")
    record = alignment_record(dataset, settings, feature_modalities)
    folder = fused_checkpoint_dir(cache_dir, settings.image_size, alignment_key(record))
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    model, processor, report = align_fused_backbone(dataset, settings, feature_modalities=feature_modalities)
    report["aligned_on"] = record
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    (tmp / STAGE1_FILE).write_text(json.dumps(report, indent=2), encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def align_fused_backbone(dataset: Any, settings: Stage1Settings, model: FusedModel | None = None,
                         processor: FusedProcessor | None = None,
                         feature_modalities: Mapping[str, int] | None = None
                         ) -> tuple[FusedModel, FusedProcessor, dict]:
    """Run stage 1 in memory; returns the aligned model, its processor and a report (seconds, accuracy).
    ``feature_modalities`` (name -> frame width) gives the new model a frame embedding per further modality, read
    from the column of that name and trained with the image tokens (ignored when ``model`` is given: its own are)."""
    start = time.perf_counter()
    torch.manual_seed(settings.seed)
    model = model or FusedModel.from_packaged_encoders(settings.image_size, feature_modalities)
    processor = processor or FusedProcessor.from_packaged(settings.image_size)
    frames = tuple(model.config.feature_modalities)
    train = _encoded_split(model, processor, dataset["train"], settings.batch_size, frames)
    val = _encoded_split(model, processor, dataset["validation"], settings.batch_size, frames)
    model.embeddings.image_feature_mean.copy_(train["image_features"].mean(dim=(0, 1)))
    num_labels = int(train["labels"].max()) + 1
    head = nn.Linear((2 + len(frames)) * model.config.text_config.hidden_size, num_labels)
    trainable = _stage1_parameters(model)
    optimizer = torch.optim.AdamW([*trainable, *head.parameters()], lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    history = []
    for _ in range(settings.epochs):
        _train_epoch(model, head, optimizer, train, settings)
        history.append(_accuracy(model, head, val, settings.batch_size))
    model.requires_grad_(False).eval()
    report = {"seconds": round(time.perf_counter() - start, 1), "image_size": settings.image_size,
              "epochs": settings.epochs, "train_size": len(train["labels"]),
              "validation_accuracy": history[-1], "validation_accuracy_per_epoch": history}
    return model, processor, report


def _stage1_parameters(model: FusedModel) -> list[nn.Parameter]:
    """The image projection, type and position embeddings, and every feature modality's frame embedding."""
    model.requires_grad_(False)
    embeddings = model.embeddings
    trainable = [*embeddings.image_projection.parameters(), embeddings.image_type_embedding,
                 *embeddings.image_position_embeddings.parameters(), *embeddings.frames.parameters()]
    for parameter in trainable:
        parameter.requires_grad_(True)
    return trainable


def _encoded_split(model: FusedModel, processor: FusedProcessor, split: Any, batch_size: int,
                   frames: tuple[str, ...] = ()) -> dict:
    """Tokenised texts, frozen image features ``[n, N, F]``, labels and each feature modality's padded frames
    ``<name>_features [n, T, F]`` / ``<name>_mask [n, T]`` of one split (computed once)."""
    texts = processor.tokenizer(list(split["text"]), padding=True, truncation=True, return_tensors="pt")
    model.eval()
    features = []
    for begin in range(0, len(split), batch_size):
        images = split[begin:begin + batch_size]["image"]
        pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            features.append(model.embeddings._encode_images(pixels))
    encoded = {"input_ids": texts["input_ids"], "attention_mask": texts["attention_mask"],
               "image_features": torch.cat(features), "labels": torch.tensor(split["label"])}
    for name in frames:
        encoded[f"{name}_features"], encoded[f"{name}_mask"] = _padded_frames(split[name])
    return encoded


def _padded_frames(sequences: list) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n, T, F]`` frames zero-padded to the longest sequence, and the ``[n, T]`` mask of the real ones."""
    tensors = [torch.as_tensor(s, dtype=torch.float32) for s in sequences]
    values = nn.utils.rnn.pad_sequence(tensors, batch_first=True)
    mask = torch.zeros(values.shape[:2], dtype=torch.long)
    for row, tensor in enumerate(tensors):
        mask[row, :len(tensor)] = 1
    return values, mask


def _batches(data: dict, batch_size: int, order: torch.Tensor) -> Any:
    """Model inputs and labels per batch, text and frames cut to the batch's longest."""
    frames = [key.removesuffix("_mask") for key in data if key.endswith("_mask") and key != "attention_mask"]
    for begin in range(0, len(order), batch_size):
        idx = order[begin:begin + batch_size]
        mask = data["attention_mask"][idx]
        length = int(mask.sum(1).max())
        batch = {"input_ids": data["input_ids"][idx, :length], "attention_mask": mask[:, :length],
                 "image_features": data["image_features"][idx]}
        for name in frames:
            frame_mask = data[f"{name}_mask"][idx]
            steps = int(frame_mask.sum(1).max())
            batch[f"{name}_features"] = data[f"{name}_features"][idx, :steps]
            batch[f"{name}_mask"] = frame_mask[:, :steps]
        yield batch, data["labels"][idx]


def _train_epoch(model: FusedModel, head: nn.Linear, optimizer: torch.optim.Optimizer, data: dict,
                 settings: Stage1Settings) -> None:
    model.train()
    order = torch.randperm(len(data["labels"]))
    for inputs, labels in _batches(data, settings.batch_size, order):
        pooled = model(**inputs).pooler_output
        loss = nn.functional.cross_entropy(head(pooled), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _accuracy(model: FusedModel, head: nn.Linear, data: dict, batch_size: int) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for inputs, labels in _batches(data, batch_size, torch.arange(len(data["labels"]))):
            logits = head(model(**inputs).pooler_output)
            correct += int((logits.argmax(-1) == labels).sum())
    return round(correct / len(data["labels"]), 4)
