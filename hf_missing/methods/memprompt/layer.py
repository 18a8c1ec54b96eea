"""MemPrompt's prompt memories (eq. 4-6), shared prompts (eq. 7) and the encoder-layer wrapper that places
them (eq. 2).

Before every prompted layer ``i`` each modality ``m`` gets a block ``[p_s,m^i, p_g,m^i]``: the shared prompt
mapped into ``m`` and the generative prompt retrieved from ``m``'s memory with a query pooled from ``m``'s
tokens entering layer ``i``. As in the released code, a block stays in the sequence for every later layer
(prompts accumulate: layer ``i`` of the default sees ``2L(i+1)`` prompt tokens per modality) and newer blocks
go in front of older ones. "distributed" placement puts each modality's blocks directly before its tokens;
"pre-appended" puts all of them at the front of the sequence. CLIP runs each modality in its own tower, so
there both placements put a modality's prompts at the front of its tower.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ...backbones import BackboneInterface, insert_blocks, insert_tokens, remove_blocks
from ...context import ForwardContext, current_context
from ..base import MissingMethodLayer, _pop_mask
from .config import MemPromptConfig

KAIMING_A = math.sqrt(5)  # the released code's nn.init.kaiming_normal_(..., a=sqrt(5)) for prompts and keys
SHARED_INIT_STD = 0.02  # the released code's normal_(std=0.02) for the shared prompts and the bottleneck weights
BOTTLENECK_REDUCTION = 16  # the released code's bottleneck width: hidden_size // 16


@dataclass
class Retrieval:
    """One memory lookup: the generative prompt ``[B, L, D]``, the retrieved entries ``[B, N]`` and their
    softmax weights ``[B, N]``."""

    prompt: torch.Tensor
    indices: torch.Tensor
    weights: torch.Tensor


class PromptMemory(nn.Module):
    """``PromptMem = {(p_k, q_k), k = 1..K}`` of eq. 4: prompts ``p_k`` ``[L, D]`` with keys ``q_k`` ``[D]``."""

    def __init__(self, size: int, length: int, width: int) -> None:
        super().__init__()
        self.prompts = nn.Parameter(nn.init.kaiming_normal_(torch.empty(size, length, width), a=KAIMING_A))
        self.keys = nn.Parameter(nn.init.kaiming_normal_(torch.empty(size, width), a=KAIMING_A))

    def retrieve(self, query: torch.Tensor, top_n: int) -> Retrieval:
        """Eq. 5-6: cosine of each query ``[B, D]`` to the keys, the ``top_n`` best entries, a softmax over
        their cosines (not over all K, as the released code) and the weighted sum of their prompts."""
        cosine = F.normalize(query, dim=-1) @ F.normalize(self.keys, dim=-1).T
        scores, indices = cosine.topk(top_n, dim=-1)
        weights = scores.softmax(dim=-1)
        prompt = torch.einsum("bn,bnld->bld", weights, self.prompts[indices])
        return Retrieval(prompt, indices, weights)


def _bottleneck(shared_dim: int, hidden: int, width: int) -> nn.Sequential:
    """G_m of eq. 7: Linear-GELU-Linear, initialised N(0, 0.02^2) with zero biases as the released code."""
    net = nn.Sequential(nn.Linear(shared_dim, hidden), nn.GELU(), nn.Linear(hidden, width))
    for linear in (net[0], net[2]):
        nn.init.normal_(linear.weight, std=SHARED_INIT_STD)
        nn.init.zeros_(linear.bias)
    return net


class MemPromptBank(nn.Module):
    """All of one adapter's trained MemPrompt tensors, for K modalities of any widths.

    ``memories[m][i]``: modality ``m``'s prompt memory at layer ``i`` (eq. 4). ``shared[i]``: ``[K, L, D_s]``,
    row ``k`` is the shared prompt that modality ``k`` contributes when present, so a sample's ``p_s^i`` is the
    sum over its present modalities: complete = both rows, missing text = the image row (the code's
    ``shared_missing_t``), missing image = the text row (``shared_missing_v``). ``mapping[m][i]``: G_m (eq. 7).

    Args:
        widths: hidden size of the stream that holds each modality, in modality order.
        config: the adapter's :class:`MemPromptConfig`.
    """

    def __init__(self, widths: dict[str, int], config: MemPromptConfig) -> None:
        super().__init__()
        self.modalities = tuple(widths)
        self.top_n = config.top_n
        self.usage: dict[str, torch.Tensor] = {}  # top-N selection counts of the last forward (not saved,
        # left on the device: read back only when diagnostics() asks)
        layers = [str(i) for i in config.prompt_layers]
        if config.generative_prompts:
            self.memories = nn.ModuleDict({
                m: nn.ModuleDict({i: PromptMemory(config.memory_size, config.prompt_length, d) for i in layers})
                for m, d in widths.items()})
        if config.shared_prompts:
            shared_dim = config.shared_dim or max(widths.values())
            hidden = config.bottleneck_dim or max(1, shared_dim // BOTTLENECK_REDUCTION)
            self.shared = nn.ParameterDict({
                i: nn.Parameter(torch.randn(len(widths), config.prompt_length, shared_dim) * SHARED_INIT_STD)
                for i in layers})
            self.mapping = nn.ModuleDict({m: nn.ModuleDict({i: _bottleneck(shared_dim, hidden, d) for i in layers})
                                          for m, d in widths.items()})

    @property
    def has_generative(self) -> bool:
        return hasattr(self, "memories")

    @property
    def has_shared(self) -> bool:
        return hasattr(self, "shared")

    def generative_prompt(self, layer: int, modality: str, query: torch.Tensor) -> torch.Tensor:
        """Eq. 4: ``p_g,m^i = PromptMem(f_m^i)``; records which entries were used (for diagnostics)."""
        memory = self.memories[modality][str(layer)]
        found = memory.retrieve(query, self.top_n)
        self.usage[f"{modality}/layer{layer}"] = torch.bincount(found.indices.detach().flatten(),
                                                                minlength=memory.keys.shape[0])
        return found.prompt

    def shared_prompt(self, layer: int, modality: str, present: torch.Tensor) -> torch.Tensor:
        """Eq. 7: ``p_s,m^i = G_m(p_s^i)`` with ``p_s^i`` the sum of the present modalities' rows.

        Args:
            present: ``[B, K]`` presence, columns in this bank's modality order.
        """
        rows = self.shared[str(layer)]
        pooled = torch.einsum("bk,kld->bld", present.to(rows.dtype), rows)
        return self.mapping[modality][str(layer)](pooled)

    def usage_entropy(self) -> dict[str, float]:
        """Per memory used in the last forward, the entropy of its top-N selection counts over the K entries,
        divided by ``log K``: 1 when every entry was picked equally often, 0 when one entry took all picks."""
        return {key: normalized_entropy(counts) for key, counts in self.usage.items()}


def normalized_entropy(counts: torch.Tensor) -> float:
    """Entropy of the distribution ``counts / counts.sum()``, divided by ``log(len(counts))`` (0 for K = 1)."""
    if len(counts) < 2 or counts.sum() == 0:
        return 0.0
    p = counts.double() / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return float(entropy / math.log(len(counts)))


def token_validity(mask: torch.Tensor | None, batch: int, length: int, device: torch.device) -> torch.Tensor:
    """``[B, L]`` True for the keys a layer's attention mask lets the last query see (False for padding).

    Accepts what encoder layers receive: ``None`` (nothing masked), a 0/1 or boolean ``[B, L]`` mask, or a 4-D
    ``[B, 1, Lq, L]`` mask, boolean (True = attend) or additive (0 = attend). The last query row of a causal
    mask sees every non-padding token of a right-padded sequence.
    """
    if mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    row = mask if mask.dim() == 2 else mask[:, 0, -1, :]
    valid = row.bool() if mask.dim() == 2 or row.dtype == torch.bool else row == 0
    return valid.expand(batch, length)


def pooled_query(tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The query ``f_m`` of eq. 5: the max over a modality's tokens ``[B, n, D]``, skipping padding.

    The released code max-pools over padding too; here padded tokens are left out. A sample whose tokens are
    all masked (e.g. a missing modality under the "mask" policy) falls back to the max over all its tokens,
    the dummy input's, which is what the code does for every missing modality.
    """
    masked = tokens.masked_fill(~valid[..., None], float("-inf")).amax(dim=1)
    return torch.where(valid.any(dim=1, keepdim=True), masked, tokens.amax(dim=1))


