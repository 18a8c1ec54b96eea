"""CLIP (two streams: a causal text transformer and a vision transformer), as DCP/REP use it."""

from __future__ import annotations

import types
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import CLIPConfig, CLIPModel, CLIPTextModel, CLIPVisionModel
from transformers.masking_utils import create_causal_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.clip.modeling_clip import CLIPAttention, eager_attention_forward

from ..context import ForwardContext
from .base import (
    BackboneInterface,
    LockstepStream,
    Stream,
    kv_prefixed,
    policy_context,
    prefixed_projections,
    register_backbone,
    run_in_lockstep,
)
from .capabilities import ClassTokens, PretrainedTokens


@kv_prefixed(CLIPAttention.forward)
def _prefixed_clip_attention(self: CLIPAttention, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None,
                             prefix: tuple[torch.Tensor, torch.Tensor], **kwargs: Any):
    """CLIPAttention.forward with key/value prefixes (prefix tuning, MAP's attention-level prompts)."""
    input_shape = hidden_states.shape[:-1]
    queries, keys, values, attention_mask = prefixed_projections(
        hidden_states, (self.q_proj, self.k_proj, self.v_proj), self.head_dim, prefix, attention_mask,
        kwargs.pop("is_causal", False))
    attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
    output, weights = attention(self, queries, keys, values, attention_mask, scaling=self.scale,
                                dropout=0.0 if not self.training else self.dropout, is_causal=False, **kwargs)
    return self.out_proj(output.reshape(*input_shape, -1).contiguous()), weights


# ---- lockstep encoding: CLIPTextModel.forward / CLIPVisionModel.forward split around their encoder layers ------
def text_stream(text_model: CLIPTextModel, layers: nn.ModuleList, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None) -> LockstepStream:
    """The text tower up to its first layer: embeddings, then the causal (+ padding) mask built by transformers'
    ``create_causal_mask``; every layer gets the mask and ``is_causal=True``, as in ``CLIPTextModel.forward``."""
    hidden = text_model.embeddings(input_ids=input_ids, position_ids=None)
    mask = create_causal_mask(config=text_model.config, inputs_embeds=hidden, attention_mask=attention_mask,
                              past_key_values=None)
    return LockstepStream(layers, hidden, (mask,), {"is_causal": True})


def text_pooled(text_model: CLIPTextModel, input_ids: torch.Tensor, last_hidden: torch.Tensor) -> torch.Tensor:
    """``final_layer_norm``, then the hidden state at the EOS token, as in ``CLIPTextModel.forward``: with the legacy
    ``eos_token_id == 2`` the highest token id, otherwise the first position of ``eos_token_id``."""
    last_hidden = text_model.final_layer_norm(last_hidden)
    rows = torch.arange(last_hidden.shape[0], device=last_hidden.device)
    ids = input_ids.to(dtype=torch.int, device=last_hidden.device)
    if text_model.eos_token_id == 2:
        return last_hidden[rows, ids.argmax(dim=-1)]
    return last_hidden[rows, (ids == text_model.eos_token_id).int().argmax(dim=-1)]


def vision_stream(vision_model: CLIPVisionModel, layers: nn.ModuleList, pixel_values: torch.Tensor) -> LockstepStream:
    """The vision tower up to its first layer: embeddings then ``pre_layrnorm``; the layers get no mask."""
    hidden = vision_model.pre_layrnorm(vision_model.embeddings(pixel_values, interpolate_pos_encoding=False))
    return LockstepStream(layers, hidden, (None,))


def vision_pooled(vision_model: CLIPVisionModel, last_hidden: torch.Tensor) -> torch.Tensor:
    """``post_layernorm`` of the class token (position 0), as in ``CLIPVisionModel.forward``."""
    return vision_model.post_layernorm(last_hidden[:, 0, :])


def clip_vit_b16_config() -> CLIPConfig:
    """OpenAI CLIP ViT-B/16 shapes (12-layer 512-wide text, 12-layer 768-wide vision, patch 16, projection 512),
    for parameter budgets and adapter sizes without downloading weights."""
    return CLIPConfig(text_config={"eos_token_id": 49407}, vision_config={"patch_size": 16}, projection_dim=512)


