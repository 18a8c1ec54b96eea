"""``hf_missing.callbacks``: the ``TrainerCallback`` classes of the top-level ``trainer_callbacks`` package."""

from trainer_callbacks import (
    MethodDiagnosticsCallback,
    MissingRateCurriculumCallback,
    ModelCardCallback,
    RedrawMissingCallback,
    find_diagnostics_model,
    last_eval_results,
)

__all__ = ["MethodDiagnosticsCallback", "MissingRateCurriculumCallback", "ModelCardCallback", "RedrawMissingCallback",
           "find_diagnostics_model", "last_eval_results"]
