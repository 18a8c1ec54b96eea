"""Methods, one folder each (PEFT layout: config.py, layer.py, model.py). Importing registers them."""

from . import baseline, cmpt, map, memprompt, redeem, rep  # noqa: F401  (registration side effects)
from .base import METHODS, MissingMethodConfig, get_method_config, list_methods, register_method

__all__ = ["METHODS", "MissingMethodConfig", "get_method_config", "list_methods", "register_method"]
