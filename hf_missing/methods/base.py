"""Method plumbing: shared config fields, the method registry, and PEFT registration.

Every method is a ``PeftConfig`` subclass plus a ``BaseTuner`` and a ``BaseTunerLayer`` that wraps the
backbone's encoder layers (found through the backbone interface, never by module path). Methods get their own
peft type and are entered into peft's internal tables at import, through :mod:`hf_missing.compat.peft`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from peft import PeftConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..backbones import BackboneInterface, Stream, insert_tokens, strip_tokens
from ..compat.peft import DUMMY_TARGET_MODULES, MethodType, PrefixedKeyTuner, register_peft_type
from ..context import current_context
from .options import MAX_OPTION_VALUE, annotations, conform, describe, is_finite, too_large

logger = logging.getLogger(__name__)


@dataclass
class MissingMethodConfig(PeftConfig):
    """Fields every hf_missing method shares. Subclasses add their hyperparameters, each with help."""

    method_name: ClassVar[str] = ""
    method_type: ClassVar[MethodType]

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Encoder layers the method wraps; filled from the backbone interface at injection."},
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={"help": "Modules trained and saved in full: the head and the backbone's pooler are always "
                          "added; list more here."},
    )
    model_settings: dict | None = field(
        default=None,
        metadata={"help": "Head and task settings (num_labels, id2label, problem_type, ...) recorded at "
                          "injection so that the adapter folder alone rebuilds the model."},
    )
    backbone_signature: dict | None = field(
        default=None,
        metadata={"help": "Backbone type, stream widths and depths the adapter was built for; checked on load."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = type(self).method_type
        self._check_option_types()

    def _check_option_types(self) -> None:
        """Each option against its annotation (:mod:`hf_missing.methods.options`); NaN, 2.5 for an int or a
        string for a float would otherwise fail deep inside torch or silently switch a loss term off."""
        hints, options = annotations(type(self)), self.options_help()
        for f in dataclasses.fields(self):
            if f.name not in options:
                continue
            value = getattr(self, f.name)
            try:
                setattr(self, f.name, conform(hints[f.name], value))
            except TypeError:
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                error = ValueError if isinstance(value, float) and not is_finite(value) else TypeError
                raise error(f"{self.method_name} option {f.name} must be {describe(hints[f.name])}, got {value!r}; "
                            f"pass e.g. its default {default!r}.") from None
            if too_large(value):
                raise ValueError(f"{self.method_name} option {f.name}={value!r} exceeds {MAX_OPTION_VALUE}; the "
                                 "config is corrupt or hostile. Pass a value of the papers' scale.")

    @classmethod
    def options_help(cls) -> dict[str, str]:
        """Each method-specific option with its help text."""
        shared = {f.name for f in dataclasses.fields(MissingMethodConfig)}
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name not in shared}


class MissingMethodLayer(nn.Module, BaseTunerLayer):
    """Wraps one encoder layer of one stream; subclasses hold per-adapter tensors for that layer."""

    adapter_layer_names: tuple[str, ...] = ()

    def __init__(self, base_layer: nn.Module, interface: BackboneInterface, stream: Stream, index: int) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.interface = interface
        self.stream = stream
        self.index = index
        self._disable_adapters = False
        self.merged_adapters = []

    def update_layer(self, adapter_name: str, config: MissingMethodConfig) -> None:
        """Create ``adapter_name``'s tensors for this layer."""

    def diagnostics(self) -> dict[str, float]:
        """Scalars worth logging while training (gate values, memory usage, ...); none by default."""
        return {}

    def _has_active(self) -> bool:
        available = self._get_available_adapters()
        return not self.disable_adapters and any(a in available for a in self.active_adapters)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if not self._has_active():
            return self.base_layer(hidden_states, *args, **kwargs)
        return self.adapted_forward(hidden_states, *args, **kwargs)

    def adapted_forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return self.base_layer(hidden_states, *args, **kwargs)

    def forward_with_tokens(self, hidden_states: torch.Tensor, tokens: torch.Tensor | None, *args: Any,
                            **kwargs: Any) -> Any:
        """Run the base layer with ``tokens`` plus the tokens earlier layers carried in front of the
        sequence (extending the attention mask), then strip them again and carry them on."""
        ctx = current_context()
        parts = [t for t in (tokens, ctx.carried.pop(self.stream.name, None)) if t is not None]
        if not parts:
            return self.base_layer(hidden_states, *args, **kwargs)
        prefix = torch.cat(parts, dim=1)
        args, kwargs, mask = _pop_mask(args, kwargs)
        hidden, mask = insert_tokens(hidden_states, prefix, mask, self.stream.causal)
        out = self.base_layer(hidden, mask, *args, **kwargs)
        carried, hidden = strip_tokens(out[0] if isinstance(out, tuple) else out, prefix.shape[1])
        ctx.carried[self.stream.name] = carried
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden


