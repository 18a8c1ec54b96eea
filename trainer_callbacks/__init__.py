"""``transformers.TrainerCallback`` classes for hf_missing training runs."""

from .redraw import RedrawMissingCallback

__all__ = ["RedrawMissingCallback"]
