"""REP tuner: wraps every encoder layer of every stream with :class:`RepLayer`; the adapter's buffers go to the pool."""

from __future__ import annotations

from ...backbones import BackboneInterface, Stream
from ..base import MissingMethodModel, every_layer, modality_widths
from .config import RepConfig
from .layer import RepBuffers, RepLayer, init_embeddings


class RepModel(MissingMethodModel):
    """Buffer replay prompting on every stream (CLIP: both towers; ViLT and the fused default: the joint
    stream, slots next to each modality's tokens). Every layer is wrapped so that the slots flow forward."""

    layer_cls = RepLayer
    shared_name = "buffers"

    def target_layers(self, interface: BackboneInterface, config: RepConfig) -> list[tuple[Stream, int]]:
        check_fits(interface, config)
        return every_layer(interface)

    def shared_tensors(self, interface: BackboneInterface, config: RepConfig) -> RepBuffers:
        init = init_embeddings(interface) if config.dynamic_init else None
        return RepBuffers(modality_widths(interface), config, init)


def check_fits(interface: BackboneInterface, config: RepConfig) -> None:
    """Clear errors for a buffer deeper than a stream or wider than the text position budget."""
    for stream in interface.streams:
        if config.prompt_depth > stream.num_layers:
            raise ValueError(
                f"REP prompt_depth={config.prompt_depth} exceeds the {stream.num_layers} layers of the "
                f"{interface.model_type} {stream.name} stream; pass prompt_depth <= {stream.num_layers}."
            )
    budget = interface.max_text_positions()
    if budget is not None and config.prompt_length > budget:
        raise ValueError(
            f"REP prompt_length={config.prompt_length} is longer than the {budget} text positions of this "
            f"{interface.model_type} backbone; a buffer wider than the text context it sits beside drowns the "
            f"text. Pass prompt_length <= {budget} (or load the backbone with a larger max_text_len)."
        )
