"""Tiny randomly initialised backbones of every family, with matching processors: for tests, the common method
suite and quick CLI runs (no weights are downloaded).

- ``"clip"`` / ``"vilt"``: the HF_NOTES test configs (:mod:`hf_missing.data.synthetic`);
- ``"fused"``: the embedded default's architecture with a strided convolution in place of EfficientNet;
- ``"fused_audio"``: the same with a third modality, ``audio``, given as frame sequences
  (``audio_features [B, T, AUDIO_WIDTH]`` + ``audio_mask``), as MulT's precomputed audio features;
- ``"sequence"``: the sequence backbone over three feature modalities, text, audio and vision frames
  (``SEQUENCE_WIDTHS``; data: :func:`hf_missing.data.synthetic.sequence_dataset`); it needs no processor.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from transformers import AutoModel, PreTrainedModel

from ..data import synthetic
from ..data.synthetic import AUDIO_WIDTH, IMAGE_SIZE, SEQUENCE_WIDTHS, tiny_tokenizer
from .fused import FusedConfig, image_processor
from .sequence import SequenceConfig

TINY_BACKBONES = ("clip", "vilt", "fused", "fused_audio", "sequence")


def tiny_fused_config(feature_modalities: dict[str, int] | None = None) -> FusedConfig:
    tokenizer = tiny_tokenizer()
    return FusedConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, initializer_range=0.2),
        image_encoder="tiny_conv", image_size=IMAGE_SIZE, image_feature_dim=24, image_stride=10,
        cls_token_id=tokenizer.cls_token_id, feature_modalities=feature_modalities, max_feature_frames=16,
    )


def tiny_sequence_config() -> SequenceConfig:
    return SequenceConfig(feature_modalities=dict(SEQUENCE_WIDTHS), max_feature_frames=16, hidden_size=32,
                          num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, initializer_range=0.2)


def tiny_backbone(kind: str, seed: int = 0) -> PreTrainedModel:
    """A tiny random backbone of ``kind`` (:data:`TINY_BACKBONES`)."""
    if kind in ("clip", "vilt"):
        return synthetic.tiny_backbone(kind, seed)
    if kind not in TINY_BACKBONES:
        raise ValueError(f"No tiny backbone {kind!r}; use one of {list(TINY_BACKBONES)}.")
    torch.manual_seed(seed)
    if kind == "sequence":
        return AutoModel.from_config(tiny_sequence_config())
    return AutoModel.from_config(tiny_fused_config({"audio": AUDIO_WIDTH} if kind == "fused_audio" else None))


def tiny_dataset(kind: str, n_train: int = 256, n_test: int = 128, seed: int = 0) -> Any:
    """The synthetic ``DatasetDict`` whose columns :func:`tiny_backbone` ``kind`` reads: frame sequences for
    "sequence", text + image (+ audio for "fused_audio") otherwise."""
    if kind not in TINY_BACKBONES:
        raise ValueError(f"No tiny dataset for {kind!r}; use one of {list(TINY_BACKBONES)}.")
    if kind == "sequence":
        return synthetic.sequence_dataset(n_train, n_test, seed=seed)
    return synthetic.shapes_dataset(n_train, n_test, seed=seed, audio=kind == "fused_audio")


def tiny_processor(kind: str) -> Any:
    """The processor matching :func:`tiny_backbone` (``tokenizer`` + ``image_processor``)."""
    if kind in ("clip", "vilt"):
        return synthetic.tiny_processor(kind)
    if kind not in TINY_BACKBONES:
        raise ValueError(f"No tiny processor for {kind!r}; use one of {list(TINY_BACKBONES)}.")
    if kind == "sequence":
        return SimpleNamespace()  # every modality is a feature sequence: the collator needs no tokenizer
    return SimpleNamespace(tokenizer=tiny_tokenizer(), image_processor=image_processor(IMAGE_SIZE))
