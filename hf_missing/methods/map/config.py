"""MAP: missing-aware prompts (Lee et al., CVPR 2023)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..base import MissingMethodConfig

PROMPT_TYPES = ("input", "attention")


@dataclass
class MapConfig(MissingMethodConfig):
    """One prompt set per missing pattern, per layer and per stream; defaults are the MAP paper's."""

    prompt_length: int = field(default=16, metadata={"help": "Prompt tokens per layer (MAP: 16)."})
    prompt_depth: int = field(
        default=6,
        metadata={"help": "Layers 0..depth-1 of every stream get prompts (MAP: 6); clipped to the stream's depth."},
    )
    prompt_type: str = field(
        default="input",
        metadata={"help": "'input': prompts are tokens prepended before each layer and kept for the rest of "
                          "the stream (they accumulate, as in MAP); 'attention': prefix tuning, the first half "
                          "of each prompt extends the keys and the second half the values."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prompt_type not in PROMPT_TYPES:
            raise ValueError(f"prompt_type must be one of {list(PROMPT_TYPES)}, got {self.prompt_type!r}.")
        if self.prompt_length < 1 or self.prompt_depth < 1:
            raise ValueError("prompt_length and prompt_depth must be at least 1.")
        if self.prompt_type == "attention" and self.prompt_length % 2:
            raise ValueError(f"attention prompts split into keys and values: prompt_length must be even, "
                             f"got {self.prompt_length}.")
