"""The one place hf_missing changes how transformers and peft behave: their loaders hand hf_missing adapters to
the wrapper's checks before they read them.

``AutoModel.from_pretrained(<adapter>)`` reads ``adapter_config.json`` itself and loads whatever model its
``base_model_name_or_path`` names before any hf_missing check could run (and a corrupt file surfaces as a bare
``JSONDecodeError``). With hf_missing imported, a name that holds an hf_missing adapter (an ``adapter_config.json``
whose ``peft_type`` is ``HFM_<method>``) goes to ``MissingModalityForClassification.from_pretrained``, which
validates everything (:mod:`hf_missing.loading`); so does a call that names a method with ``adapter=``
(``AutoModel.from_pretrained("openai/clip-vit-base-patch16", adapter="rep", num_labels=23)``, which stock
transformers rejects). Every other call reaches transformers unchanged. The hook wraps
the ``from_pretrained`` that each subclass of transformers' private ``_BaseAutoModelClass`` holds, which is why
importing this module checks the versions (:func:`hf_missing.compat.check_versions`).

``PeftModel.from_pretrained(wrapper, <adapter>)`` and ``PeftModel.load_adapter(<adapter>, name)`` would build the
adapter from every key of ``adapter_config.json`` (its ``modules_to_save`` included) and load the weights file
non-strictly. For an hf_missing adapter on the wrapper, both first run ``wrapper.checked_adapter`` and then hand
peft the checked config and the local folder whose files were checked; ``from_pretrained`` also loads the
method's files (REDEEM's bank) as the wrapper's own loader does.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from peft import PeftModel
from transformers.models.auto.auto_factory import _BaseAutoModelClass
from transformers.utils.peft_utils import find_adapter_config_file

from ..loading import (
    ADAPTER_CONFIG_NAME,
    CONFIG_NAME,
    DOWNLOAD_KWARGS,
    AdapterLoadError,
    read_json_file,
    resolve_adapter_dir,
)
from ..methods import load_method_files
from ..modeling import MissingModalityConfig, MissingModalityForClassification
from . import check_versions

check_versions()

MODEL_TYPE = MissingModalityConfig.model_type
METHOD_PREFIX = "HFM_"  # an hf_missing adapter config names its peft_type HFM_<METHOD>
_CHECKED_FOLDER: ContextVar[Any] = ContextVar("hf_missing_checked_folder", default=None)


def holds_hf_missing_adapter(name: str | os.PathLike, **hub_kwargs: Any) -> bool:
    """Whether ``name`` (a folder or a Hub repo id, in ``subfolder`` if given) holds an hf_missing adapter config:
    one whose parsed ``peft_type`` names an hf_missing method, one that cannot be parsed (hf_missing then reports
    it with the file's name), or, in a local folder, any adapter config beside the wrapper's ``config.json``. A
    failed Hub lookup leaves the call to transformers, which fails or loads as it would without hf_missing."""
    kwargs = {k: v for k, v in hub_kwargs.items() if k in (*DOWNLOAD_KWARGS, "subfolder")}
    if os.path.isdir(name):
        path = os.path.join(name, kwargs.get("subfolder") or "", ADAPTER_CONFIG_NAME)
        return os.path.isfile(path) and (_names_hf_missing(path) or _is_wrapper_config(name))
    try:
        path = find_adapter_config_file(str(name), **kwargs)
    except (OSError, ValueError):
        return False
    return path is not None and os.path.isfile(path) and _names_hf_missing(path)


def _names_hf_missing(path: str) -> bool:
    try:
        config = read_json_file(path)
    except AdapterLoadError:
        return True
    return str(config.get("peft_type") or "").startswith(METHOD_PREFIX)


def _is_wrapper_config(folder: str | os.PathLike) -> bool:
    try:
        return read_json_file(os.path.join(folder, CONFIG_NAME)).get("model_type") == MODEL_TYPE
    except AdapterLoadError:
        return False


def _routed(original: Callable[..., Any]) -> Callable[..., Any]:
    """``original`` (an Auto class's ``from_pretrained``), except that hf_missing adapters go to the wrapper."""

    @functools.wraps(original)
    def from_pretrained(cls: type, pretrained_model_name_or_path: Any, *model_args: Any, **kwargs: Any) -> Any:
        if kwargs.get("adapter") is not None or (isinstance(pretrained_model_name_or_path, str | os.PathLike)
                                                 and holds_hf_missing_adapter(pretrained_model_name_or_path, **kwargs)):
            return MissingModalityForClassification.from_pretrained(pretrained_model_name_or_path, *model_args,
                                                                    **kwargs)
        return original(cls, pretrained_model_name_or_path, *model_args, **kwargs)

    from_pretrained.__hf_missing_routed__ = True
    return from_pretrained


def _checked(model: Any, model_id: Any, kwargs: dict[str, Any]) -> tuple[str, Any] | None:
    """(local folder, checked config) of an hf_missing adapter meant for the wrapper ``model``; None otherwise."""
    if not isinstance(model, MissingModalityForClassification) or not isinstance(model_id, str | os.PathLike):
        return None
    if not holds_hf_missing_adapter(model_id, **kwargs):
        return None
    folder = resolve_adapter_dir(model_id, **kwargs)
    if folder is None:
        return None
    config, _ = model.checked_adapter(folder)
    return folder, config


def _peft_from_pretrained(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def from_pretrained(cls: type, model: Any, model_id: Any, adapter_name: str = "default",
                        is_trainable: bool = False, config: Any = None, **kwargs: Any) -> Any:
        checked = _checked(model, model_id, kwargs) if config is None else None
        if checked is not None:
            model_id, config = checked
        token = _CHECKED_FOLDER.set(model_id if checked is not None else None)
        try:  # peft then calls load_adapter(model_id): that folder was just checked
            peft_model = original(cls, model, model_id, adapter_name=adapter_name, is_trainable=is_trainable,
                                  config=config, **kwargs)
        finally:
            _CHECKED_FOLDER.reset(token)
        if checked is not None:
            load_method_files(peft_model, model_id)  # REDEEM's bank: peft itself loads the weights only
        return peft_model

    return from_pretrained


def _peft_load_adapter(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def load_adapter(self: Any, model_id: Any, adapter_name: str, is_trainable: bool = False, **kwargs: Any) -> Any:
        already = model_id is not None and model_id == _CHECKED_FOLDER.get()
        checked = None if already else _checked(self.get_base_model(), model_id, kwargs)
        if checked is not None:
            model_id, config = checked
            if adapter_name not in self.peft_config:  # peft would rebuild the config from the file
                config.inference_mode = not is_trainable
                self.add_adapter(adapter_name, config)
                if is_trainable:
                    self.set_requires_grad(adapter_name)
        return original(self, model_id, adapter_name, is_trainable=is_trainable, **kwargs)

    return load_adapter


def install() -> None:
    """Route hf_missing adapters in every Auto model class (each holds its own copy of ``from_pretrained``) and in
    ``PeftModel`` (idempotent)."""
    for cls in _auto_classes():
        method = cls.__dict__.get("from_pretrained")
        if isinstance(method, classmethod) and not getattr(method.__func__, "__hf_missing_routed__", False):
            cls.from_pretrained = classmethod(_routed(method.__func__))
    if not getattr(PeftModel.load_adapter, "__hf_missing_routed__", False):
        PeftModel.from_pretrained = classmethod(_peft_from_pretrained(PeftModel.__dict__["from_pretrained"].__func__))
        PeftModel.load_adapter = _peft_load_adapter(PeftModel.load_adapter)
        PeftModel.load_adapter.__hf_missing_routed__ = True


def _auto_classes() -> list[type]:
    found, stack = [], [_BaseAutoModelClass]
    while stack:
        cls = stack.pop()
        found.append(cls)
        stack.extend(cls.__subclasses__())
    return found
