"""The fused backbone's interface: one joint stream holding text, image and feature-modality tokens."""

from __future__ import annotations

import functools
from typing import Any

import torch

from ...context import ForwardContext
from ...data.modalities import FeatureInputs, ImageInputs, ModalityInputs, TextInputs
from ..base import register_backbone
from ..bert import BertJointStreamBackbone
from ..capabilities import ClassTokens, PretrainedTokens
from ..frames import check_frames
from .configuration import MODEL_TYPE
from .modeling import FusedModel


@register_backbone
class FusedBackbone(ClassTokens, PretrainedTokens, BertJointStreamBackbone):
    """The fused MiniLM + EfficientNet-Lite0 model: one joint stream of text tokens, image tokens and the tokens of
    each feature modality (``FusedConfig.feature_modalities``), in that order."""

    model_type = MODEL_TYPE
    display_name = "The fused backbone"
    model: FusedModel

    @functools.cached_property
    def inputs(self) -> tuple[ModalityInputs, ...]:
        frames = self.model.config.feature_modalities
        return (TextInputs(), ImageInputs(), *(FeatureInputs(name, width) for name, width in frames.items()))

    @property
    def class_token_order(self) -> tuple[str, ...]:
        return self.modalities

    def bert_config(self) -> Any:
        return self.model.config.text_config

    @property
    def pooled_size(self) -> int:
        return len(self.modalities) * self.model.config.text_config.hidden_size

    def check_inputs(self, inputs: dict[str, torch.Tensor]) -> None:
        config = self.model.config
        self.check_pixels(inputs, config.image_size, "preprocess RGB images with "
                          "FusedProcessor.from_pretrained(<fused checkpoint>).image_processor.")
        max_len = config.text_config.max_position_embeddings
        self.check_text_length(inputs, max_len, f"tokenize with truncation=True, max_length={max_len}.")
        for spec in self.inputs[2:]:
            check_frames(spec, inputs, config.max_feature_frames,
                         "resample longer sequences or raise max_feature_frames.")

    def encode(self, inputs: dict[str, torch.Tensor], ctx: ForwardContext) -> torch.Tensor:
        ctx.spans = {"joint": self._spans(inputs)}
        return self.model(**inputs).pooler_output

    def _spans(self, inputs: dict[str, torch.Tensor]) -> dict[str, slice]:
        lengths = [inputs["input_ids"].shape[1], self.model.config.num_image_tokens,
                   *(inputs[spec.input_names[0]].shape[1] for spec in self.inputs[2:])]
        ends = torch.tensor(lengths).cumsum(0).tolist()
        return {m: slice(end - n, end) for m, n, end in zip(self.modalities, lengths, ends, strict=True)}

    @property
    def class_token_width(self) -> int:
        return self.model.config.text_config.hidden_size

    def readout(self, stream: str, tokens: torch.Tensor) -> torch.Tensor:
        """Identity: the pooled output is a plain mean of last-layer tokens, with no norm or projection."""
        return tokens

    def class_tokens(self, features: torch.Tensor, final: dict[str, torch.Tensor],
                     ctx: ForwardContext) -> dict[str, torch.Tensor]:
        """The per-modality means that make up the pooled output, in modality order."""
        chunks = features.split(self.class_token_width, dim=-1)
        return dict(zip(self.modalities, chunks, strict=True))

    def pretrained_token_embedding(self, modality: str) -> torch.Tensor:
        """A ``[hidden]`` embedding typical of ``modality`` (REP's dynamic initialisation), after the embedding
        LayerNorm, i.e. on the scale of the tokens that enter the joint stream.

        text: MiniLM's [CLS] word embedding. image: the projection of the mean training-image feature
        (recorded by stage 1; zeros before it) plus the image type embedding — an "average image token".
        (Before the LayerNorm the image one has norm ~78 against ~20 for stream tokens and drowns them.)
        A feature modality: its type embedding plus the projection of an all-zero frame (its bias).
        """
        embeddings = self.model.embeddings
        norm = embeddings.text.LayerNorm
        with torch.no_grad():
            if modality == "text":
                return norm(embeddings.text.word_embeddings.weight[self.model.config.cls_token_id]).clone()
            if modality == "image":
                return norm(embeddings.image_projection(embeddings.image_feature_mean)
                            + embeddings.image_type_embedding).clone()
            if modality in embeddings.frames:
                frames = embeddings.frames[modality]
                return norm(frames.projection.bias + frames.type_embedding).clone()
        raise ValueError(f"The fused backbone has modalities {self.modalities}, not {modality!r}.")
