"""REDEEM (retrieval-guided conditional generation) and RAGPT as its variant; see config.py and bank.py."""

from typing import Any

from ..base import MethodHooks, register_method
from .bank import BANK_FILE, BankError, MemoryBank, build_index, build_memory_bank
from .config import RagptConfig, RedeemConfig
from .layer import RagptLayer, RedeemLayer, RedeemModules
from .model import RagptModel, RedeemModel
from .retrieval import (
    RedeemCollator,
    add_neighbors,
    attach_memory_bank,
    load_memory_bank,
    prepare_for_training,
)


def _evaluation_split(model: Any, dataset: Any, collator: Any) -> Any:
    """Retrieve neighbours for a split to evaluate (``collator``: the one ``prepare_for_training`` returned)."""
    return add_neighbors(dataset, model, collator.collator if isinstance(collator, RedeemCollator) else collator)


HOOKS = MethodHooks(prepare_training=prepare_for_training, prepare_evaluation=_evaluation_split,
                    load_files=load_memory_bank, files=(BANK_FILE,))

register_method("redeem", RedeemConfig, RedeemModel,
                "Retrieval-guided conditional generation: MSA retriever, CMoE generator of the missing modality, "
                "SAIM inter-modal prompts (REDEEM).", HOOKS)
register_method("ragpt", RagptConfig, RagptModel,
                "Retrieval-augmented dynamic prompts: mean of the retrieved embeddings, intra-modal prompts and a "
                "label token (RAGPT).", HOOKS)

__all__ = ["BankError", "MemoryBank", "RagptConfig", "RagptLayer", "RagptModel", "RedeemCollator", "RedeemConfig",
           "RedeemLayer", "RedeemModel", "RedeemModules", "add_neighbors", "attach_memory_bank", "build_index",
           "build_memory_bank", "load_memory_bank", "prepare_for_training"]
