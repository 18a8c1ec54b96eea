"""The sequence model: K precomputed feature sequences in one joint stream of BERT layers.

Joint stream = ``[tokens of modality 1; ...; tokens of modality K]`` (``config.feature_modalities`` order), one
token per frame. A frame becomes a token as in MulT's front end: a temporal 1-D convolution per modality
(``conv_kernel_size`` frames, centred) projects the frames to the shared width, then a learned modality-type
embedding and a learned position embedding (per modality, ``max_feature_frames``) are added and one LayerNorm is
applied. Frames the mask marks as padding are zeroed before the convolution (so they never reach a real frame's
token) and are left out of attention and pooling.

Pooled output (``pooled_size = K * hidden``): the attention-masked mean of each modality's last-layer tokens, in
modality order (as the fused backbone pools): the head reads every modality directly, and the per-modality means
are CMPT's class tokens.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.bert.modeling_bert import BertEncoder

from ..bert import init_bert_weights
from ..frames import FrameEmbedding, Frames, TemporalConv, frames_of, masked_means
from .configuration import SequenceConfig


class SequenceEmbeddings(nn.Module):
    """Each modality's frames -> tokens (temporal convolution + type + position embedding), one shared LayerNorm;
    returns the joint tokens and their 0/1 mask."""

    def __init__(self, config: SequenceConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.frames = nn.ModuleDict({
            name: FrameEmbedding(TemporalConv(width, hidden, config.conv_kernel_size), hidden,
                                 config.max_feature_frames[name])
            for name, width in config.feature_modalities.items()})
        self.LayerNorm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, frames: Frames) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint embeddings ``[B, L, H]`` and mask ``[B, L]`` from ``frames[name] = (values [B, T, F], mask [B, T])``
        given in ``config.feature_modalities`` order."""
        tokens, masks = [], []
        for name, (values, mask) in frames.items():
            tokens.append(self.frames[name](values * mask[..., None].to(values.dtype)))
            masks.append(mask.to(torch.long))
        return self.dropout(self.LayerNorm(torch.cat(tokens, dim=1))), torch.cat(masks, dim=1)


class SequencePreTrainedModel(PreTrainedModel):
    config_class = SequenceConfig
    base_model_prefix = "sequence"
    _no_split_modules: ClassVar[list[str]] = ["BertLayer"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation; the type embeddings are drawn too, so the modalities start apart."""
        if not init_bert_weights(module, self.config.initializer_range) and isinstance(module, FrameEmbedding):
            init.normal_(module.type_embedding, std=self.config.initializer_range)


class SequenceModel(SequencePreTrainedModel):
    """Joint-stream transformer over K feature sequences; ``forward(<m>_features=..., <m>_mask=...)`` returns the
    joint sequence and the pooled output."""

    def __init__(self, config: SequenceConfig) -> None:
        super().__init__(config)
        self.main_input_name = f"{next(iter(config.feature_modalities))}_features"
        self.embeddings = SequenceEmbeddings(config)
        self.encoder = BertEncoder(config.encoder_config())
        self.post_init()

    def forward(self, **kwargs: Any) -> BaseModelOutputWithPooling:
        """Encode a batch: ``<name>_features [B, T, F]`` and ``<name>_mask [B, T]`` (all ones if left out) of each
        modality of ``config.feature_modalities``."""
        expected = {f"{name}_{part}" for name in self.config.feature_modalities for part in ("features", "mask")}
        unknown = sorted(set(kwargs) - expected)
        if unknown:
            raise ValueError(f"The sequence backbone takes {sorted(expected)}, not {unknown}; its modalities are "
                             f"config.feature_modalities = {list(self.config.feature_modalities)}.")
        frames = frames_of(self.config.feature_modalities, kwargs, None, "The sequence backbone")
        embeddings, mask = self.embeddings(frames)
        additive = (1.0 - mask[:, None, None, :].to(embeddings.dtype)) * torch.finfo(embeddings.dtype).min
        hidden = self.encoder(embeddings, attention_mask=additive).last_hidden_state
        lengths = [values.shape[1] for values, _ in frames.values()]
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=masked_means(hidden, mask, lengths))
