"""Method plumbing: shared config fields, the token-insertion layer, the per-adapter pool, the method registry.

Every method is a peft tuner: a :class:`MissingMethodConfig` subclass, a :class:`MissingMethodModel` (``BaseTuner``)
and a :class:`MissingMethodLayer` (``BaseTunerLayer``) that wraps the backbone's encoder layers, found through the
backbone interface, never by module path. Adding a method takes:

- a config: the options, each with help and range checks;
- a tuner: ``layer_cls``, :meth:`~MissingMethodModel.target_layers` (which layers to wrap) and, when its layers
  share tensors, :meth:`~MissingMethodModel.shared_tensors` (a :class:`PooledTensors` per adapter, kept in the
  model's :class:`MethodPool` under ``<prefix><shared_name>``);
- a layer: :meth:`~MissingMethodLayer.blocks` (the :class:`Block` s to insert before that layer: tokens, the modality
  they go before, per-sample hiding) and, for per-forward state, :meth:`~MissingMethodLayer.start_run`;
- :func:`register_method` with its summary, paper and citation.

The layer does the rest: the active adapter, the per-forward run, the attention mask, the placement (with the
causal-stream check), stripping and carrying, and :func:`visible_keys` / :func:`allowed_attention` read masks for
every method. peft internals are reached through :mod:`hf_missing.compat.peft` only.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from peft import PeftConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..backbones import BackboneInterface, Stream, insert_blocks, insert_tokens, remove_blocks
from ..compat.peft import DUMMY_TARGET_MODULES, MethodType, PrefixedKeyTuner, register_peft_type
from ..context import ForwardContext, current_context
from .options import MAX_OPTION_VALUE, annotations, conform, describe, is_finite, too_large


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

    @property
    def needs_lockstep(self) -> bool:
        """Whether the method reads every modality at one depth, so every stream must run layer by layer in step
        (``ForwardContext.lockstep``); False unless a method says otherwise."""
        return False

    @classmethod
    def options_help(cls) -> dict[str, str]:
        """Each method-specific option with its help text."""
        shared = {f.name for f in dataclasses.fields(MissingMethodConfig)}
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name not in shared}


# ---- what a method inserts, and its per-forward state -------------------------------------------------------
@dataclass
class Block:
    """Tokens a method inserts before one encoder layer.

    Attributes:
        name: the key its output is carried to the stream's next layer under.
        tokens: ``[B, n, H]``.
        before: the modality whose tokens the block goes in front of; None: the front of the stream. In a causal
            stream every block must land at the front (tokens before a block could not see it).
        hidden: ``[B]`` True for the samples whose queries must not see the block; None: every sample's see it.
    """

    name: str
    tokens: torch.Tensor
    before: str | None = None
    hidden: torch.Tensor | None = None


@dataclass
class MethodRun:
    """One adapter's state during one forward, shared by the method's layers: made by the first of them that runs
    (:meth:`MissingMethodLayer.start_run`) and dropped with the forward context.

    Attributes:
        shared: the adapter's tensors in the model's :class:`MethodPool` (None for methods that keep their tensors in
            their layers).
        carried: per stream, the output of each block the last layer inserted, by block name.
        outputs: per stream, the output of the last layer that ran, with the inserted tokens stripped.
        depth: per stream, the index of the last layer that ran (whose outputs ``carried`` and ``outputs`` hold).
        final: per stream, the output of its last layer with the inserted tokens stripped.
    """

    adapter: str
    config: MissingMethodConfig
    shared: PooledTensors | None
    ctx: ForwardContext
    carried: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    depth: dict[str, int] = field(default_factory=dict)
    final: dict[str, torch.Tensor] = field(default_factory=dict)


# ---- the per-adapter pool of tensors shared across layers ---------------------------------------------------
POOL_NAME = "method_pool"


class PooledTensors(nn.Module):
    """One adapter's tensors that all of its method's layers share (kept in the :class:`MethodPool`)."""

    def diagnostics(self) -> dict[str, float]:
        """Scalars worth logging while training (gate values, memory usage, ...); none by default."""
        return {}


class MethodPool(nn.Module, BaseTunerLayer):
    """The tensors a method's layers share, per adapter (as AdapterHub's prefix-tuning pool): one module on the
    adapted model (attribute :data:`POOL_NAME`) with one container per method, named with the method's key prefix
    (``rep_buffers``) and keyed by adapter name. It is a peft tuner layer, so peft and transformers save, load,
    activate, disable and delete its entries together with the rest of the adapter."""

    def __init__(self) -> None:
        super().__init__()
        self.adapter_layer_names: tuple[str, ...] = ()
        self.containers: dict[str, str] = {}  # method name -> its container

    # peft reads a tuner layer's base-layer weight through these; a pool wraps no layer
    @property
    def weight(self) -> torch.Tensor:
        raise AttributeError("A method pool wraps no layer and has no weight.")

    @property
    def bias(self) -> torch.Tensor:
        raise AttributeError("A method pool wraps no layer and has no bias.")

    def add(self, method: str, container: str, adapter: str, tensors: PooledTensors) -> None:
        if method not in self.containers:
            self.add_module(container, nn.ModuleDict())
            self.containers[method] = container
            self.adapter_layer_names = (*self.adapter_layer_names, container)
        getattr(self, container)[adapter] = tensors

    def entry(self, method: str, adapter: str) -> PooledTensors:
        return getattr(self, self.containers[method])[adapter]

    def diagnostics(self) -> dict[str, float]:
        """Each entry's :meth:`PooledTensors.diagnostics` as ``<method>/<adapter>/<name>``."""
        return {f"{method}/{adapter}/{name}": value for method, container in self.containers.items()
                for adapter, tensors in getattr(self, container).items()
                for name, value in tensors.diagnostics().items()}


