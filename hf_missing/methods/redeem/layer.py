"""REDEEM's trained modules (CMoE generator, eq. 2-4; SAIM prompter, eq. 5-6) and the encoder-layer wrapper.

The paper's equations name two modalities (text and image); here they hold for any K >= 2 (text + image + audio,
...), reducing exactly to the paper's maths, bit for bit, when K = 2:

* eq. 1 (retrieval, :mod:`~hf_missing.methods.redeem.retrieval`): the sum of the cosines over the sample's
  available modalities;
* eq. 2-4 (generation of each missing modality m): the router's condition is the mean over the sample's available
  modalities o != m of their own projections ``W_1^(o) E~^o`` (:meth:`RedeemModules.condition`);
* eq. 5 (SAIM prompt of m): the retrieved tokens of every other modality, each through its own query projection,
  attend to the retrieved tokens of m (:meth:`RedeemModules.saim_prompt`).

Every encoder layer of every stream is wrapped. The first layer that runs builds a :class:`RedeemRun` once per
forward: it looks the retrieved neighbours up in the memory bank, generates the missing modality's embeddings
and adds the reconstruction loss. Each layer then inserts, next to the tokens:

* before layer 0, in front of modality m's span, the generated block ``E_hat_m [n, D]`` for samples missing
  m; m's placeholder tokens are hidden from attention for them, and the block is hidden for samples that
  have m (eq. 7's ``H_0 = E_hat``);
* before layer l, at the front of the stream, ``[label token | P_m for each modality m of the stream]``
  (eq. 7);

and, as REP's slots, the inserted tokens flow forward through every later layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ...backbones import BackboneInterface, Stream
from ...context import ForwardContext
from ..base import Block, MethodRun, MissingMethodLayer, PooledTensors, visible_keys
from .config import RedeemConfig

NEIGHBOURS, SELF, QUERY = "redeem_neighbors", "redeem_self", "redeem_query_"
INIT_STD = 0.02


class Expert(nn.Module):
    """FFN_k of eq. 4, residual with a zero-initialised output layer: training starts from the routing-weighted
    mean of the retrieved embeddings."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(width, width), nn.Linear(width, width)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.out(F.gelu(self.inp(x)))


class CrossAttention(nn.Module):
    """Eq. 5-6: ``Softmax(f_Q(q) f_K(kv)^T / sqrt(d)) f_V(kv)`` (one head; output width = ``kv``'s). For SAIM with
    K > 2 modalities ``q`` holds the tokens of several modalities, each in its own block of features (zeros
    elsewhere, :meth:`RedeemModules.saim_queries`), so that ``f_Q`` is one query projection per modality."""

    def __init__(self, query_width: int, width: int) -> None:
        super().__init__()
        self.f_q, self.f_k, self.f_v = nn.Linear(query_width, width), nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, query: torch.Tensor, kv: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``key_mask [B, L]``: the keys of ``kv [B, L, D]`` that may be attended to (None: all); the queries of a
        sample with no such key get zeros."""
        scores = self.f_q(query) @ self.f_k(kv).transpose(-1, -2) / math.sqrt(kv.shape[-1])
        if key_mask is None:
            return scores.softmax(dim=-1) @ self.f_v(kv)
        keys = key_mask[:, None, :]
        probs = scores.masked_fill(~keys, torch.finfo(scores.dtype).min).softmax(dim=-1) * keys
        return probs @ self.f_v(kv)


class CrossModalGenerator(nn.Module):
    """Table 3 "Cross-modal": an encoder of the available modalities' condition (:meth:`RedeemModules.condition`)
    and a decoder of ``n`` learned token queries, with no retrieved data."""

    def __init__(self, query_width: int, width: int, num_tokens: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(query_width, width), nn.GELU())
        self.queries = nn.Parameter(torch.randn(num_tokens, width) * INIT_STD)
        self.decoder = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(condition)[:, None] + self.queries)


def pool_prompt(tokens: torch.Tensor, length: int) -> torch.Tensor:
    """Eq. 5's Pool: adaptive average pooling of ``[B, L, D]`` along the tokens to ``[B, length, D]``."""
    return F.adaptive_avg_pool1d(tokens.transpose(1, 2), length).transpose(1, 2)


