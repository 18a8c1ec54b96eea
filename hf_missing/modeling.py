"""``MissingModalityForClassification``: a frozen multimodal backbone, a classification head, and the
per-forward missingness context that injected method layers read.

Registered with ``AutoConfig`` / ``AutoModel`` / ``AutoModelForSequenceClassification`` under
``model_type="hf_missing"``. ``from_pretrained`` accepts a raw CLIP/ViLT checkpoint, a saved wrapper,
or a saved adapter folder (which names its backbone), and injects a method with ``adapter="map"``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME

from .atomic import atomic_folder
from .backbones import BACKBONES, BackboneInterface, backbone_interface_for
from .compat.peft import active_adapter_names, adapters_injected, enable_saved_modules
from .context import POLICIES, ForwardContext, forward_context
from .data.modalities import ModalityInputs
from .loading import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    CHECKPOINT_PREFIX,
    HUB_KWARGS,
    REGRESSION_LOSSES,
    RESUME_INDEX_FORMAT,
    SETTING_KEYS,
    TASKS,
    AdapterLoadError,
    backbone_of,
    check_budget,
    check_settings,
    full_checkpoint_files,
    load_backbone_error,
    plan_adapter,
    planning,
    read_adapter_weights,
    read_json_file,
    resolve_adapter,
    saved_files,
    validate_adapter_config,
    validate_backbone,
)
from .methods.base import collect_diagnostics, get_method_config, load_method_files, needs_lockstep
from .missingness import ModalityPattern

logger = logging.getLogger(__name__)
RESUME_WEIGHTS_NAME = "trainer_resume.safetensors"  # what Trainer's resume needs beside an injected adapter
FULL_CHECKPOINT = re.compile(r"model(-\d+-of-\d+)?\.safetensors(\.index\.json)?")


class MissingModalityConfig(PretrainedConfig):
    """Configuration of :class:`MissingModalityForClassification`.

    Args:
        backbone_config: the wrapped CLIP/ViLT config (a dict or a ``PretrainedConfig``).
        backbone_name_or_path: where the frozen backbone weights come from; a saved adapter folder
            rebuilds its model from here.
        adapter: method to inject at load time (``hf_missing.list_methods()``), or None.
        adapter_options: keyword options of that method's config.
        missing_policy: default policy for absent modalities when a batch does not name one
            ("dummy", "mask" or "zero").
        modalities: names of the modalities, in the order ``missing_type`` codes use (default: the backbone's).
        max_text_len: text length the backbone must take (ViLT interpolates its 40 positions).
        head_hidden_ratio: the head is Linear(D, r·D)–LayerNorm–GELU–Linear(r·D, C) as in MAP (r = 2).
        problem_type: "single_label_classification" (softmax + cross-entropy),
            "multi_label_classification" (sigmoid + BCE) or "regression" (``num_labels`` real outputs, e.g. 1 for
            MOSI / MOSEI / CH-SIMS sentiment; loss ``regression_loss``); leave it unset with ``num_labels=1`` for a
            binary task with one logit (sigmoid + BCE).
        regression_loss: "mse" (mean squared error, transformers' regression loss) or "l1" (mean absolute error,
            what MMSA and MulT train sentiment regression with: ``nn.L1Loss``).
    """

    model_type = "hf_missing"
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["aux_loss"]  # Trainer keeps logits + missing_type only
    sub_configs_defaults: ClassVar[dict] = {
        "backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="clip"),
    }

    backbone_config: dict | PretrainedConfig | None = None
    backbone_name_or_path: str | None = None
    adapter: str | None = None
    adapter_options: dict | None = None
    missing_policy: str = "dummy"
    modalities: list | tuple | None = None
    max_text_len: int | None = None
    head_hidden_ratio: int = 2
    regression_loss: str = "mse"

    def __post_init__(self, **kwargs: Any) -> None:
        num_labels = kwargs.get("num_labels")
        if num_labels is not None and (isinstance(num_labels, bool) or not hasattr(num_labels, "__index__")
                                       or num_labels < 1):
            raise ValueError(f"num_labels must be a positive int (the number of classes; 1 for a binary task with one "
                             f"logit), got {num_labels!r}: the head needs one output per class. Pass the dataset's "
                             "class count, e.g. dataset.features['label'].num_classes.")
        super().__post_init__(**kwargs)
        if not self.num_labels:
            raise ValueError("id2label is empty, so the head would have no output; pass num_labels or an id2label "
                             "that names the dataset's classes.")
        self.modalities = list(self.modalities) if self.modalities else None
        if self.missing_policy not in POLICIES:
            raise ValueError(f"missing_policy must be one of {list(POLICIES)}, got {self.missing_policy!r}.")
        if self.problem_type is not None and self.problem_type not in TASKS:
            raise ValueError(f"problem_type must be one of {list(TASKS)}, got {self.problem_type!r}.")
        if self.regression_loss not in REGRESSION_LOSSES:
            raise ValueError(f"regression_loss must be one of {list(REGRESSION_LOSSES)}, got {self.regression_loss!r}.")


@dataclass
class MissingModalityOutput(SequenceClassifierOutput):
    """Logits plus the ``missing_type`` codes used, so ``Trainer`` hands them to ``compute_metrics``
    (as the second entry of ``predictions``) for the per-pattern breakdown, and the methods' auxiliary
    loss terms (already inside ``loss``; ignored at evaluation)."""

    missing_type: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None


class ClassificationHead(nn.Module):
    """MAP's classifier: Linear(D, rD) – LayerNorm – GELU – Linear(rD, C)."""

    def __init__(self, in_features: int, num_labels: int, ratio: int = 2) -> None:
        super().__init__()
        hidden = ratio * in_features
        self.dense = nn.Linear(in_features, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.act = nn.GELU()
        self.out = nn.Linear(hidden, num_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.norm(self.dense(features))))


class MissingModalityForClassification(PreTrainedModel):
    """A frozen multimodal backbone + head, robust to missing modalities once a method is injected.

    ``forward(..., missing_type=codes)`` opens a :class:`~hf_missing.context.ForwardContext` that
    injected layers read; a ``missing_type`` that contradicts the inputs raises.
    """

    config_class = MissingModalityConfig
    base_model_prefix = "hf_missing"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    # forward takes **kwargs for collator extras, not for Trainer's num_items_in_batch: let Trainer average
    # the loss itself (otherwise gradient accumulation and multi-process runs scale it wrongly).
    accepts_loss_kwargs = False
    _no_split_modules: ClassVar[list[str]] = []

    def __init__(self, config: MissingModalityConfig, backbone: PreTrainedModel | None = None) -> None:
        super().__init__(config)
        self.backbone = backbone if backbone is not None else AutoModel.from_config(config.backbone_config)
        self.interface: BackboneInterface = backbone_interface_for(self.backbone)
        self.main_input_name = self.interface.inputs[0].input_names[0]  # input_ids for text-first backbones
        if config.max_text_len and hasattr(self.interface, "extend_text_positions"):
            self.interface.extend_text_positions(config.max_text_len)
        config.modalities = config.modalities or list(self.interface.modalities)
        self.patterns = ModalityPattern(tuple(config.modalities))
        if self.patterns.modalities != self.interface.modalities:
            raise ValueError(
                f"{config.backbone_config.model_type} has modalities {self.interface.modalities}, but the config "
                f"names {tuple(config.modalities)}."
            )
        self.head = ClassificationHead(self.interface.pooled_size, config.num_labels, config.head_hidden_ratio)
        self.post_init()
        self.backbone.requires_grad_(False)

    def _init_weights(self, module: nn.Module) -> None:
        """Initialise the head only; the backbone keeps its pretrained (or its own random) weights."""
        if not any(module is m for m in self.head.modules()):
            return
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_backbone(cls, backbone: PreTrainedModel | str, *, use_safetensors: bool | None = None,
                      **config_kwargs: Any) -> MissingModalityForClassification:
        """Wrap a pretrained CLIP/ViLT model (or the path/hub id of one, loaded with ``use_safetensors``) with a
        fresh head."""
        if isinstance(backbone, str | os.PathLike):
            name = str(backbone)
            backbone = AutoModel.from_pretrained(name, use_safetensors=use_safetensors)
            config_kwargs.setdefault("backbone_name_or_path", name)
        if backbone.config.model_type not in BACKBONES:
            raise ValueError(
                f"Cannot wrap a {backbone.config.model_type!r} model; supported backbones: {sorted(BACKBONES)}."
            )
        config_kwargs.setdefault("backbone_name_or_path", backbone.config.name_or_path or None)
        config = MissingModalityConfig(backbone_config=backbone.config.to_dict(), **config_kwargs)
        return cls(config, backbone=backbone)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any,
                        adapter: str | None = None, adapter_options: dict | None = None,
                        max_adapter_bytes: int | None = None, **kwargs: Any):
        """Load a wrapper, a raw CLIP/ViLT checkpoint, or an adapter (a local folder or a Hub repo id);
        inject ``adapter`` if given.

        Keyword arguments that are config fields (``num_labels``, ``id2label``, ``problem_type``,
        ``missing_policy``, ``max_text_len``, ...) override the saved config. An adapter is untrusted data: it
        loads through the checks of :mod:`hf_missing.loading` (safetensors only, allow-listed settings, a memory
        budget of ``max_adapter_bytes``, default ``hf_missing.loading.MAX_ADAPTER_BYTES``, and exactly the
        tensors the method owns), and the backbone it names loads from safetensors only.
        """
        adapter_kwargs = kwargs.pop("adapter_kwargs", None) or {}
        # transformers' Auto classes switch to the adapter's base_model_name_or_path and pass the adapter here
        source = resolve_adapter(adapter_kwargs.get("_adapter_model_path") or pretrained_model_name_or_path, **kwargs)
        if source is not None:
            model = cls._from_adapter_folder(source, max_adapter_bytes=max_adapter_bytes, **kwargs)
        else:
            model = cls._load_base(str(pretrained_model_name_or_path), *args, **kwargs)
            adapter = adapter or model.config.adapter
        if adapter:
            options = adapter_options or model.config.adapter_options or {}
            model.add_adapter(get_method_config(adapter, **options), max_adapter_bytes=max_adapter_bytes)
            model.config.adapter, model.config.adapter_options = adapter, options
        return model

    @classmethod
    def _load_base(cls, path: str, *args: Any, **kwargs: Any) -> MissingModalityForClassification:
        """A wrapper checkpoint, or a raw CLIP/ViLT checkpoint wrapped with a fresh head."""
        if _model_type(path, kwargs) in BACKBONES:
            return cls.from_backbone(path, **kwargs)
        return super().from_pretrained(path, *args, **kwargs)

    @classmethod
    def _from_adapter_folder(cls, source: Any, *, max_adapter_bytes: int | None = None,
                             **kwargs: Any) -> MissingModalityForClassification:
        """Rebuild the model around the adapter's backbone. The adapter config is validated first (method,
        options, settings), then checked against the backbone's config (stream widths, depths, modalities, size)
        and measured by a dry run against the memory budget, so a wrong or hostile adapter fails before anything
        is allocated or any weight is read; the backbone then loads from safetensors only."""
        config_file = os.path.join(source.folder, ADAPTER_CONFIG_NAME)
        saved = read_json_file(config_file)
        method_config = validate_adapter_config(saved, config_file)
        backbone_path = kwargs.pop("backbone_name_or_path", None) or backbone_of(source.folder, saved, source.remote)
        for key in (*HUB_KWARGS, "config", "trust_remote_code"):  # they address the adapter, not the backbone
            kwargs.pop(key, None)
        kwargs.pop("_from_pipeline", None)  # transformers.pipeline's bookkeeping, no setting
        if kwargs.get("dtype") == "auto":  # transformers.pipeline's default: the checkpoint's own dtype
            kwargs.pop("dtype")
        backbone_config = validate_backbone(saved, backbone_path, config_file)
        # every head setting explicit: a wrapper checkpoint named as backbone must not supply unchecked ones
        settings = {**_setting_defaults(), **check_settings(saved["model_settings"], config_file), **kwargs}
        planned = MissingModalityConfig(backbone_config=backbone_config.to_dict(),
                                        **{k: v for k, v in settings.items() if k in SETTING_KEYS})
        plan = plan_adapter(cls, planned, method_config, config_file)
        check_budget(plan, max_adapter_bytes, config_file)
        try:
            model = cls._load_base(backbone_path, use_safetensors=True, **settings)
        except OSError as err:
            raise load_backbone_error(backbone_path, config_file, err) from err
        state = read_adapter_weights(os.path.join(source.folder, ADAPTER_WEIGHTS_NAME), plan)
        model._load_checked(source.folder, method_config, state, None, is_trainable=False)
        return model

    # ---- adapters -----------------------------------------------------------------------------
    def model_settings(self) -> dict[str, Any]:
        """What a saved adapter needs to rebuild this model around its backbone (head included)."""
        settings = {k: getattr(self.config, k) for k in SETTING_KEYS}
        settings["id2label"] = {str(k): v for k, v in settings["id2label"].items()}
        return settings

    def add_adapter(self, adapter_config: Any, adapter_name: str | None = None, *,
                    max_adapter_bytes: int | None = None) -> None:
        """Inject a method (``hf_missing.get_method_config(...)``), after a dry run on the meta device checks that
        its head and tensors fit ``max_adapter_bytes`` (default ``hf_missing.loading.MAX_ADAPTER_BYTES``)."""
        if not planning():
            check_budget(plan_adapter(type(self), self.config, adapter_config), max_adapter_bytes,
                         f"{type(adapter_config).__name__} for {self.config.backbone_config.model_type}")
        super().add_adapter(adapter_config, adapter_name)

    def load_adapter(self, peft_model_id: str | os.PathLike | None = None, adapter_name: str | None = None,
                     peft_config: Any = None, adapter_state_dict: dict[str, torch.Tensor] | None = None, *,
                     max_adapter_bytes: int | None = None, is_trainable: bool = False,
                     adapter_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Load an hf_missing adapter saved in a folder or a Hub repo (``peft_model_id``) into this model, through
        the checks of :mod:`hf_missing.loading` (see :meth:`from_pretrained`); a config and state dict passed
        in code load as transformers loads them."""
        if peft_model_id is None:
            super().load_adapter(adapter_name=adapter_name, peft_config=peft_config,
                                 adapter_state_dict=adapter_state_dict, is_trainable=is_trainable, **kwargs)
            return
        source = resolve_adapter(peft_model_id, **{**(adapter_kwargs or {}), **kwargs})
        if source is None:
            raise AdapterLoadError(f"{peft_model_id} holds no hf_missing adapter ({ADAPTER_CONFIG_NAME}); pass the "
                                   "folder save_pretrained wrote or the Hub repo push_to_hub created.")
        self._load_adapter_folder(source.folder, adapter_name, max_adapter_bytes, is_trainable)

    def checked_adapter(self, folder: str, max_adapter_bytes: int | None = None) -> tuple[Any, dict[str, torch.Tensor]]:
        """Validate the adapter saved in ``folder`` against this model without changing it: its config (method,
        options, settings), the backbone (streams, modalities, saved modules), the memory budget and the weights
        (exactly the tensors the method owns, float, finite). Returns the method config rebuilt from the checked
        options alone and the checked tensors."""
        config_file = os.path.join(folder, ADAPTER_CONFIG_NAME)
        saved = read_json_file(config_file)
        config = validate_adapter_config(saved, config_file)
        validate_backbone(saved, self.config.backbone_config, config_file)
        if saved["model_settings"]["num_labels"] != self.config.num_labels:
            raise AdapterLoadError(f"{config_file}: the adapter's head has {saved['model_settings']['num_labels']} "
                                   f"labels, this model's {self.config.num_labels}; load it with from_pretrained("
                                   "<adapter>), which rebuilds the head from the adapter.")
        plan = plan_adapter(type(self), self.config, config, config_file)
        check_budget(plan, max_adapter_bytes, config_file)
        return config, read_adapter_weights(os.path.join(folder, ADAPTER_WEIGHTS_NAME), plan)

    def _load_adapter_folder(self, folder: str, adapter_name: str | None, max_adapter_bytes: int | None,
                             is_trainable: bool) -> None:
        config, state = self.checked_adapter(folder, max_adapter_bytes)
        self._load_checked(folder, config, state, adapter_name, is_trainable)

    def _load_checked(self, folder: str, config: Any, state: dict[str, torch.Tensor], adapter_name: str | None,
                      is_trainable: bool) -> None:
        """Inject ``config`` and load the checked ``state`` (then the method's files from ``folder``)."""
        name = adapter_name or "default"
        super().load_adapter(adapter_name=name, peft_config=config, adapter_state_dict=state, is_trainable=is_trainable)
        loaded = self.get_adapter_state_dict(name)
        wrong = sorted(k for k, v in state.items() if not torch.equal(loaded[k.removeprefix(CHECKPOINT_PREFIX)], v))
        if wrong:
            raise AdapterLoadError(f"{folder}: tensor(s) {wrong[:5]} of {ADAPTER_WEIGHTS_NAME} did not load into the "
                                   "model; this is a bug in hf_missing, please report it with the adapter.")
        load_method_files(self, folder)

    def active_adapters(self) -> list[str]:
        """transformers reads the active adapters off the first tuner layer; head-only methods (baseline)
        inject none, so their ``modules_to_save`` wrappers answer instead."""
        names = active_adapter_names(self) if adapters_injected(self) else None
        return names if names is not None else super().active_adapters()

    def enable_adapters(self) -> None:
        """Re-enable the injected adapters after :meth:`disable_adapters`. transformers' version turns the tuner
        layers back on but leaves the head and pooler copies (``modules_to_save``) disabled and frozen, so the model
        would run, and train, the original head; they are re-enabled here too."""
        super().enable_adapters()
        enable_saved_modules(self)

    def diagnostics(self) -> dict[str, float]:
        """Scalars the injected method exposes for logging (e.g. REP's gates alpha, beta, eps)."""
        return collect_diagnostics(self)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """Full checkpoint, or — with an adapter injected — the tiny adapter folder plus ``config.json``.

        The save is atomic: everything is written into a temporary sibling folder that then replaces
        ``save_directory`` in one rename, so a failure leaves the previous save intact and no stale file of an
        earlier save survives (other files there, such as Trainer's checkpoints, are kept). An adapter is never
        saved into a folder holding a full checkpoint (a later load could not tell which one is meant).

        When ``Trainer`` saves (it always passes ``state_dict=``, possibly None), the trained tensors are also
        written under their model keys with a shard index, because ``Trainer`` resumes injected adapters only
        through that path (it loads adapters by name for ``PeftModel`` alone); ``push_adapter`` skips them and
        loading treats the folder as an adapter.
        """
        if not kwargs.get("is_main_process", True):
            return
        injected = adapters_injected(self)
        if injected:
            _refuse_full_checkpoint(save_directory)
        with atomic_folder(save_directory, replaces=_written_by_save) as staging:
            super().save_pretrained(staging, *args, **kwargs)
            if injected:
                self.config.save_pretrained(staging)
                if "state_dict" in kwargs:  # Trainer's checkpoints and save_model always pass it, users rarely do
                    self._save_resume_state(str(staging))

    def _save_resume_state(self, folder: str) -> None:
        trained = {n for n, p in self.named_parameters() if p.requires_grad}
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items() if k in trained}
        save_file(state, os.path.join(folder, RESUME_WEIGHTS_NAME), metadata={"format": "pt"})
        with open(os.path.join(folder, SAFE_WEIGHTS_INDEX_NAME), "w", encoding="utf-8") as f:
            json.dump({"metadata": {"format": RESUME_INDEX_FORMAT},
                       "weight_map": dict.fromkeys(state, RESUME_WEIGHTS_NAME)}, f)

    def push_to_hub(self, repo_id: str, *args: Any, **kwargs: Any) -> Any:
        """With an adapter injected: upload the adapter and a model card (:func:`hf_missing.hub.push_adapter`,
        which also takes ``results=``, ``plot=``, ``missing=`` and ``dataset=``); else the full checkpoint."""
        if not adapters_injected(self):
            return super().push_to_hub(repo_id, *args, **kwargs)
        from .hub import push_adapter

        kwargs.pop("max_shard_size", None)  # an adapter is one small file
        return push_adapter(self, repo_id, *args, **kwargs)

    # ---- forward ------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        missing_type: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        missing_policy: str | None = None,
        **kwargs: Any,
    ) -> MissingModalityOutput:
        """Classify a batch in which some modalities may be missing.

        The inputs are those the backbone declares for its modalities (``model.interface.inputs``): text and
        image keywords are named here, others (``audio_features``, ``input_values``, ...) come as keywords too;
        further tensors (collator extras) reach the method layers.

        Args:
            missing_type: ``[B]`` pattern codes (0 complete, 1 missing_text, 2 missing_image for two
                modalities), or a list of pattern names (``"missing_text"``); non-integral or out-of-range
                codes raise. Omit it only for complete inputs.
            missing_policy: how the collator filled absent modalities; defaults to the config's.
            labels: class indices ``[B]`` (single-label) or multi-hot ``[B, C]`` (multi-label), or
                ``[B]`` 0/1 for binary classification, or real targets ``[B]`` / ``[B, num_labels]``
                (``problem_type="regression"``).
        """
        named = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values,
                 "token_type_ids": token_type_ids, "pixel_mask": pixel_mask}
        inputs, extras = self._split_inputs({**named, **kwargs})
        self.interface.check_inputs(inputs)
        policy = missing_policy or self.config.missing_policy
        if policy not in POLICIES:
            raise ValueError(f"missing_policy must be one of {list(POLICIES)}, got {policy!r}.")
        missing_type = self._resolve_missing_type(inputs, missing_type, policy)
        ctx = ForwardContext(missing_type=missing_type, present=self.patterns.present(missing_type),
                             modalities=self.patterns.modalities, policy=policy, batch=extras,
                             lockstep=needs_lockstep(self.interface))
        with forward_context(ctx):
            features = self.interface.encode(inputs, ctx)
            for hook in ctx.feature_hooks:
                features = hook(features)
        logits = self.head(features)
        aux = sum(ctx.aux_losses.values()) if ctx.aux_losses else None
        loss = self._loss(logits, labels) if labels is not None else None
        if loss is not None and aux is not None:
            loss = loss + aux
        return MissingModalityOutput(loss=loss, logits=logits, missing_type=missing_type, aux_loss=aux)

    def _split_inputs(self, given: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The backbone's declared inputs (every modality's first one required, all of one batch size) and the
        other tensors of the batch."""
        names = {n for spec in self.interface.inputs for n in spec.input_names}
        inputs = {k: v for k, v in given.items() if k in names and v is not None}
        required = [spec.input_names[0] for spec in self.interface.inputs]
        absent = [n for n in required if n not in inputs]
        if absent:
            raise ValueError(f"The {self.interface.model_type} backbone needs {required}, but {absent} are missing; "
                             "fill a missing modality with MissingModalityCollator, which inserts its placeholder and "
                             "sets missing_type.")
        sizes = {n: inputs[n].shape[0] for n in required}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"The modalities' inputs hold different numbers of samples {sizes}; every input of a "
                             "batch needs one row per sample.")
        if not next(iter(sizes.values())):
            raise ValueError(f"The batch is empty ({required[0]} has 0 samples), so there is nothing to classify; skip "
                             "empty batches (an empty split or a filter that kept nothing) before calling the model.")
        return inputs, {k: v for k, v in given.items() if k not in names and isinstance(v, torch.Tensor)}

    def _resolve_missing_type(self, inputs: dict[str, torch.Tensor], missing_type: torch.Tensor | None,
                              policy: str) -> torch.Tensor:
        specs = self.interface.inputs
        first = inputs[specs[0].input_names[0]]
        placeholder = {spec.name: spec.is_placeholder(inputs) for spec in specs}
        if missing_type is None:
            if any(p.any() for p in placeholder.values()):
                raise ValueError(
                    f"Some samples hold a modality's placeholder ({', '.join(self.patterns.modalities)}: empty text, "
                    "all-ones image, all-zero features) but no missing_type was given; pass missing_type "
                    "(MissingModalityCollator emits it) so the model knows what is missing."
                )
            return torch.zeros(first.shape[0], dtype=torch.long, device=first.device)
        missing_type = self.patterns.codes(missing_type).to(first.device)
        if missing_type.shape[0] != first.shape[0]:
            raise ValueError(f"missing_type has {missing_type.shape[0]} entries for a batch of {first.shape[0]}.")
        present = self.patterns.present(missing_type)
        for k, spec in enumerate(specs):
            self._check_present(spec, present[:, k] & placeholder[spec.name])
            stale = ~present[:, k] & ~placeholder[spec.name]
            if policy == "dummy" and stale.any():
                raise ValueError(
                    f"missing_type says {spec.name} is missing for samples {stale.nonzero().flatten().tolist()}, "
                    f"but their {spec.name} input is real, not the placeholder; build batches with "
                    "MissingModalityCollator, which replaces missing inputs by the placeholder."
                )
        return missing_type

    def _check_present(self, spec: ModalityInputs, bad: torch.Tensor) -> None:
        """Samples marked present whose input is the placeholder: an error, or, where a real input can look like
        the placeholder (a white image, silence), a warning and the input used as given."""
        if not bad.any():
            return
        samples = bad.nonzero().flatten().tolist()
        if spec.ambiguous:
            logger.warning("Samples %s have a %s identical to its placeholder but missing_type says it is present "
                           "(a white image, a silent recording?); it is used as given.", samples, spec.name)
            return
        raise ValueError(
            f"missing_type says {spec.name} is present for samples {samples}, but their {spec.name} is the "
            f"placeholder; set their missing_type to a pattern without {spec.name} "
            f"(e.g. {self.patterns.names[self.patterns.code((spec.name,))]!r})."
        )

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        problem = self.config.problem_type or "single_label_classification"
        num_labels = self.config.num_labels
        if problem == "regression":
            return self._regression_loss(logits, labels)
        if problem == "multi_label_classification":
            if labels.shape != logits.shape:
                raise ValueError(f"Multi-label targets must be multi-hot [B, {num_labels}], got {tuple(labels.shape)}.")
            outside = ~((labels >= 0) & (labels <= 1))  # NaN included
            if outside.any():
                raise ValueError(
                    f"Multi-label targets must lie in [0, 1] (multi-hot, or soft targets); samples "
                    f"{outside.any(dim=-1).nonzero().flatten().tolist()[:10]} hold {labels[outside][:10].tolist()}, "
                    "which make the BCE loss meaningless or NaN. Encode each sample's classes as 0/1 entries."
                )
            return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        labels = labels.view(-1)
        if labels.is_floating_point() and (fractional := labels != labels.round()).any():  # NaN included
            raise ValueError(
                f"Labels of samples {fractional.nonzero().flatten().tolist()[:10]} are not whole numbers "
                f"({labels[fractional][:10].tolist()}); {problem} takes class indices, and truncating them would "
                "train on the wrong class. Use problem_type='multi_label_classification' for soft or multi-hot targets."
            )
        high = max(num_labels, 2)
        if labels.numel() and (labels.min() < 0 or labels.max() >= high):
            raise ValueError(
                f"Labels must lie in [0, {high - 1}] for {problem} with num_labels={num_labels}; got values "
                f"{sorted(set(labels.tolist()))[:10]}. Set num_labels (and id2label) to the dataset's classes."
            )
        if num_labels == 1:
            return nn.functional.binary_cross_entropy_with_logits(logits.view(-1), labels.to(logits.dtype))
        return nn.functional.cross_entropy(logits, labels.long())

    def _regression_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """MSE or L1 (``config.regression_loss``) between the outputs and real targets of the same size."""
        if labels.numel() != logits.numel():
            raise ValueError(f"Regression targets must hold num_labels={self.config.num_labels} value(s) per sample "
                             f"([B] or [B, {self.config.num_labels}]); got shape {tuple(labels.shape)} for outputs "
                             f"{tuple(logits.shape)}.")
        labels = labels.reshape(logits.shape).to(logits.dtype)
        if not torch.isfinite(labels).all():
            raise ValueError("Regression targets hold NaN or infinite values; clean the labels or drop those samples.")
        if self.config.regression_loss == "l1":
            return nn.functional.l1_loss(logits, labels)
        return nn.functional.mse_loss(logits, labels)


def _setting_defaults() -> dict[str, Any]:
    """The config's defaults of the head settings an adapter records (``model_settings``)."""
    return {f.name: f.default for f in dataclasses.fields(MissingModalityConfig)
            if f.name in SETTING_KEYS and f.default is not dataclasses.MISSING}


