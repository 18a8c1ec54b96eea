"""Missingness simulation (a ``datasets`` transform) and the batch collator."""

from .collator import MissingModalityCollator
from .simulate import PROTOCOLS, missing_settings, pattern_counts, pattern_shares, simulate_missing

__all__ = ["PROTOCOLS", "MissingModalityCollator", "missing_settings", "pattern_counts", "pattern_shares",
           "simulate_missing"]