class RedeemModules(PooledTensors):
    """All trained REDEEM tensors of one adapter, for K >= 2 modalities.

    Args:
        widths: hidden size of the stream holding each modality (= its bank query and token width).
        streams: width of each stream (label tokens).
        config: the adapter's :class:`RedeemConfig`.
    """

    def __init__(self, widths: dict[str, int], streams: dict[str, int], config: RedeemConfig) -> None:
        super().__init__()
        self.modalities, self.config = tuple(widths), config
        others = {m: sum(widths[o] for o in self.others(m)) for m in widths}  # eq. 2 condition / eq. 5 query widths
        if config.generator in ("cmoe", "mean"):
            self.experts = nn.ModuleDict({m: nn.ModuleList(Expert(d) for _ in range(config.num_retrieved))
                                          for m, d in widths.items()})
        if config.generator == "cmoe":
            self.w1 = nn.ModuleDict({m: nn.Linear(others[m], d, bias=False) for m, d in widths.items()})
            self.w2 = nn.ModuleDict({m: nn.Linear(d, d, bias=False) for m, d in widths.items()})
        if config.generator == "cross_modal":
            self.cross = nn.ModuleDict({m: CrossModalGenerator(others[m], d, config.bank_tokens)
                                        for m, d in widths.items()})
        if config.prompter in ("saim", "intra"):
            self.attention = nn.ModuleDict({m: CrossAttention(others[m] if config.prompter == "saim" else d, d)
                                            for m, d in widths.items()})
        if config.prompter == "static":
            self.static = nn.ParameterDict({m: nn.Parameter(torch.randn(config.prompt_length, d) * INIT_STD)
                                            for m, d in widths.items()})
        if config.label_token:
            classes = num_label_classes(config.model_settings or {})
            self.label_embeddings = nn.ParameterDict({s: nn.Parameter(torch.randn(classes, d) * INIT_STD)
                                                      for s, d in streams.items()})
        self.last_router_max: float | None = None

    def diagnostics(self) -> dict[str, float]:
        """The mean largest routing weight of the last forward (1: one expert takes all)."""
        return {} if self.last_router_max is None else {"router_max_weight": self.last_router_max}

    def others(self, modality: str) -> tuple[str, ...]:
        """The modalities other than ``modality``, in modality order."""
        return tuple(m for m in self.modalities if m != modality)

    # ---- eq. 2-4 --------------------------------------------------------------------------------------
    def condition(self, modality: str, queries: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """Eq. 2's condition ``E~`` for generating ``modality``, for K modalities: the other modalities' query
        vectors ``queries[o] [B, D_o]`` side by side, each zeroed where the sample lacks it (``present [B, K]``),
        divided by how many of them the sample holds; ``[B, sum_o D_o]``.

        Deviation (the paper has one remaining modality): ``W_1`` of eq. 2 acting on this vector is the mean over
        the sample's available modalities o of their own projections ``W_1^(o) E~^o``. The mean, not the sum,
        keeps the router's scores on one scale whether one or several modalities remain, and nothing of a missing
        modality (its placeholder's query) enters. With K = 2 exactly one modality remains and this is the
        paper's ``E~`` itself.
        """
        others = self.others(modality)
        held = present[:, [self.modalities.index(o) for o in others]].to(queries[others[0]].dtype)
        parts = [queries[o] * held[:, j, None] for j, o in enumerate(others)]
        return torch.cat(parts, dim=-1) / held.sum(dim=1, keepdim=True).clamp(min=1.0)

    def route(self, modality: str, condition: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """Eq. 2-3: routing weights ``[B, K]`` of the K retrieved ``experts [B, K, D]`` (pooled) given the
        available modalities' ``condition [B, sum_o D_o]`` (:meth:`condition`)."""
        if self.config.generator == "mean":
            return torch.full(experts.shape[:2], 1 / experts.shape[1], device=experts.device)
        query, keys = self.w1[modality](condition), self.w2[modality](experts)
        scores = (keys @ query[..., None])[..., 0] / math.sqrt(query.shape[-1])
        return scores.softmax(dim=-1)

    def generate(self, modality: str, condition: torch.Tensor, experts: torch.Tensor,
                 retrieved: torch.Tensor) -> torch.Tensor:
        """Eq. 4: ``E_hat = sum_k w_k FFN_k(E_r_k)`` from ``retrieved [B, K, n, D]``; ``[B, n, D]``. Each expert
        reads a contiguous copy of its neighbour's tokens: on a strided slice torch picks its matmul kernel by
        whether the weights require grad, and a reloaded adapter would differ from the trained one in the last
        bits."""
        if self.config.generator == "cross_modal":
            return self.cross[modality](condition)
        weights = self.route(modality, condition, experts)
        self.last_router_max = float(weights.detach().max(dim=-1).values.mean())
        outputs = torch.stack([ffn(retrieved[:, k].contiguous()) for k, ffn in enumerate(self.experts[modality])],
                              dim=1)
        return (weights[..., None, None] * outputs).sum(dim=1)

    # ---- eq. 5-6 --------------------------------------------------------------------------------------
    def saim_queries(self, modality: str, retrieved: dict[str, torch.Tensor]) -> torch.Tensor:
        """Eq. 5's queries for ``modality``'s prompt: the retrieved tokens ``[B, K, n, D_o]`` of every other
        modality o, one after another along the tokens, each in its own block of ``sum_o D_o`` features (zeros
        elsewhere); ``[B, K, (M - 1) n, sum_o D_o]`` for M modalities, the other modality's tokens when M = 2."""
        others = self.others(modality)
        total, start, blocks = sum(retrieved[o].shape[-1] for o in others), 0, []
        for o in others:
            width = retrieved[o].shape[-1]
            blocks.append(F.pad(retrieved[o], (start, total - start - width)))
            start += width
        return torch.cat(blocks, dim=-2)

    def saim_prompt(self, modality: str, retrieved: dict[str, torch.Tensor]) -> torch.Tensor:
        """Eq. 5 for K modalities: in each neighbour, the tokens of every other modality (each through its own
        query projection, :meth:`saim_queries`) attend to its ``modality`` tokens; all outputs are pooled to
        ``[B, b, D]``.

        Deviation (the paper has one other modality): the other modalities' tokens are all queries, side by side,
        rather than one of them; the retrieved neighbours are complete, so every other modality is there whatever
        the sample lacks. With K = 2 this is eq. 5 itself.
        """
        values = self.attention[modality](self.saim_queries(modality, retrieved), retrieved[modality])
        return pool_prompt(values.flatten(1, 2), self.config.prompt_length)

    def intra_prompt(self, modality: str, target: torch.Tensor, retrieved: torch.Tensor,
                     valid: torch.Tensor | None = None) -> torch.Tensor:
        """Table 3 "Intra-modal" (RAGPT's CAP): the retrieved ``modality`` tokens ``[B, K, n, D]`` attend to the
        target's own ones ``target [B, L, D]`` (only its ``valid [B, L]`` ones: padding is no key; None: all);
        the K n outputs are pooled to ``[B, b, D]``.

        Deviation: RAGPT's CAP lets the target's tokens attend to the retrieved ones and pools the outputs along
        the target's tokens. That pooling mixes padding in (text, ViLT's padded patches) and follows the target's
        token order, which ViLT draws at random on every forward (it samples its patches with torch.multinomial),
        so a sample's prompt changed with its batch and from one forward to the next. With the retrieved tokens as
        the queries the outputs come in the bank's fixed order and the target's tokens are only keys, where
        padding is masked out. REDEEM's Table 3 describes the variant as attention "between" the retrieved and
        the target's modality, without a direction.
        """
        values = self.attention[modality](retrieved.flatten(1, 2), target, valid)
        return pool_prompt(values, self.config.prompt_length)

    def label_token(self, stream: str, labels: torch.Tensor) -> torch.Tensor:
        """RAGPT's label token ``[B, 1, D]``: the neighbours' (multi-)hot labels ``[B, R, C]`` (all-zero rows count
        for nothing) averaged over their labels, times the learned label embeddings."""
        counts = labels.sum(dim=1)
        weights = counts / counts.sum(dim=-1, keepdim=True).clamp(min=1.0)
        return (weights @ self.label_embeddings[stream])[:, None]


def num_label_classes(settings: dict[str, Any]) -> int:
    """Rows of the label embedding: the classes of a multi-label task, at least 2 otherwise (binary)."""
    num_labels = int(settings.get("num_labels") or 2)
    return num_labels if settings.get("problem_type") == "multi_label_classification" else max(num_labels, 2)


@dataclass(kw_only=True)
class RedeemRun(MethodRun):
    """One forward of a REDEEM adapter: the retrieved neighbours' tokens, the generated embeddings of missing
    modalities, the neighbours' labels (RAGPT's label token) and the first-layer inputs with their non-padding
    tokens (intra-modal prompts)."""

    retrieved: dict[str, torch.Tensor]
    generated: dict[str, torch.Tensor]
    labels: torch.Tensor | None
    first_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    first_valid: dict[str, torch.Tensor] = field(default_factory=dict)

    def prompt_block(self, stream: Stream) -> torch.Tensor | None:
        """``[label token | P_m ...]`` for the modalities of ``stream`` (eq. 7), or None without prompts."""
        parts = []
        if self.labels is not None:
            parts.append(self.shared.label_token(stream.name, self.labels))
        for m in stream.modalities:
            prompt = self._prompt(m)
            if prompt is not None:
                parts.append(prompt)
        return torch.cat(parts, dim=1) if parts else None

    def _prompt(self, modality: str) -> torch.Tensor | None:
        prompter, modules, ctx = self.config.prompter, self.shared, self.ctx
        batch = ctx.missing_type.shape[0]
        if prompter == "saim":
            return modules.saim_prompt(modality, self.retrieved)
        if prompter == "static":
            return modules.static[modality].expand(batch, -1, -1)
        if prompter == "intra":
            real = modules.intra_prompt(modality, self.first_inputs[modality], self.retrieved[modality],
                                        self.first_valid[modality])
            if modality not in self.generated:
                return real
            generated = modules.intra_prompt(modality, self.generated[modality], self.retrieved[modality])
            return torch.where(ctx.present_of(modality)[:, None, None], real, generated)
        return None


def redeem_run(adapter: str, config: RedeemConfig, modules: RedeemModules, ctx: ForwardContext) -> RedeemRun:
    """Look the batch's neighbours up in the bank, generate what is missing (eq. 2-4) and add the
    reconstruction loss; the prompts come later (they may need the first-layer inputs)."""
    bank, batch = config.memory_bank, ctx.batch
    if bank is None:
        raise RuntimeError("This REDEEM adapter has no memory bank: call hf_missing.methods.redeem."
                           "prepare_for_training(model, train_dataset, collator) (or load_memory_bank(model, folder)).")
    if NEIGHBOURS not in batch:
        raise ValueError("REDEEM needs each sample's retrieved neighbours: add them with hf_missing.methods.redeem."
                         "add_neighbors(dataset, model, collator) and batch with RedeemCollator(collator).")
    neighbours = batch[NEIGHBOURS][..., :config.num_retrieved].to(ctx.missing_type.device)
    rows = modality_rows(neighbours, modules.modalities)
    if config.retrieval == "none":
        retrieved = {m: _noise(bank, f"tokens.{m}", rows[m]) for m in modules.modalities}
        experts = {m: _noise(bank, f"query.{m}", rows[m]) for m in modules.modalities}
    else:
        retrieved = {m: bank.lookup(f"tokens.{m}", rows[m]) for m in modules.modalities}
        experts = {m: bank.lookup(f"query.{m}", rows[m]) for m in modules.modalities}
    generated = {}
    if config.generator != "none":
        queries = {m: batch[QUERY + m].to(neighbours.device).float() for m in modules.modalities}
        for m in modules.modalities:
            if not ctx.present_of(m).all():
                condition = modules.condition(m, queries, ctx.present)
                generated[m] = modules.generate(m, condition, experts[m], retrieved[m])
    _reconstruction_loss(generated, bank, batch.get(SELF), ctx, config, adapter)
    labels = _neighbour_labels(bank, neighbours, ctx.present, config) if config.label_token else None
    return RedeemRun(adapter, config, modules, ctx, retrieved=retrieved, generated=generated, labels=labels)


def modality_rows(neighbours: torch.Tensor, modalities: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The bank rows ``[B, K]`` whose tokens of each modality the samples read: the same K neighbours for every
    modality (``neighbours [B, K]``: eq. 1, "random", "none"), or each modality's own list (``neighbours
    [B, M, K]``: RAGPT's multi-channel retriever, :func:`~hf_missing.methods.redeem.retrieval.channel_table`)."""
    if neighbours.dim() == 2:
        return dict.fromkeys(modalities, neighbours)
    return {m: neighbours[:, j] for j, m in enumerate(modalities)}


def _noise(bank: Any, key: str, neighbours: torch.Tensor) -> torch.Tensor:
    """Table 3 "w/o Retriever": random values shaped as the K neighbours' ``arrays[key]`` rows, with the bank's overall
    mean and spread (:meth:`MemoryBank.spread`), so that nothing of a sample's neighbours enters."""
    mean, std = bank.spread(key)
    shape = (*neighbours.shape, *bank.arrays[key].shape[1:])
    return torch.randn(shape, device=neighbours.device) * std + mean


def _neighbour_labels(bank: Any, neighbours: torch.Tensor, present: torch.Tensor,
                      config: RedeemConfig) -> torch.Tensor:
    """The neighbours' (multi-)hot labels ``[B, R, C]`` for RAGPT's label token; without a retriever every class
    counts equally (the token is the mean label embedding: no neighbour's label leaks in).

    Under RAGPT's multi-channel retriever (``neighbours [B, M, K]``) these are the labels of the neighbours of
    every modality the sample holds (``present [B, M]``; zero rows for the others, which the token's counts ignore):
    a one-modality sample reads its one channel's K labels, as RAGPT does, and a complete sample both channels' 2K.
    Deviation: for a complete sample the released code reads only the image-to-image neighbours' labels
    (METHODS_REFERENCE §1E; its dataloaders' complete branch); both channels are the neighbours it retrieves, and
    counting each keeps the modalities symmetric, for any K.
    """
    if config.retrieval == "none":
        return torch.ones(*neighbours.shape, bank.arrays["labels"].shape[1], device=neighbours.device)
    labels = bank.lookup("labels", neighbours)
    if neighbours.dim() == 2:
        return labels
    return (labels * present[:, :, None, None].to(labels.dtype)).flatten(1, 2)


def _reconstruction_loss(generated: dict[str, torch.Tensor], bank: Any, self_rows: torch.Tensor | None,
                         ctx: ForwardContext, config: RedeemConfig, adapter: str) -> None:
    """MSE between the generated and the true first-layer embeddings of every sample whose modality the
    simulation dropped and that is in the bank (its own row, found by content). The released code compares
    the substituted embeddings with themselves, which is identically zero."""
    if config.recon_weight == 0 or self_rows is None:
        return
    self_rows = self_rows.to(ctx.missing_type.device)
    terms = []
    for m, values in generated.items():
        rows = ~ctx.present_of(m) & (self_rows >= 0)
        if rows.any():
            terms.append(F.mse_loss(values[rows], bank.lookup(f"tokens.{m}", self_rows[rows])))
    if terms:
        ctx.aux_losses[f"redeem_reconstruction/{adapter}"] = config.recon_weight * torch.stack(terms).mean()


def check_policy(interface: BackboneInterface, config: RedeemConfig, ctx: ForwardContext) -> None:
    """Refuse a generator whose output cannot reach the logits: on a backbone where a modality has a stream of its
    own (CLIP), the "mask" and "zero" policies leave a missing modality's pooled feature out of the fused
    representation, so the tokens generated in its stream (eq. 4, 7) would be trained by the reconstruction term
    alone."""
    if ctx.policy == "dummy" or config.generator == "none":
        return
    alone = [m for m in ctx.modalities if interface.stream_of(m).modalities == (m,) and len(interface.streams) > 1]
    if alone:
        raise ValueError(
            f"REDEEM/RAGPT generates a missing modality's embeddings, but under missing_policy={ctx.policy!r} this "
            f"{interface.model_type} backbone leaves the pooled feature of a missing {alone[0]!r} (its own stream) "
            "out of the fused representation, so the generated tokens would never reach the logits. Batch with "
            "missing_policy='dummy' (the generated block stands in for the hidden placeholder), or pass "
            "generator='none'.")


class RedeemLayer(MissingMethodLayer):
    """Wraps every encoder layer of every stream (REDEEM and RAGPT adapters); the first layer that runs retrieves
    and generates with the adapter's :class:`RedeemModules` (in the model's pool)."""

    def start_run(self, adapter: str, ctx: ForwardContext) -> RedeemRun:
        check_policy(self.interface, self.method_config[adapter], ctx)
        return redeem_run(adapter, self.method_config[adapter], self.shared(adapter), ctx)

    def blocks(self, run: RedeemRun, hidden: torch.Tensor, mask: torch.Tensor | None,
               carried: dict[str, torch.Tensor]) -> list[Block]:
        """Before layer 0, the generated block of each missing modality before its span (hidden for samples that
        have it); before layer l, the prompt block at the front (eq. 7); both flow forward."""
        spans, prompt_layer = run.ctx.spans[self.stream.name], run.config.prompt_layer
        if self.index == 0:
            valid = visible_keys(mask, *hidden.shape[:2], hidden.device)
            run.first_inputs.update({m: hidden[:, spans[m]] for m in self.stream.modalities})
            run.first_valid.update({m: valid[:, spans[m]] for m in self.stream.modalities})
        blocks = []
        if self.index >= prompt_layer:
            tokens = run.prompt_block(self.stream) if self.index == prompt_layer else carried.get("prompt")
            if tokens is not None:
                blocks.append(Block("prompt", tokens))
        for m in sorted(run.generated.keys() & set(self.stream.modalities), key=lambda m: spans[m].start or 0):
            tokens = run.generated[m] if self.index == 0 else carried[m]
            blocks.append(Block(m, tokens, before=m, hidden=run.ctx.present_of(m)))
        return blocks

    def hidden_tokens(self, run: RedeemRun, hidden: torch.Tensor) -> torch.Tensor:
        """The placeholder tokens of each generated modality, for the samples that miss it (their generated block
        stands in for them)."""
        placeholder = torch.zeros(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        for m in run.generated.keys() & set(self.stream.modalities):
            placeholder[:, run.ctx.spans[self.stream.name][m]] |= ~run.ctx.present_of(m)[:, None]
        return placeholder
