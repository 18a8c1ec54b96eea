"""Per-sample missing-modality patterns for K modalities.

A pattern says which modalities of a sample are present. Code 0 is always ``complete``; the other codes
list every non-empty proper subset of present modalities, fewest missing first, in modality order. For the
two modalities ``("text", "image")`` this gives the papers' codes: 0 complete, 1 missing_text,
2 missing_image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from itertools import combinations

import torch
from datasets import ClassLabel

DEFAULT_MODALITIES: tuple[str, ...] = ("text", "image")
MISSING_TYPE_COLUMN = "missing_type"


@dataclass(frozen=True)
class ModalityPattern:
    """The missing patterns of a fixed, ordered set of modalities."""

    modalities: tuple[str, ...] = field(default=DEFAULT_MODALITIES)

    def __post_init__(self) -> None:
        if len(self.modalities) < 2 or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(
                f"modalities must be at least two distinct names, got {self.modalities!r}; "
                "for example ('text', 'image')."
            )

    @cached_property
    def missing_sets(self) -> tuple[tuple[str, ...], ...]:
        """The missing modalities of each code, code 0 (nothing missing) first."""
        sets: list[tuple[str, ...]] = []
        for n_missing in range(len(self.modalities)):
            sets.extend(combinations(self.modalities, n_missing))
        return tuple(sets)

    @cached_property
    def names(self) -> list[str]:
        """Human names of the codes: ``complete``, ``missing_text``, ``missing_image_audio``, ..."""
        return ["complete" if not s else "missing_" + "_".join(s) for s in self.missing_sets]

    @property
    def num_patterns(self) -> int:
        return len(self.missing_sets)

    def feature(self) -> ClassLabel:
        """The ``datasets`` feature of the ``missing_type`` column."""
        return ClassLabel(names=self.names)

    def code(self, name_or_missing: str | tuple[str, ...]) -> int:
        """Code of a pattern given its name (``"missing_text"``) or its tuple of missing modalities."""
        if isinstance(name_or_missing, str):
            if name_or_missing not in self.names:
                raise ValueError(f"Unknown missing pattern {name_or_missing!r}; known: {self.names}.")
            return self.names.index(name_or_missing)
        missing = tuple(m for m in self.modalities if m in name_or_missing)
        if len(missing) == len(self.modalities):
            raise ValueError("A sample with every modality missing has no input left; drop it from the data.")
        return self.missing_sets.index(missing)

    def present_matrix(self) -> torch.Tensor:
        """Bool tensor ``[num_patterns, K]``: entry (c, m) is True when modality m is present under code c."""
        return torch.tensor([[m not in s for m in self.modalities] for s in self.missing_sets])

    def present(self, missing_type: torch.Tensor) -> torch.Tensor:
        """Per-sample presence ``[B, K]`` from codes ``[B]``, with a clear error on invalid codes."""
        missing_type = torch.as_tensor(missing_type).long()
        if missing_type.numel() and (missing_type.min() < 0 or missing_type.max() >= self.num_patterns):
            raise ValueError(
                f"missing_type holds codes outside 0..{self.num_patterns - 1} "
                f"({dict(enumerate(self.names))}); got {sorted(set(missing_type.tolist()))}."
            )
        return self.present_matrix().to(missing_type.device)[missing_type]

    def incomplete_codes(self) -> list[int]:
        return list(range(1, self.num_patterns))
