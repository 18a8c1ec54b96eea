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
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..base import Block, MethodRun, MissingMethodLayer, PooledTensors, visible_keys
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


class MemPromptBank(PooledTensors):
    """All of one adapter's trained MemPrompt tensors, for K modalities of any widths.

    ``memories[m][i]``: modality ``m``'s prompt memory at generative layer ``i`` (eq. 4). ``shared[i]`` (at each
    shared layer ``i``): ``[K, L, D_s]``,
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
        if config.generative_prompts:
            layers = [str(i) for i in config.layer_lists()["generative"]]
            self.memories = nn.ModuleDict({
                m: nn.ModuleDict({i: PromptMemory(config.memory_size, config.prompt_length, d) for i in layers})
                for m, d in widths.items()})
        if config.shared_prompts:
            layers = [str(i) for i in config.layer_lists()["shared"]]
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

    def diagnostics(self) -> dict[str, float]:
        """Each memory's :meth:`usage_entropy` and their mean."""
        entropies = self.usage_entropy()
        values = {f"usage_entropy/{k}": v for k, v in entropies.items()}
        if entropies:
            values["usage_entropy"] = sum(entropies.values()) / len(entropies)
        return values


def normalized_entropy(counts: torch.Tensor) -> float:
    """Entropy of the distribution ``counts / counts.sum()``, divided by ``log(len(counts))`` (0 for K = 1)."""
    if len(counts) < 2 or counts.sum() == 0:
        return 0.0
    p = counts.double() / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return float(entropy / math.log(len(counts)))


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


class MemPromptLayer(MissingMethodLayer):
    """Wraps every encoder layer of every stream. Each layer builds its modalities' new blocks from the adapter's
    :class:`MemPromptBank` (in the model's pool; prompted layers only) and inserts them, with the blocks carried from
    earlier layers, next to each modality's tokens."""

    causal_fix = "pass placement='pre-appended' (all prompts at the front), or "

    def blocks(self, run: MethodRun, hidden: torch.Tensor, mask: torch.Tensor | None,
               carried: dict[str, torch.Tensor]) -> list[Block]:
        """Per modality ``[p_s,m^i, p_g,m^i, <blocks of earlier layers>]`` (eq. 2): before the modality's tokens
        ("distributed"), or at the front of the stream ("pre-appended")."""
        spans, config = run.ctx.spans[self.stream.name], run.config
        blocks = []
        for m in sorted(self.stream.modalities, key=lambda m: spans[m].start or 0):
            parts = self._new_prompts(run, m, hidden, mask)
            if m in carried:
                parts.append(carried[m])
            if parts:
                before = m if config.placement == "distributed" else None
                blocks.append(Block(m, torch.cat(parts, dim=1).to(hidden.dtype), before))
        return blocks

    def _new_prompts(self, run: MethodRun, modality: str, hidden: torch.Tensor,
                     mask: torch.Tensor | None) -> list[torch.Tensor]:
        """This layer's ``[p_s,m^i, p_g,m^i]`` (eq. 7, eq. 4-6), each kind only at its own layers
        (``shared_layers``, ``generative_layers``); adds their orthogonality term when asked and both are here."""
        bank, ctx, parts, layer = run.shared, run.ctx, [], str(self.index)
        if bank.has_shared and layer in bank.shared:
            present = torch.stack([ctx.present_of(m) for m in bank.modalities], dim=1)
            parts.append(bank.shared_prompt(self.index, modality, present))
        if bank.has_generative and layer in bank.memories[modality]:
            span = ctx.spans[self.stream.name][modality]
            valid = visible_keys(mask, hidden.shape[0], hidden.shape[1], hidden.device)[:, span]
            parts.append(bank.generative_prompt(self.index, modality, pooled_query(hidden[:, span], valid)))
        if run.config.ortho_weight > 0 and len(parts) == 2:
            name = f"memprompt_orthogonality/{run.adapter}"
            term = run.config.ortho_weight * squared_cosine(parts[0], parts[1])
            ctx.aux_losses[name] = ctx.aux_losses[name] + term if name in ctx.aux_losses else term
        return parts