def squared_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared cosine between every token of ``a [B, L, D]`` and every token of ``b [B, L', D]``."""
    return (F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(-1, -2)).pow(2).mean()


@dataclass
class MemPromptRun:
    """What one forward carries between MemPrompt layers: the active adapter, its config and bank, and each
    stream's accumulated blocks."""

    adapter: str
    config: MemPromptConfig
    bank: MemPromptBank
    carried: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


class MemPromptLayer(MissingMethodLayer):
    """Wraps every encoder layer of every stream. The first layer of the first stream owns the adapter's
    :class:`MemPromptBank`; each layer builds its modalities' new blocks (prompted layers only), puts them
    with the blocks carried from earlier layers next to the tokens, runs the base layer and strips them."""

    adapter_layer_names = ("memprompt_bank",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.memprompt_bank = nn.ModuleDict()
        self.memprompt_config: dict[str, MemPromptConfig] = {}

    @property
    def is_owner(self) -> bool:
        return self.stream.name == self.interface.streams[0].name and self.index == 0

    def update_layer(self, adapter_name: str, config: MemPromptConfig) -> None:
        self.memprompt_config[adapter_name] = config
        if self.is_owner:
            self.memprompt_bank[adapter_name] = MemPromptBank(modality_widths(self.interface), config)
        self.set_adapter(self.active_adapters)

    def _has_active(self) -> bool:
        return not self.disable_adapters and any(a in self.memprompt_config for a in self.active_adapters)

    def diagnostics(self) -> dict[str, float]:
        values = {}
        for adapter, bank in self.memprompt_bank.items():
            entropies = bank.usage_entropy()
            values.update({f"memprompt/{adapter}/usage_entropy/{k}": v for k, v in entropies.items()})
            if entropies:
                values[f"memprompt/{adapter}/usage_entropy"] = sum(entropies.values()) / len(entropies)
        return values

    def adapted_forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        ctx = current_context()
        adapter = next(a for a in self.active_adapters if a in self.memprompt_config)
        if self.is_owner:
            ctx.extras[f"memprompt/{adapter}"] = MemPromptRun(adapter, self.memprompt_config[adapter],
                                                              self.memprompt_bank[adapter])
        run: MemPromptRun = ctx.extras[f"memprompt/{adapter}"]
        args, kwargs, mask = _pop_mask(args, kwargs)
        order = sorted(self.stream.modalities, key=lambda m: ctx.spans[self.stream.name][m].start or 0)
        carried = run.carried.pop(self.stream.name, {})
        blocks = {m: self._block(run, ctx, m, hidden_states, mask, carried.get(m)) for m in order}
        blocks = {m: b for m, b in blocks.items() if b is not None}
        if not blocks:
            return self.base_layer(hidden_states, mask, *args, **kwargs)
        hidden, mask, where = self._insert(hidden_states, mask, blocks, run.config, ctx)
        out = self.base_layer(hidden, mask, *args, **kwargs)
        slots, hidden = remove_blocks(out[0] if isinstance(out, tuple) else out, where)
        run.carried[self.stream.name] = dict(zip(blocks, slots, strict=True))
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    def _block(self, run: MemPromptRun, ctx: ForwardContext, modality: str, hidden: torch.Tensor,
               mask: torch.Tensor | None, carried: torch.Tensor | None) -> torch.Tensor | None:
        """``[p_s,m^i, p_g,m^i, <blocks of earlier layers>]`` (eq. 2), or ``None`` when there is nothing."""
        parts = self._new_prompts(run, ctx, modality, hidden, mask) if self.index in run.config.prompt_layers else []
        if carried is not None:
            parts.append(carried)
        return torch.cat(parts, dim=1).to(hidden.dtype) if parts else None

    def _new_prompts(self, run: MemPromptRun, ctx: ForwardContext, modality: str, hidden: torch.Tensor,
                     mask: torch.Tensor | None) -> list[torch.Tensor]:
        """This layer's ``[p_s,m^i, p_g,m^i]`` (eq. 7, eq. 4-6); adds their orthogonality term when asked."""
        bank, parts = run.bank, []
        if bank.has_shared:
            present = torch.stack([ctx.present_of(m) for m in bank.modalities], dim=1)
            parts.append(bank.shared_prompt(self.index, modality, present))
        if bank.has_generative:
            span = ctx.spans[self.stream.name][modality]
            valid = token_validity(mask, hidden.shape[0], hidden.shape[1], hidden.device)[:, span]
            parts.append(bank.generative_prompt(self.index, modality, pooled_query(hidden[:, span], valid)))
        if run.config.ortho_weight > 0:
            name = f"memprompt_orthogonality/{run.adapter}"
            term = run.config.ortho_weight * squared_cosine(parts[0], parts[1])
            ctx.aux_losses[name] = ctx.aux_losses[name] + term if name in ctx.aux_losses else term
        return parts

    def _insert(self, hidden: torch.Tensor, mask: torch.Tensor | None, blocks: dict[str, torch.Tensor],
                config: MemPromptConfig, ctx: ForwardContext) -> tuple[torch.Tensor, torch.Tensor | None, list]:
        """Distributed: each block before its modality's span (eq. 2). Pre-appended, or a causal stream: all
        blocks at the front, in modality order."""
        spans = ctx.spans[self.stream.name]
        if config.placement == "distributed" and not self.stream.causal:
            return insert_blocks(hidden, mask, [(spans[m].start or 0, b) for m, b in blocks.items()])
        if config.placement == "distributed" and (len(blocks) != 1 or (spans[next(iter(blocks))].start or 0) != 0):
            raise ValueError(f"MemPrompt places prompts in a causal stream only in front of a single modality, but "
                             f"the {self.stream.name} stream holds {list(blocks)} (a prompt between them would be "
                             "hidden from the tokens before it); use placement='pre-appended', or a backbone whose "
                             "causal streams hold one modality each (CLIP) or a bidirectional joint stream.")
        hidden, mask = insert_tokens(hidden, torch.cat(list(blocks.values()), dim=1), mask, self.stream.causal)
        ends = torch.tensor([b.shape[1] for b in blocks.values()]).cumsum(0).tolist()
        return hidden, mask, [slice(end - b.shape[1], end) for end, b in zip(ends, blocks.values(), strict=True)]


def modality_widths(interface: BackboneInterface) -> dict[str, int]:
    """Hidden size of the stream that holds each modality, in the backbone's modality order."""
    return {m: interface.stream_of(m).hidden_size for m in interface.modalities}
