"""CMPT: cross-modal proxy tokens (Reza, Patil, Solh and Asif, TMLR; arXiv 2501.17823).

Only the abstract, captions and the authors' revision log could be read (``shared/papers/cmpt-method-notes.md``).
What they state is fixed here: frozen encoders with LoRA of rank 1, one learned proxy token per modality that
approximates the missing modality's class token by attending only to the available modality's tokens, and
``L = L_task + 0.2 * L_align``. Everything else is an option whose help says why its default was chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..base import MissingMethodConfig
from ..peft_lora import LORA_ROLES, check_lora_settings

ALIGN_LOSSES = ("mse", "cosine")
GATES = ("vector", "scalar")
PROXY_INITS = ("pretrained", "random")
SINGLE_STREAM_CONTEXTS = ("unimodal", "joint")


@dataclass
class CmptConfig(MissingMethodConfig):
    """Cross-modal proxy tokens + LoRA on the frozen encoders + a gate over the per-modality class tokens."""

    lora_rank: int = field(
        default=1, metadata={"help": "LoRA rank r (CMPT: 1, 'a good trade-off' in the authors' rank ablation)."},
    )
    lora_alpha: float = field(
        default=1.0,
        metadata={"help": "LoRA alpha; the update is scaled by alpha / r. Not stated in the paper: 1.0 leaves the "
                          "rank-1 update unscaled, so the learning rate alone sets its step size."},
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch input (not stated: 0)."})
    lora_targets: list[str] = field(
        default_factory=lambda: ["q", "v"],
        metadata={"help": f"Linear layers of every encoder layer that get LoRA: roles {list(LORA_ROLES)}, resolved "
                          "per backbone (CLIP q_proj/v_proj, ViLT and BERT query/value), or module paths relative "
                          "to an encoder layer (e.g. 'mlp.fc1'). Default q and v, the usual LoRA placement (the "
                          "paper's targets are not stated). An empty list trains the proxies without LoRA (ablation)."},
    )
    proxy_modalities: list[str] | None = field(
        default=None,
        metadata={"help": "Modalities that get a proxy token; None: every modality of the backbone. A missing "
                          "modality without a proxy keeps its real (placeholder-input) class token."},
    )
    proxy_init: str = field(
        default="pretrained",
        metadata={"help": f"One of {list(PROXY_INITS)}. 'pretrained': the host stream's pretrained class-like "
                          "embedding (CLIP: end-of-text token in the text tower, class embedding in the vision tower; "
                          "single-stream: the embedding of the modality the proxy stands in for) plus N(0, 0.02^2), "
                          "so a proxy starts as a token that summarises its stream; 'random': N(0, 0.02^2)."},
    )
    single_stream_context: str = field(
        default="unimodal",
        metadata={"help": f"One of {list(SINGLE_STREAM_CONTEXTS)}; only for streams that hold several modalities "
                          "(ViLT, the fused default). 'unimodal': each modality's tokens also run as a shadow copy "
                          "that attends only to itself, and a proxy attends to the shadows of the available "
                          "modalities, so it sees them as a unimodal encoder would (the paper's setting; costs one "
                          "more pass of those tokens). 'joint': the proxy attends to the available modality's tokens "
                          "of the joint stream, which have attended to the missing modality's placeholder (and, on "
                          "complete samples, to its real tokens, so the alignment target leaks into the proxy)."},
    )
    align_weight: float = field(
        default=0.2, metadata={"help": "lambda of L = L_task + lambda * L_align (CMPT: 0.2, from its ablation)."},
    )
    align_loss: str = field(
        default="mse",
        metadata={"help": f"One of {list(ALIGN_LOSSES)}. 'mse' (default): the proxy replaces the class token that "
                          "the gate and head read, so its norm matters as much as its direction; the only (weak) "
                          "outside hint, a follow-up repository, also uses MSE. 'cosine': 1 - cos, scale-free."},
    )
    detach_target: bool = field(
        default=True,
        metadata={"help": "Stop the alignment gradient at the real class token (not stated; otherwise the LoRA of "
                          "the target's encoder can pull the target towards the proxy and collapse both)."},
    )
    gate: str = field(
        default="vector",
        metadata={"help": f"One of {list(GATES)}. Weights over the K class tokens from Linear([z_1; ..; z_K]), "
                          "softmax across modalities (two modalities: g and 1 - g with g = sigmoid). 'vector' "
                          "(default): one weight per modality and feature, the gated fusion h = g*z1 + (1-g)*z2 of "
                          "the method notes; (K-1)*d*K*d parameters (0.5M on CLIP ViT-B/16). 'scalar': one weight "
                          "per modality, (K-1)*K*d parameters, for a budget close to LoRA's."},
    )
    proxy_when_present: bool = field(
        default=False,
        metadata={"help": "Also use a modality's proxy when the modality is present (class token = mean of the real "
                          "token and its proxy). Default False: the real token is the better evidence and the "
                          "complete-modality path stays the adapted encoder's own; proxies are then trained by the "
                          "alignment loss on complete samples and by the task loss on incomplete ones."},
    )

    def __post_init__(self) -> None:
        if isinstance(self.lora_targets, str):
            self.lora_targets = [self.lora_targets]
        super().__post_init__()
        check_lora_settings(self.lora_rank, self.lora_alpha, self.lora_dropout,
                            ("lora_rank", "lora_alpha", "lora_dropout"),
                            ("(CMPT uses 1)", "to train without LoRA pass lora_targets=[]."))
        if self.align_weight < 0:
            raise ValueError(f"align_weight must be non-negative (0 turns the alignment off), got {self.align_weight}.")
        for name, value, allowed in (("align_loss", self.align_loss, ALIGN_LOSSES), ("gate", self.gate, GATES),
                                     ("proxy_init", self.proxy_init, PROXY_INITS),
                                     ("single_stream_context", self.single_stream_context, SINGLE_STREAM_CONTEXTS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}.")
        if self.proxy_modalities is not None and not self.proxy_modalities:
            raise ValueError("proxy_modalities=[] leaves CMPT without proxies; pass None for every modality.")
