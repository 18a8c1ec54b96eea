"""MPLMM's protocol: a new missing pattern for every training sample each epoch."""

from __future__ import annotations

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from hf_missing.data.collator import MissingModalityCollator


class RedrawMissingCallback(TrainerCallback):
    """Tells a ``MissingModalityCollator(redraw_rate=...)`` which epoch starts, so patterns are redrawn
    per (seed, epoch, sample) whatever the number of workers or processes."""

    def __init__(self, collator: MissingModalityCollator) -> None:
        if collator.redraw_rate is None:
            raise ValueError("RedrawMissingCallback needs a collator built with redraw_rate=<rate>.")
        self.collator = collator

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs) -> None:
        self.collator.set_epoch(int(state.epoch or 0))
