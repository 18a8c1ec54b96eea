"""The backbone interface: what a method may know about a multimodal transformer.

Methods never reach into ``vision_model.encoder.layers[3]``; they ask the interface for its streams
(ordered encoder layers, hidden size, causality), the token span of each modality, its modalities' declared
inputs and placeholders (:mod:`hf_missing.data.modalities`), and the pooled features the head reads. Adding a
backbone is one file that subclasses :class:`BackboneInterface` and calls :func:`register_backbone`.
"""

from __future__ import annotations

import functools
import types
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel

from ..context import ForwardContext, maybe_context
from ..data.modalities import ImageInputs, ModalityInputs, TextInputs

KV_PREFIX_ATTR = "_hf_missing_kv_prefix"


@dataclass(frozen=True)
class Stream:
    """One token sequence the backbone runs through its own encoder layers.

    Attributes:
        name: "text", "vision" (two-stream backbones) or "joint" (single-stream).
        layers_path: dotted path, relative to the backbone model, of the ``ModuleList`` of layers.
        hidden_size: width of the tokens.
        num_layers: number of encoder layers.
        modalities: modalities whose tokens the stream holds.
        causal: whether tokens attend only to earlier tokens (CLIP text).
        attention_path: dotted path, relative to one layer, of the self-attention module that
            attention-level (prefix) prompts extend.
    """

    name: str
    layers_path: str
    hidden_size: int
    num_layers: int
    modalities: tuple[str, ...]
    attention_path: str
    causal: bool = False


