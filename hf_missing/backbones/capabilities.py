"""Optional backbone capabilities: small mixins a backbone interface adds when it can, and the check methods use.

- :class:`ClassTokens`: per-modality class tokens and the fusion that composes them (CMPT);
- :class:`PretrainedTokens`: pretrained embeddings that stand for each modality (REP's eq. 10, CMPT's proxies).

A method that needs one asks :func:`capability`, which names the missing mixin and the fix instead of failing
with an AttributeError deep inside injection.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, TypeVar

import torch

from ..context import ForwardContext
from .base import BackboneInterface

T = TypeVar("T")


class ClassTokens(ABC):
    """Per-modality class tokens and the fusion that composes them (CMPT's proxies, its gated fusion)."""

    # How the fused feature is laid out from per-modality class tokens: concatenated in this order, or (None)
    # one vector, their sum.
    class_token_order: ClassVar[tuple[str, ...] | None] = None

    @property
    @abstractmethod
    def class_token_width(self) -> int:
        """Width of one modality's class token."""

    @abstractmethod
    def readout(self, stream: str, tokens: torch.Tensor) -> torch.Tensor:
        """The final norm and projection that turn ``stream``'s last-layer tokens ``[B, n, H]`` into class-token
        space ``[B, n, class_token_width]``."""

    @abstractmethod
    def class_tokens(self, features: torch.Tensor, final: dict[str, torch.Tensor],
                     ctx: ForwardContext) -> dict[str, torch.Tensor]:
        """Each modality's real class token ``[B, class_token_width]`` from ``encode``'s ``features`` and the
        streams' ``final`` last-layer hidden states (method tokens stripped)."""

    def compose(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """The fused feature ``[B, pooled_size]`` from per-modality tokens weighted to sum to 1 across modalities;
        concatenating backbones scale by K, so uniform weights give back ``encode``'s own layout."""
        if self.class_token_order is None:
            return torch.stack(list(tokens.values())).sum(0)
        return torch.cat([len(tokens) * tokens[m] for m in self.class_token_order], dim=-1)


class PretrainedTokens(ABC):
    """Pretrained embeddings that stand for each modality (REP's task-aware initialisation, eq. 10; CMPT's
    proxy initialisation)."""

    @abstractmethod
    def pretrained_token_embedding(self, modality: str) -> torch.Tensor:
        """A ``[hidden]`` embedding of ``modality``'s stream input space (CLIP: the end-of-text token for text, the
        class embedding for images); ValueError for a modality it has none for."""


def capability(interface: BackboneInterface, kind: type[T], needed_by: str, fix: str) -> T:
    """``interface`` as the optional capability ``kind``, or a ValueError that names what is missing and ``fix``."""
    if not isinstance(interface, kind):
        raise ValueError(f"{needed_by} needs {kind.__name__} ({kind.__doc__.splitlines()[0]}), which the "
                         f"{interface.model_type} backbone interface does not offer; {fix}")
    return interface
