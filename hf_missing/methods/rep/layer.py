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
from ..base import Block, MethodRun, MissingMethodLayer, PooledTensors
from .config import RepConfig

GATE_INIT = 0.5  # alpha_m and eps_s; the released code's single alpha starts at 0.5
REPLAY_INIT = 0.5  # beta_p and beta_s
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
    """The buffers of every missing pattern at each state ``j``: ``private[m][j]`` ``[P, l, D_m]``,
    ``shared[j]`` ``[P, l, D_s]`` and ``projected[m][j] = Theta_m(shared[j])`` ``[P, l, D_m]``."""

    private: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    shared: list[torch.Tensor] = field(default_factory=list)
    projected: dict[str, list[torch.Tensor]] = field(default_factory=dict)


class RepBuffers(PooledTensors):
    """All of one adapter's trained REP tensors, for K modalities of any widths.

    Args:
        widths: hidden size of the stream that holds each modality, in modality order.
        config: the adapter's :class:`RepConfig`.
        init: per modality, the pretrained embedding ``E_m`` of eq. 10 (needed when ``dynamic_init``).
    """

    def __init__(self, widths: dict[str, int], config: RepConfig, init: dict[str, torch.Tensor] | None) -> None:
        super().__init__()
        self.modalities = tuple(widths)
        patterns = ModalityPattern(self.modalities)
        self.presence = patterns.present_matrix()
        self.has_private, self.has_shared, self.replay = config.use_private_buffer, config.dual_buffers, config.replay
        self.num_states = config.prompt_depth if config.replay else 1
        length, shared_dim = config.prompt_length, config.shared_dim
        if self.has_private:
            self.private = nn.ParameterDict(
                {m: nn.Parameter(_private_init(d, length, config, None if init is None else init[m]))
                 for m, d in widths.items()})
        if self.has_shared:
            self.shared = nn.Parameter(_shared_init(len(self.presence), length, shared_dim, config))
            self.theta = nn.ModuleDict({m: nn.Linear(shared_dim, d) for m, d in widths.items()})
        if self.replay:
            self._build_replay(widths, config)

    def _build_replay(self, widths: dict[str, int], config: RepConfig) -> None:
        if self.has_private:
            self.norm = nn.ModuleDict({m: nn.LayerNorm(d) for m, d in widths.items()})
            self.G = nn.ModuleDict({m: _mlp(d, max(1, d // config.mlp_reduction)) for m, d in widths.items()})
            self.alpha = nn.ParameterDict({m: nn.Parameter(torch.tensor(GATE_INIT)) for m in widths})
            self.beta_p = nn.Parameter(torch.tensor(REPLAY_INIT))
        if self.has_shared:
            source = sum(widths.values()) if self.has_private else config.shared_dim
            self.H = nn.Sequential(nn.Linear(source, config.shared_dim), nn.GELU())
            self.eps_s = nn.Parameter(torch.tensor(GATE_INIT))
            self.beta_s = nn.Parameter(torch.tensor(REPLAY_INIT))

    # ---- eq. 7-8: the residual-bypass chain, once per missing pattern -----------------------------
    def states(self) -> BufferStates:
        """``F[0] .. F[n-1]`` for every missing pattern (n = d with replay, else 1)."""
        out = BufferStates()
        if self.has_private:
            out.private = {m: [self.private[m][self._private_rows(k)]] for k, m in enumerate(self.modalities)}
        if self.has_shared:
            out.shared = [self.shared]
        for _ in range(1, self.num_states):
            self._update(out)
        if self.has_shared:
            out.projected = {m: [self.theta[m](s) for s in out.shared] for m in self.modalities}
        return out

    def _private_rows(self, k: int) -> torch.Tensor:
        return torch.where(self.presence[:, k], PRESENT, MISSING).to(self._device())

    def _update(self, out: BufferStates) -> None:
        for m in out.private:
            prev = out.private[m][-1]
            alpha = self.alpha[m]
            out.private[m].append(alpha * self.G[m](self.norm[m](prev)) + (1 - alpha) * prev)  # eq. 7
        if self.has_shared:
            source = torch.cat([out.private[m][-1] for m in self.modalities], dim=-1) if out.private \
                else out.shared[-1]
            out.shared.append(self.eps_s * self.H(source) + (1 - self.eps_s) * out.shared[-1])  # eq. 8

    # ---- eq. 5 and 9: what enters the stream --------------------------------------------------------
    def initial_slots(self, states: BufferStates, modality: str, codes: torch.Tensor) -> torch.Tensor:
        """Eq. 5: ``[Theta_m(F_s[0]) | F_p^m[0]]`` for each sample's pattern, ``[B, n_slots, D_m]``."""
        parts = [states.projected[modality][0][codes]] if self.has_shared else []
        if self.has_private:
            parts.append(states.private[modality][0][codes])
        return torch.cat(parts, dim=1)

    def replayed(self, states: BufferStates, modality: str, j: int, codes: torch.Tensor) -> torch.Tensor:
        """Eq. 9's injection before layer ``j``: ``[beta_s Theta_m(F_s[j]) | beta_p F_p^m[j]]``."""
        parts = [self.beta_s * states.projected[modality][j][codes]] if self.has_shared else []
        if self.has_private:
            parts.append(self.beta_p * states.private[modality][j][codes])
        return torch.cat(parts, dim=1)

    # ---- eq. 6 ----------------------------------------------------------------------------------------
    def orthogonality_loss(self, states: BufferStates) -> torch.Tensor:
        """Eq. 6 with squared cosines (a raw inner product can be driven to minus infinity): shared vs.
        private in each modality's space, and private vs. private compared in the shared space through
        ``Theta_m^T`` (widths differ on two-stream backbones; without a shared buffer, only equal widths)."""
        n = max(len(states.shared), len(next(iter(states.private.values()), [])))
        loss = torch.zeros((), device=self._device())
        for j in range(n):
            for i, m in enumerate(self.modalities):
                if self.has_shared and self.has_private:
                    loss = loss + squared_cosine(states.projected[m][j], states.private[m][j])
                for other in self.modalities[i + 1:] if self.has_private else ():
                    a, b = self._in_shared(m, states.private[m][j]), self._in_shared(other, states.private[other][j])
                    if a.shape[-1] == b.shape[-1]:
                        loss = loss + squared_cosine(a, b)
        return loss

    def _in_shared(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        return x @ self.theta[modality].weight if self.has_shared else x

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def diagnostics(self) -> dict[str, float]:
        """Current values of the learned gates (alpha_m, eps_s, beta_p, beta_s)."""
        if not self.replay:
            return {}
        values = {f"alpha_{m}": a.item() for m, a in self.alpha.items()} if self.has_private else {}
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
    :func:`init_noise`)."""
    if not config.dynamic_init:
        return torch.randn(2, length, width) * RANDOM_INIT_STD
    noise = init_noise((2, length, width), config.noise_type, embedding.device)
    return embedding.detach().float().expand(2, length, width) + config.noise_scale * noise


def _shared_init(patterns: int, length: int, width: int, config: RepConfig) -> torch.Tensor:
    """Eq. 11: noise of expected norm 1 per token (:func:`init_noise`), one buffer per missing pattern."""
    if not config.dynamic_init:
        return torch.randn(patterns, length, width) * RANDOM_INIT_STD
    return init_noise((patterns, length, width), config.noise_type)


@dataclass(kw_only=True)
class RepRun(MethodRun):
    """One forward of a REP adapter: its buffer states ``F[0] .. F[n-1]`` (eq. 7-8, computed once per forward)."""

    states: BufferStates


class RepLayer(MissingMethodLayer):
    """Wraps every encoder layer of every stream. The first layer that runs computes the buffer chain of the
    adapter's :class:`RepBuffers` (in the model's pool) and adds the orthogonality loss; every layer inserts its
    stream's slots before each modality's tokens (layer 0: eq. 5; layers 1..d-1: replay, eq. 9; later layers: the
    slots flow forward)."""

    def start_run(self, adapter: str, ctx: ForwardContext) -> RepRun:
        buffers, config = self.shared(adapter), self.method_config[adapter]
        states = buffers.states()
        if config.ortho_weight > 0:
            ctx.aux_losses[f"rep_orthogonality/{adapter}"] = config.ortho_weight * buffers.orthogonality_loss(states)
        return RepRun(adapter, config, buffers, ctx, states=states)

    def blocks(self, run: RepRun, hidden: torch.Tensor, mask: torch.Tensor | None,
               carried: dict[str, torch.Tensor]) -> list[Block]:
        spans = run.ctx.spans[self.stream.name]
        order = sorted(self.stream.modalities, key=lambda m: spans[m].start or 0)
        return [Block(m, self._slots(run, m, carried.get(m)), before=m) for m in order]

    def _slots(self, run: RepRun, modality: str, carried: torch.Tensor | None) -> torch.Tensor:
        buffers, codes = run.shared, run.ctx.missing_type
        if self.index == 0:
            return buffers.initial_slots(run.states, modality, codes)
        if self.index < buffers.num_states:
            return carried + buffers.replayed(run.states, modality, self.index, codes)
        return carried


def init_embeddings(interface: BackboneInterface) -> dict[str, torch.Tensor]:
    """``E_m`` of eq. 10 for each modality, from the backbone's pretrained weights."""
    source = capability(interface, PretrainedTokens, "REP's dynamic initialisation (eq. 10)",
                        "pass dynamic_init=False, or add the PretrainedTokens mixin to its backbone interface.")
    try:
        return {m: source.pretrained_token_embedding(m) for m in interface.modalities}
    except ValueError as err:
        raise ValueError(f"{err} REP's dynamic initialisation (eq. 10) starts from one per modality; pass "
                         "dynamic_init=False or extend pretrained_token_embedding in its backbone interface.") from err
