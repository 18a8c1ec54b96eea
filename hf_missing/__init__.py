"""hf_missing: make frozen multimodal transformers robust to missing modalities.

Importing the package registers the wrapper with the ``Auto*`` classes and every method with peft, routes
hf_missing adapters given to the ``Auto*`` classes through the wrapper's safe loading (:mod:`hf_missing.compat.auto`),
and registers the ``"missing-modality-classification"`` pipeline task (:mod:`hf_missing.pipeline`).
"""

import importlib
from typing import Any

from . import evaluation, hub, methods, metrics, pipeline
from .backbones import BackboneInterface, register_backbone
from .compat import auto as _loader_hooks
from .data import MissingModalityCollator, missing_settings, simulate_missing
from .data.csd import align_csd, load_csd
from .data.loaders import load_food101, load_hateful_memes, load_mmimdb
from .data.sentiment import load_mmsa_features
from .evaluation import missing_grid, predict_patterns
from .hub import push_adapter
from .loading import AdapterLoadError
from .methods import get_method_config, list_methods
from .missingness import ModalityPattern
from .modeling import MissingModalityConfig, MissingModalityForClassification
from .presets import list_presets, load_preset

_loader_hooks.install()  # transformers' Auto classes hand hf_missing adapters to the wrapper (hf_missing.compat.auto)
pipeline.register()  # transformers.pipeline("missing-modality-classification", model=...)

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``hf_missing.callbacks`` (the top-level ``trainer_callbacks`` package, which imports hf_missing) loads on
    first use, so that ``import trainer_callbacks`` may come first in a script without an import cycle."""
    if name == "callbacks":
        return importlib.import_module(f"{__name__}.callbacks")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "AdapterLoadError",
    "BackboneInterface",
    "MissingModalityCollator",
    "MissingModalityConfig",
    "MissingModalityForClassification",
    "ModalityPattern",
    "align_csd",
    "callbacks",
    "evaluation",
    "get_method_config",
    "hub",
    "list_methods",
    "list_presets",
    "load_csd",
    "load_food101",
    "load_hateful_memes",
    "load_mmimdb",
    "load_mmsa_features",
    "load_preset",
    "methods",
    "metrics",
    "missing_grid",
    "missing_settings",
    "pipeline",
    "predict_patterns",
    "push_adapter",
    "register_backbone",
    "simulate_missing",
]