# ---- the token-insertion layer ------------------------------------------------------------------------------
class MissingMethodLayer(nn.Module, BaseTunerLayer):
    """Wraps one encoder layer of one stream for the adapters of one method: the one token-insertion layer.

    In each forward the first of the method's layers that runs makes the adapter's run state (:meth:`start_run`).
    Every layer then asks the method what to insert (:meth:`blocks`), puts each block before its modality's tokens
    (at the front in a causal stream) with the attention mask extended (every query sees the blocks, a block's
    queries see what the first original query sees), runs the base layer, strips the blocks and carries their
    outputs to the stream's next layer. A method supplies :meth:`blocks` and, when it keeps per-forward state,
    :meth:`start_run`; its tensors live in the model's :class:`MethodPool` (:meth:`shared`) or in its layers.
    """

    adapter_layer_names: tuple[str, ...] = ()
    other_param_names: tuple[str, ...] = ("method_config",)
    causal_fix: ClassVar[str] = ""  # the method's own way around the causal-stream error, if it has one

    def __init__(self, base_layer: nn.Module, interface: BackboneInterface, stream: Stream, index: int,
                 pool: MethodPool | None) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.interface, self.stream, self.index = interface, stream, index
        self.method_config: dict[str, MissingMethodConfig] = {}
        self.merged_adapters = []
        self.__dict__["pool"] = pool  # shared by every layer: referenced, not registered as a submodule

    def update_layer(self, adapter_name: str, config: MissingMethodConfig) -> None:
        """Serve ``adapter_name`` (a method that keeps tensors in its layers creates them first)."""
        self.method_config[adapter_name] = config
        self.set_adapter(self.active_adapters)

    def adapter_in_use(self) -> str | None:
        """The first active adapter this layer serves; None when adapters are disabled or none of its is active."""
        if self.disable_adapters:
            return None
        return next((a for a in self.active_adapters if a in self.method_config), None)

    def shared(self, adapter: str) -> PooledTensors | None:
        """The adapter's tensors in the model's pool (None for methods that keep theirs in the layers)."""
        method = self.method_config[adapter].method_name
        return None if self.pool is None or method not in self.pool.containers else self.pool.entry(method, adapter)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        adapter = self.adapter_in_use()
        if adapter is None:
            return self.base_layer(hidden_states, *args, **kwargs)
        return self.adapted_forward(self.run(adapter), hidden_states, *args, **kwargs)

    def run(self, adapter: str) -> MethodRun:
        """The adapter's state in the current forward, made by whichever of the method's layers runs first."""
        ctx = current_context()
        key = f"{self.method_config[adapter].method_name}/{adapter}"
        if key not in ctx.extras:
            ctx.extras[key] = self.start_run(adapter, ctx)
        return ctx.extras[key]

    def start_run(self, adapter: str, ctx: ForwardContext) -> MethodRun:
        """The adapter's per-forward state (methods that compute something once per forward extend it)."""
        return MethodRun(adapter, self.method_config[adapter], self.shared(adapter), ctx)

    def blocks(self, run: MethodRun, hidden: torch.Tensor, mask: torch.Tensor | None,
               carried: dict[str, torch.Tensor]) -> list[Block]:
        """What to insert before this layer, given its input ``hidden [B, L, H]``, its attention ``mask`` and the
        outputs of the blocks the stream's previous layer inserted (by name)."""
        return []

    def hidden_tokens(self, run: MethodRun, hidden: torch.Tensor) -> torch.Tensor | None:
        """``[B, L]`` True for the layer's own tokens that no query may see while blocks are in; None: all visible."""
        return None

    def adapted_forward(self, run: MethodRun, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        args, kwargs, mask = _pop_mask(args, kwargs)
        placed = self._place(run, self.blocks(run, hidden_states, mask, run.carried.pop(self.stream.name, {})))
        if placed:
            hidden_states, mask, where = self.insert(run, hidden_states, mask, placed)
            if mask is not None and "is_causal" in kwargs:
                kwargs["is_causal"] = False  # the extended mask carries the causality
        out = self.base_layer(hidden_states, mask, *args, **kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
        if placed:
            outputs, hidden = remove_blocks(hidden, where)
            run.carried[self.stream.name] = {b.name: o for (_, b), o in zip(placed, outputs, strict=True)}
        run.outputs[self.stream.name], run.depth[self.stream.name] = hidden, self.index
        if self.index == self.stream.num_layers - 1:
            run.final[self.stream.name] = hidden
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    def _place(self, run: MethodRun, blocks: list[Block]) -> list[tuple[int, Block]]:
        """Each block with the position of the original sequence it goes before, in order of position."""
        spans = run.ctx.spans[self.stream.name]
        placed = [(0 if b.before is None else spans[b.before].start or 0, b) for b in blocks]
        inside = [b.before for start, b in placed if start > 0]
        if self.stream.causal and inside:
            raise ValueError(
                f"The {run.config.method_name} adapter puts tokens into the causal {self.stream.name} stream only at "
                f"its front, but it places a block before {inside[0]!r}, which does not start the stream (it holds "
                f"{list(self.stream.modalities)}): the tokens before the block could not see it. Fix: "
                f"{self.causal_fix}use a backbone whose causal streams hold one modality each (CLIP) or a "
                "bidirectional joint stream (ViLT, the fused default).")
        return sorted(placed, key=lambda p: p[0])

    def insert(self, run: MethodRun, hidden: torch.Tensor, mask: torch.Tensor | None,
               placed: list[tuple[int, Block]]) -> tuple[torch.Tensor, torch.Tensor | None, list[slice]]:
        """The sequence with the blocks in place, its attention mask and where each block sits."""
        tokens = [b.tokens for _, b in placed]
        if self.stream.causal:
            joined, mask = insert_tokens(hidden, torch.cat(tokens, dim=1), mask, causal=True)
            ends = list(itertools.accumulate(t.shape[1] for t in tokens))
            where = [slice(end - t.shape[1], end) for end, t in zip(ends, tokens, strict=True)]
        else:
            joined, mask, where = insert_blocks(hidden, mask, [(start, t) for (start, _), t in
                                                               zip(placed, tokens, strict=True)])
        hide = self._hidden_keys(run, hidden, placed)
        return joined, mask if hide is None else hide_keys(mask, hide, joined.dtype), where

    def _hidden_keys(self, run: MethodRun, hidden: torch.Tensor,
                     placed: list[tuple[int, Block]]) -> torch.Tensor | None:
        """``[B, L + n]`` True for the keys no query may see: blocks hidden for a sample and :meth:`hidden_tokens`."""
        own = self.hidden_tokens(run, hidden)
        if own is None and all(b.hidden is None for _, b in placed):
            return None
        batch, length = hidden.shape[:2]
        none = torch.zeros(batch, dtype=torch.bool, device=hidden.device)
        own = none[:, None].expand(batch, length) if own is None else own
        flags = [(start, (none if b.hidden is None else b.hidden)[:, None].expand(batch, b.tokens.shape[1]))
                 for start, b in placed]
        if self.stream.causal:
            return torch.cat([*(f for _, f in flags), own], dim=1)
        joined, _, _ = insert_blocks(own[..., None].float(), None, [(s, f[..., None].float()) for s, f in flags])
        return joined[..., 0] > 0


def _pop_mask(args: tuple, kwargs: dict) -> tuple[tuple, dict, torch.Tensor | None]:
    if "attention_mask" in kwargs:
        kwargs = dict(kwargs)
        return args, kwargs, kwargs.pop("attention_mask")
    return args[1:], kwargs, args[0] if args else None


# ---- attention masks ---------------------------------------------------------------------------------------
def allowed_attention(mask: torch.Tensor | None, batch: int, length: int, causal: bool,
                      device: torch.device) -> torch.Tensor:
    """``[B, 1, L, L]`` True where a query may attend to a key under a layer's attention ``mask``: None (everything,
    causally in a causal stream), a 0/1 or boolean key mask ``[B, L]``, or a 4-D mask ``[B, 1, 1 or L, L]``, boolean
    (True = attend) or additive (0 = attend, the dtype's minimum = blocked)."""
    if mask is None:
        allowed = torch.ones(length, length, dtype=torch.bool, device=device)
        return (allowed.tril() if causal else allowed).expand(batch, 1, length, length)
    if mask.dim() == 2:
        mask = mask.bool()[:, None, None, :]
    allowed = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    return allowed[:, :1].expand(batch, 1, length, length)


def visible_keys(mask: torch.Tensor | None, batch: int, length: int, device: torch.device) -> torch.Tensor:
    """``[B, L]`` the keys the last query may attend to: padding (and tokens the "mask" policy removed) excluded; the
    last query row of a causal mask sees every non-padding token of a right-padded sequence."""
    return allowed_attention(mask, batch, length, False, device)[:, 0, -1]


def hide_keys(mask: torch.Tensor | None, hide: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """``mask`` with the keys ``hide [B, L]`` made invisible to every query (additive or boolean 4-D masks)."""
    if not hide.any():
        return mask
    if mask is None:
        mask = torch.zeros(hide.shape[0], 1, 1, hide.shape[1], dtype=dtype, device=hide.device)
    mask = mask.expand(hide.shape[0], *mask.shape[1:])
    if mask.dtype == torch.bool:
        return mask & ~hide[:, None, None, :]
    return mask.masked_fill(hide[:, None, None, :], torch.finfo(mask.dtype).min)


def needs_lockstep(interface: BackboneInterface) -> bool:
    """Whether an adapter in use on any encoder layer asks for every stream to run in step
    (:attr:`MissingMethodConfig.needs_lockstep`)."""
    for stream in interface.streams:
        for layer in interface.layers(stream.name):
            adapter = layer.adapter_in_use() if isinstance(layer, MissingMethodLayer) else None
            if adapter is not None and layer.method_config[adapter].needs_lockstep:
                return True
    return False


def every_layer(interface: BackboneInterface) -> list[tuple[Stream, int]]:
    """(stream, layer index) of every encoder layer: the targets of methods that insert or carry tokens throughout."""
    return [(stream, i) for stream in interface.streams for i in range(stream.num_layers)]


def modality_widths(interface: BackboneInterface) -> dict[str, int]:
    """Hidden size of the stream that holds each modality, in the backbone's modality order."""
    return {m: interface.stream_of(m).hidden_size for m in interface.modalities}


# ---- the tuner ---------------------------------------------------------------------------------------------
class MissingMethodModel(PrefixedKeyTuner):
    """Tuner base: wraps the layers a method names (found through the backbone interface) with its ``layer_cls``,
    checks compatibility and keeps the adapter's shared tensors (:meth:`shared_tensors`) in the model's pool under
    ``<prefix><shared_name>``. peft's ``set_adapter``, ``delete_adapter`` and ``disable_adapter`` reach every tuner
    layer (``tuner_layer_cls``): the method's layers, the pool and LoRA nested in them."""

    prefix: str = "hfm_"
    tuner_layer_cls = BaseTunerLayer
    layer_cls: type[MissingMethodLayer] = MissingMethodLayer
    shared_name: ClassVar[str] = "shared"
    target_module_mapping: ClassVar[dict] = {}

    def target_layers(self, interface: BackboneInterface, config: MissingMethodConfig) -> list[tuple[Stream, int]]:
        """(stream, layer index) pairs the method wraps; none for head-only methods."""
        return []

    def shared_tensors(self, interface: BackboneInterface, config: MissingMethodConfig) -> PooledTensors | None:
        """The new adapter's tensors that the method's layers share; None when its layers share none."""
        return None

    def inject_adapter(self, model: nn.Module, adapter_name: str, **kwargs: Any) -> None:
        """peft's injection (``get_peft_model``, ``PeftModel.add_adapter`` / ``load_adapter``, transformers'
        ``add_adapter`` / ``load_adapter`` all come here), after checking the backbone and recording what the
        adapter needs into its config; then the adapter's shared tensors join the model's pool."""
        config = self.peft_config[adapter_name]
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
        shared = self.shared_tensors(interface, config)
        pool = getattr(wrapper, POOL_NAME, None)
        if shared is not None and pool is None:
            pool = MethodPool()  # attached after the injection: peft keeps the requires_grad flags of a model that
            # already holds a tuner layer, and would keep those of a freshly loaded backbone
        self._pooling = (pool, shared)  # a tuple: a module held by the tuner would become its submodule
        super().inject_adapter(model, adapter_name, **kwargs)
        if shared is None:
            return
        if getattr(wrapper, POOL_NAME, None) is not pool:
            wrapper.add_module(POOL_NAME, pool)
        device = next(wrapper.parameters()).device
        pool.add(config.method_name, f"{self.prefix}{self.shared_name}", adapter_name, shared.to(device))
        pool.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def _prepare_adapter_config(self, peft_config: PeftConfig, model_config: dict) -> PeftConfig:
        return peft_config

    def _create_and_replace(self, peft_config: MissingMethodConfig, adapter_name: str, target: nn.Module,
                            target_name: str, parent: nn.Module, current_key: str, **kwargs: Any) -> None:
        if isinstance(target, MissingMethodLayer):
            if not isinstance(target, self.layer_cls):
                raise ValueError(f"{current_key} already holds adapters of another method ({type(target).__name__}); "
                                 f"a model takes adapters of one method, and {peft_config.method_name} is another.")
            target.update_layer(adapter_name, peft_config)
            return
        stream, index = self._targets[_strip_wrapper_prefix(current_key)]
        new = self.layer_cls(target, _wrapper_of(self.model).interface, stream, index, self._pooling[0])
        new.update_layer(adapter_name, peft_config)
        self._replace_module(parent, target_name, new, target)


def collect_diagnostics(model: nn.Module) -> dict[str, float]:
    """The diagnostics of every adapter in ``model``'s pool (:meth:`PooledTensors.diagnostics`), merged: the one hook
    that ``trainer_callbacks`` logs, whatever the method."""
    values: dict[str, float] = {}
    for module in model.modules():
        if isinstance(module, MethodPool):
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
    if f"{name}_" in POOL_NAME:
        raise ValueError(f"A method may not be named {name!r}: peft skips modules whose name holds the key prefix "
                         f"{name + '_'!r}, and the method pool is {POOL_NAME!r}.")
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
