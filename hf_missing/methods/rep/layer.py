"""REP's buffers (eq. 5-11) and the encoder-layer wrapper that inserts and replays them.

Buffer states are indexed by the encoder layer they enter: ``F[0]`` is inserted before layer 0 (eq. 5)
and, for ``j = 1 .. d-1``, ``F[j]`` is the residual-bypass update of ``F[j-1]`` (eq. 7-8) replayed into
the buffer slots before layer ``j`` (eq. 9). The slots of modality ``m`` sit directly before ``m``'s
tokens in the stream that holds them (CLIP: front of each tower; single-stream backbones: before each
modality's span) as ``[Theta_m(F_s) | F_p^m | E_m]`` and flow forward through every later layer, as in
the released code. An adapter's :class:`RepBuffers` live in the model's method pool, shared by its layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from ...backbones import BackboneInterface, PretrainedTokens, capability
from ...context import ForwardContext
from ...missingness import ModalityPattern
from ..base import Block, MethodRun, MissingMethodLayer, PooledTensors, visible_keys
from .config import RepConfig

GATE_INIT = 0.0  # logit of alpha_m, eps_s, beta_p and beta_s: each starts at 0.5, as the released code's alpha
RANDOM_INIT_STD = 0.02  # MAP/DCP-style initialisation when dynamic_init=False
PRESENT, MISSING = 0, 1  # rows of a private buffer: the modality present ("complete") or missing


def init_noise(shape: tuple[int, ...], kind: str, device: torch.device | None = None) -> torch.Tensor:
    """The noise ``zeta`` of eq. 10-11: i.i.d. components of variance ``1/D`` (D = the last dimension) from ``kind``'s
    own distribution (Gaussian; uniform on [-sqrt 3, sqrt 3]; Laplace of scale 1/sqrt 2; each of unit variance
    before the ``1/sqrt(D)`` scale). The expected squared norm is 1, the scale of the released code's unit vectors
    (raw N(0, I) noise, of norm sqrt(D), would swamp E_m), and the types differ in distribution at the same
    variance, as Table 4 compares them, not only in direction as normalised vectors would."""
    if kind == "gaussian":
        noise = torch.randn(shape, device=device)
    elif kind == "uniform":
        noise = (torch.rand(shape, device=device) * 2 - 1) * math.sqrt(3)
    else:  # inverse CDF of Laplace(0, 1/sqrt 2); torch.distributions cannot sample on the meta device of dry runs
        u = torch.rand(shape, device=device) - 0.5
        noise = -torch.sign(u) * torch.log1p(-2 * u.abs().clamp(max=0.5 - 1e-7)) / math.sqrt(2)
    return noise / math.sqrt(shape[-1])


def squared_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared cosine similarity between every token of ``a [..., l, D]`` and of ``b [..., l', D]``."""
    return (F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(-1, -2)).pow(2).mean()


@dataclass
class BufferStates:
    """Each sample's buffers at every state computed so far: ``private[m][j]`` ``[B, l, D_m]`` and ``shared[j]``
    ``[B, l, D_s]`` (state ``j`` enters before encoder layer ``j``)."""

    private: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    shared: list[torch.Tensor] = field(default_factory=list)


