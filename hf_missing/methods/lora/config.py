"""LoRA: peft's low-rank adapters on the frozen backbone's attention, plus the head (Hu et al., ICLR 2022).

Not a missing-modality method: the peer a practitioner would try first. The backbone stays frozen except the
LoRA A / B matrices, the head (and the pooler) train as for every method, and missing modalities get the baseline's
placeholders; the rows it is compared with train under the same missingness.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..base import MissingMethodConfig
from ..peft_lora import LORA_ROLES, check_lora_settings


@dataclass
class LoraMethodConfig(MissingMethodConfig):
    """peft LoRA of rank ``rank`` on the ``targets`` Linear layers of every encoder layer of every stream."""

    rank: int = field(default=8, metadata={"help": "LoRA rank r (peft's LoraConfig r; default 8, peft's default)."})
    alpha: float = field(
        default=16.0,
        metadata={"help": "LoRA alpha (peft's lora_alpha); the update is scaled by alpha / r. Default 16 = 2r, the "
                          "common choice (scale 2; peft's own default of 8 would give scale 1)."},
    )
    dropout: float = field(
        default=0.0, metadata={"help": "Dropout on the LoRA branch input (peft's lora_dropout; default 0, peft's)."},
    )
    targets: list[str] = field(
        default_factory=lambda: ["q", "v"],
        metadata={"help": f"Linear layers of every encoder layer that get LoRA: roles {list(LORA_ROLES)}, resolved "
                          "per backbone (CLIP q_proj/v_proj, ViLT and BERT query/value), or module paths relative "
                          "to an encoder layer (e.g. 'mlp.fc1'). Default q and v, the LoRA paper's placement."},
    )

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        super().__post_init__()
        check_lora_settings(self.rank, self.alpha, self.dropout, ("lora rank", "lora alpha", "dropout"),
                            ("(default 8)", "for no LoRA at all use the baseline method."))
        if not self.targets:
            raise ValueError("lora targets=[] wraps nothing; name roles such as ['q', 'v'] (or use the baseline "
                             "method).")
