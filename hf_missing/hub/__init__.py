"""Push adapters to the Hugging Face Hub with a model card (pulling them back safely is :mod:`hf_missing.loading`).

- :mod:`~hf_missing.hub.push`: :func:`push_adapter` stages the adapter's own files and uploads them;
- :mod:`~hf_missing.hub.card`: :func:`adapter_card` renders ``model_cards/adapter_card.md`` (also used by
  ``trainer_callbacks.ModelCardCallback``) with the paper and BibTeX each method registers, and
  :func:`results_by_pattern` builds its results table.
"""

from ..loading import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, CONFIG_NAME
from .card import adapter_card, results_by_pattern
from .push import push_adapter

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "CONFIG_NAME",
    "adapter_card",
    "push_adapter",
    "results_by_pattern",
]
