"""The processor of a backbone checkpoint: what :class:`~hf_missing.MissingModalityCollator` and the pipeline use."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

from transformers import AutoConfig, AutoProcessor

from .fused import MODEL_TYPE as FUSED_MODEL_TYPE
from .fused import FusedProcessor
from .sequence import MODEL_TYPE as SEQUENCE_MODEL_TYPE


def load_processor(backbone: str | os.PathLike) -> Any:
    """The backbone's processor: :class:`FusedProcessor` for the fused backbone, none for the sequence backbone
    (its modalities are precomputed frames: an empty namespace), else ``AutoProcessor`` (a folder or Hub id; remote
    code is never trusted)."""
    model_type = AutoConfig.from_pretrained(str(backbone)).model_type
    if model_type == FUSED_MODEL_TYPE:
        return FusedProcessor.from_pretrained(backbone)
    if model_type == SEQUENCE_MODEL_TYPE:
        return SimpleNamespace()
    return AutoProcessor.from_pretrained(str(backbone))
