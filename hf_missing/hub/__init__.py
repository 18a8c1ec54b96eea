"""Push adapters to the Hugging Face Hub with a model card (pulling them back safely is :mod:`hf_missing.loading`).

- :mod:`~hf_missing.hub.push`: :func:`push_adapter` stages the adapter's own files and uploads them;
- :mod:`~hf_missing.hub.card`: :func:`adapter_card` renders ``model_cards/adapter_card.md`` (also used by
  ``trainer_callbacks.ModelCardCallback``), :func:`results_by_pattern` builds its results table;
- :mod:`~hf_missing.hub.papers`: the paper and BibTeX of each method.
"""

from ..loading import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, CONFIG_NAME
from .card import adapter_card, results_by_pattern
from .papers import METHOD_PAPERS, MethodPaper, method_paper
from .push import push_adapter

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "CONFIG_NAME",
    "METHOD_PAPERS",
    "MethodPaper",
    "adapter_card",
    "method_paper",
    "push_adapter",
    "results_by_pattern",
]
