"""Feature modalities: precomputed frame sequences ``<name>_features [B, T, F]`` + ``<name>_mask [B, T]``
(:class:`~hf_missing.data.modalities.FeatureInputs`), as the fused backbone's extra modalities and every modality of
the sequence backbone take them: the config check, the frame tokens, reading and checking the inputs, and the
per-modality masked mean that both backbones pool with."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..data.modalities import FeatureInputs

Frames = dict[str, tuple[torch.Tensor, torch.Tensor]]  # feature modality -> (values [B, T, F], mask [B, T])
MAX_FRAME_WIDTH = 2**16  # features per frame (BERT-large text features: 1024; COVAREP 74; Facet 35)
MAX_FRAMES = 2**16  # frames per sequence (position embeddings are allocated for each)


def check_feature_modalities(value: Mapping[str, Any] | None, field: str,
                             reserved: Iterable[str] = ()) -> dict[str, int]:
    """``value`` as a dict of modality name -> frame width, or a ValueError naming what is wrong: each name an
    identifier not in ``reserved``, each width an int in [1, MAX_FRAME_WIDTH] (a config file is untrusted: a width
    sizes an allocation)."""
    if value is not None and not isinstance(value, Mapping):
        raise ValueError(f"{field} maps modality names to frame widths, e.g. {{'audio': 74}}; got "
                         f"{type(value).__name__}.")
    value, reserved = dict(value or {}), tuple(reserved)
    bad = {k: v for k, v in value.items() if not isinstance(k, str) or k in reserved or not k.isidentifier()
           or not _bounded_int(v, MAX_FRAME_WIDTH)}
    if bad:
        taken = f" other than {list(reserved)}" if reserved else ""
        raise ValueError(f"{field} maps new modality names (identifiers{taken}) to frame widths (ints in "
                         f"[1, {MAX_FRAME_WIDTH}]), got {bad}.")
    return value


def ordered_modalities(modalities: dict[str, int], order: Any) -> dict[str, int]:
    """``modalities`` in the stored ``order`` (``modality_order`` of a config; None: the dict's own order).
    transformers writes ``config.json`` with sorted keys, so a config that did not store the order would reload its
    feature modalities alphabetically, silently swapping their spans, missing-type codes and adapter tensors."""
    if order is None:
        return modalities
    if (not isinstance(order, list | tuple) or not all(isinstance(name, str) for name in order)
            or sorted(order) != sorted(modalities)):
        raise ValueError(f"modality_order must list each of feature_modalities {sorted(modalities)} once, got "
                         f"{order!r}.")
    return {name: modalities[name] for name in order}


def check_frame_limit(value: Any, field: str) -> int:
    """A maximum frame count: an int in [1, MAX_FRAMES], else a ValueError."""
    return check_positive_int(value, field, MAX_FRAMES, "frames per sequence")


def check_positive_int(value: Any, field: str, limit: int, meaning: str) -> int:
    """``value`` if it is an int in [1, ``limit``] (a size read from an untrusted config), else a ValueError."""
    if not _bounded_int(value, limit):
        raise ValueError(f"{field} must be an int in [1, {limit}] ({meaning}), got {value!r}.")
    return value


def _bounded_int(value: Any, limit: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= limit


class TemporalConv(nn.Conv1d):
    """MulT's temporal projection: a 1-D convolution over the frames of ``[B, T, F]`` into ``[B, T, H]`` (odd
    kernel, "same" zero padding, so frame t sees frames t - k//2 .. t + k//2)."""

    def __init__(self, width: int, hidden: int, kernel_size: int) -> None:
        super().__init__(width, hidden, kernel_size, padding=kernel_size // 2)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return super().forward(values.transpose(1, 2)).transpose(1, 2)


class FrameEmbedding(nn.Module):
    """Tokens of a feature modality: ``projection`` of each frame (``[B, T, F] -> [B, T, H]``: a ``Linear`` or a
    :class:`TemporalConv`) plus a type and a position embedding."""

    def __init__(self, projection: nn.Module, hidden: int, max_frames: int) -> None:
        super().__init__()
        self.projection = projection
        self.type_embedding = nn.Parameter(torch.zeros(hidden))
        self.position_embeddings = nn.Embedding(max_frames, hidden)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        positions = self.position_embeddings.weight[: values.shape[1]]
        return self.projection(values) + self.type_embedding + positions


def frames_of(names: Iterable[str], kwargs: Mapping[str, Any], like: torch.Tensor | None, owner: str) -> Frames:
    """Each feature modality's ``(values, mask)`` from ``<name>_features`` / ``<name>_mask`` in ``kwargs`` (mask:
    all ones when not given, of ``like``'s dtype, else long)."""
    frames = {}
    for name in names:
        values = kwargs.get(f"{name}_features")
        if values is None:
            raise ValueError(f"{owner} has a {name!r} modality: pass {name}_features [B, T, F] (and {name}_mask "
                             f"[B, T]); MissingModalityCollator fills a missing one.")
        mask = kwargs.get(f"{name}_mask")
        if mask is None:
            mask = torch.ones(values.shape[:2], dtype=like.dtype if like is not None else torch.long,
                              device=values.device)
        frames[name] = (values, mask)
    return frames


def check_frames(spec: FeatureInputs, inputs: Mapping[str, torch.Tensor], limit: int, fix: str) -> None:
    """``spec``'s values must be ``[B, T, F]`` with ``1 <= T <= limit`` and its mask (if given) ``[B, T]``."""
    values_name, mask_name = spec.input_names
    values, mask = inputs[values_name], inputs.get(mask_name)
    if values.dim() != 3 or values.shape[-1] != spec.width or not 1 <= values.shape[1] <= limit:
        raise ValueError(f"{values_name} must have shape [B, T, {spec.width}] with 1 <= T <= {limit} frames, got "
                         f"{tuple(values.shape)}; {fix}")
    if mask is not None and mask.shape != values.shape[:2]:
        raise ValueError(f"{mask_name} must have shape {tuple(values.shape[:2])} (one entry per frame of "
                         f"{values_name}), got {tuple(mask.shape)}.")


def masked_means(hidden: torch.Tensor, mask: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """The attention-masked mean of each modality's tokens of ``hidden [B, L, H]`` (``lengths``: their token
    counts, in order), concatenated ``[B, K * H]``; a modality with no attended token gives zeros."""
    means = []
    for tokens, weights in zip(hidden.split(lengths, dim=1), mask.split(lengths, dim=1), strict=True):
        weights = weights.to(hidden.dtype)[..., None]
        means.append((tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0))
    return torch.cat(means, dim=-1)
