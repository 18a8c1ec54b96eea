"""hf_missing: make frozen multimodal transformers robust to missing modalities.

Importing the package registers the wrapper with the ``Auto*`` classes and every method with peft.
"""

from . import methods, metrics
from .backbones import BackboneInterface, register_backbone
from .data import MissingModalityCollator, missing_settings, simulate_missing
from .methods import get_method_config, list_methods
from .missingness import ModalityPattern
from .modeling import MissingModalityConfig, MissingModalityForClassification

__version__ = "0.1.0"

__all__ = [
    "BackboneInterface",
    "MissingModalityCollator",
    "MissingModalityConfig",
    "MissingModalityForClassification",
    "ModalityPattern",
    "get_method_config",
    "list_methods",
    "methods",
    "metrics",
    "missing_settings",
    "register_backbone",
    "simulate_missing",
]
