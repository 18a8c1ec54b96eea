"""What CMPT needs from a backbone beyond :class:`~hf_missing.backbones.BackboneInterface`, per ``model_type``.

CMPT reads one class token per modality (real, or a proxy's estimate) and composes the head's input from them,
where the interface only offers the fused feature. :class:`CmptBackboneOps` adds, for each backbone family:

- ``lora_roles``: the encoder-layer Linear that plays each attention/MLP role (CLIP ``self_attn.q_proj``,
  ViLT ``attention.attention.query``, BERT ``attention.self.query``, ...);
- :meth:`~CmptBackboneOps.readout`: the final norm and projection that turn a stream's last-layer token into
  class-token space (CLIP text: ``final_layer_norm`` + ``text_projection``; CLIP vision: ``post_layernorm`` +
  ``visual_projection``; ViLT: ``layernorm`` + ``pooler``; fused: none, its pooling is a plain mean);
- :meth:`~CmptBackboneOps.class_tokens`: each modality's real class token (CLIP: the two projected embeddings;
  ViLT: the pooler applied to the text [CLS] and to the image [CLS]; fused: the text mean and the image mean);
- :meth:`~CmptBackboneOps.compose`: the head's input from per-modality tokens, in the backbone's own layout
  (CLIP ``[image; text]``, fused ``[text; image]``: concatenation; ViLT: one vector, so a sum).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ...backbones import BackboneInterface, Stream
from ...context import ForwardContext


class CmptBackboneOps:
    """Per-backbone readout, class tokens and composition; one subclass per ``model_type``."""

    model_type: ClassVar[str]
    lora_roles: ClassVar[dict[str, str]]
    concat_order: ClassVar[tuple[str, ...] | None] = None  # None: the head reads one vector (sum of tokens)

    def __init__(self, interface: BackboneInterface) -> None:
        self.interface = interface

    @property
    def token_width(self) -> int:
        """Width ``d`` of one class token."""
        raise NotImplementedError

    def readout(self, stream: str, tokens: torch.Tensor) -> torch.Tensor:
        """Final norm and projection of ``stream``'s last-layer tokens ``[B, n, H]`` -> ``[B, n, d]``."""
        raise NotImplementedError

    def class_tokens(self, features: torch.Tensor, final: dict[str, torch.Tensor],
                     ctx: ForwardContext) -> dict[str, torch.Tensor]:
        """Each modality's real class token ``[B, d]`` from the fused ``features`` the interface returned and the
        streams' ``final`` last-layer hidden states (method tokens stripped)."""
        raise NotImplementedError

    def compose(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """The head's input ``[B, pooled_size]`` from gated per-modality tokens ``[B, d]`` (weights summing to 1
        across modalities). Concatenating backbones scale by K, so uniform weights give back the plain layout."""
        if self.concat_order is None:
            return torch.stack(list(tokens.values())).sum(0)
        return torch.cat([len(tokens) * tokens[m] for m in self.concat_order], dim=-1)

    def proxy_embedding(self, stream: Stream, modality: str) -> torch.Tensor:
        """A pretrained ``[H]`` token of ``stream``'s input space to start the proxy for ``modality`` from: the
        modality's own embedding where the stream holds it (single-stream), else the host modality's."""
        source = modality if modality in stream.modalities else stream.modalities[0]
        try:
            return self.interface.pretrained_token_embedding(source).detach().float().reshape(-1)
        except ValueError as err:
            raise ValueError(f"CMPT's proxy_init='pretrained' needs a pretrained {source!r} embedding of the "
                             f"{self.model_type} backbone, which it does not offer; pass proxy_init='random'.") from err


class ClipOps(CmptBackboneOps):
    """CLIP: two towers; the class tokens are the projected EOS (text) and CLS (image) embeddings."""

    model_type = "clip"
    lora_roles: ClassVar[dict[str, str]] = {
        "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.out_proj",
        "mlp_in": "mlp.fc1", "mlp_out": "mlp.fc2"}
    concat_order = ("image", "text")

    @property
    def token_width(self) -> int:
        return self.interface.model.config.projection_dim

    def readout(self, stream: str, tokens: torch.Tensor) -> torch.Tensor:
        model = self.interface.model
        if stream == "text":
            return model.text_projection(model.text_model.final_layer_norm(tokens))
        return model.visual_projection(model.vision_model.post_layernorm(tokens))

    def class_tokens(self, features: torch.Tensor, final: dict[str, torch.Tensor],
                     ctx: ForwardContext) -> dict[str, torch.Tensor]:
        width = self.token_width
        return {"image": features[:, :width], "text": features[:, width:]}


class ViltOps(CmptBackboneOps):
    """ViLT: one joint stream; a modality's class token is the pooler applied to its [CLS] (text: position 0,
    image: the image [CLS] that starts the image span), after ViLT's final LayerNorm."""

    model_type = "vilt"
    lora_roles: ClassVar[dict[str, str]] = {
        "q": "attention.attention.query", "k": "attention.attention.key", "v": "attention.attention.value",
        "o": "attention.output.dense", "mlp_in": "intermediate.dense", "mlp_out": "output.dense"}

    @property
    def token_width(self) -> int:
        return self.interface.model.config.hidden_size

    def readout(self, stream: str, tokens: torch.Tensor) -> torch.Tensor:
        model = self.interface.model
        batch, n, hidden = tokens.shape
        pooled = model.pooler(model.layernorm(tokens).reshape(batch * n, 1, hidden))
        return pooled.reshape(batch, n, -1)

    def class_tokens(self, features: torch.Tensor, final: dict[str, torch.Tensor],
                     ctx: ForwardContext) -> dict[str, torch.Tensor]:
        spans = ctx.spans["joint"]
        starts = [spans[m].start or 0 for m in self.interface.modalities]
        tokens = self.readout("joint", final["joint"][:, starts])
        return {m: tokens[:, k] for k, m in enumerate(self.interface.modalities)}


class FusedOps(CmptBackboneOps):
    """The fused MiniLM + EfficientNet-Lite0 default: its pooled output is ``[text mean; image mean]``."""

    model_type = "hf_missing_fused"
    lora_roles: ClassVar[dict[str, str]] = {
        "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
        "o": "attention.output.dense", "mlp_in": "intermediate.dense", "mlp_out": "output.dense"}
    concat_order = ("text", "image")

    @property
    def token_width(self) -> int:
        return self.interface.model.config.text_config.hidden_size

    def readout(self, stream: str, tokens: torch.Tensor) -> torch.Tensor:
        return tokens

    def class_tokens(self, features: torch.Tensor, final: dict[str, torch.Tensor],
                     ctx: ForwardContext) -> dict[str, torch.Tensor]:
        width = self.token_width
        return {"text": features[:, :width], "image": features[:, width:]}


OPS: dict[str, type[CmptBackboneOps]] = {cls.model_type: cls for cls in (ClipOps, ViltOps, FusedOps)}


def ops_for(interface: BackboneInterface) -> CmptBackboneOps:
    """The :class:`CmptBackboneOps` of ``interface``'s backbone, with a clear error for unknown ones."""
    if interface.model_type not in OPS:
        raise ValueError(f"CMPT does not know how to read per-modality class tokens from a {interface.model_type!r} "
                         f"backbone (known: {sorted(OPS)}); add a CmptBackboneOps subclass for it in "
                         "hf_missing/methods/cmpt/ops.py.")
    return OPS[interface.model_type](interface)
