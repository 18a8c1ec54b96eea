"""REP tuner: wraps every encoder layer of every stream with :class:`RepLayer`; the adapter's buffers go to the pool."""

from __future__ import annotations

import warnings

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
        init = init_embeddings(interface) if config.dynamic_init and config.init_source == "pretrained" else None
        return RepBuffers(modality_widths(interface), config, init)


def check_fits(interface: BackboneInterface, config: RepConfig) -> None:
    """Clear errors for a buffer deeper than a stream or wider than the text position budget; a warning when the
    orthogonality loss (eq. 6) has nothing it can compare."""
    for stream in interface.streams:
        if config.prompt_depth > stream.num_layers:
            raise ValueError(
                f"REP prompt_depth={config.prompt_depth} exceeds the {stream.num_layers} layers of the "
                f"{interface.model_type} {stream.name} stream; pass prompt_depth <= {stream.num_layers}."
            )
    buffers = int(config.use_private_buffer) + int(config.dual_buffers)
    slots, budget = buffers * config.prompt_length, interface.max_text_positions()
    if budget is not None and slots > budget:
        raise ValueError(
            f"REP inserts {slots} slots next to each modality (prompt_length={config.prompt_length} for each of its "
            f"{buffers} buffers), more than the {budget} text positions of this {interface.model_type} backbone; "
            f"buffers wider than the text context they sit beside drown the text. Pass prompt_length <= "
            f"{budget // buffers} (or load the backbone with a larger max_text_len)."
        )
    widths = set(modality_widths(interface).values())
    if config.ortho_weight > 0 and config.use_private_buffer and not config.dual_buffers and len(widths) > 1:
        warnings.warn(f"REP's orthogonality loss (eq. 6) compares private buffers through the shared buffer's "
                      f"projections; without a shared buffer the {interface.model_type} backbone's widths "
                      f"{sorted(widths)} differ, so the loss is 0. Pass ortho_weight=0 to say so, or keep "
                      "dual_buffers=True.", UserWarning, stacklevel=2)
