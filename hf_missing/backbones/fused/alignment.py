"""Stage 1 of the fused backbone: align the image tokens with MiniLM on complete data, once, and cache the result.

:func:`build_fused_backbone` trains only the image projection, the image type and position embeddings (and a
temporary head) on complete emoji training data and saves a regular HF checkpoint (``config.json`` +
``model.safetensors`` + tokenizer + image processor) in the cache.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...cache import default_cache_dir
from ...data.emoji import load_emoji_dataset
from .configuration import CHECKPOINT_VERSION, DEFAULT_IMAGE_SIZE
from .modeling import FusedModel
from .processing import FusedProcessor

STAGE1_FILE = "stage1.json"


@dataclass
class Stage1Settings:
    """Hyper-parameters of stage-1 alignment (projection, image type/position embeddings, temporary head)."""

    image_size: int = DEFAULT_IMAGE_SIZE
    epochs: int = 3
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    seed: int = 0


def fused_checkpoint_dir(cache_dir: str | os.PathLike | None = None,
                         image_size: int = DEFAULT_IMAGE_SIZE) -> Path:
    """Where :func:`build_fused_backbone` keeps its checkpoint (``$HF_MISSING_CACHE`` or ~/.cache/hf_missing)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"fused-minilm-effnetlite0-{image_size}px-v{CHECKPOINT_VERSION}"


def build_fused_backbone(cache_dir: str | os.PathLike | None = None, dataset: Any = None,
                         settings: Stage1Settings | None = None) -> Path:
    """The stage-1 fused checkpoint folder, trained and saved on first use.

    Stage 1 freezes MiniLM and EfficientNet-Lite0 and trains the image projection, the image type and
    position embeddings and a temporary linear head on the complete emoji training split (category
    labels), then saves ``config.json`` + ``model.safetensors``, the tokenizer, the image processor and
    ``stage1.json`` (time, validation accuracy). Load the result with ``AutoModel.from_pretrained(path)``
    and the processor with ``FusedProcessor.from_pretrained(path)``.

    Args:
        cache_dir: cache root (default ``$HF_MISSING_CACHE`` or ``~/.cache/hf_missing``).
        dataset: an emoji-like ``DatasetDict`` with "train" and "validation" splits (``image``, ``text``,
            ``label``); defaults to :func:`hf_missing.data.emoji.load_emoji_dataset`.
        settings: stage-1 hyper-parameters.
    """
    settings = settings or Stage1Settings()
    folder = fused_checkpoint_dir(cache_dir, settings.image_size)
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    if dataset is None:
        dataset = load_emoji_dataset(None if cache_dir is None else Path(cache_dir) / "emoji")
    model, processor, report = align_fused_backbone(dataset, settings)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    (tmp / STAGE1_FILE).write_text(json.dumps(report, indent=2), encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def align_fused_backbone(dataset: Any, settings: Stage1Settings,
                         model: FusedModel | None = None,
                         processor: FusedProcessor | None = None) -> tuple[FusedModel, FusedProcessor, dict]:
    """Run stage 1 in memory; returns the aligned model, its processor and a report (seconds, accuracy)."""
    start = time.perf_counter()
    torch.manual_seed(settings.seed)
    model = model or FusedModel.from_packaged_encoders(settings.image_size)
    processor = processor or FusedProcessor.from_packaged(settings.image_size)
    train = _encoded_split(model, processor, dataset["train"], settings.batch_size)
    val = _encoded_split(model, processor, dataset["validation"], settings.batch_size)
    model.embeddings.image_feature_mean.copy_(train["image_features"].mean(dim=(0, 1)))
    num_labels = int(train["labels"].max()) + 1
    head = nn.Linear(2 * model.config.text_config.hidden_size, num_labels)
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
    model.requires_grad_(False)
    embeddings = model.embeddings
    trainable = [*embeddings.image_projection.parameters(), embeddings.image_type_embedding,
                 *embeddings.image_position_embeddings.parameters()]
    for parameter in trainable:
        parameter.requires_grad_(True)
    return trainable


def _encoded_split(model: FusedModel, processor: FusedProcessor, split: Any, batch_size: int) -> dict:
    """Tokenised texts, frozen image features ``[n, N, F]`` and labels of one split (computed once)."""
    texts = processor.tokenizer(list(split["text"]), padding=True, truncation=True, return_tensors="pt")
    model.eval()
    features = []
    for begin in range(0, len(split), batch_size):
        images = split[begin:begin + batch_size]["image"]
        pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            features.append(model.embeddings._encode_images(pixels))
    return {"input_ids": texts["input_ids"], "attention_mask": texts["attention_mask"],
            "image_features": torch.cat(features), "labels": torch.tensor(split["label"])}


def _batches(data: dict, batch_size: int, order: torch.Tensor) -> Any:
    for begin in range(0, len(order), batch_size):
        idx = order[begin:begin + batch_size]
        mask = data["attention_mask"][idx]
        length = int(mask.sum(1).max())
        yield (data["input_ids"][idx, :length], mask[:, :length], data["image_features"][idx], data["labels"][idx])


def _train_epoch(model: FusedModel, head: nn.Linear, optimizer: torch.optim.Optimizer, data: dict,
                 settings: Stage1Settings) -> None:
    model.train()
    order = torch.randperm(len(data["labels"]))
    for input_ids, mask, features, labels in _batches(data, settings.batch_size, order):
        pooled = model(input_ids, mask, image_features=features).pooler_output
        loss = nn.functional.cross_entropy(head(pooled), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _accuracy(model: FusedModel, head: nn.Linear, data: dict, batch_size: int) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for input_ids, mask, features, labels in _batches(data, batch_size, torch.arange(len(data["labels"]))):
            logits = head(model(input_ids, mask, image_features=features).pooler_output)
            correct += int((logits.argmax(-1) == labels).sum())
    return round(correct / len(data["labels"]), 4)
