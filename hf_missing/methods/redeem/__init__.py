"""REDEEM (retrieval-guided conditional generation) and RAGPT as its variant; see config.py and bank.py."""

from ..base import register_method
from .bank import BankError, MemoryBank, build_index, build_memory_bank
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

register_method("redeem", RedeemConfig, RedeemModel,
                "Retrieval-guided conditional generation: MSA retriever, CMoE generator of the missing modality, "
                "SAIM inter-modal prompts (REDEEM).")
register_method("ragpt", RagptConfig, RagptModel,
                "Retrieval-augmented dynamic prompts: mean of the retrieved embeddings, intra-modal prompts and a "
                "label token (RAGPT).")

__all__ = ["BankError", "MemoryBank", "RagptConfig", "RagptLayer", "RagptModel", "RedeemCollator", "RedeemConfig",
           "RedeemLayer", "RedeemModel", "RedeemModules", "add_neighbors", "attach_memory_bank", "build_index",
           "build_memory_bank", "load_memory_bank", "prepare_for_training"]
