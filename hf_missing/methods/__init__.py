"""Methods, one folder each (PEFT layout: config.py, layer.py, model.py). Importing registers them."""

from . import baseline, cmpt, lora, map, memprompt, redeem, rep  # noqa: F401  (registration side effects)
from .base import (
    METHODS,
    MethodHooks,
    MissingMethodConfig,
    get_method_config,
    list_methods,
    load_method_files,
    prepare_for_evaluation,
    prepare_for_training,
    register_method,
)

__all__ = ["METHODS", "MethodHooks", "MissingMethodConfig", "get_method_config", "list_methods", "load_method_files",
           "prepare_for_evaluation", "prepare_for_training", "register_method"]