def _pop_mask(args: tuple, kwargs: dict) -> tuple[tuple, dict, torch.Tensor | None]:
    if "attention_mask" in kwargs:
        kwargs = dict(kwargs)
        return args, kwargs, kwargs.pop("attention_mask")
    return args[1:], kwargs, args[0] if args else None


class MissingMethodModel(PrefixedKeyTuner):
    """Tuner base: finds the layers to wrap through the backbone interface and checks compatibility."""

    prefix: str = "hfm_"
    tuner_layer_cls = MissingMethodLayer
    layer_cls: type[MissingMethodLayer] = MissingMethodLayer
    target_module_mapping: ClassVar[dict] = {}

    def target_layers(self, interface: BackboneInterface, config: MissingMethodConfig) -> list[tuple[Stream, int]]:
        """(stream, layer index) pairs the method wraps; none for head-only methods."""
        return []

    def _pre_injection_hook(self, model: nn.Module, config: MissingMethodConfig, adapter_name: str) -> None:
        wrapper = _wrapper_of(model)
        interface = wrapper.interface
        check_signature(config, interface)
        config.backbone_signature = interface.signature()
        config.model_settings = config.model_settings or wrapper.model_settings()
        self._targets = {f"backbone.{interface.stream(s.name).layers_path}.{i}": (s, i)
                         for s, i in self.target_layers(interface, config)}
        config.target_modules = sorted(self._targets) or DUMMY_TARGET_MODULES
        saved = ["head", *(f"backbone.{m}" for m in interface.pooler_modules)]
        config.modules_to_save = list(dict.fromkeys([*(config.modules_to_save or []), *saved]))

    def _prepare_adapter_config(self, peft_config: PeftConfig, model_config: dict) -> PeftConfig:
        return peft_config

    def _create_and_replace(self, peft_config: MissingMethodConfig, adapter_name: str, target: nn.Module,
                            target_name: str, parent: nn.Module, current_key: str, **kwargs: Any) -> None:
        if isinstance(target, MissingMethodLayer):
            target.update_layer(adapter_name, peft_config)
            return
        stream, index = self._targets[_strip_wrapper_prefix(current_key)]
        new = self.layer_cls(target, _wrapper_of(self.model).interface, stream, index)
        new.update_layer(adapter_name, peft_config)
        self._replace_module(parent, target_name, new, target)


def collect_diagnostics(model: nn.Module) -> dict[str, float]:
    """Every method layer's :meth:`MissingMethodLayer.diagnostics` in ``model``, merged: the one hook
    that ``trainer_callbacks`` logs, whatever the method."""
    values: dict[str, float] = {}
    for module in model.modules():
        if isinstance(module, MissingMethodLayer):
            values.update(module.diagnostics())
    return values


def _strip_wrapper_prefix(key: str) -> str:
    return key[key.index("backbone."):]


def _wrapper_of(model: nn.Module) -> Any:
    """``model`` if it is the wrapper (it has a backbone interface and records its settings), else a clear error."""
    if not (isinstance(getattr(model, "interface", None), BackboneInterface)
            and callable(getattr(model, "model_settings", None))):
        raise TypeError(
            f"hf_missing methods adapt a MissingModalityForClassification, got {type(model).__name__}; wrap the "
            "backbone first: MissingModalityForClassification.from_pretrained(<clip or vilt checkpoint>, "
            "num_labels=...)."
        )
    return model


def check_signature(config: MissingMethodConfig, interface: BackboneInterface) -> None:
    """Raise when an adapter built for one backbone is loaded onto another."""
    saved = config.backbone_signature
    if saved is None:
        return
    current = interface.signature()
    current_streams = {k: list(v) for k, v in current["streams"].items()}
    saved_streams = {k: list(v) for k, v in saved["streams"].items()}
    if saved["model_type"] != current["model_type"] or saved_streams != current_streams:
        raise ValueError(
            f"This {config.method_name} adapter was saved for a {saved['model_type']} backbone with streams "
            f"{saved_streams} ([hidden size, layers]), but the model is a {current['model_type']} with "
            f"{current_streams}; load it onto the backbone it was trained with (base_model_name_or_path in "
            "adapter_config.json)."
        )