class BackboneInterface(ABC):
    """Wraps one pretrained multimodal model; a method talks to the backbone only through this."""

    model_type: ClassVar[str]
    display_name: ClassVar[str] = ""  # how errors name the backbone (CLIP, ViLT, ...); default: model_type
    # Modules of the backbone that every method trains (the papers' "pooler"), relative to the backbone.
    pooler_modules: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self._check_declaration()
        self._install_policy_hooks()

    def _check_declaration(self) -> None:
        """Modality names and model inputs must be distinct: a shared input name would make the placeholder checks
        and the collator read one modality's tensor as another's."""
        names = [n for spec in self.inputs for n in spec.input_names]
        shared = sorted({n for n in names if names.count(n) > 1})
        if shared or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"The {self.model_type} backbone declares modalities {list(self.modalities)} whose inputs "
                             f"{shared or 'names'} repeat; give each modality its own name and inputs (a feature "
                             "modality 'x' reads x_features and x_mask, so 'attention' or 'pixel' clash with text "
                             "and image).")

    # ---- structure -------------------------------------------------------------------------------
    @property
    @abstractmethod
    def streams(self) -> tuple[Stream, ...]:
        """The token sequences, in the order the backbone runs them."""

    @property
    @abstractmethod
    def pooled_size(self) -> int:
        """Width of :meth:`encode`'s fused representation."""

    def stream(self, name: str) -> Stream:
        for stream in self.streams:
            if stream.name == name:
                return stream
        raise KeyError(f"{self.model_type} has no stream {name!r}; streams: {[s.name for s in self.streams]}.")

    def stream_of(self, modality: str) -> Stream:
        """The stream that holds ``modality``'s tokens."""
        return next(s for s in self.streams if modality in s.modalities)

    def layers(self, stream: str) -> nn.ModuleList:
        return self.model.get_submodule(self.stream(stream).layers_path)

    def signature(self) -> dict[str, Any]:
        """What an adapter must match: backbone type and each stream's width and depth."""
        return {
            "model_type": self.model_type,
            "streams": {s.name: [s.hidden_size, s.num_layers] for s in self.streams},
        }

    # ---- modalities -----------------------------------------------------------------------------
    @functools.cached_property
    def inputs(self) -> tuple[ModalityInputs, ...]:
        """The backbone's modalities, in ``missing_type`` order, each with its model inputs, placeholder and how
        to recognise it (:mod:`hf_missing.data.modalities`); text and image unless a backbone says otherwise.
        Fixed by the model's config, so built once (forward reads it on every call)."""
        return (TextInputs(), ImageInputs())

    @functools.cached_property
    def modalities(self) -> tuple[str, ...]:
        """The modality names, in ``missing_type`` order."""
        return tuple(m.name for m in self.inputs)

    def modality(self, name: str) -> ModalityInputs:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(f"{self.model_type} has no modality {name!r}; modalities: {list(self.modalities)}.")

    # The encoder-layer Linear that plays each attention / MLP role (for LoRA targets given by role).
    lora_roles: ClassVar[dict[str, str]] = {}

    def max_text_positions(self) -> int | None:
        """How many text positions the backbone was built for (None when it sets no limit)."""
        return None

    @abstractmethod
    def check_inputs(self, inputs: dict[str, torch.Tensor]) -> None:
        """Raise a clear error on inputs this backbone cannot take (wrong image size, too long text)."""

    def check_pixels(self, inputs: dict[str, torch.Tensor], size: int | None, fix: str) -> None:
        """``pixel_values`` must be RGB ``[B, 3, H, W]``, with H = W = ``size`` when the backbone takes one size."""
        pixels = inputs["pixel_values"]
        shape = f"[B, 3, {size}, {size}]" if size else "[B, 3, H, W]"
        if pixels.dim() != 4 or pixels.shape[1] != 3 or (size and tuple(pixels.shape[-2:]) != (size, size)):
            raise ValueError(f"{self.display_name or self.model_type} expects pixel_values of shape {shape}, got "
                             f"{tuple(pixels.shape)}; {fix}")

    def check_text_length(self, inputs: dict[str, torch.Tensor], max_len: int, fix: str) -> None:
        """At most ``max_len`` text tokens (the backbone's positions)."""
        length = inputs["input_ids"].shape[1]
        if length > max_len:
            raise ValueError(f"{self.display_name or self.model_type} takes at most {max_len} text tokens, got "
                             f"{length}; {fix}")

    @abstractmethod
    def encode(self, inputs: dict[str, torch.Tensor], ctx: ForwardContext) -> torch.Tensor:
        """Run the backbone under ``ctx`` and return the fused representation ``[B, pooled_size]``.

        With ``ctx.lockstep`` the streams run layer by layer in step (:func:`run_in_lockstep`): layer k of every
        stream before layer k+1 of any. A single-stream backbone is in lockstep by construction.
        """

    # ---- policies --------------------------------------------------------------------------------
    @abstractmethod
    def _install_policy_hooks(self) -> None:
        """Register hooks that apply the "mask" / "zero" policies when a context asks for them."""

    @staticmethod
    def zero_rows(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Zero sample b of ``x`` where ``keep[b]`` is False."""
        return x * keep.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))

    # ---- attention-level prompts ------------------------------------------------------------------
    @abstractmethod
    def enable_kv_prefix(self) -> None:
        """Make the self-attention modules accept key/value prefixes (idempotent)."""

    @contextmanager
    def kv_prefix(self, layer: nn.Module, stream: str, keys: torch.Tensor,
                  values: torch.Tensor) -> Iterator[None]:
        """Within the block, ``layer``'s self-attention prepends ``keys``/``values`` ``[B, n, H]`` to its
        keys and values (prefix tuning, MAP's attention-level prompts). Reset on exit."""
        attention = layer.get_submodule(self.stream(stream).attention_path)
        setattr(attention, KV_PREFIX_ATTR, (keys, values))
        try:
            yield
        finally:
            setattr(attention, KV_PREFIX_ATTR, None)


class JointStreamBackbone(BackboneInterface):
    """A single joint stream whose ``model.embeddings`` returns ``(embeddings, attention mask)`` (ViLT, the fused
    default): the "zero" / "mask" policies and attention-level prefixes, shared by such backbones. With one stream,
    ``encode`` is in lockstep whatever ``ctx.lockstep`` says.

    Subclasses set ``prefixed_attention``: the self-attention ``forward`` that reads ``KV_PREFIX_ATTR``.
    """

    prefixed_attention: ClassVar[Any]

    def _install_policy_hooks(self) -> None:
        """"zero": the missing modality's embeddings are zeroed; "mask": its tokens are removed from
        attention (their entries of the joint attention mask are set to 0)."""
        self.model.embeddings.register_forward_hook(self._policy_hook)

    def _policy_hook(self, _module: nn.Module, _args: tuple, output: tuple[torch.Tensor, torch.Tensor]):
        ctx = policy_context()
        if ctx is None:
            return None
        embeddings, masks = output
        keep = torch.ones(masks.shape, dtype=embeddings.dtype, device=masks.device)
        for modality, span in ctx.spans["joint"].items():
            keep[:, span] = ctx.present_of(modality).to(keep.dtype)[:, None]
        if ctx.policy == "zero":
            return embeddings * keep[..., None], masks
        return embeddings, masks * keep.to(masks.dtype)

    def enable_kv_prefix(self) -> None:
        stream = self.streams[0]
        for layer in self.layers(stream.name):
            attention = layer.get_submodule(stream.attention_path)
            attention.forward = types.MethodType(type(self).prefixed_attention, attention)


# ---- lockstep encoding --------------------------------------------------------------------------
@dataclass
class LockstepStream:
    """One stream's share of a lockstep pass (:func:`run_in_lockstep`).

    Attributes:
        layers: the stream's encoder layers; each is looked up in the list when it runs, so a module that has
            replaced an entry (an adapter's tuner layer) is the one called.
        hidden: the hidden states ``[B, L, H]`` that enter the first layer.
        args: positional arguments every layer gets after the hidden states (e.g. the attention mask).
        kwargs: keyword arguments every layer gets (e.g. ``is_causal``).
    """

    layers: nn.ModuleList
    hidden: torch.Tensor
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def run_in_lockstep(streams: Sequence[LockstepStream]) -> list[torch.Tensor]:
    """Run the ``streams`` layer by layer in step, layer k of every stream (in the given order) before layer k+1 of
    any; a stream with fewer layers finishes early. Each layer maps hidden states to hidden states (a tensor).
    Returns each stream's last hidden state, in order."""
    hidden = [stream.hidden for stream in streams]
    for depth in range(max((len(stream.layers) for stream in streams), default=0)):
        for i, stream in enumerate(streams):
            if depth < len(stream.layers):
                hidden[i] = stream.layers[depth](hidden[i], *stream.args, **stream.kwargs)
    return hidden


# ---- token insertion helpers shared by every method ----------------------------------------------
def _blocked(mask: torch.Tensor) -> float | bool:
    return False if mask.dtype == torch.bool else torch.finfo(mask.dtype).min


def _visible(mask: torch.Tensor) -> float | bool:
    return True if mask.dtype == torch.bool else 0.0


def causal_mask(length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive ``[1, 1, L, L]`` causal mask (0 where a query may attend, dtype min elsewhere)."""
    allowed = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    mask = torch.zeros(length, length, dtype=dtype, device=device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[None, None]


def extend_attention_mask(mask: torch.Tensor | None, n_new: int, length: int, causal: bool,
                          dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """The attention mask for ``n_new`` tokens inserted in front of a sequence of ``length`` tokens.

    Every original query sees the new keys; new queries see each other (causally in a causal stream)
    and, in a bidirectional stream, the original keys that the first original query sees (its padding
    mask), never padding. Accepts ``None``, boolean (True = attend) or additive 4-D masks ``[B, 1, Lq, L]``
    with ``Lq`` in {1, L}, and returns the same kind with ``n_new`` more keys (and queries when Lq = L).
    """
    if n_new == 0:
        return mask
    if mask is None:
        if not causal:
            return None
        mask = causal_mask(length, dtype, device)
    batch, heads, n_queries, _ = mask.shape
    new_keys = torch.full((batch, heads, n_queries, n_new), _visible(mask), dtype=mask.dtype, device=mask.device)
    mask = torch.cat([new_keys, mask], dim=-1)
    if n_queries == 1:
        return mask
    if causal:
        rows = torch.full((batch, heads, n_new, n_new + length), _blocked(mask), dtype=mask.dtype,
                          device=mask.device)
        allowed = torch.ones(n_new, n_new, dtype=torch.bool, device=mask.device).tril()
        rows[..., :n_new] = torch.where(allowed, _visible(mask), _blocked(mask)).to(mask.dtype)
    else:
        rows = mask[:, :, :1, :].expand(batch, heads, n_new, n_new + length)
    return torch.cat([rows, mask], dim=2)


def insert_tokens(hidden: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None,
                  causal: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Put ``tokens [B, n, H]`` in front of ``hidden [B, L, H]`` and extend ``mask`` to match."""
    mask = extend_attention_mask(mask, tokens.shape[1], hidden.shape[1], causal, hidden.dtype, hidden.device)
    return torch.cat([tokens.to(hidden.dtype), hidden], dim=1), mask


def insert_blocks(hidden: torch.Tensor, mask: torch.Tensor | None,
                  blocks: list[tuple[int, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor | None, list[slice]]:
    """Insert ``tokens [B, n, H]`` before position ``start`` of a bidirectional sequence, for each
    ``(start, tokens)`` in ``blocks`` (starts refer to the original sequence, ascending).

    Every query sees the new keys; new queries see what the first original query sees (its padding mask).
    Returns the longer sequence, its mask and where each block now sits (for :func:`remove_blocks`).
    """
    length = hidden.shape[1]
    pieces, where, source, cursor = [], [], [], 0
    for start, tokens in blocks:
        start, n = min(max(start, cursor), length), tokens.shape[1]
        pieces += [hidden[:, cursor:start], tokens.to(hidden.dtype)]
        where.append(slice(len(source) + start - cursor, len(source) + start - cursor + n))
        source += [*range(cursor, start), *([-1] * n)]
        cursor = start
    pieces.append(hidden[:, cursor:])
    source += range(cursor, length)
    joined = torch.cat(pieces, dim=1)
    if mask is None:
        return joined, None, where
    src = torch.tensor(source, device=mask.device)
    new = src < 0
    mask = mask.index_select(-1, src.clamp(min=0)).masked_fill(new, _visible(mask))
    if mask.shape[2] > 1:
        mask = mask.index_select(2, torch.where(new, 0, src))
    return joined, mask, where


def remove_blocks(hidden: torch.Tensor, where: list[slice]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The inverse of :func:`insert_blocks`: the inserted blocks and the original sequence."""
    blocks = [hidden[:, span] for span in where]
    keep = torch.ones(hidden.shape[1], dtype=torch.bool, device=hidden.device)
    for span in where:
        keep[span] = False
    return blocks, hidden[:, keep]


def prepend_kv(keys: torch.Tensor, values: torch.Tensor, prefix: tuple[torch.Tensor, torch.Tensor],
               mask: torch.Tensor | None, is_causal: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Prepend prefix keys/values ``[B, n, H]`` to per-head ``keys``/``values`` ``[B, h, L, d]``.

    The mask gains ``n`` visible key columns; a causal stream with no mask gets an explicit one.
    """
    prefix_k, prefix_v = prefix
    batch, heads, length, head_dim = keys.shape
    n = prefix_k.shape[1]

    def split_heads(x: torch.Tensor) -> torch.Tensor:
        return x.to(keys.dtype).view(batch, n, heads, head_dim).transpose(1, 2)

    if mask is None and is_causal:
        mask = causal_mask(length, keys.dtype, keys.device)
    if mask is not None:
        cols = torch.full((*mask.shape[:3], n), _visible(mask), dtype=mask.dtype, device=mask.device)
        mask = torch.cat([cols, mask.expand(*mask.shape[:3], length)], dim=-1)
    return torch.cat([split_heads(prefix_k), keys], 2), torch.cat([split_heads(prefix_v), values], 2), mask


def kv_prefixed(original: Callable[..., Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate ``prefixed(self, hidden_states, attention_mask, prefix, ...)``, a self-attention forward that prepends
    the key/value ``prefix``, into a forward that runs it only while :meth:`BackboneInterface.kv_prefix` has set a
    prefix on the module, and the module's ``original`` forward otherwise."""

    def decorate(prefixed: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(prefixed)
        def forward(self: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    *args: Any, **kwargs: Any) -> Any:
            prefix = getattr(self, KV_PREFIX_ATTR, None)
            if prefix is None:
                return original(self, hidden_states, attention_mask, *args, **kwargs)
            return prefixed(self, hidden_states, attention_mask, prefix, *args, **kwargs)

        return forward

    return decorate


def prefixed_projections(hidden_states: torch.Tensor, projections: tuple[nn.Module, nn.Module, nn.Module],
                         head_dim: int, prefix: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
                         is_causal: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-head queries, keys and values ``[B, h, L, d]`` of ``hidden_states`` through the attention's query, key and
    value ``projections``, with the key/value ``prefix`` prepended (:func:`prepend_kv`) and the mask widened to
    match: the shared part of every backbone's prefixed self-attention."""
    shape = (*hidden_states.shape[:-1], -1, head_dim)
    queries, keys, values = (p(hidden_states).view(shape).transpose(1, 2) for p in projections)
    keys, values, mask = prepend_kv(keys, values, prefix, mask, is_causal)
    return queries, keys, values, mask


# ---- registry ----------------------------------------------------------------------------------
BACKBONES: dict[str, type[BackboneInterface]] = {}


def register_backbone(cls: type[BackboneInterface]) -> type[BackboneInterface]:
    BACKBONES[cls.model_type] = cls
    return cls


def backbone_interface_for(model: PreTrainedModel) -> BackboneInterface:
    model_type = model.config.model_type
    if model_type not in BACKBONES:
        raise ValueError(
            f"hf_missing has no backbone interface for model_type {model_type!r}; supported: "
            f"{sorted(BACKBONES)}. Add one file under hf_missing/backbones/ that subclasses BackboneInterface."
        )
    return BACKBONES[model_type](model)


def policy_context() -> ForwardContext | None:
    """The current context when it asks for a non-dummy policy (hooks no-op otherwise)."""
    ctx = maybe_context()
    return ctx if ctx is not None and ctx.policy != "dummy" else None
