"""Push adapters to the Hugging Face Hub with a model card (pulling them back safely is :mod:`hf_missing.loading`)."""

from ..loading import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, CONFIG_NAME
from .push import METHOD_PAPERS, MethodPaper, adapter_card, method_paper, push_adapter, results_by_pattern

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
