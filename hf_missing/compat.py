"""The one place hf_missing changes how transformers behaves: its Auto classes hand hf_missing adapters to the
wrapper before transformers reads them.

``AutoModel.from_pretrained(<adapter>)`` reads ``adapter_config.json`` itself and loads whatever model its
``base_model_name_or_path`` names before any hf_missing check could run (and a corrupt file surfaces as a bare
``JSONDecodeError``). With hf_missing imported, a name that holds an hf_missing adapter (an ``adapter_config.json``
whose ``peft_type`` is ``HFM_<method>``) goes to ``MissingModalityForClassification.from_pretrained``, which
validates everything (:mod:`hf_missing.loading`). Every other call reaches transformers unchanged. The hook wraps
the ``from_pretrained`` that each subclass of transformers' private ``_BaseAutoModelClass`` holds, so it is
installed only for the transformers minor versions it was checked against (:data:`CHECKED_TRANSFORMERS`).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

import transformers
from transformers.models.auto.auto_factory import _BaseAutoModelClass
from transformers.utils.peft_utils import find_adapter_config_file

from .loading import DOWNLOAD_KWARGS, MAX_JSON_BYTES
from .modeling import MissingModalityForClassification

logger = logging.getLogger(__name__)
CHECKED_TRANSFORMERS = ("5.23.",)
MARKER = b'"HFM_'  # an hf_missing adapter config names its peft_type HFM_<METHOD>


def holds_hf_missing_adapter(name: str | os.PathLike, **hub_kwargs: Any) -> bool:
    """Whether ``name`` (a folder or a Hub repo id) holds an hf_missing adapter config. The file is read as bytes,
    so a corrupt one that names an hf_missing method still goes to hf_missing, which reports it; a failed lookup
    leaves the call to transformers, which then fails or loads exactly as it would without hf_missing."""
    kwargs = {k: v for k, v in hub_kwargs.items() if k in DOWNLOAD_KWARGS}
    try:
        path = find_adapter_config_file(str(name), **kwargs)
    except (OSError, ValueError):
        return False
    if path is None or not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return MARKER in f.read(MAX_JSON_BYTES)


def _routed(original: Callable[..., Any]) -> Callable[..., Any]:
    """``original`` (an Auto class's ``from_pretrained``), except that hf_missing adapters go to the wrapper."""

    @functools.wraps(original)
    def from_pretrained(cls: type, pretrained_model_name_or_path: Any, *model_args: Any, **kwargs: Any) -> Any:
        if isinstance(pretrained_model_name_or_path, str | os.PathLike) and holds_hf_missing_adapter(
                pretrained_model_name_or_path, **kwargs):
            return MissingModalityForClassification.from_pretrained(pretrained_model_name_or_path, *model_args,
                                                                    **kwargs)
        return original(cls, pretrained_model_name_or_path, *model_args, **kwargs)

    from_pretrained.__hf_missing_routed__ = True
    return from_pretrained


def install() -> bool:
    """Route hf_missing adapters in every Auto model class (each holds its own copy of ``from_pretrained``);
    False, with a warning, on transformers versions the hook was not checked against."""
    if not transformers.__version__.startswith(CHECKED_TRANSFORMERS):
        logger.warning("hf_missing's Auto-class hook was checked on transformers %s, not %s: not installed; load "
                       "adapters with MissingModalityForClassification.from_pretrained.", CHECKED_TRANSFORMERS,
                       transformers.__version__)
        return False
    for cls in _auto_classes():
        method = cls.__dict__.get("from_pretrained")
        if isinstance(method, classmethod) and not getattr(method.__func__, "__hf_missing_routed__", False):
            cls.from_pretrained = classmethod(_routed(method.__func__))
    return True


def _auto_classes() -> list[type]:
    found, stack = [], [_BaseAutoModelClass]
    while stack:
        cls = stack.pop()
        found.append(cls)
        stack.extend(cls.__subclasses__())
    return found
