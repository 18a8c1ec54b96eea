"""REDEEM (retrieval-guided conditional generation) and RAGPT as its variant; see config.py and bank.py."""

from typing import Any

from ..base import MethodHooks, register_method
from .bank import BANK_FILE, BankError, MemoryBank, build_index, build_memory_bank
from .config import RagptConfig, RedeemConfig
from .layer import RedeemLayer, RedeemModules
from .model import RagptModel, RedeemModel
from .retrieval import (
    RedeemCollator,
    add_neighbors,
    attach_memory_bank,
    evaluation_neighbors,
    load_memory_bank,
    prepare_for_training,
)


def _evaluation_split(model: Any, dataset: Any, collator: Any) -> Any:
    """Retrieve neighbours for a split to evaluate (``collator``: the one ``prepare_for_training`` returned),
    refused when the memory bank holds that split (:func:`evaluation_neighbors`)."""
    return evaluation_neighbors(dataset, model, collator.collator if isinstance(collator, RedeemCollator) else collator)


HOOKS = MethodHooks(prepare_training=prepare_for_training, prepare_evaluation=_evaluation_split,
                    load_files=load_memory_bank, files=(BANK_FILE,))

REDEEM_PAPER = ("Lang, Hong, Cheng, Zhong, Wang and Zhou. REDEEMing Modality Information Loss: Retrieval-Guided "
                "Conditional Generation for Severely Modality Missing Learning. KDD 2025. "
                "https://doi.org/10.1145/3711896.3737101")
REDEEM_CITATION = ("@inproceedings{lang2025redeem,\n  title={REDEEMing Modality Information Loss: Retrieval-Guided "
                   "Conditional Generation for Severely Modality Missing Learning},\n  author={Lang, Jian and Hong, "
                   "Rongpei and Cheng, Zhangtao and Zhong, Ting and Wang, Yong and Zhou, Fan},\n  booktitle={KDD},\n"
                   "  doi={10.1145/3711896.3737101},\n  year={2025}\n}")

RAGPT_PAPER = ("Lang, Cheng, Zhong and Zhou. Retrieval-Augmented Dynamic Prompt Tuning for Incomplete Multimodal "
               "Learning. AAAI 2025. https://github.com/Jian-Lang/RAGPT")
RAGPT_CITATION = ("@inproceedings{lang2025ragpt,\n  title={Retrieval-Augmented Dynamic Prompt Tuning for Incomplete "
                  "Multimodal Learning},\n  author={Lang, Jian and Cheng, Zhangtao and Zhong, Ting and Zhou, Fan},\n"
                  "  booktitle={AAAI},\n  year={2025}\n}")

register_method("redeem", RedeemConfig, RedeemModel,
                "Retrieval-guided conditional generation: MSA retriever, CMoE generator of the missing modality, "
                "SAIM inter-modal prompts (REDEEM).", HOOKS,
                paper=REDEEM_PAPER, citation=REDEEM_CITATION)
register_method("ragpt", RagptConfig, RagptModel,
                "Retrieval-augmented dynamic prompts: multi-channel retrieval, mean of the retrieved embeddings, "
                "intra-modal prompts and a label token (RAGPT).", HOOKS,
                paper=RAGPT_PAPER, citation=RAGPT_CITATION)

__all__ = ["BankError", "MemoryBank", "RagptConfig", "RagptModel", "RedeemCollator", "RedeemConfig",
           "RedeemLayer", "RedeemModel", "RedeemModules", "add_neighbors", "attach_memory_bank", "build_index",
           "build_memory_bank", "evaluation_neighbors", "load_memory_bank", "prepare_for_training"]
