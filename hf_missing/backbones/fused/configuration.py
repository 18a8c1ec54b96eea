"""Configuration of the fused backbone (:mod:`hf_missing.backbones.fused`)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from transformers import BertConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

from ..frames import check_feature_modalities, check_frame_limit, ordered_modalities

MODEL_TYPE = "hf_missing_fused"
EFFICIENTNET = "efficientnet-lite0"
TINY_CONV = "tiny_conv"
IMAGE_ENCODERS = (EFFICIENTNET, TINY_CONV)
DEFAULT_IMAGE_SIZE = 96
CHECKPOINT_VERSION = 2
RESERVED_MODALITIES = ("text", "image")


class FusedConfig(PretrainedConfig):
    """Configuration of :class:`~hf_missing.backbones.fused.FusedModel`.

    Args:
        text_config: the BERT config of the text embeddings and the joint encoder (MiniLM's).
        image_encoder: "efficientnet-lite0" (the real encoder) or "tiny_conv" (a random strided
            convolution, for tests).
        image_size: side of the square input image, in pixels.
        image_feature_dim: channels of the image encoder's feature map (1280 for EfficientNet-Lite0).
        image_stride: total stride of the image encoder (32 for EfficientNet); the grid is
            ``ceil(image_size / image_stride)`` cells per side.
        cls_token_id: the tokenizer's [CLS] id (101 in MiniLM's vocabulary).
        feature_modalities: further modalities given as precomputed frame sequences, name -> frame width (e.g.
            ``{"audio": 74}`` for COVAREP features); each frame becomes one token of the joint stream after the
            image tokens (projection + type + position embedding, then the embedding LayerNorm).
        modality_order: the order of ``feature_modalities`` (default: the dict's own), stored because
            ``config.json`` is written with sorted keys; a loaded config restores it.
        max_feature_frames: how many frames a feature sequence may hold (its position embeddings).
    """

    model_type = MODEL_TYPE
    sub_configs_defaults: ClassVar[dict] = {"text_config": SubConfigSpec(config_class=BertConfig)}

    text_config: dict | PretrainedConfig | None = None
    image_encoder: str = EFFICIENTNET
    image_size: int = DEFAULT_IMAGE_SIZE
    image_feature_dim: int = 1280
    image_stride: int = 32
    cls_token_id: int = 101
    feature_modalities: dict | None = None
    modality_order: list | None = None
    max_feature_frames: int = 64

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.image_encoder not in IMAGE_ENCODERS:
            raise ValueError(f"image_encoder must be one of {list(IMAGE_ENCODERS)}, got {self.image_encoder!r}.")
        self.feature_modalities = check_feature_modalities(self.feature_modalities, "feature_modalities",
                                                           RESERVED_MODALITIES)
        self.feature_modalities = ordered_modalities(self.feature_modalities, self.modality_order)
        self.modality_order = list(self.feature_modalities)
        check_frame_limit(self.max_feature_frames, "max_feature_frames")

    @property
    def grid_size(self) -> int:
        """Cells per side of the image feature map (= image tokens per side)."""
        return math.ceil(self.image_size / self.image_stride)

    @property
    def num_image_tokens(self) -> int:
        return self.grid_size**2
