"""``hf_missing.callbacks``: the ``TrainerCallback`` classes of the top-level ``trainer_callbacks`` package."""

from trainer_callbacks import (
    MethodDiagnosticsCallback,
    MissingRateCurriculumCallback,
    RedrawMissingCallback,
    find_diagnostics_model,
)

__all__ = ["MethodDiagnosticsCallback", "MissingRateCurriculumCallback", "RedrawMissingCallback",
           "find_diagnostics_model"]
