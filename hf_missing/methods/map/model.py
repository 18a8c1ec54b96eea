"""MAP tuner: wraps the encoder layers of every stream with :class:`MapLayer`."""

from __future__ import annotations

import logging

from ...backbones import BackboneInterface, Stream
from ..base import MissingMethodModel
from .config import MapConfig
from .layer import MapLayer

logger = logging.getLogger(__name__)


class MapModel(MissingMethodModel):
    """Missing-aware prompts on every stream of the backbone (ViLT: the joint stream; CLIP: text and vision)."""

    layer_cls = MapLayer

    def target_layers(self, interface: BackboneInterface, config: MapConfig) -> list[tuple[Stream, int]]:
        targets = []
        for stream in interface.streams:
            if config.prompt_depth > stream.num_layers:
                logger.warning("MAP prompt_depth=%d exceeds the %d layers of the %s stream; prompting all of them.",
                               config.prompt_depth, stream.num_layers, stream.name)
            depth = stream.num_layers if config.prompt_type == "input" else min(config.prompt_depth, stream.num_layers)
            targets.extend((stream, i) for i in range(depth))
        if config.prompt_type == "attention":
            interface.enable_kv_prefix()
        return targets
