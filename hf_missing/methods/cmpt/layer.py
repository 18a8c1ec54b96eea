"""CMPT's proxy tokens, their attention masks, the gate, the alignment loss and the encoder-layer wrapper.

Every encoder layer of every stream is wrapped. Layer 0 of a stream appends, after the real tokens,

- in a stream that holds several modalities and ``single_stream_context="unimodal"``: a *shadow* copy of each
  modality's tokens, which attends only to its own modality (so the shadows evolve as a unimodal pass would);
- one proxy token for each proxied modality ``m`` the stream can estimate (it holds a modality other than ``m``).

The appended tokens flow through every layer of the stream (carried in the run state, re-appended before each
layer, stripped after it). The attention mask is the layer's own for the real tokens, which never see the
appended ones, so every real token, the class tokens included, is exactly what it is without CMPT. A proxy for
``m`` sees itself and the tokens (or shadows) of the modalities other than ``m`` that are present for the sample.

After the last layer, the proxies go through the readout of their stream (the same final norm and projection as
that stream's class token). The first CMPT layer that runs registers :meth:`CmptRun.fuse` as a feature hook: once
the interface has pooled the real class tokens, it substitutes proxies for missing modalities, adds the alignment
loss to ``ctx.aux_losses``, gates the K tokens and composes the head's input. An adapter's proxies and gate
(:class:`CmptTensors`) live in the model's method pool; its LoRA (:class:`CmptLoraLinear`) in the wrapped layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn
from torch.nn import functional as F

from ...backbones import BackboneInterface, PretrainedTokens, Stream, capability
from ...context import ForwardContext
from ..base import Block, MethodRun, MissingMethodLayer, PooledTensors, allowed_attention
from ..peft_lora import add_lora, lora_config, resolve_lora_paths
from .config import CmptConfig

PROXY_INIT_STD = 0.02
APPENDED = "appended"  # the one block a CMPT layer inserts: shadows and proxies after the real tokens


# ---- which tokens a stream appends ----------------------------------------------------------------
@dataclass(frozen=True)
class StreamLayout:
    """The tokens one stream appends: shadows of ``shadowed`` modalities (in order), then one proxy per
    modality of ``proxies``. ``sources`` are the stream's modalities a proxy may read."""

    sources: tuple[str, ...]
    shadowed: tuple[str, ...]
    proxies: tuple[str, ...]


def hosted_proxies(stream_modalities: tuple[str, ...], proxied: tuple[str, ...]) -> tuple[str, ...]:
    """The proxied modalities a stream can estimate: those for which it holds another modality."""
    return tuple(m for m in proxied if any(a != m for a in stream_modalities))


def stream_layout(stream: Stream, proxied: tuple[str, ...], context: str) -> StreamLayout:
    """The layout of ``stream`` for the proxied modalities and the single-stream context option."""
    proxies = hosted_proxies(stream.modalities, proxied)
    shadow = context == "unimodal" and len(stream.modalities) > 1 and bool(proxies)
    return StreamLayout(stream.modalities, stream.modalities if shadow else (), proxies)


