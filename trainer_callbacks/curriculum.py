"""A training missing rate that rises over the epochs, on top of the per-epoch redraw protocol."""

from __future__ import annotations

from typing import Any

from transformers import TrainerControl, TrainerState, TrainingArguments

from hf_missing.data import MissingModalityCollator

from .redraw import RedrawMissingCallback, epoch_of


class MissingRateCurriculumCallback(RedrawMissingCallback):
    """Raises ``collator.redraw_rate`` linearly from ``start_rate`` (first epoch) to ``end_rate`` (epoch
    ``ramp_epochs - 1`` and after), and tells the collator which epoch starts.

    It does everything :class:`RedrawMissingCallback` does (it is one), so use it instead of that callback;
    registering both is harmless. The rate is a function of the epoch number alone, so a run resumed from a
    checkpoint, and every process of a distributed run, uses the same rate. The collator's rate and epoch
    are read when a batch is built: with ``dataloader_num_workers > 0`` keep ``dataloader_persistent_workers``
    off (the default), or workers keep the first epoch's copy of the collator.

    Args:
        collator: a ``MissingModalityCollator(redraw_rate=...)`` (its initial rate is overwritten).
        start_rate, end_rate: missing rates in [0, 1] of the first and the last ramp epoch.
        ramp_epochs: epochs the ramp spans; defaults to the run's number of epochs.
    """

    def __init__(self, collator: MissingModalityCollator, start_rate: float = 0.0, end_rate: float = 0.7,
                 ramp_epochs: int | None = None) -> None:
        super().__init__(collator)
        for name, rate in (("start_rate", start_rate), ("end_rate", end_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {rate}.")
        if ramp_epochs is not None and ramp_epochs < 1:
            raise ValueError(f"ramp_epochs must be >= 1, got {ramp_epochs}.")
        self.start_rate, self.end_rate, self.ramp_epochs = start_rate, end_rate, ramp_epochs

    def rate(self, epoch: int, num_epochs: int) -> float:
        """The missing rate of ``epoch`` (0-based) in a run of ``num_epochs`` epochs."""
        span = (self.ramp_epochs or num_epochs) - 1
        progress = 1.0 if span <= 0 else min(1.0, epoch / span)
        return self.start_rate + (self.end_rate - self.start_rate) * progress

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        super().on_epoch_begin(args, state, control, **kwargs)
        num_epochs = int(state.num_train_epochs or args.num_train_epochs)
        self.collator.redraw_rate = self.rate(epoch_of(state), num_epochs)