class RepBuffers(PooledTensors):
    """All of one adapter's trained REP tensors, for K modalities of any widths.

    Args:
        widths: hidden size of the stream that holds each modality, in modality order.
        config: the adapter's :class:`RepConfig`.
        init: per modality, the pretrained embedding ``E_m`` of eq. 10 (``dynamic_init`` with
            ``init_source="pretrained"``; with ``"sample"`` the sample's own embedding is added per forward).
    """

    def __init__(self, widths: dict[str, int], config: RepConfig, init: dict[str, torch.Tensor] | None) -> None:
        super().__init__()
        self.modalities = tuple(widths)
        patterns = ModalityPattern(self.modalities)
        self.presence = patterns.present_matrix()
        self.has_private, self.has_shared, self.replay = config.use_private_buffer, config.dual_buffers, config.replays
        self.from_features = config.buffer_source == "features"
        self.num_states = config.prompt_depth if self.replay else 1
        self.length, shared_dim = config.prompt_length, config.shared_dim
        if self.has_private:
            self.private = nn.ParameterDict(
                {m: nn.Parameter(_private_init(d, self.length, config, None if init is None else init[m]))
                 for m, d in widths.items()})
        if self.has_shared:
            self.shared = nn.Parameter(_shared_init(len(self.presence), self.length, shared_dim, config))
            self.theta = nn.ModuleDict({m: nn.Linear(shared_dim, d) for m, d in widths.items()})
        if self.replay:
            self._build_replay(widths, config)

    def _build_replay(self, widths: dict[str, int], config: RepConfig) -> None:
        if self.has_private or self.from_features:
            self.norm = nn.ModuleDict({m: nn.LayerNorm(d) for m, d in widths.items()})
        if self.has_private:
            self.G = nn.ModuleDict({m: _mlp(d, max(1, d // config.mlp_reduction)) for m, d in widths.items()})
            self.alpha_logit = nn.ParameterDict({m: nn.Parameter(torch.tensor(GATE_INIT)) for m in widths})
            self.beta_p_logit = nn.Parameter(torch.tensor(GATE_INIT))
        if self.has_shared:
            source = sum(widths.values()) if self.has_private or self.from_features else config.shared_dim
            self.H = nn.Sequential(nn.Linear(source, config.shared_dim), nn.GELU())
            self.eps_s_logit = nn.Parameter(torch.tensor(GATE_INIT))
            self.beta_s_logit = nn.Parameter(torch.tensor(GATE_INIT))

    # ---- the gates: learnable scalars kept in (0, 1) ----------------------------------------------------
    def alpha(self, modality: str) -> torch.Tensor:
        """alpha_m of eq. 7, ``sigmoid`` of its learned logit: eq. 7 stays a convex mix of the new features and the
        buffer (an unbounded alpha > 2 makes ``1 - alpha < -1``, and the buffer grows geometrically with depth)."""
        return torch.sigmoid(self.alpha_logit[modality])

    @property
    def eps_s(self) -> torch.Tensor:
        """eps_s of eq. 8, in (0, 1) as alpha_m."""
        return torch.sigmoid(self.eps_s_logit)

    @property
    def beta_p(self) -> torch.Tensor:
        """beta_p of eq. 9: how much of the private buffer is replayed, in (0, 1)."""
        return torch.sigmoid(self.beta_p_logit)

    @property
    def beta_s(self) -> torch.Tensor:
        """beta_s of eq. 9: how much of the shared buffer is replayed, in (0, 1)."""
        return torch.sigmoid(self.beta_s_logit)

    # ---- eq. 10-11: state 0 ---------------------------------------------------------------------------
    def initial_private(self, modality: str, codes: torch.Tensor, embedded: torch.Tensor | None = None) -> torch.Tensor:
        """``F_p^m[0]`` per sample ``[B, l, D_m]``: its pattern's row (m present or missing), plus the sample's own
        embedding ``embedded [B, D_m]`` of m when E_m comes from the sample (eq. 10, section 3.5)."""
        rows = torch.where(self.presence[:, self.modalities.index(modality)], PRESENT, MISSING).to(codes.device)
        start = self.private[modality][rows[codes]]
        return start if embedded is None else start + embedded[:, None, :].to(start.dtype)

    def initial_shared(self, codes: torch.Tensor) -> torch.Tensor:
        """``F_s[0]`` per sample ``[B, l, D_s]``: its pattern's shared buffer (eq. 11)."""
        return self.shared[codes]

    def initial_states(self, codes: torch.Tensor, embedded: dict[str, torch.Tensor] | None = None) -> BufferStates:
        """State 0 of every buffer for each sample's pattern."""
        out = BufferStates(shared=[self.initial_shared(codes)] if self.has_shared else [])
        if self.has_private:
            out.private = {m: [self.initial_private(m, codes, None if embedded is None else embedded[m])]
                           for m in self.modalities}
        return out

    def complete(self, states: BufferStates, j: int) -> bool:
        """Whether ``states`` hold state ``j`` of every buffer (each modality's private one and the shared one)."""
        private = not self.has_private or all(len(states.private.get(m, ())) > j for m in self.modalities)
        return private and (not self.has_shared or len(states.shared) > j)

    # ---- eq. 7-8: the residual-bypass update ------------------------------------------------------------
    def update(self, states: BufferStates, features: dict[str, torch.Tensor] | None = None) -> None:
        """Append state ``j`` to ``states`` (which hold ``0 .. j-1``).

        ``features[m]`` ``[B, l, D_m]`` is ``Z_p^m`` read off the stream (the outputs of m's private slots, or of
        its shared slots without private buffers); None: the released code's chain, where ``Z_p^m`` is the
        previous private buffer itself."""
        for m in states.private:
            prev = states.private[m][-1]
            z = prev if features is None else features[m]
            alpha = self.alpha(m)
            states.private[m].append(alpha * self.G[m](self.norm[m](z)) + (1 - alpha) * prev)  # eq. 7
        if self.has_shared:
            prev = states.shared[-1]
            eps = self.eps_s
            states.shared.append(eps * self.H(self._shared_source(states, features)) + (1 - eps) * prev)  # eq. 8

    def _shared_source(self, states: BufferStates, features: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """C(...) of eq. 8: the concatenated private buffers; without them, the normalised shared-slot features
        (feature buffers) or the previous shared buffer (the released chain)."""
        if states.private:
            return torch.cat([states.private[m][-1] for m in self.modalities], dim=-1)
        if features is not None:
            return torch.cat([self.norm[m](features[m]) for m in self.modalities], dim=-1)
        return states.shared[-1]

    def chain(self, codes: torch.Tensor) -> BufferStates:
        """The released code's input-independent states ``F[0] .. F[n-1]`` for each sample's pattern."""
        states = self.initial_states(codes)
        for _ in range(1, self.num_states):
            self.update(states)
        return states

    # ---- eq. 5 and 9: what enters the stream --------------------------------------------------------
    def slots(self, states: BufferStates, modality: str, j: int) -> torch.Tensor:
        """``[B, n_slots, D_m]`` for modality m before layer j: eq. 5's ``[Theta_m(F_s[0]) | F_p^m[0]]`` at j = 0,
        eq. 9's ``[beta_s Theta_m(F_s[j]) | beta_p F_p^m[j]]`` added to the carried slots after."""
        parts = []
        if self.has_shared:
            projected = self.theta[modality](states.shared[j])
            parts.append(projected if j == 0 else self.beta_s * projected)
        if self.has_private:
            private = states.private[modality][j]
            parts.append(private if j == 0 else self.beta_p * private)
        return torch.cat(parts, dim=1)

    def feature_slice(self) -> slice:
        """Where ``Z_p^m`` sits in the slots next to modality m: the private part, or the shared part without it."""
        return slice(self.length if self.has_shared else 0, None) if self.has_private else slice(0, self.length)

    # ---- eq. 6 ----------------------------------------------------------------------------------------
    def orthogonality_term(self, states: BufferStates, j: int) -> torch.Tensor:
        """State j's term of eq. 6 with squared cosines (a raw inner product can be driven to minus infinity):
        shared vs. private in each modality's space, and private vs. private compared in the shared space through
        ``Theta_m^T`` (widths differ on two-stream backbones; without a shared buffer, only equal widths)."""
        loss = torch.zeros((), device=self._device())
        if not states.private:
            return loss
        for i, m in enumerate(self.modalities):
            private = states.private[m][j]
            if self.has_shared:
                loss = loss + squared_cosine(self.theta[m](states.shared[j]), private)
            for other in self.modalities[i + 1:]:
                a, b = self._in_shared(m, private), self._in_shared(other, states.private[other][j])
                if a.shape[-1] == b.shape[-1]:
                    loss = loss + squared_cosine(a, b)
        return loss

    def orthogonality_loss(self, states: BufferStates) -> torch.Tensor:
        """Eq. 6 summed over every state."""
        n = max(len(states.shared), len(next(iter(states.private.values()), [])))
        return sum((self.orthogonality_term(states, j) for j in range(n)), torch.zeros((), device=self._device()))

    def _in_shared(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        return x @ self.theta[modality].weight if self.has_shared else x

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def diagnostics(self) -> dict[str, float]:
        """Current values of the learned gates (alpha_m, eps_s, beta_p, beta_s)."""
        if not self.replay:
            return {}
        values = {f"alpha_{m}": self.alpha(m).item() for m in self.modalities} if self.has_private else {}
        if self.has_private:
            values["beta_p"] = self.beta_p.item()
        if self.has_shared:
            values.update(eps_s=self.eps_s.item(), beta_s=self.beta_s.item())
        return values


def _mlp(width: int, hidden: int) -> nn.Sequential:
    """G_m of eq. 7: two linear layers with GELU."""
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))


def _private_init(width: int, length: int, config: RepConfig, embedding: torch.Tensor | None) -> torch.Tensor:
    """Eq. 10: ``E_m + eps_n * zeta`` for the present and the missing row (``zeta`` of expected norm 1:
    :func:`init_noise`); with E_m taken from each sample per forward (``init_source="sample"``), the learned part
    starts at ``eps_n * zeta``."""
    if not config.dynamic_init:
        return torch.randn(2, length, width) * RANDOM_INIT_STD
    device = None if embedding is None else embedding.device
    noise = config.noise_scale * init_noise((2, length, width), config.noise_type, device)
    return noise if embedding is None else embedding.detach().float().expand(2, length, width) + noise


def _shared_init(patterns: int, length: int, width: int, config: RepConfig) -> torch.Tensor:
    """Eq. 11: noise of expected norm 1 per token (:func:`init_noise`), one buffer per missing pattern."""
    if not config.dynamic_init:
        return torch.randn(patterns, length, width) * RANDOM_INIT_STD
    return init_noise((patterns, length, width), config.noise_type)


@dataclass(kw_only=True)
class RepRun(MethodRun):
    """One forward of a REP adapter: the buffer states computed so far (eq. 7-8), how many of them the
    orthogonality loss (eq. 6) has counted, and per stream the ``[B, L]`` tokens a query may attend to."""

    states: BufferStates
    counted: int = 0
    visible: dict[str, torch.Tensor] = field(default_factory=dict)


class RepLayer(MissingMethodLayer):
    """Wraps every encoder layer of every stream and inserts each modality's slots before its tokens: layer 0
    eq. 5, layers 1..d-1 eq. 9 (the carried slots plus the replayed buffers), later layers carry them forward.

    State ``j`` (replayed before layer j: the paper's ``F[k-1]`` before layer k, the same recursion indexed by the
    layer it enters) is computed by the first layer j that runs, from what every stream made of layer j-1
    (:attr:`RepConfig.needs_lockstep` makes two-stream backbones run in step so that all of it exists); only the
    released chain from pretrained tokens is computed whole at the start."""

    def start_run(self, adapter: str, ctx: ForwardContext) -> RepRun:
        buffers, config = self.shared(adapter), self.method_config[adapter]
        if config.buffer_source == "parameters" and config.init_source == "pretrained":
            states = buffers.chain(ctx.missing_type)
        else:
            states = BufferStates(shared=[buffers.initial_shared(ctx.missing_type)] if buffers.has_shared else [])
        run = RepRun(adapter, config, buffers, ctx, states=states)
        self._count_orthogonality(run)
        return run

    def blocks(self, run: RepRun, hidden: torch.Tensor, mask: torch.Tensor | None,
               carried: dict[str, torch.Tensor]) -> list[Block]:
        if self.index == 0:
            run.visible[self.stream.name] = visible_keys(mask, hidden.shape[0], hidden.shape[1], hidden.device)
            self._start_private(run, hidden)
        elif self.index < run.shared.num_states and not run.shared.complete(run.states, self.index):
            self._advance(run, carried)
        spans = run.ctx.spans[self.stream.name]
        order = sorted(self.stream.modalities, key=lambda m: spans[m].start or 0)
        return [Block(m, self._slots(run, m, carried.get(m)), before=m) for m in order]

    def _slots(self, run: RepRun, modality: str, carried: torch.Tensor | None) -> torch.Tensor:
        if self.index == 0:
            return run.shared.slots(run.states, modality, 0)
        if self.index < run.shared.num_states:
            return carried + run.shared.slots(run.states, modality, self.index)
        return carried

    def _start_private(self, run: RepRun, hidden: torch.Tensor) -> None:
        """State 0 of this stream's private buffers (eq. 10), from the sample's embedded tokens when asked."""
        buffers, codes = run.shared, run.ctx.missing_type
        if not buffers.has_private or all(m in run.states.private for m in self.stream.modalities):
            return
        sample = run.config.init_source == "sample"
        for m in self.stream.modalities:
            embedded = self._mean_tokens(run, self.stream.name, m, hidden) if sample else None
            run.states.private[m] = [buffers.initial_private(m, codes, embedded)]
        self._count_orthogonality(run)

    @staticmethod
    def _mean_tokens(run: RepRun, stream: str, modality: str, hidden: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` the mean of the modality's tokens a query may attend to (padding excluded; under the "mask"
        policy a missing modality has none, and its mean is 0)."""
        span = run.ctx.spans[stream][modality]
        weights = run.visible[stream][:, span, None].to(hidden.dtype)
        return (hidden[:, span] * weights).sum(1) / weights.sum(1).clamp(min=1)

    def _advance(self, run: RepRun, carried: dict[str, torch.Tensor]) -> None:
        """Compute state j (eq. 7-8) from the slot outputs of layer j-1 (feature buffers) or the chain."""
        buffers = run.shared
        features = self._features(run, carried) if run.config.buffer_source == "features" else None
        buffers.update(run.states, features)
        self._count_orthogonality(run)

    def _features(self, run: RepRun, carried: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``Z_p^m`` for every modality, from what its stream made of layer j-1: the outputs of m's slots, which
        attended to m's tokens (in a joint stream to the other modalities' too: they sit beside m's tokens, not
        alone with them). In a causal stream the slots sit at the front and cannot see the tokens, so the mean
        of m's visible token outputs is added to every slot (CLIP's text: otherwise no text would reach Z)."""
        part, depth, features = run.shared.feature_slice(), self.index - 1, {}
        for stream in self.interface.streams:
            outputs = carried if stream.name == self.stream.name else run.carried.get(stream.name)
            if outputs is None or run.depth.get(stream.name) != depth:
                raise RuntimeError(
                    f"REP feature buffers need every stream's layer {depth} before layer {self.index} of the "
                    f"{self.stream.name} stream, but the {stream.name} stream is not there; the backbone must run its "
                    "streams in step (ForwardContext.lockstep), or pass buffer_source='parameters'.")
            for m in stream.modalities:
                z = outputs[m][:, part]
                if stream.causal:
                    z = z + self._mean_tokens(run, stream.name, m, run.outputs[stream.name])[:, None]
                features[m] = z
        return features

    def _count_orthogonality(self, run: RepRun) -> None:
        """Add eq. 6's term of every newly complete state to the forward's auxiliary losses."""
        weight, states, key = run.config.ortho_weight, run.states, f"rep_orthogonality/{run.adapter}"
        while weight > 0 and run.counted < run.shared.num_states and run.shared.complete(states, run.counted):
            term = weight * run.shared.orthogonality_term(states, run.counted)
            run.ctx.aux_losses[key] = run.ctx.aux_losses[key] + term if key in run.ctx.aux_losses else term
            run.counted += 1


def init_embeddings(interface: BackboneInterface) -> dict[str, torch.Tensor]:
    """``E_m`` of eq. 10 for each modality, from the backbone's pretrained weights."""
    source = capability(interface, PretrainedTokens, "REP's dynamic initialisation (eq. 10)",
                        "pass dynamic_init=False, or add the PretrainedTokens mixin to its backbone interface.")
    try:
        return {m: source.pretrained_token_embedding(m) for m in interface.modalities}
    except ValueError as err:
        raise ValueError(f"{err} REP's dynamic initialisation (eq. 10) starts from one per modality; pass "
                         "dynamic_init=False or extend pretrained_token_embedding in its backbone interface.") from err
