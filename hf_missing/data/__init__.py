"""Missingness simulation (a ``datasets`` transform), the modalities' input declarations and the batch collator."""

from .collator import MissingModalityCollator
from .emoji import build_emoji_dataset, load_emoji_dataset
from .modalities import FeatureInputs, ImageInputs, ModalityInputs, TextInputs
from .simulate import PROTOCOLS, missing_settings, pattern_counts, pattern_shares, simulate_missing

__all__ = ["PROTOCOLS", "FeatureInputs", "ImageInputs", "MissingModalityCollator", "ModalityInputs", "TextInputs",
           "build_emoji_dataset", "load_emoji_dataset", "missing_settings", "pattern_counts", "pattern_shares",
           "simulate_missing"]
