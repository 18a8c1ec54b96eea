"""The LoRA method's encoder-layer wrapper: peft's LoRA ``Linear`` on the layer's targeted modules, nothing inserted."""

from __future__ import annotations

from typing import Any

import torch

from ..base import MissingMethodLayer
from ..peft_lora import add_lora, lora_config, resolve_lora_paths
from .config import LoraMethodConfig

TARGETS_OPTION = "lora targets"  # how target errors name the option


class LoraEncoderLayer(MissingMethodLayer):
    """Wraps one encoder layer: each adapter adds peft's LoRA to the layer's targeted Linear modules. The LoRA
    layers switch, disable and delete themselves with the adapter; the encoder layer runs as it is."""

    def update_layer(self, adapter_name: str, config: LoraMethodConfig) -> None:
        paths = resolve_lora_paths(self.base_layer, config.targets, self.interface, TARGETS_OPTION)
        lora = lora_config(config.rank, config.alpha, config.dropout, config.inference_mode)
        add_lora(self.base_layer, paths, adapter_name, lora)
        super().update_layer(adapter_name, config)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """The encoder layer's own forward: LoRA acts inside its Linear modules, and no token is inserted."""
        return self.base_layer(hidden_states, *args, **kwargs)
