"""The processor of a backbone checkpoint: what :class:`~hf_missing.MissingModalityCollator` and the pipeline use."""

from __future__ import annotations

import os
from typing import Any

from transformers import AutoConfig, AutoProcessor

from .fused import MODEL_TYPE as FUSED_MODEL_TYPE
from .fused import FusedProcessor


def load_processor(backbone: str | os.PathLike) -> Any:
    """The backbone's processor: :class:`FusedProcessor` for the fused backbone, else ``AutoProcessor`` (a
    folder or Hub id; remote code is never trusted)."""
    if AutoConfig.from_pretrained(str(backbone)).model_type == FUSED_MODEL_TYPE:
        return FusedProcessor.from_pretrained(backbone)
    return AutoProcessor.from_pretrained(str(backbone))
