"""REDEEM tuner: wraps every encoder layer of every stream with :class:`RedeemLayer`.

The ``redeem_*`` entries that :class:`~hf_missing.methods.redeem.retrieval.RedeemCollator` adds (neighbour ids,
bank row of the sample itself, query vectors) reach the layers through the forward context's ``batch``.
"""

from __future__ import annotations

from ...backbones import BackboneInterface, Stream
from ..base import MissingMethodModel, every_layer, modality_widths
from .config import RedeemConfig
from .layer import RedeemLayer, RedeemModules


class RedeemModel(MissingMethodModel):
    """REDEEM / RAGPT on every stream (CLIP: both towers; ViLT and the fused default: the joint stream), for any
    number K >= 2 of modalities (each missing one is generated from the available ones)."""

    layer_cls = RedeemLayer
    shared_name = "modules"

    def target_layers(self, interface: BackboneInterface, config: RedeemConfig) -> list[tuple[Stream, int]]:
        check_fits(interface, config)
        return every_layer(interface)

    def shared_tensors(self, interface: BackboneInterface, config: RedeemConfig) -> RedeemModules:
        streams = {s.name: s.hidden_size for s in interface.streams}
        return RedeemModules(modality_widths(interface), streams, config)


class RagptModel(RedeemModel):
    """RAGPT adapters: :class:`RedeemModel` registered under its own name, so its tensors carry the ``ragpt_``
    prefix."""


def check_fits(interface: BackboneInterface, config: RedeemConfig) -> None:
    """A clear error for a prompt layer beyond a stream's depth."""
    for stream in interface.streams:
        if config.prompt_layer >= stream.num_layers:
            raise ValueError(f"REDEEM prompt_layer={config.prompt_layer} is beyond the {stream.num_layers} layers of "
                             f"the {interface.model_type} {stream.name} stream; pass prompt_layer < "
                             f"{stream.num_layers}.")
