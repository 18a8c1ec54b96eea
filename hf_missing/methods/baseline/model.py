"""Baseline tuner: wraps no layer; peft's ``modules_to_save`` trains the pooler and the head."""

from __future__ import annotations

from ..base import MissingMethodModel


class BaselineModel(MissingMethodModel):
    """Head-only fine-tuning of a frozen backbone."""
