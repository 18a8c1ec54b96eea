"""The sequence backbone's interface: one joint stream holding the frame tokens of K feature modalities."""

from __future__ import annotations

import functools

import torch

from ...context import ForwardContext
from ...data.modalities import FeatureInputs, ModalityInputs
from ..base import register_backbone
from ..bert import BertJointStreamBackbone
from ..capabilities import ClassTokens, PretrainedTokens
from ..frames import check_frames
from .configuration import MODEL_TYPE
from .modeling import SequenceModel


@register_backbone
class SequenceBackbone(ClassTokens, PretrainedTokens, BertJointStreamBackbone):
    """The sequence backbone: one joint stream of each feature modality's frame tokens, in
    ``SequenceConfig.feature_modalities`` order; every modality is a :class:`FeatureInputs` (placeholder: one
    all-zero frame)."""

    model_type = MODEL_TYPE
    display_name = "The sequence backbone"
    model: SequenceModel

    @functools.cached_property
    def inputs(self) -> tuple[ModalityInputs, ...]:
        return tuple(FeatureInputs(name, width) for name, width in self.model.config.feature_modalities.items())

    @property
    def class_token_order(self) -> tuple[str, ...]:
        return self.modalities

    @property
    def pooled_size(self) -> int:
        return len(self.modalities) * self.model.config.hidden_size

    def check_inputs(self, inputs: dict[str, torch.Tensor]) -> None:
        limits = self.model.config.max_feature_frames
        for spec in self.inputs:
            check_frames(spec, inputs, limits[spec.name],
                         f"resample longer {spec.name} sequences or raise max_feature_frames[{spec.name!r}].")

    def encode(self, inputs: dict[str, torch.Tensor], ctx: ForwardContext) -> torch.Tensor:
        ctx.spans = {"joint": self._spans(inputs)}
        return self.model(**inputs).pooler_output

    def _spans(self, inputs: dict[str, torch.Tensor]) -> dict[str, slice]:
        spans, start = {}, 0
        for spec in self.inputs:
            length = inputs[spec.input_names[0]].shape[1]
            spans[spec.name] = slice(start, start + length)
            start += length
        return spans

    @property
    def class_token_width(self) -> int:
        return self.model.config.hidden_size

    def readout(self, stream: str, tokens: torch.Tensor) -> torch.Tensor:
        """Identity: the pooled output is a plain mean of last-layer tokens, with no norm or projection."""
        return tokens

    def class_tokens(self, features: torch.Tensor, final: dict[str, torch.Tensor],
                     ctx: ForwardContext) -> dict[str, torch.Tensor]:
        """The per-modality means that make up the pooled output, in modality order."""
        return dict(zip(self.modalities, features.split(self.class_token_width, dim=-1), strict=True))

    def pretrained_token_embedding(self, modality: str) -> torch.Tensor:
        """A ``[hidden]`` embedding typical of ``modality`` (REP's dynamic initialisation): the token of an all-zero
        frame (its convolution's bias plus its type embedding) after the embedding LayerNorm, on the scale of the
        tokens that enter the stream."""
        embeddings = self.model.embeddings
        if modality not in embeddings.frames:
            raise ValueError(f"The sequence backbone has modalities {list(self.modalities)}, not {modality!r}.")
        frames = embeddings.frames[modality]
        with torch.no_grad():
            return embeddings.LayerNorm(frames.projection.bias + frames.type_embedding).clone()
