"""``transformers.TrainerCallback`` classes for hf_missing training runs.

Per-missing-pattern evaluation needs no callback: ``hf_missing.metrics.for_task`` already reports
``eval_<pattern>/<metric>`` for the patterns in an eval set, and ``Trainer(eval_dataset={"missing_text": ds,
...})`` evaluates several test settings, logging ``eval_missing_text_accuracy`` and so on.
"""

from .curriculum import MissingRateCurriculumCallback
from .diagnostics import MethodDiagnosticsCallback, find_diagnostics_model
from .model_card import ModelCardCallback, last_eval_results
from .redraw import RedrawMissingCallback

__all__ = ["MethodDiagnosticsCallback", "MissingRateCurriculumCallback", "ModelCardCallback", "RedrawMissingCallback",
           "find_diagnostics_model", "last_eval_results"]
