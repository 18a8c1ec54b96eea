"""Backbone interfaces: one file per model family."""

from .base import (
    BACKBONES,
    BackboneInterface,
    Stream,
    backbone_interface_for,
    extend_attention_mask,
    insert_tokens,
    register_backbone,
    strip_tokens,
)
from .clip import ClipBackbone
from .vilt import ViltBackbone

__all__ = [
    "BACKBONES",
    "BackboneInterface",
    "ClipBackbone",
    "Stream",
    "ViltBackbone",
    "backbone_interface_for",
    "extend_attention_mask",
    "insert_tokens",
    "register_backbone",
    "strip_tokens",
]
