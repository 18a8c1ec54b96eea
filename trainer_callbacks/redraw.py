"""MPLMM's protocol: a new missing pattern for every training sample each epoch."""

from __future__ import annotations

import math
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from hf_missing.data import MissingModalityCollator


def epoch_of(state: TrainerState) -> int:
    """The 0-based epoch that is starting or running (``state.epoch`` is fractional when a run resumes
    mid-epoch)."""
    return math.floor(state.epoch or 0.0)


class RedrawMissingCallback(TrainerCallback):
    """Tells a ``MissingModalityCollator(redraw_rate=...)`` which epoch starts, so patterns are redrawn
    per (seed, epoch, sample) whatever the number of workers or processes."""

    def __init__(self, collator: MissingModalityCollator) -> None:
        if collator.redraw_rate is None:
            raise ValueError("RedrawMissingCallback needs a collator built with redraw_rate=<rate>.")
        self.collator = collator

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        self.collator.set_epoch(epoch_of(state))
