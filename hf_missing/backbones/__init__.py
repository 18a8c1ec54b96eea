"""Backbone interfaces: one file per model family."""

from .base import (
    BACKBONES,
    BackboneInterface,
    LockstepStream,
    Stream,
    backbone_interface_for,
    extend_attention_mask,
    insert_blocks,
    insert_tokens,
    register_backbone,
    remove_blocks,
    run_in_lockstep,
)
from .capabilities import ClassTokens, PretrainedTokens, capability
from .clip import ClipBackbone
from .fused import FusedBackbone, FusedConfig, FusedModel, FusedProcessor, build_fused_backbone
from .sequence import SequenceBackbone, SequenceConfig, SequenceModel
from .vilt import ViltBackbone

__all__ = [
    "BACKBONES",
    "BackboneInterface",
    "ClassTokens",
    "ClipBackbone",
    "FusedBackbone",
    "FusedConfig",
    "FusedModel",
    "FusedProcessor",
    "LockstepStream",
    "PretrainedTokens",
    "SequenceBackbone",
    "SequenceConfig",
    "SequenceModel",
    "Stream",
    "ViltBackbone",
    "backbone_interface_for",
    "build_fused_backbone",
    "capability",
    "extend_attention_mask",
    "insert_blocks",
    "insert_tokens",
    "register_backbone",
    "remove_blocks",
    "run_in_lockstep",
]
