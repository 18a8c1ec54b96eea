"""Every peft internal that hf_missing's methods use, and transformers' private "adapter injected" flag.

peft's ``PeftType`` is a closed enum and ``register_peft_method`` cannot be used from outside peft, so a method gets
its own type string (:class:`MethodType`) entered into peft's internal tables (:func:`register_peft_type`). Its
tuner renames checkpoint keys with :class:`PrefixedKeyTuner`; head-only methods target
:data:`DUMMY_TARGET_MODULES`. The methods import this module: it imports nothing of hf_missing above them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import ModulesToSaveWrapper
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn

from . import check_versions, incompatible

try:
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils.constants import DUMMY_TARGET_MODULES
except ImportError as err:
    raise incompatible("peft.mapping.PEFT_TYPE_TO_*_MAPPING or peft.utils.constants.DUMMY_TARGET_MODULES moved") \
        from err

check_versions()

__all__ = ["DUMMY_TARGET_MODULES", "MethodType", "PrefixedKeyTuner", "active_adapter_names", "adapters_bypassed",
           "adapters_injected", "enable_saved_modules", "register_peft_type"]


class MethodType(str):
    """The peft type of an hf_missing method; ``value`` mirrors peft's enum members (transformers calls
    ``peft_type.value.lower()``)."""

    @property
    def value(self) -> str:
        return str(self)


def register_peft_type(method_type: MethodType, config_cls: type, tuner_cls: type, prefix: str) -> None:
    """Enter a method into peft's config, tuner and key-prefix tables, so ``get_peft_model``,
    ``PeftModel.from_pretrained`` and transformers' ``load_adapter`` build and load it."""
    PEFT_TYPE_TO_CONFIG_MAPPING[method_type] = config_cls
    PEFT_TYPE_TO_TUNER_MAPPING[method_type] = tuner_cls
    PEFT_TYPE_TO_PREFIX_MAPPING[method_type] = prefix


class PrefixedKeyTuner(BaseTuner):
    """A ``BaseTuner`` whose checkpoint keys drop the adapter name right after the first container named with the
    method's prefix (``method_pool.rep_buffers.default.G.text.0.weight`` -> ``method_pool.rep_buffers.G.text.0.
    weight``). peft's default drops it only as the last or second-to-last part, which breaks containers of nested
    modules; peft builds the loading map from the same function, and transformers' ``load_adapter`` puts the name
    back after the first segment that starts with the prefix."""

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        pattern = rf"(\.{re.escape(cls.prefix)}[^.]*)\.{re.escape(adapter_name)}(\.|$)"
        return re.sub(pattern, r"\1\2", key, count=1)


@contextmanager
def adapters_bypassed(model: nn.Module) -> Iterator[None]:
    """Run ``model`` as its base model inside the block: peft's ``enable_adapters(False)`` on every tuner layer.
    Afterwards each layer is enabled again only if it was, and every tensor's ``requires_grad`` is what it was
    (re-enabling through peft would make the active adapters trainable, a loaded inference adapter included)."""
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    enabled = [not layer.disable_adapters for layer in layers]
    grads = {p: p.requires_grad for layer in layers for p in layer.parameters()}
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer, was_enabled in zip(layers, enabled, strict=True):
            layer.enable_adapters(was_enabled)
        for p, requires_grad in grads.items():
            p.requires_grad_(requires_grad)


def adapters_injected(model: nn.Module) -> bool:
    """Whether transformers' adapter integration has injected an adapter into ``model`` (``add_adapter`` /
    ``load_adapter``; its private ``_hf_peft_config_loaded`` flag)."""
    return bool(getattr(model, "_hf_peft_config_loaded", False))


def active_adapter_names(model: nn.Module) -> list[str] | None:
    """The active adapters as the first tuner layer or ``modules_to_save`` wrapper of ``model`` records them (a
    head-only method injects no tuner layer), or None when there is neither."""
    for module in model.modules():
        if isinstance(module, BaseTunerLayer | AuxiliaryTrainingWrapper):
            return list(module.active_adapters)
    return None


def enable_saved_modules(model: nn.Module) -> None:
    """Re-enable (and make trainable again) the ``modules_to_save`` copies that transformers' ``disable_adapters``
    switched off: its ``enable_adapters`` re-enables tuner layers only."""
    for module in model.modules():
        if isinstance(module, ModulesToSaveWrapper):
            module.enable_adapters(True)
