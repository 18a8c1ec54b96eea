"""REDEEM tuner: wraps every encoder layer of every stream with :class:`RedeemLayer`.

The ``redeem_*`` entries that :class:`~hf_missing.methods.redeem.retrieval.RedeemCollator` adds (neighbour ids,
bank row of the sample itself, query vectors) reach the layers through the forward context's ``batch``.
"""

from __future__ import annotations

from ...backbones import BackboneInterface, Stream
from ..base import MissingMethodModel
from .config import RedeemConfig
from .layer import RagptLayer, RedeemLayer


class RedeemModel(MissingMethodModel):
    """REDEEM / RAGPT on every stream (CLIP: both towers; ViLT and the fused default: the joint stream)."""

    tuner_layer_cls = RedeemLayer
    layer_cls = RedeemLayer

    def target_layers(self, interface: BackboneInterface, config: RedeemConfig) -> list[tuple[Stream, int]]:
        check_fits(interface, config)
        return [(stream, i) for stream in interface.streams for i in range(stream.num_layers)]


class RagptModel(RedeemModel):
    """RAGPT adapters: :class:`RedeemModel` with its own tensor prefix."""

    tuner_layer_cls = RagptLayer
    layer_cls = RagptLayer


def check_fits(interface: BackboneInterface, config: RedeemConfig) -> None:
    """Clear errors for backbones REDEEM cannot adapt and a prompt layer beyond a stream's depth."""
    if len(interface.modalities) != 2:
        raise ValueError(f"REDEEM generates one modality from the other and needs exactly two modalities; the "
                         f"{interface.model_type} backbone has {list(interface.modalities)}.")
    for stream in interface.streams:
        if config.prompt_layer >= stream.num_layers:
            raise ValueError(f"REDEEM prompt_layer={config.prompt_layer} is beyond the {stream.num_layers} layers of "
                             f"the {interface.model_type} {stream.name} stream; pass prompt_layer < "
                             f"{stream.num_layers}.")
