"""Baseline: the frozen backbone with only its pooler and the head trained (every paper's baseline row)."""

from __future__ import annotations

from dataclasses import dataclass

from ..base import MissingMethodConfig


@dataclass
class BaselineConfig(MissingMethodConfig):
    """No injected tensors: trains the backbone's pooler modules and the classification head."""