# ---- registry -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MethodHooks:
    """What a method needs beyond its tensors (REDEEM: a memory bank and retrieved neighbours).

    Attributes:
        prepare_training: ``(model, train_dataset, collator) -> (train_dataset, collator)`` before training.
        prepare_evaluation: ``(model, dataset, collator) -> dataset`` for each split evaluated afterwards, with
            the collator ``prepare_training`` returned.
        load_files: ``(model, adapter_folder)`` after the adapter's weights are loaded (files saved beside it).
        files: names of the files ``load_files`` reads: the only extra files downloaded with the adapter. They
            must be safetensors (or JSON) that ``load_files`` validates: they come from untrusted repos.
    """

    prepare_training: Callable[[Any, Any, Any], tuple[Any, Any]] | None = None
    prepare_evaluation: Callable[[Any, Any, Any], Any] | None = None
    load_files: Callable[[Any, str], None] | None = None
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    Attributes:
        summary: one sentence on what the method does.
        paper: a one-line reference to the paper it implements (model cards print it).
        citation: its BibTeX entry.
    """

    name: str
    config_cls: type[MissingMethodConfig]
    model_cls: type[MissingMethodModel]
    summary: str
    hooks: MethodHooks = field(default_factory=MethodHooks)
    paper: str = ""
    citation: str = ""


METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, config_cls: type[MissingMethodConfig], model_cls: type[MissingMethodModel],
                    summary: str, hooks: MethodHooks | None = None, *, paper: str = "", citation: str = "") -> None:
    """Make ``name`` usable as ``adapter=name`` and through peft's own API; ``paper`` (one line) and ``citation``
    (BibTeX) say where it comes from."""
    method_type = MethodType(f"HFM_{name.upper()}")
    config_cls.method_name, config_cls.method_type = name, method_type
    model_cls.prefix = f"{name}_"
    register_peft_type(method_type, config_cls, model_cls, model_cls.prefix)
    METHODS[name] = MethodSpec(name, config_cls, model_cls, summary, hooks or MethodHooks(), paper, citation)


def _active_hooks(model: Any) -> list[MethodHooks]:
    configs = getattr(model, "peft_config", None) or {}
    names = dict.fromkeys(c.method_name for c in configs.values() if isinstance(c, MissingMethodConfig))
    return [METHODS[name].hooks for name in names]


def prepare_for_training(model: Any, train_dataset: Any, collator: Any) -> tuple[Any, Any]:
    """Let the model's methods prepare the training split and collator (REDEEM builds its memory bank and
    retrieves neighbours); the identity for methods that need nothing."""
    for hooks in _active_hooks(model):
        if hooks.prepare_training is not None:
            train_dataset, collator = hooks.prepare_training(model, train_dataset, collator)
    return train_dataset, collator


def prepare_for_evaluation(model: Any, dataset: Any, collator: Any) -> Any:
    """Prepare a split to evaluate with the collator :func:`prepare_for_training` returned."""
    for hooks in _active_hooks(model):
        if hooks.prepare_evaluation is not None:
            dataset = hooks.prepare_evaluation(model, dataset, collator)
    return dataset


def load_method_files(model: Any, folder: str) -> None:
    """Load what the model's methods saved beside their adapter in ``folder`` (REDEEM's bank and index)."""
    for hooks in _active_hooks(model):
        if hooks.load_files is not None:
            hooks.load_files(model, folder)


def list_methods() -> list[str]:
    """Names accepted by ``adapter=`` and :func:`get_method_config`."""
    return sorted(METHODS)


def get_method_config(name: str, **options: Any) -> MissingMethodConfig:
    """The config of method ``name`` with ``options``; clear errors for unknown names or options."""
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; known methods: {list_methods()}.")
    config_cls = METHODS[name].config_cls
    allowed = config_cls.options_help()
    unknown = sorted(set(options) - set(allowed) - {"modules_to_save", "inference_mode"})
    if unknown:
        raise ValueError(f"{name} has no option(s) {unknown}; its options are: {allowed}.")
    return config_cls(**options)
