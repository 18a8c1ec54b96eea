"""Per-sample missing-modality patterns for K modalities.

A pattern says which modalities of a sample are present. Code 0 is always ``complete``; the other codes
list every non-empty proper subset of present modalities, fewest missing first, in modality order. For the
two modalities ``("text", "image")`` this gives the papers' codes: 0 complete, 1 missing_text,
2 missing_image.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from functools import cached_property
from itertools import combinations
from typing import Any

import numpy as np
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

    def present(self, missing_type: Any) -> torch.Tensor:
        """Per-sample presence ``[B, K]`` from ``missing_type`` (anything :meth:`codes` takes)."""
        missing_type = self.codes(missing_type)
        return self.present_matrix().to(missing_type.device)[missing_type]

    def codes(self, missing_type: Any) -> torch.Tensor:
        """``missing_type`` as a long tensor of codes ``[B]`` (on the input tensor's device).

        Takes a tensor, array or list of codes: ints, integral floats (``1.0``) or pattern names
        (``"missing_text"``, see :attr:`names`). A non-integral number (``1.9`` would silently become 1), a
        bool, an unknown name or a code outside ``0..num_patterns-1`` raises, naming the samples.
        """
        if isinstance(missing_type, torch.Tensor):
            codes = self._tensor_codes(missing_type)
        else:
            values = missing_type.tolist() if isinstance(missing_type, np.ndarray) else missing_type
            values = list(values) if isinstance(values, list | tuple) else [values]
            codes = torch.tensor([self._code_of(v, i) for i, v in enumerate(values)], dtype=torch.long)
        bad = ((codes < 0) | (codes >= self.num_patterns)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(
                f"missing_type of samples {bad[:10]} is {codes[bad[:10]].tolist()}, outside the codes "
                f"0..{self.num_patterns - 1} ({dict(enumerate(self.names))}); build the column with "
                "simulate_missing and the same modalities as the model."
            )
        return codes

    def _tensor_codes(self, missing_type: torch.Tensor) -> torch.Tensor:
        if missing_type.dtype == torch.bool:
            raise ValueError("missing_type is a bool tensor; pass integer pattern codes "
                             f"({dict(enumerate(self.names))}).")
        if missing_type.is_floating_point():
            bad = (missing_type != missing_type.round()).view(-1).nonzero().flatten().tolist()
            if bad:
                raise ValueError(f"missing_type of samples {bad[:10]} is not a whole number "
                                 f"({missing_type.view(-1)[bad[:10]].tolist()}); codes are integers "
                                 f"{dict(enumerate(self.names))}, and truncating would pick the wrong pattern.")
        return missing_type.long().view(-1)

    def _code_of(self, value: Any, sample: int) -> int:
        if isinstance(value, np.generic) or (isinstance(value, torch.Tensor) and value.ndim == 0):
            value = value.item()
        if isinstance(value, str):
            if value in self.names:
                return self.names.index(value)
            raise ValueError(f"missing_type of sample {sample} is {value!r}, not a pattern name; use one of "
                             f"{self.names} or its code 0..{self.num_patterns - 1}.")
        whole = isinstance(value, numbers.Integral) or (isinstance(value, numbers.Real) and float(value).is_integer())
        if whole and not isinstance(value, bool):
            return int(value)
        raise ValueError(f"missing_type of sample {sample} is {value!r}; it must be an integer code or a pattern "
                         f"name ({dict(enumerate(self.names))}); a non-integral number would be truncated to the "
                         "wrong pattern.")