@register_backbone
class ClipBackbone(ClassTokens, PretrainedTokens, BackboneInterface):
    """OpenAI CLIP: text pools at the EOS token, vision at CLS; the fused feature is
    ``[image_embeds; text_embeds]`` after the projections (DCP/REP's classifier input)."""

    model_type = "clip"
    display_name = "CLIP"
    lora_roles: ClassVar[dict[str, str]] = {
        "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.out_proj",
        "mlp_in": "mlp.fc1", "mlp_out": "mlp.fc2"}
    class_token_order = ("image", "text")
    pooler_modules = ("text_model.final_layer_norm", "vision_model.post_layernorm", "text_projection",
                      "visual_projection")
    model: CLIPModel

    @property
    def streams(self) -> tuple[Stream, ...]:
        text, vision = self.model.config.text_config, self.model.config.vision_config
        return (
            Stream("text", "text_model.encoder.layers", text.hidden_size, text.num_hidden_layers, ("text",),
                   "self_attn", causal=True),
            Stream("vision", "vision_model.encoder.layers", vision.hidden_size, vision.num_hidden_layers,
                   ("image",), "self_attn"),
        )

    @property
    def pooled_size(self) -> int:
        return 2 * self.model.config.projection_dim

    @property
    def class_token_width(self) -> int:
        return self.model.config.projection_dim

    def readout(self, stream: str, tokens: torch.Tensor) -> torch.Tensor:
        """Text: ``final_layer_norm`` + ``text_projection``; vision: ``post_layernorm`` + ``visual_projection``."""
        if stream == "text":
            return self.model.text_projection(self.model.text_model.final_layer_norm(tokens))
        return self.model.visual_projection(self.model.vision_model.post_layernorm(tokens))

    def class_tokens(self, features: torch.Tensor, final: dict[str, torch.Tensor],
                     ctx: ForwardContext) -> dict[str, torch.Tensor]:
        """The projected EOS (text) and CLS (image) embeddings, i.e. the halves of ``[image; text]``."""
        width = self.class_token_width
        return {"image": features[:, :width], "text": features[:, width:]}

    def pretrained_token_embedding(self, modality: str) -> torch.Tensor:
        """Text: the end-of-text token's embedding (id 49407 in OpenAI CLIP); image: the class token as it enters the
        vision encoder (class embedding + its position embedding, through ``pre_layrnorm``), on the scale of the
        stream's tokens (the raw class embedding is not, and REP's buffers started off-scale from it)."""
        if modality == "text":
            eos = self.model.config.text_config.eos_token_id
            return self.model.text_model.embeddings.token_embedding.weight[eos].detach().clone()
        if modality == "image":
            vision = self.model.vision_model
            with torch.no_grad():
                token = vision.embeddings.class_embedding + vision.embeddings.position_embedding.weight[0]
                return vision.pre_layrnorm(token).clone()
        raise ValueError(f"{self.model_type} has no pretrained embedding for {modality!r}.")

    def max_text_positions(self) -> int | None:
        return self.model.config.text_config.max_position_embeddings

    def check_inputs(self, inputs: dict[str, torch.Tensor]) -> None:
        self.check_pixels(inputs, self.model.config.vision_config.image_size,
                          "preprocess images with the model's CLIP image processor (it resizes and centre-crops).")
        max_len = self.model.config.text_config.max_position_embeddings
        self.check_text_length(inputs, max_len, f"tokenize with truncation=True, max_length={max_len}.")

    def encode(self, inputs: dict[str, torch.Tensor], ctx: ForwardContext) -> torch.Tensor:
        ctx.spans = {"text": {"text": slice(0, inputs["input_ids"].shape[1])},
                     "vision": {"image": slice(0, None)}}
        pooled = self._pooled_in_lockstep if ctx.lockstep else self._pooled
        text_pooled_output, image_pooled_output = pooled(inputs)
        text_embeds = self.model.text_projection(text_pooled_output)
        image_embeds = self.model.visual_projection(image_pooled_output)
        if ctx.policy != "dummy":
            text_embeds = self.zero_rows(text_embeds, ctx.present_of("text"))
            image_embeds = self.zero_rows(image_embeds, ctx.present_of("image"))
        return torch.cat([image_embeds, text_embeds], dim=-1)

    def _pooled(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The text and image towers' pooled outputs, one tower after the other."""
        text = self.model.text_model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
        vision = self.model.vision_model(pixel_values=inputs["pixel_values"])
        return text.pooler_output, vision.pooler_output

    def _pooled_in_lockstep(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The text and image towers' pooled outputs, their layers run in step (text layer k, then vision layer k)."""
        text_model, vision_model = self.model.text_model, self.model.vision_model
        input_ids = inputs["input_ids"].view(-1, inputs["input_ids"].shape[-1])
        text, vision = run_in_lockstep([
            text_stream(text_model, self.layers("text"), input_ids, inputs.get("attention_mask")),
            vision_stream(vision_model, self.layers("vision"), inputs["pixel_values"]),
        ])
        return text_pooled(text_model, input_ids, text), vision_pooled(vision_model, vision)

    def _install_policy_hooks(self) -> None:
        """"zero": the missing modality's token embeddings are zeroed. "mask" and "zero": its pooled
        feature is left out of the fused representation (zeroed, as DCP/REP do)."""
        for module, modality in ((self.model.text_model.embeddings, "text"),
                                 (self.model.vision_model.embeddings, "image")):
            module.register_forward_hook(self._zero_hook(modality))

    def _zero_hook(self, modality: str):
        def hook(_module: torch.nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            ctx = policy_context()
            if ctx is None or ctx.policy != "zero":
                return None
            return self.zero_rows(output, ctx.present_of(modality))

        return hook

    def enable_kv_prefix(self) -> None:
        for stream in self.streams:
            for layer in self.layers(stream.name):
                attention = layer.get_submodule(stream.attention_path)
                attention.forward = types.MethodType(_prefixed_clip_attention, attention)
