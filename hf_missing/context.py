"""Per-forward state that injected layers read.

``MissingModalityForClassification.forward`` opens a :class:`ForwardContext` for the duration of one
forward pass; method layers inside the backbone read it through :func:`current_context`. It lives in a
``contextvars.ContextVar`` and is reset when the forward returns, so no state survives a forward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch

POLICIES = ("dummy", "mask", "zero")


@dataclass
class ForwardContext:
    """What one forward pass knows about missingness.

    Attributes:
        missing_type: ``[B]`` pattern codes (see :class:`hf_missing.missingness.ModalityPattern`).
        present: ``[B, K]`` bool, modality k present for sample b.
        modalities: the K modality names, in order.
        policy: how absent modalities were filled ("dummy", "mask" or "zero").
        spans: per stream, the ``slice`` each modality's tokens occupy, as set by the backbone.
        extras: free slots for methods (running buffers and the like), emptied with the context.
        aux_losses: named auxiliary loss terms (already weighted) that method layers add; the wrapper adds
            their sum to the task loss.
        batch: the batch's other tensors (collator columns beyond the named inputs, e.g. REDEEM's neighbour ids),
            for method layers.
        feature_hooks: functions ``[B, pooled] -> [B, pooled]`` that method layers register; the wrapper applies
            them, in order, to the backbone's fused representation before the head (CMPT's gated fusion).
        lockstep: run every stream layer by layer in step: layer k of every stream before layer k+1 of any (methods
            that read all modalities at one depth ask for it).
    """

    missing_type: torch.Tensor
    present: torch.Tensor
    modalities: tuple[str, ...]
    policy: str = "dummy"
    spans: dict[str, dict[str, slice]] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    feature_hooks: list[Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=list)
    batch: dict[str, torch.Tensor] = field(default_factory=dict)
    lockstep: bool = False

    def present_of(self, modality: str) -> torch.Tensor:
        """``[B]`` bool presence of one modality."""
        return self.present[:, self.modalities.index(modality)]


_CURRENT: ContextVar[ForwardContext | None] = ContextVar("hf_missing_forward_context", default=None)


@contextmanager
def forward_context(ctx: ForwardContext) -> Iterator[ForwardContext]:
    token = _CURRENT.set(ctx)
    try:
        yield ctx
    finally:
        _CURRENT.reset(token)


def maybe_context() -> ForwardContext | None:
    return _CURRENT.get()


def current_context() -> ForwardContext:
    ctx = _CURRENT.get()
    if ctx is None:
        raise RuntimeError(
            "An hf_missing adapter layer ran outside MissingModalityForClassification.forward; call the "
            "wrapper model (it passes missing_type to the layers), not its backbone directly."
        )
    return ctx
