"""MAP prompt layer: selects each sample's prompt by its missing pattern and injects it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...missingness import ModalityPattern
from ..base import Block, MethodRun, MissingMethodLayer
from .config import MapConfig

PROMPTS = "prompts"  # the block an input-level MAP layer inserts: its own prompts, then those of earlier layers


class MapLayer(MissingMethodLayer):
    """Holds ``map_prompts[adapter]`` of shape ``[num_patterns, length, hidden]`` for one layer.

    ``input``: the selected prompt ``P[m_b]`` is prepended to the layer's input tokens and stays in the
    sequence for all later layers of the stream (MAP's accumulation: layer i sees i·length prompt
    tokens). Layers past ``prompt_depth`` hold an empty prompt and only carry the earlier ones.
    ``attention``: ``P[m_b][:length/2]`` is prepended to the keys and ``P[m_b][length/2:]`` to the values.
    """

    adapter_layer_names = ("map_prompts",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.map_prompts = nn.ParameterDict()

    def update_layer(self, adapter_name: str, config: MapConfig) -> None:
        num_patterns = ModalityPattern(tuple(config.model_settings["modalities"])).num_patterns
        length = config.prompt_length if self.index < config.prompt_depth else 0
        attention = config.prompt_type == "attention"
        self.map_prompts[adapter_name] = nn.Parameter(
            initial_prompts(num_patterns, length, self.stream.hidden_size, attention=attention))
        super().update_layer(adapter_name, config)

    def _selected(self, missing_type: torch.Tensor) -> torch.Tensor | None:
        prompts = [self.map_prompts[a][missing_type] for a in self.active_adapters if a in self.map_prompts]
        prompts = [p for p in prompts if p.shape[1]]
        return torch.cat(prompts, dim=1) if prompts else None

    def blocks(self, run: MethodRun, hidden: torch.Tensor, mask: torch.Tensor | None,
               carried: dict[str, torch.Tensor]) -> list[Block]:
        """``input``: ``[P[m_b] | prompts of earlier layers]`` at the front of the stream."""
        parts = [t for t in (self._selected(run.ctx.missing_type), carried.get(PROMPTS)) if t is not None]
        return [Block(PROMPTS, torch.cat(parts, dim=1))] if parts else []

    def adapted_forward(self, run: MethodRun, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if run.config.prompt_type == "input":
            return super().adapted_forward(run, hidden_states, *args, **kwargs)
        selected = self._selected(run.ctx.missing_type)
        if selected is None:
            return self.base_layer(hidden_states, *args, **kwargs)
        half = selected.shape[1] // 2
        with self.interface.kv_prefix(self.base_layer, self.stream.name, selected[:, :half], selected[:, half:]):
            return self.base_layer(hidden_states, *args, **kwargs)


def initial_prompts(num_patterns: int, length: int, hidden: int, *, attention: bool = False) -> torch.Tensor:
    """MAP's initialisation (the released code's ``learnt_p``): zeros with one row set to 1, a different row per
    pattern (complete row 0, missing_text row 2, missing_image row 1 for two modalities: row ``r = (P - c) mod P``).
    Attention-level prompts (``attention``) are two halves, keys then values, and the released code sets row
    ``r`` of each: rows ``r`` and ``L/2 + r`` (``r`` taken modulo ``L/2``, so a short prompt keeps one row per
    half)."""
    prompts = torch.zeros(num_patterns, length, hidden)
    if not length:
        return prompts
    half = length // 2 if attention else length
    for code in range(num_patterns):
        row = ((num_patterns - code) % num_patterns) % half
        prompts[code, row] = 1.0
        if attention:
            prompts[code, half + row] = 1.0
    return prompts
