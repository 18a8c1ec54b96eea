"""What every backbone built on transformers' BERT layers shares (the fused default, the sequence backbone): the
self-attention forward with key/value prefixes, the layers' LoRA roles, the joint stream they form and BERT's weight
initialisation."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert.modeling_bert import BertSelfAttention, eager_attention_forward

from .base import JointStreamBackbone, Stream, kv_prefixed, prefixed_projections

# The Linear of a BertLayer that plays each attention / MLP role (LoRA targets given by role).
BERT_LORA_ROLES = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
                   "o": "attention.output.dense", "mlp_in": "intermediate.dense", "mlp_out": "output.dense"}
BERT_ATTENTION_PATH = "attention.self"  # a BertLayer's self-attention module, relative to the layer


@kv_prefixed(BertSelfAttention.forward)
def prefixed_bert_self_attention(self: BertSelfAttention, hidden_states: torch.Tensor,
                                 attention_mask: torch.Tensor | None, prefix: tuple[torch.Tensor, torch.Tensor],
                                 **kwargs: Any):
    """BertSelfAttention.forward with key/value prefixes (prefix tuning, MAP's attention-level prompts)."""
    kwargs.pop("past_key_values", None)
    input_shape = hidden_states.shape[:-1]
    query, key, value, attention_mask = prefixed_projections(hidden_states, (self.query, self.key, self.value),
                                                             self.attention_head_size, prefix, attention_mask, False)
    attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
    output, weights = attention(self, query, key, value, attention_mask, scaling=self.scaling,
                                dropout=0.0 if not self.training else self.dropout.p, **kwargs)
    return output.reshape(*input_shape, -1).contiguous(), weights


class BertJointStreamBackbone(JointStreamBackbone):
    """A joint stream of BERT layers at ``model.encoder.layer``: their prefixed attention, LoRA roles and the stream,
    sized by :meth:`bert_config` (the model's config; a subclass whose BERT settings sit elsewhere overrides it)."""

    prefixed_attention = prefixed_bert_self_attention
    lora_roles: ClassVar[dict[str, str]] = BERT_LORA_ROLES

    def bert_config(self) -> Any:
        """The config that holds the BERT layers' ``hidden_size`` and ``num_hidden_layers``."""
        return self.model.config

    @property
    def streams(self) -> tuple[Stream, ...]:
        config = self.bert_config()
        return (Stream("joint", "encoder.layer", config.hidden_size, config.num_hidden_layers, self.modalities,
                       BERT_ATTENTION_PATH),)


def init_bert_weights(module: nn.Module, std: float) -> bool:
    """BERT's initialisation of a linear or convolution (normal weights, zero bias), an embedding (normal) or a
    LayerNorm (ones, zeros); whether ``module`` was one of those (a backbone's ``_init_weights`` handles the rest)."""
    if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d):
        init.normal_(module.weight, std=std)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        init.normal_(module.weight, std=std)
    elif isinstance(module, nn.LayerNorm):
        init.ones_(module.weight)
        init.zeros_(module.bias)
    else:
        return False
    return True
