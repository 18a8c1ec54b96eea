"""REP: buffer replay prompting (REplay Prompting, the REP paper in ../shared/papers/rep-buffer-replay.txt)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..base import MissingMethodConfig

NOISE_TYPES = ("gaussian", "uniform", "laplace")
BUFFER_SOURCES = ("features", "parameters")
INIT_SOURCES = ("pretrained", "sample")


@dataclass
class RepConfig(MissingMethodConfig):
    """Private and shared feature buffers, updated by residual bypass and replayed layer by layer.

    Defaults are the paper's (l = 36, d = 6, eps_n = 0.2, Gaussian noise, buffers that cache each sample's own
    features). The switches reproduce the rows of the paper's Tables 3-4: ``dynamic_init`` (eq. 10-11 vs. the
    small random initialisation of MAP/DCP), ``dual_buffers`` (private + shared vs. private only),
    ``use_private_buffer`` (False: "w/o private buffer"), ``replay`` (eq. 7-9 vs. buffers inserted at layer 0
    only) and ``noise_type``; ``buffer_source="parameters"`` is the released code's input-independent chain.
    """

    prompt_length: int = field(default=36, metadata={"help": "Buffer width l: tokens per buffer (REP: 36)."})
    prompt_depth: int = field(
        default=6,
        metadata={"help": "Buffer depth d: buffers are replayed before layers 1..d-1 of every stream (REP: 6); "
                          "must not exceed the stream's layer count."},
    )
    noise_scale: float = field(default=0.2, metadata={"help": "eps_n of eq. 10 (REP: 0.2)."})
    noise_type: str = field(
        default="gaussian",
        metadata={"help": f"Noise of the dynamic initialisation, one of {list(NOISE_TYPES)} (Table 4)."},
    )
    dynamic_init: bool = field(
        default=True,
        metadata={"help": "Eq. 10-11: private buffers from the backbone's pretrained embeddings plus noise, shared "
                          "from normalised Gaussian noise; False: N(0, 0.02^2) as MAP/DCP (Table 3)."},
    )
    dual_buffers: bool = field(
        default=True,
        metadata={"help": "Keep a shared buffer beside the private ones (Table 3 '+ Dual buffers'); False: private "
                          "buffers only."},
    )
    use_private_buffer: bool = field(
        default=True, metadata={"help": "False: shared buffer only (Table 4 'w/o Private Buffer')."},
    )
    replay: bool = field(
        default=True,
        metadata={"help": "Residual-bypass updates (eq. 7-8) and replay before every buffered layer (eq. 9); "
                          "False: buffers enter at layer 0 only and flow forward (Table 3 without '+ Replay')."},
    )
    buffer_source: str = field(
        default="features",
        metadata={"help": f"What eq. 7's Z_p^m[k] is, one of {list(BUFFER_SOURCES)}. 'features': the sample's own "
                          "representation of modality m at layer k (the outputs of the buffer slots that attended to "
                          "its tokens; in a causal stream, where the slots cannot see them, plus the mean of its token "
                          "outputs), so the buffers cache and replay each sample's features; two-stream backbones "
                          "(CLIP) then run their towers layer by layer in step. 'parameters': the released code's "
                          "chain of the buffers alone, the same for every sample of a missing pattern."},
    )
    init_source: str = field(
        default="pretrained",
        metadata={"help": f"E_m of eq. 10 (with dynamic_init), one of {list(INIT_SOURCES)}. 'pretrained': the "
                          "backbone's pretrained token of modality m (fixed); 'sample': the mean of the sample's own "
                          "embedded tokens of m entering the first layer (for a missing m: its placeholder's), plus "
                          "the learned eps_n-scaled noise (section 3.5's 'based on the input sample')."},
    )
    ortho_weight: float = field(
        default=0.1,
        metadata={"help": "Weight of the orthogonality loss (eq. 6) added to the task loss; 0 turns it off (the "
                          "released code never adds it). Private buffers of streams of different widths (CLIP 512/768) "
                          "are compared through the shared buffer's projections, so without dual_buffers the term is "
                          "0 there (a warning says so)."},
    )
    shared_dim: int = field(
        default=128,
        metadata={"help": "Width of the shared buffer's space; Theta_m projects it into each stream (eq. 5)."},
    )
    mlp_reduction: int = field(
        default=16,
        metadata={"help": "G_m (eq. 7) is Linear(D, D/r)-GELU-Linear(D/r, D); r = 16 as DCP's prompt MLPs."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.noise_type not in NOISE_TYPES:
            raise ValueError(f"noise_type must be one of {list(NOISE_TYPES)}, got {self.noise_type!r}.")
        if min(self.prompt_length, self.prompt_depth, self.shared_dim, self.mlp_reduction) < 1:
            raise ValueError("prompt_length, prompt_depth, shared_dim and mlp_reduction must be at least 1.")
        if not (self.dual_buffers or self.use_private_buffer):
            raise ValueError("dual_buffers=False keeps only the private buffers, so use_private_buffer=False would "
                             "leave no buffer at all; keep one of them.")
        if self.buffer_source not in BUFFER_SOURCES:
            raise ValueError(f"buffer_source must be one of {list(BUFFER_SOURCES)}, got {self.buffer_source!r}.")
        if self.init_source not in INIT_SOURCES:
            raise ValueError(f"init_source must be one of {list(INIT_SOURCES)}, got {self.init_source!r}.")
        if self.init_source == "sample" and not self.dynamic_init:
            raise ValueError("init_source='sample' is eq. 10's dynamic initialisation from the sample, which "
                             "dynamic_init=False switches off; pass dynamic_init=True or init_source='pretrained'.")
        if self.noise_scale < 0 or self.ortho_weight < 0:
            raise ValueError("noise_scale and ortho_weight must be non-negative.")

    @property
    def replays(self) -> bool:
        """Whether any state after the first is replayed (eq. 7-9): ``replay`` with a depth above 1."""
        return self.replay and self.prompt_depth > 1

    @property
    def needs_lockstep(self) -> bool:
        """States computed during the forward (feature buffers, or E_m from the sample) read every modality at the
        same depth (eq. 8), so every stream runs layer by layer in step."""
        return self.replays and (self.buffer_source == "features" or self.init_source == "sample")
