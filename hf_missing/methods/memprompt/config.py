"""MemPrompt: memory-driven prompt learning (IJCAI 2025; ../shared/papers/memprompt-memory-driven-prompts.txt)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..base import MissingMethodConfig

PLACEMENTS = ("distributed", "pre-appended")
DEFAULT_LAYERS = (0, 1, 2, 3, 4, 5)


@dataclass
class MemPromptConfig(MissingMethodConfig):
    """Generative prompts retrieved from per-modality prompt memories (eq. 4-6) and shared prompts mapped
    into each modality by a bottleneck network (eq. 7), placed next to each modality's tokens (eq. 2).

    Defaults are the paper's MM-IMDb / Food-101 settings (prompt length 16, memory size 16, top-N 5, the
    first 6 layers). The switches reproduce the ablations: ``generative_prompts`` / ``shared_prompts``
    (Table 2) and ``placement`` (Table 4).
    """

    prompt_length: int = field(
        default=16,
        metadata={"help": "L: tokens of each generative and each shared prompt (paper: 16 for MM-IMDb and "
                          "Food-101, 4 for Hateful Memes)."},
    )
    memory_size: int = field(default=16, metadata={"help": "K: entries (prompt, key) per prompt memory (paper: 16)."})
    top_n: int = field(
        default=5,
        metadata={"help": "N: memory entries retrieved per sample, weighted by a softmax over their cosine "
                          "similarities (eq. 5-6; paper: 5). At most memory_size."},
    )
    prompt_layers: list[int] = field(
        default_factory=lambda: list(DEFAULT_LAYERS),
        metadata={"help": "Encoder layers (0-based, in every stream) that receive new prompts (paper: the first 6). "
                          "Prompts inserted at a layer stay in the sequence for all later layers, as in the "
                          "released code."},
    )
    generative_layers: list[int] | None = field(
        default=None,
        metadata={"help": "Layers that receive new generative prompts p_g (the released code's gen_prompt_layers); "
                          "None: prompt_layers. Fig. 3(c) varies these with shared_layers fixed."},
    )
    shared_layers: list[int] | None = field(
        default=None,
        metadata={"help": "Layers that receive new shared prompts p_s (the released code's shared_prompt_layers); "
                          "None: prompt_layers. Fig. 3(c) varies these with generative_layers fixed."},
    )
    placement: str = field(
        default="distributed",
        metadata={"help": "'distributed': each modality's prompts directly before its tokens (eq. 2); "
                          "'pre-appended': the prompts of all modalities at the front of the sequence (Table 4)."},
    )
    generative_prompts: bool = field(
        default=True, metadata={"help": "Use the generative prompts p_g (eq. 4-6); Table 2 'w/ p_s' turns them off."},
    )
    shared_prompts: bool = field(
        default=True, metadata={"help": "Use the shared prompts p_s (eq. 7); Table 2 'w/ p_g' turns them off."},
    )
    shared_dim: int | None = field(
        default=None,
        metadata={"help": "Width of the shared prompts p_s before the per-modality mapping G_m; None: the widest "
                          "stream's hidden size (768 on ViLT-B/32 and CLIP ViT-B/16, as in the released code)."},
    )
    bottleneck_dim: int | None = field(
        default=None,
        metadata={"help": "Hidden width of G_m = Linear(shared_dim, b)-GELU-Linear(b, D_m) (eq. 7); None: "
                          "shared_dim // 16 (768 -> 48 -> 768 in the released code)."},
    )
    ortho_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of an orthogonality loss between each modality's shared and generative prompts "
                          "(mean squared cosine, summed over prompted layers and modalities). 0 (default) turns "
                          "it off: the paper uses the task loss only (eq. 3) and the released code's term is a "
                          "constant 0 that is never added."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_sizes()
        self._check_layers()
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {list(PLACEMENTS)}, got {self.placement!r}.")
        if not (self.generative_prompts or self.shared_prompts):
            raise ValueError("generative_prompts=False and shared_prompts=False leave MemPrompt with no prompt at "
                             "all; keep at least one of them (or use adapter='baseline').")
        if self.ortho_weight < 0:
            raise ValueError(f"ortho_weight must be non-negative, got {self.ortho_weight}.")
        if self.ortho_weight > 0 and not (self.generative_prompts and self.shared_prompts):
            raise ValueError("ortho_weight > 0 pushes the shared prompts away from the generative ones, so it needs "
                             "both; set ortho_weight=0 or turn both prompt kinds on.")

    def _check_sizes(self) -> None:
        sizes = {"prompt_length": self.prompt_length, "memory_size": self.memory_size, "top_n": self.top_n,
                 "shared_dim": 1 if self.shared_dim is None else self.shared_dim,
                 "bottleneck_dim": 1 if self.bottleneck_dim is None else self.bottleneck_dim}
        small = {k: v for k, v in sizes.items() if v < 1}
        if small:
            raise ValueError(f"{small} must be at least 1.")
        if self.top_n > self.memory_size:
            raise ValueError(f"top_n={self.top_n} retrieves more entries than the memory holds "
                             f"(memory_size={self.memory_size}); pass top_n <= memory_size.")

    def _check_layers(self) -> None:
        """Each layer list checked and sorted (``generative_layers`` / ``shared_layers`` stay None when unset)."""
        self.prompt_layers = _checked_layers("prompt_layers", self.prompt_layers)
        for name in ("generative_layers", "shared_layers"):
            if getattr(self, name) is not None:
                setattr(self, name, _checked_layers(name, getattr(self, name)))

    def layer_lists(self) -> dict[str, list[int]]:
        """The layers of each prompt kind that is switched on (``"generative"``, ``"shared"``): its own list, else
        ``prompt_layers``."""
        lists = {"generative": (self.generative_prompts, self.generative_layers),
                 "shared": (self.shared_prompts, self.shared_layers)}
        return {kind: self.prompt_layers if layers is None else layers for kind, (on, layers) in lists.items() if on}


def _checked_layers(name: str, layers: list[int]) -> list[int]:
    """``layers`` sorted, after a clear error for an empty list, a negative index or a repeated layer."""
    if not layers:
        raise ValueError(f"{name} is empty, so no layer would get those prompts; pass layer indices such as "
                         "[0, 1, 2, 3, 4, 5] (the paper's first 6 layers), or turn the kind off with "
                         "generative_prompts=False / shared_prompts=False.")
    if any(i < 0 for i in layers):
        raise ValueError(f"{name} must hold non-negative layer indices, got {layers}.")
    if len(set(layers)) != len(layers):
        raise ValueError(f"{name} lists a layer twice: {layers}.")
    return sorted(layers)
