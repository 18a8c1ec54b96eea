"""MemPrompt tuner: wraps every encoder layer of every stream with :class:`MemPromptLayer`; the adapter's memories
and shared prompts go to the pool."""

from __future__ import annotations

from ...backbones import BackboneInterface, Stream
from ..base import MissingMethodModel, every_layer, modality_widths
from .config import MemPromptConfig
from .layer import MemPromptBank, MemPromptLayer


class MemPromptModel(MissingMethodModel):
    """Memory-driven prompts on every stream (CLIP: each modality's prompts in its own tower; ViLT and the
    fused default: the joint stream, prompts next to each modality's tokens). Every layer is wrapped so that
    prompts inserted at a prompted layer flow through the later ones."""

    layer_cls = MemPromptLayer
    shared_name = "bank"

    def target_layers(self, interface: BackboneInterface, config: MemPromptConfig) -> list[tuple[Stream, int]]:
        check_depth(interface, config)
        return every_layer(interface)

    def shared_tensors(self, interface: BackboneInterface, config: MemPromptConfig) -> MemPromptBank:
        return MemPromptBank(modality_widths(interface), config)


def check_depth(interface: BackboneInterface, config: MemPromptConfig) -> None:
    """A clear error for a prompted layer that a stream does not have."""
    explicit = {"generative": config.generative_layers, "shared": config.shared_layers}
    for stream in interface.streams:
        for kind, layers in config.layer_lists().items():
            beyond = [i for i in layers if i >= stream.num_layers]
            name = "prompt_layers" if explicit[kind] is None else f"{kind}_layers"
            if beyond:
                raise ValueError(
                    f"MemPrompt {name} {beyond} do not exist in the {stream.num_layers}-layer {stream.name} stream of "
                    f"this {interface.model_type} backbone; pass layer indices 0..{stream.num_layers - 1}, e.g. "
                    f"{name}={list(range(min(6, stream.num_layers)))}."
                )
