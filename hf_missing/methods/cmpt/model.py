"""CMPT tuner: wraps every encoder layer of every stream with :class:`CmptLayer` (proxies + peft LoRA)."""

from __future__ import annotations

from ...backbones import BackboneInterface, ClassTokens, Stream, capability
from ..base import MissingMethodModel, every_layer
from ..peft_lora import check_lora_targets
from .config import CmptConfig
from .layer import LORA_OPTION, CmptLayer, CmptTensors, proxied_modalities


class CmptModel(MissingMethodModel):
    """Cross-modal proxy tokens on every stream (CLIP: the image proxy in the text tower and the text proxy in
    the vision tower; ViLT and the fused default: both proxies in the joint stream), LoRA on the targeted Linear
    layers of every encoder layer, and a gate over the per-modality class tokens. One adapter: proxies, gate and
    LoRA save and load together, all under CMPT's key prefix."""

    layer_cls = CmptLayer
    shared_name = "tensors"

    def target_layers(self, interface: BackboneInterface, config: CmptConfig) -> list[tuple[Stream, int]]:
        """Every layer of every stream, after checking the options against the backbone (clear errors before
        anything is injected)."""
        capability(interface, ClassTokens, "CMPT's proxies and gated fusion",
                   "add the ClassTokens mixin (class_token_width, readout, class_tokens) to its backbone interface.")
        proxied_modalities(interface, config)
        check_lora_targets(interface, config.lora_targets, LORA_OPTION)
        return every_layer(interface)

    def shared_tensors(self, interface: BackboneInterface, config: CmptConfig) -> CmptTensors:
        return CmptTensors(interface, config)
