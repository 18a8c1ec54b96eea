"""CMPT tuner: wraps every encoder layer of every stream with :class:`CmptLayer` (proxies + peft LoRA)."""

from __future__ import annotations

from peft.tuners.tuners_utils import _remove_adapter_name_from_state_dict_key

from ...backbones import BackboneInterface, Stream
from ..base import MissingMethodModel
from .config import CmptConfig
from .layer import CmptLayer, proxied_modalities, resolve_lora_paths
from .ops import install_feature_hooks, ops_for


class CmptModel(MissingMethodModel):
    """Cross-modal proxy tokens on every stream (CLIP: the image proxy in the text tower and the text proxy in
    the vision tower; ViLT and the fused default: both proxies in the joint stream), LoRA on the targeted Linear
    layers of every encoder layer, and a gate over the per-modality class tokens. One adapter: proxies, gate and
    LoRA save and load together."""

    tuner_layer_cls = CmptLayer
    layer_cls = CmptLayer

    def target_layers(self, interface: BackboneInterface, config: CmptConfig) -> list[tuple[Stream, int]]:
        """Every layer of every stream, after checking the options against the backbone (clear errors before
        anything is injected)."""
        ops = ops_for(interface)
        proxied_modalities(interface, config)
        for stream in interface.streams:
            resolve_lora_paths(interface.layers(stream.name)[0], config.lora_targets, ops)
        install_feature_hooks(interface)
        return [(stream, i) for stream in interface.streams for i in range(stream.num_layers)]

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        """CMPT containers (``cmpt_proxies.<adapter>``, ``cmpt_gate.<adapter>.linear.weight``) as in the base
        class; the nested peft LoRA keys (``q_proj.lora_A.<adapter>.weight``) as peft itself does."""
        if f".{cls.prefix}" in key:
            return super()._remove_adapter_name_from_key(key, adapter_name)
        return _remove_adapter_name_from_state_dict_key(key, adapter_name)
