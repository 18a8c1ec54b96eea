"""REDEEM tuner: wraps every encoder layer of every stream with :class:`RedeemLayer`.

The wrapper's ``forward`` does not put batch entries other than its named inputs into the forward context, so
the tuner registers two hooks on the wrapper: before the forward they hand the ``redeem_*`` entries that
:class:`~hf_missing.methods.redeem.retrieval.RedeemCollator` adds (neighbour ids, bank row of the sample itself,
query vectors) to the layers through a context variable, and after it (also when it raises) they reset it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...backbones import BackboneInterface, Stream
from ..base import MissingMethodModel
from .config import RedeemConfig
from .layer import BATCH_PREFIX, CURRENT_BATCH, RagptLayer, RedeemLayer

HOOKS_ATTR = "_redeem_batch_tokens"


class RedeemModel(MissingMethodModel):
    """REDEEM / RAGPT on every stream (CLIP: both towers; ViLT and the fused default: the joint stream)."""

    tuner_layer_cls = RedeemLayer
    layer_cls = RedeemLayer

    def target_layers(self, interface: BackboneInterface, config: RedeemConfig) -> list[tuple[Stream, int]]:
        check_fits(interface, config)
        return [(stream, i) for stream in interface.streams for i in range(stream.num_layers)]

    def _pre_injection_hook(self, model: nn.Module, config: RedeemConfig, adapter_name: str) -> None:
        super()._pre_injection_hook(model, config, adapter_name)
        if not hasattr(model, HOOKS_ATTR):
            setattr(model, HOOKS_ATTR, [])
            model.register_forward_pre_hook(_hand_batch_to_layers, with_kwargs=True)
            model.register_forward_hook(_reset_batch, always_call=True)


class RagptModel(RedeemModel):
    """RAGPT adapters: :class:`RedeemModel` with its own tensor prefix."""

    tuner_layer_cls = RagptLayer
    layer_cls = RagptLayer


def _hand_batch_to_layers(module: nn.Module, _args: tuple, kwargs: dict[str, Any]) -> None:
    batch = {k: v for k, v in kwargs.items() if k.startswith(BATCH_PREFIX) and isinstance(v, torch.Tensor)}
    getattr(module, HOOKS_ATTR).append(CURRENT_BATCH.set(batch))


def _reset_batch(module: nn.Module, _args: tuple, _output: Any) -> None:
    CURRENT_BATCH.reset(getattr(module, HOOKS_ATTR).pop())


def check_fits(interface: BackboneInterface, config: RedeemConfig) -> None:
    """Clear errors for backbones REDEEM cannot adapt and a prompt layer beyond a stream's depth."""
    if len(interface.modalities) != 2:
        raise ValueError(f"REDEEM generates one modality from the other and needs exactly two modalities; the "
                         f"{interface.model_type} backbone has {list(interface.modalities)}.")
    for stream in interface.streams:
        if config.prompt_layer >= stream.num_layers:
            raise ValueError(f"REDEEM prompt_layer={config.prompt_layer} is beyond the {stream.num_layers} layers of "
                             f"the {interface.model_type} {stream.name} stream; pass prompt_layer < "
                             f"{stream.num_layers}.")
