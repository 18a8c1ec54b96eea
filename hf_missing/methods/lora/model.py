"""LoRA tuner: wraps every encoder layer of every stream with :class:`LoraEncoderLayer` (peft LoRA inside)."""

from __future__ import annotations

from ...backbones import BackboneInterface, Stream
from ..base import MissingMethodModel, every_layer
from ..peft_lora import check_lora_targets
from .config import LoraMethodConfig
from .layer import TARGETS_OPTION, LoraEncoderLayer


class LoraMethodModel(MissingMethodModel):
    """peft LoRA on the targeted Linear layers (default q and v) of every encoder layer of every stream; the head and
    the pooler train through ``modules_to_save``. Its LoRA keys are peft's own (``lora_A`` / ``lora_B``), which
    carry the method's prefix ``lora_``."""

    layer_cls = LoraEncoderLayer

    def target_layers(self, interface: BackboneInterface, config: LoraMethodConfig) -> list[tuple[Stream, int]]:
        """Every layer of every stream, after checking the targets against the backbone (clear errors before
        anything is injected)."""
        check_lora_targets(interface, config.targets, TARGETS_OPTION)
        return every_layer(interface)
