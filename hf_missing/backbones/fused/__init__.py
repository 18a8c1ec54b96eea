"""The embedded default backbone: a single-stream (VisualBERT-style) transformer built from packaged encoders.

- :mod:`.configuration`: :class:`FusedConfig` (optional feature modalities such as audio frames);
- :mod:`.modeling`: the frozen EfficientNet-Lite0 image encoder with its feature cache, the joint embeddings and
  :class:`FusedModel` (MiniLM's 6 BERT layers over text, image and feature tokens);
- :mod:`.processing`: :class:`FusedProcessor` (MiniLM's tokenizer + a PIL image processor);
- :mod:`.interface`: :class:`FusedBackbone`, the backbone interface methods use;
- :mod:`.alignment`: stage 1 (:func:`build_fused_backbone`), which aligns the image tokens with MiniLM once.
"""

from transformers import AutoConfig, AutoModel

from .alignment import Stage1Settings, align_fused_backbone, build_fused_backbone, fused_checkpoint_dir
from .configuration import DEFAULT_IMAGE_SIZE, EFFICIENTNET, MODEL_TYPE, TINY_CONV, FusedConfig
from .interface import FusedBackbone
from .modeling import FEATURES_FILE, FeatureCache, FusedModel, minilm_path
from .processing import FusedProcessor, image_processor

AutoConfig.register(MODEL_TYPE, FusedConfig)
AutoModel.register(FusedConfig, FusedModel)

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "EFFICIENTNET",
    "FEATURES_FILE",
    "MODEL_TYPE",
    "TINY_CONV",
    "FeatureCache",
    "FusedBackbone",
    "FusedConfig",
    "FusedModel",
    "FusedProcessor",
    "Stage1Settings",
    "align_fused_backbone",
    "build_fused_backbone",
    "fused_checkpoint_dir",
    "image_processor",
    "minilm_path",
]
