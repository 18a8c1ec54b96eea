"""ViLT (one joint stream: text tokens then image patches), as MAP, MemPrompt, RAGPT and REDEEM use it."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F
from transformers import ViltModel
from transformers.models.vilt.modeling_vilt import ViltEmbeddings, ViltSelfAttention

from ..context import ForwardContext
from .base import (
    JointStreamBackbone,
    Stream,
    kv_prefixed,
    prefixed_projections,
    register_backbone,
)
from .capabilities import ClassTokens, PretrainedTokens


@kv_prefixed(ViltSelfAttention.forward)
def _prefixed_vilt_self_attention(self: ViltSelfAttention, hidden_states: torch.Tensor,
                                  attention_mask: torch.Tensor | None, prefix: tuple[torch.Tensor, torch.Tensor],
                                  output_attentions: bool = False):
    """ViltSelfAttention.forward with key/value prefixes (prefix tuning, MAP's attention-level prompts)."""
    query, key, value, attention_mask = prefixed_projections(hidden_states, (self.query, self.key, self.value),
                                                             self.attention_head_size, prefix, attention_mask, False)
    scores = query @ key.transpose(-1, -2) / math.sqrt(self.attention_head_size)
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = self.dropout(scores.softmax(dim=-1))
    context = (probs @ value).permute(0, 2, 1, 3).reshape(*hidden_states.shape[:-1], self.all_head_size)
    return (context, probs) if output_attentions else (context,)


def _visual_embed(embeddings: ViltEmbeddings, sample: Callable[..., Any], pixel_values: torch.Tensor,
                  pixel_mask: torch.Tensor, max_image_length: Any = 200) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """``ViltEmbeddings.visual_embed`` (``sample``), made deterministic in eval mode.

    transformers' ViLT draws its patches with ``torch.multinomial`` on every forward, in training and evaluation
    alike: a random order always, and a random subset of ``max_image_length`` patches when an image has more, so
    two evaluations of one sample differ (and REDEEM's bank changed between builds). Training keeps that draw
    (ViLT's pre-training augmentation). In eval mode every valid patch is embedded, put in raster order, and an
    image with more than ``max_image_length`` keeps the evenly spaced ones (ranks ``floor(k·v/m)``); padding comes
    last, zeroed and masked. The draw runs under a forked CPU RNG, so evaluation leaves the caller's random state
    as it found it. The selection depends on the sample alone, never on the rest of the batch.
    """
    if embeddings.training:
        return sample(pixel_values, pixel_mask, max_image_length=max_image_length)
    with torch.random.fork_rng(devices=[]):
        x, x_mask, (patch_index, size) = sample(pixel_values, pixel_mask, max_image_length=-1)
    valid, counts = x_mask[:, 1:].bool(), x_mask[:, 1:].sum(1)
    area = size[0] * size[1]
    raster = patch_index[..., 0] * size[1] + patch_index[..., 1]
    order = torch.sort(torch.where(valid, raster, raster + area), dim=1, stable=True).indices
    length = int(counts.max())
    if isinstance(max_image_length, int) and max_image_length >= 0:
        length = min(length, max_image_length)
    k = torch.arange(length, device=order.device)[None]
    pick = order.gather(1, torch.where(counts[:, None] > length, k * counts[:, None] // length, k))
    keep = valid.gather(1, pick)
    tokens = x[:, 1:].gather(1, pick[..., None].expand(-1, -1, x.shape[-1])) * keep[..., None]
    index = patch_index.gather(1, pick[..., None].expand(-1, -1, 2))
    return (torch.cat([x[:, :1], tokens], 1), torch.cat([x_mask[:, :1], keep.to(x_mask.dtype)], 1), (index, size))


@register_backbone
class ViltBackbone(ClassTokens, PretrainedTokens, JointStreamBackbone):
    """ViLT: the fused feature is the pooler output at the text [CLS] token (MAP's classifier input)."""

    model_type = "vilt"
    display_name = "ViLT"
    lora_roles: ClassVar[dict[str, str]] = {
        "q": "attention.attention.query", "k": "attention.attention.key", "v": "attention.attention.value",
        "o": "attention.output.dense", "mlp_in": "intermediate.dense", "mlp_out": "output.dense"}
    prefixed_attention = _prefixed_vilt_self_attention
    pooler_modules = ("pooler",)
    model: ViltModel

    def _install_policy_hooks(self) -> None:
        """The joint stream's policy hooks, and patch selection that is deterministic at evaluation
        (:func:`_visual_embed`)."""
        super()._install_policy_hooks()
        embeddings = self.model.embeddings
        if not isinstance(embeddings.visual_embed, partial):  # wrap once, however often the model is wrapped
            embeddings.visual_embed = partial(_visual_embed, embeddings, embeddings.visual_embed)

    @property
    def streams(self) -> tuple[Stream, ...]:
        config = self.model.config
        return (Stream("joint", "encoder.layer", config.hidden_size, config.num_hidden_layers, ("text", "image"),
                       "attention.attention"),)

    @property
    def pooled_size(self) -> int:
        return self.model.config.hidden_size

    def extend_text_positions(self, max_text_len: int) -> None:
        """Interpolate ViLT's text position embeddings to ``max_text_len`` (MAP does this at checkpoint
        load; ViLT was pre-trained with 40 positions)."""
        embeddings = self.model.embeddings.text_embeddings
        old = embeddings.position_embeddings.weight.data
        if max_text_len <= old.shape[0]:
            return
        new = F.interpolate(old[None, None], size=(max_text_len, old.shape[1]), mode="bilinear",
                            align_corners=False)[0, 0]
        embeddings.position_embeddings = nn.Embedding.from_pretrained(new, freeze=False)
        embeddings.position_ids = torch.arange(max_text_len, device=old.device)[None]
        embeddings.token_type_ids = torch.zeros(1, max_text_len, dtype=torch.long, device=old.device)
        self.model.config.max_position_embeddings = max_text_len

    @property
    def class_token_width(self) -> int:
        return self.model.config.hidden_size

    def readout(self, stream: str, tokens: torch.Tensor) -> torch.Tensor:
        """ViLT's final LayerNorm, then its pooler applied to each token."""
        batch, n, hidden = tokens.shape
        pooled = self.model.pooler(self.model.layernorm(tokens).reshape(batch * n, 1, hidden))
        return pooled.reshape(batch, n, -1)

    def class_tokens(self, features: torch.Tensor, final: dict[str, torch.Tensor],
                     ctx: ForwardContext) -> dict[str, torch.Tensor]:
        """The pooler applied to each modality's [CLS]: text position 0 and the image [CLS] starting its span."""
        spans = ctx.spans["joint"]
        tokens = self.readout("joint", final["joint"][:, [spans[m].start or 0 for m in self.modalities]])
        return {m: tokens[:, k] for k, m in enumerate(self.modalities)}

    def pretrained_token_embedding(self, modality: str) -> torch.Tensor:
        """Text: the mean word embedding (ViLT's config names no [CLS] id) through the text embedding LayerNorm, on
        the scale of the text tokens entering the stream; image: ViLT's image class token."""
        embeddings = self.model.embeddings
        if modality == "text":
            text = embeddings.text_embeddings
            with torch.no_grad():
                return text.LayerNorm(text.word_embeddings.weight.mean(dim=0))
        if modality == "image":
            return embeddings.cls_token.detach().reshape(-1).clone()
        raise ValueError(f"{self.model_type} has no pretrained embedding for {modality!r}.")

    def max_text_positions(self) -> int | None:
        return self.model.config.max_position_embeddings

    def check_inputs(self, inputs: dict[str, torch.Tensor]) -> None:
        self.check_pixels(inputs, None, "preprocess RGB images with the model's ViLT image processor.")
        self.check_text_length(inputs, self.model.config.max_position_embeddings,
                               f"load it with max_text_len={inputs['input_ids'].shape[1]} (interpolated positions) "
                               "or truncate the text.")

    def encode(self, inputs: dict[str, torch.Tensor], ctx: ForwardContext) -> torch.Tensor:
        text_len = inputs["input_ids"].shape[1]
        ctx.spans = {"joint": {"text": slice(0, text_len), "image": slice(text_len, None)}}
        keys = ("input_ids", "attention_mask", "token_type_ids", "pixel_values", "pixel_mask")
        return self.model(**{k: inputs[k] for k in keys if inputs.get(k) is not None}).pooler_output