def _written_by_save(name: str) -> bool:
    """Files a save owns in its folder: an earlier save's copy never survives beside a new save."""
    return name in (*saved_files(), RESUME_WEIGHTS_NAME) or FULL_CHECKPOINT.fullmatch(name) is not None


def _refuse_full_checkpoint(folder: str | os.PathLike) -> None:
    full = full_checkpoint_files(folder) if Path(folder).is_dir() else []
    if full:
        raise ValueError(f"{folder} holds a full checkpoint ({full}); saving an adapter beside it would make a later "
                         "from_pretrained load one and ignore the other. Save the adapter into another folder.")


def _model_type(path: str, kwargs: dict[str, Any]) -> str | None:
    config = kwargs.get("config")
    if isinstance(config, PretrainedConfig):
        return config.model_type
    config_file = os.path.join(path, "config.json")
    if os.path.isfile(config_file):
        with open(config_file, encoding="utf-8") as f:
            return json.load(f).get("model_type")
    try:
        return AutoConfig.from_pretrained(path).model_type
    except (OSError, ValueError):
        return None


AutoConfig.register(MissingModalityConfig.model_type, MissingModalityConfig)
AutoModel.register(MissingModalityConfig, MissingModalityForClassification)
AutoModelForSequenceClassification.register(MissingModalityConfig, MissingModalityForClassification)
