"""REDEEM (retrieval-guided conditional generation, KDD 2025) and RAGPT (AAAI 2025) as one configurable method.

Paper: ../shared/papers/redeem-retrieval-guided-generation.txt. The switches reproduce every row of the
paper's Table 3; RAGPT is the "w/o Router" generator with the "Intra-modal" prompter plus RAGPT's multi-channel
retriever and label token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..base import MissingMethodConfig

RETRIEVALS = ("msa", "mcr", "random", "none")
GENERATORS = ("cmoe", "mean", "cross_modal", "none")
PROMPTERS = ("saim", "intra", "static", "none")


@dataclass
class RedeemConfig(MissingMethodConfig):
    """Retriever (eq. 1), CMoE generator (eq. 2-4) and SAIM prompter (eq. 5-6) around a frozen backbone.

    Defaults are the paper's appendix A.3: K = 5 retrieved instances, prompt length b = 2 inserted before
    layer l = 1, reconstruction (MSE) weight 1 beside the task loss. The memory bank itself is not an
    option: it is built from the training data (:func:`hf_missing.methods.redeem.prepare_for_training`) and
    saved beside the adapter.
    """

    num_retrieved: int = field(default=5, metadata={"help": "K: retrieved instances (experts) per sample (REDEEM: 5)."})
    prompt_length: int = field(default=2, metadata={"help": "b: prompt tokens per modality (eq. 5; REDEEM: 2)."})
    prompt_layer: int = field(
        default=1,
        metadata={"help": "l: the prompts enter before this encoder layer of each stream (eq. 7; REDEEM: 1)."},
    )
    bank_tokens: int = field(
        default=16,
        metadata={"help": "Tokens stored per modality and sample in the memory bank: the modality's first-layer "
                          "input embeddings, adaptively average-pooled over its valid tokens to this many; the "
                          "generated embeddings have this length too."},
    )
    retrieval: str = field(
        default="msa",
        metadata={"help": f"One of {list(RETRIEVALS)}: 'msa' = REDEEM's eq. 1 (one neighbour list per sample, "
                          "ranked by the sum of the cosines of the modalities it holds); 'mcr' = RAGPT's "
                          "multi-channel retriever (each modality the sample holds has its own within-modal "
                          "neighbours: a complete sample reads the images of its image-to-image neighbours and the "
                          "texts of its text-to-text ones); 'random' = random bank entries (Table 3 'Random'); "
                          "'none' = no search: retrieved features replaced by noise with the bank's mean and "
                          "spread, RAGPT's label token by the mean label embedding (Table 3 'w/o Retriever')."},
    )
    generator: str = field(
        default="cmoe",
        metadata={"help": f"One of {list(GENERATORS)}: 'cmoe' = eq. 2-4; 'mean' = uniform weights, no router (Table 3 "
                          "'w/o Router', RAGPT); 'cross_modal' = an encoder-decoder from the available modalities "
                          "(Table 3 'Cross-modal'); 'none' = the missing modality keeps its placeholder (Table 3 "
                          "'w/o Generator')."},
    )
    prompter: str = field(
        default="saim",
        metadata={"help": f"One of {list(PROMPTERS)}: 'saim' = eq. 5-6 (inter-modal); 'intra' = the retrieved tokens "
                          "of a modality attend to the target's own, padding masked (Table 3 'Intra-modal', RAGPT's "
                          "CAP with the roles swapped: RedeemModules.intra_prompt); 'static' = learned prompts "
                          "(Table 3 'Static Prompt'); 'none' = no prompts (Table 3 'w/o Prompter')."},
    )
    label_token: bool = field(
        default=False,
        metadata={"help": "RAGPT's label token: the mean learned embedding of the retrieved samples' labels, "
                          "inserted with the prompts."},
    )
    recon_weight: float = field(
        default=1.0,
        metadata={"help": "Weight of the MSE between the generated and the true embeddings of a dropped modality "
                          "(looked up in the bank by sample); the released code's term is identically zero."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, value, allowed in (("retrieval", self.retrieval, RETRIEVALS),
                                     ("generator", self.generator, GENERATORS),
                                     ("prompter", self.prompter, PROMPTERS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}.")
        if min(self.num_retrieved, self.prompt_length, self.bank_tokens) < 1:
            raise ValueError("num_retrieved, prompt_length and bank_tokens must be at least 1.")
        if self.prompt_layer < 0 or self.recon_weight < 0:
            raise ValueError("prompt_layer and recon_weight must be non-negative.")

    @property
    def memory_bank(self) -> Any:
        """The attached :class:`~hf_missing.methods.redeem.bank.MemoryBank` (runtime state, never serialised:
        ``to_dict`` only writes dataclass fields); ``save_pretrained`` writes it beside the config."""
        return self.__dict__.get("_memory_bank")

    @memory_bank.setter
    def memory_bank(self, bank: Any) -> None:
        self.__dict__["_memory_bank"] = bank

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        """``adapter_config.json`` plus the attached memory bank and its index (transformers and peft call this
        when an adapter is saved, so the bank travels with ``save_pretrained`` and ``push_to_hub``)."""
        super().save_pretrained(save_directory, **kwargs)
        if self.memory_bank is not None:
            self.memory_bank.save(save_directory)


@dataclass
class RagptConfig(RedeemConfig):
    """RAGPT: its multi-channel retriever, the mean of the retrieved embeddings (no router), intra-modal prompts of
    length 6 before layer 1, a label token, and the task loss only (METHODS_REFERENCE §1E; RAGPT's FFT filter is
    replaced by the per-rank expert FFNs that REDEEM's "w/o Router" row keeps). The retrievers differ for a complete
    sample only: RAGPT's gives each modality its own within-modal neighbours, REDEEM's eq. 1 one list ranked by the
    summed cosines (:func:`hf_missing.methods.redeem.retrieval.channel_table`)."""

    retrieval: str = field(default="mcr", metadata={"help": RedeemConfig.__dataclass_fields__["retrieval"]
                                                    .metadata["help"]})
    prompt_length: int = field(default=6, metadata={"help": "Prompt tokens per modality (RAGPT: 6)."})
    generator: str = field(default="mean", metadata={"help": RedeemConfig.__dataclass_fields__["generator"]
                                                     .metadata["help"]})
    prompter: str = field(default="intra", metadata={"help": RedeemConfig.__dataclass_fields__["prompter"]
                                                     .metadata["help"]})
    label_token: bool = field(default=True, metadata={"help": RedeemConfig.__dataclass_fields__["label_token"]
                                                      .metadata["help"]})
    recon_weight: float = field(default=0.0, metadata={"help": "RAGPT trains with the task loss only (0); "
                                                              "see RedeemConfig.recon_weight."})