# ---- attention masks --------------------------------------------------------------------------------
def appended_rows(layout: StreamLayout, spans: dict[str, slice], key_valid: torch.Tensor,
                  present: dict[str, torch.Tensor], causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention rows ``[B, n, L + n]`` of the ``n`` appended tokens, and ``[B, P]`` whether each proxy has a
    present source modality for the sample.

    Args:
        spans: the slice of the real sequence each of the stream's modalities occupies.
        key_valid: ``[B, L]`` real keys that are not padding (nor masked out by the "mask" policy).
        present: ``[B]`` presence of each modality.
    """
    batch, length = key_valid.shape
    positions = {a: torch.arange(length, device=key_valid.device)[spans[a]] for a in layout.sources}
    n = sum(len(positions[a]) for a in layout.shadowed) + len(layout.proxies)
    rows = torch.zeros(batch, n, length + n, dtype=torch.bool, device=key_valid.device)
    columns, row = {}, 0
    for a in layout.shadowed:
        idx = positions[a]
        block = slice(row, row + len(idx))
        visible = key_valid[:, None, idx].expand(batch, len(idx), len(idx))
        if causal:
            visible = visible & torch.ones(len(idx), len(idx), dtype=torch.bool, device=idx.device).tril()
        rows[:, block, length + row:length + row + len(idx)] = visible
        columns[a] = length + row + torch.arange(len(idx), device=idx.device)
        row += len(idx)
    has_source = torch.zeros(batch, len(layout.proxies), dtype=torch.bool, device=key_valid.device)
    for j, m in enumerate(layout.proxies):
        for a in (a for a in layout.sources if a != m):
            visible = key_valid[:, positions[a]] & present[a][:, None]
            rows[:, row + j, columns.get(a, positions[a])] = visible
            has_source[:, j] |= present[a]
    diagonal = torch.arange(n, device=key_valid.device)
    rows[:, diagonal, length + diagonal] = True
    return rows, has_source


def extended_mask(mask: torch.Tensor | None, rows: torch.Tensor, causal: bool, dtype: torch.dtype) -> torch.Tensor:
    """The ``[B, 1, L + n, L + n]`` mask: the layer's own for the real rows (blind to the appended columns) and
    ``rows`` for the appended ones; boolean if the layer's mask was, else additive in ``dtype``."""
    batch, n, total = rows.shape
    length = total - n
    allowed = allowed_attention(mask, batch, length, causal, rows.device)
    top = torch.cat([allowed, torch.zeros(batch, 1, length, n, dtype=torch.bool, device=rows.device)], dim=-1)
    full = torch.cat([top, rows[:, None]], dim=2)
    if mask is not None and mask.dtype == torch.bool:
        return full
    return torch.zeros(full.shape, dtype=dtype, device=rows.device).masked_fill(~full, torch.finfo(dtype).min)


# ---- estimates, alignment, gate ---------------------------------------------------------------------
def combine_estimates(estimates: list[tuple[str, torch.Tensor, torch.Tensor]]
                      ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per modality, the mean of its proxies' estimates ``[B, d]`` over the streams where the proxy had a present
    source, and ``[B]`` whether any did. ``estimates`` holds (modality, estimate, has_source) per host stream."""
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for m in dict.fromkeys(name for name, _, _ in estimates):
        mine = [(e, ok) for name, e, ok in estimates if name == m]
        weights = torch.stack([ok for _, ok in mine]).to(mine[0][0].dtype)  # [S, B]
        total = (weights[..., None] * torch.stack([e for e, _ in mine])).sum(0)
        count = weights.sum(0)
        out[m] = (total / count.clamp(min=1)[:, None], count > 0)
    return out


def alignment_loss(pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], kind: str) -> torch.Tensor:
    """Mean over valid (sample, modality) pairs of the distance between a proxy ``[B, d]`` and its target
    ``[B, d]``; each pair comes with a ``[B]`` validity mask. ``kind``: "mse" (mean over features) or "cosine"
    (1 - cos). Zero, still attached to the graph, when nothing is valid."""
    total, count = None, 0
    for proxy, target, valid in pairs:
        if kind == "mse":
            per_sample = (proxy - target).pow(2).mean(-1)
        else:
            per_sample = 1 - F.cosine_similarity(proxy, target, dim=-1)
        term = (per_sample * valid.to(per_sample.dtype)).sum()
        total = term if total is None else total + term
        count += int(valid.sum())
    return total / max(count, 1)


class ProxyGate(nn.Module):
    """Weights over K class tokens, ``softmax_k`` across modalities of the logits ``[W [z_1; ..; z_K] + b; 0]``
    (the last modality's logit is fixed at 0, so two modalities give exactly ``g = sigmoid(W [z_1; z_2] + b)`` and
    ``1 - g``). ``vector``: one weight per modality and feature; ``scalar``: one per modality. ``W`` and ``b``
    start at zero (uniform weights 1/K), so at initialisation the composed feature is the backbone's own layout."""

    def __init__(self, num_modalities: int, width: int, kind: str) -> None:
        super().__init__()
        self.num_modalities = num_modalities
        per_modality = width if kind == "vector" else 1
        self.linear = nn.Linear(num_modalities * width, (num_modalities - 1) * per_modality)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def _weights(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.view(logits.shape[0], self.num_modalities - 1, -1)
        return torch.cat([logits, torch.zeros_like(logits[:, :1])], dim=1).softmax(dim=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, K, d]`` tokens -> ``[B, K, d]`` (vector) or ``[B, K, 1]`` (scalar) weights summing to 1 over K."""
        return self._weights(self.linear(tokens.flatten(1)))

    def prior(self) -> torch.Tensor:
        """``[K]`` weights for all-zero tokens (the input-independent part), averaged over features."""
        return self._weights(self.linear.bias.detach()[None])[0].mean(-1)


# ---- an adapter's pooled tensors and its per-forward state -------------------------------------------------
class CmptTensors(PooledTensors):
    """One adapter's proxies (``proxies[stream]``: ``[P, H]``, the proxies the stream hosts) and gate."""

    def __init__(self, interface: BackboneInterface, config: CmptConfig) -> None:
        super().__init__()
        self.modalities = interface.modalities
        proxied = proxied_modalities(interface, config)
        hosted = {s.name: (s, hosted_proxies(s.modalities, proxied)) for s in interface.streams}
        self.proxies = nn.ParameterDict({name: nn.Parameter(initial_proxies(interface, stream, proxies, config))
                                         for name, (stream, proxies) in hosted.items() if proxies})
        self.gate = ProxyGate(len(interface.modalities), interface.class_token_width, config.gate)

    def diagnostics(self) -> dict[str, float]:
        """The gate's input-independent weight of each modality."""
        prior = self.gate.prior()
        return {f"gate_prior_{m}": float(prior[k]) for k, m in enumerate(self.modalities)}


@dataclass
class StreamState:
    """One stream in one forward: its layout, the extended mask and which proxies have a present source."""

    layout: StreamLayout
    mask: torch.Tensor | None = None
    has_source: torch.Tensor | None = None


@dataclass(kw_only=True)
class CmptRun(MethodRun):
    """What one forward carries between CMPT layers, and the feature hook that ends it."""

    interface: BackboneInterface
    streams: dict[str, StreamState] = field(default_factory=dict)

    @property
    def gate(self) -> ProxyGate:
        return self.shared.gate

    def estimates(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Each proxied modality's estimate ``[B, d]`` and ``[B]`` availability, read out from every host stream."""
        found = []
        for name, state in self.streams.items():
            if not state.layout.proxies:
                continue
            proxies = self.carried[name][APPENDED][:, -len(state.layout.proxies):]
            read = self.interface.readout(name, proxies)
            found += [(m, read[:, j], state.has_source[:, j]) for j, m in enumerate(state.layout.proxies)]
        return combine_estimates(found)

    def real_tokens(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each modality's real class token ``[B, d]`` (what the backbone pooled, proxies never seen)."""
        return self.interface.class_tokens(features, self.final, self.ctx)

    def fuse(self, features: torch.Tensor) -> torch.Tensor:
        """Class tokens (proxies where missing), the alignment loss, the gate and the composed head input."""
        ctx = self.ctx
        real = self.real_tokens(features)
        estimates = self.estimates()
        tokens, pairs = {}, []
        for m in ctx.modalities:
            present = ctx.present_of(m)
            tokens[m] = real[m]
            if m not in estimates:
                continue
            proxy, available = estimates[m]
            own = (real[m] + proxy) / 2 if self.config.proxy_when_present else real[m]
            tokens[m] = torch.where(present[:, None], own, torch.where(available[:, None], proxy, real[m]))
            target = real[m].detach() if self.config.detach_target else real[m]
            pairs.append((proxy, target, present & available))
        if self.config.align_weight > 0 and pairs:
            loss = alignment_loss(pairs, self.config.align_loss)
            ctx.aux_losses[f"cmpt_alignment/{self.adapter}"] = self.config.align_weight * loss
        stacked = torch.stack([tokens[m] for m in ctx.modalities], dim=1)
        weights = self.gate(stacked)
        return self.interface.compose({m: weights[:, k] * stacked[:, k] for k, m in enumerate(ctx.modalities)})


# ---- LoRA -------------------------------------------------------------------------------------------
LORA_CONTAINERS = {"lora_A": "cmpt_lora_A", "lora_B": "cmpt_lora_B"}
LORA_OPTION = "CMPT lora_targets"  # how target errors name the option


class CmptLoraLinear(LoraLinear):
    """peft's LoRA ``Linear`` (its code unchanged) whose A and B containers are named ``cmpt_lora_A`` /
    ``cmpt_lora_B``: CMPT's LoRA keys carry CMPT's own prefix, so peft and transformers save, load and rename them
    with the proxies and the gate (peft reaches the containers as ``self.lora_A`` / ``self.lora_B``, which map to
    the renamed ones)."""

    adapter_layer_names = tuple(LORA_CONTAINERS.get(n, n) for n in LoraLinear.adapter_layer_names)

    def __setattr__(self, name: str, value: object) -> None:
        super().__setattr__(LORA_CONTAINERS.get(name, name), value)

    def __getattr__(self, name: str) -> object:
        return super().__getattr__(LORA_CONTAINERS.get(name, name))


# ---- the layer --------------------------------------------------------------------------------------
class CmptLayer(MissingMethodLayer):
    """Wraps one encoder layer: its targeted Linear modules carry the adapter's LoRA; layer 0 of a stream appends the
    shadows and the proxies the stream hosts, and every layer carries them on."""

    def update_layer(self, adapter_name: str, config: CmptConfig) -> None:
        if config.lora_targets:
            paths = resolve_lora_paths(self.base_layer, config.lora_targets, self.interface, LORA_OPTION)
            lora = lora_config(config.lora_rank, config.lora_alpha, config.lora_dropout, config.inference_mode)
            add_lora(self.base_layer, paths, adapter_name, lora, CmptLoraLinear)
        super().update_layer(adapter_name, config)

    def start_run(self, adapter: str, ctx: ForwardContext) -> CmptRun:
        run = CmptRun(adapter, self.method_config[adapter], self.shared(adapter), ctx, interface=self.interface)
        ctx.feature_hooks.append(run.fuse)
        return run

    def blocks(self, run: CmptRun, hidden: torch.Tensor, mask: torch.Tensor | None,
               carried: dict[str, torch.Tensor]) -> list[Block]:
        tokens = self._initial_tokens(run, hidden, mask) if self.index == 0 else carried.get(APPENDED)
        return [] if tokens is None else [Block(APPENDED, tokens)]

    def insert(self, run: CmptRun, hidden: torch.Tensor, mask: torch.Tensor | None,
               placed: list[tuple[int, Block]]) -> tuple[torch.Tensor, torch.Tensor | None, list[slice]]:
        """CMPT appends its tokens after the real ones, under the stream's extended mask (real rows blind to them)."""
        tokens, length = placed[0][1].tokens, hidden.shape[1]
        joined = torch.cat([hidden, tokens.to(hidden.dtype)], dim=1)
        return joined, run.streams[self.stream.name].mask, [slice(length, length + tokens.shape[1])]

    def _initial_tokens(self, run: CmptRun, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
        """Layer 0's appended tokens (shadows of the stream's modalities, then the hosted proxies); builds the
        stream's layout and extended mask, once per forward."""
        state = StreamState(stream_layout(self.stream, proxied_modalities(self.interface, run.config),
                                          run.config.single_stream_context))
        run.streams[self.stream.name] = state
        if not state.layout.proxies:
            return None
        batch, length = hidden.shape[:2]
        allowed = allowed_attention(mask, batch, length, self.stream.causal, hidden.device)
        spans = run.ctx.spans[self.stream.name]
        present = {m: run.ctx.present_of(m) for m in self.stream.modalities}
        rows, state.has_source = appended_rows(state.layout, spans, allowed[:, 0, -1], present, self.stream.causal)
        state.mask = extended_mask(mask, rows, self.stream.causal, hidden.dtype)
        shadows = [hidden[:, spans[a]] for a in state.layout.shadowed]
        proxies = run.shared.proxies[self.stream.name][None].expand(batch, -1, -1).to(hidden.dtype)
        return torch.cat([*shadows, proxies], dim=1)


def proxied_modalities(interface: BackboneInterface, config: CmptConfig) -> tuple[str, ...]:
    """The modalities that get a proxy, in the backbone's order; a clear error for unknown names."""
    if config.proxy_modalities is None:
        return interface.modalities
    unknown = sorted(set(config.proxy_modalities) - set(interface.modalities))
    if unknown:
        raise ValueError(f"CMPT proxy_modalities {unknown} are not modalities of this {interface.model_type} "
                         f"backbone, which has {list(interface.modalities)}; pass a subset of those (or None).")
    return tuple(m for m in interface.modalities if m in config.proxy_modalities)


def initial_proxies(interface: BackboneInterface, stream: Stream, proxies: tuple[str, ...],
                    config: CmptConfig) -> torch.Tensor:
    """``[P, H]`` proxies: the pretrained embedding (``proxy_init="pretrained"``) plus N(0, 0.02^2) noise, or the
    noise alone."""
    noise = torch.randn(len(proxies), stream.hidden_size) * PROXY_INIT_STD
    if config.proxy_init == "random":
        return noise
    return torch.stack([proxy_embedding(interface, stream, m) for m in proxies]) + noise


def proxy_embedding(interface: BackboneInterface, stream: Stream, modality: str) -> torch.Tensor:
    """A pretrained ``[H]`` token of ``stream``'s input space to start the proxy for ``modality`` from: the
    modality's own embedding where the stream holds it (single-stream), else the host modality's."""
    source = modality if modality in stream.modalities else stream.modalities[0]
    fix = "pass proxy_init='random'."
    try:
        pretrained = capability(interface, PretrainedTokens, "CMPT's proxy_init='pretrained'", fix)
        return pretrained.pretrained_token_embedding(source).detach().float().reshape(-1)
    except ValueError as err:
        raise ValueError(f"CMPT's proxy_init='pretrained' needs a pretrained {source!r} embedding of the "
                         f"{interface.model_type} backbone, which it does not offer; {fix}") from err
