"""Missingness simulation (a ``datasets`` transform) and the batch collator."""

from .collator import MissingModalityCollator
from .emoji import build_emoji_dataset, load_emoji_dataset
from .simulate import PROTOCOLS, missing_settings, pattern_counts, pattern_shares, simulate_missing

__all__ = ["PROTOCOLS", "MissingModalityCollator", "build_emoji_dataset", "load_emoji_dataset", "missing_settings",
           "pattern_counts", "pattern_shares", "simulate_missing"]
