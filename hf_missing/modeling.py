"""``MissingModalityForClassification``: a frozen multimodal backbone, a classification head, and the
per-forward missingness context that injected method layers read.

Registered with ``AutoConfig`` / ``AutoModel`` / ``AutoModelForSequenceClassification`` under
``model_type="hf_missing"``. ``from_pretrained`` accepts a raw CLIP/ViLT checkpoint, a saved wrapper,
or a saved adapter folder (which names its backbone), and injects a method with ``adapter="map"``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
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

from .backbones import BACKBONES, BackboneInterface, backbone_interface_for
from .context import POLICIES, ForwardContext, forward_context
from .missingness import DEFAULT_MODALITIES, ModalityPattern

logger = logging.getLogger(__name__)
ADAPTER_CONFIG_NAME = "adapter_config.json"
RESUME_WEIGHTS_NAME = "trainer_resume.safetensors"  # what Trainer's resume needs beside an injected adapter
TASKS = ("single_label_classification", "multi_label_classification")


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
        modalities: names of the modalities, in the order ``missing_type`` codes use.
        max_text_len: text length the backbone must take (ViLT interpolates its 40 positions).
        head_hidden_ratio: the head is Linear(D, r·D)–LayerNorm–GELU–Linear(r·D, C) as in MAP (r = 2).
        problem_type: "single_label_classification" (softmax + cross-entropy) or
            "multi_label_classification" (sigmoid + BCE); leave it unset with ``num_labels=1`` for a
            binary task with one logit (sigmoid + BCE).
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

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        self.modalities = list(self.modalities or DEFAULT_MODALITIES)
        if self.missing_policy not in POLICIES:
            raise ValueError(f"missing_policy must be one of {list(POLICIES)}, got {self.missing_policy!r}.")
        if self.problem_type is not None and self.problem_type not in TASKS:
            raise ValueError(f"problem_type must be one of {list(TASKS)}, got {self.problem_type!r}.")


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
        if config.max_text_len and hasattr(self.interface, "extend_text_positions"):
            self.interface.extend_text_positions(config.max_text_len)
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
    def from_backbone(cls, backbone: PreTrainedModel | str, **config_kwargs: Any) -> MissingModalityForClassification:
        """Wrap a pretrained CLIP/ViLT model (or the path/hub id of one) with a fresh head."""
        if isinstance(backbone, str | os.PathLike):
            name = str(backbone)
            backbone = AutoModel.from_pretrained(name)
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
                        adapter: str | None = None, adapter_options: dict | None = None, **kwargs: Any):
        """Load a wrapper, a raw CLIP/ViLT checkpoint, or an adapter (a local folder or a Hub repo id);
        inject ``adapter`` if given.

        Keyword arguments that are config fields (``num_labels``, ``id2label``, ``problem_type``,
        ``missing_policy``, ``max_text_len``, ...) override the saved config. Adapters load from safetensors
        only and are validated against the backbone before any adapter weight is read (``hf_missing.hub``).
        """
        from .hub import resolve_adapter_dir
        from .methods.base import get_method_config

        kwargs.pop("adapter_kwargs", None)
        adapter_dir = resolve_adapter_dir(pretrained_model_name_or_path, **kwargs)
        if adapter_dir is not None:
            model = cls._from_adapter_folder(adapter_dir, **kwargs)
        else:
            model = cls._load_base(str(pretrained_model_name_or_path), *args, **kwargs)
            adapter = adapter or model.config.adapter
        if adapter:
            options = adapter_options or model.config.adapter_options or {}
            model.add_adapter(get_method_config(adapter, **options))
            model.config.adapter, model.config.adapter_options = adapter, options
        return model

    @classmethod
    def _load_base(cls, path: str, *args: Any, **kwargs: Any) -> MissingModalityForClassification:
        """A wrapper checkpoint, or a raw CLIP/ViLT checkpoint wrapped with a fresh head."""
        if _model_type(path, kwargs) in BACKBONES:
            return cls.from_backbone(path, **kwargs)
        return super().from_pretrained(path, *args, **kwargs)

    @classmethod
    def _from_adapter_folder(cls, folder: str, **kwargs: Any) -> MissingModalityForClassification:
        """Rebuild the model around the adapter's backbone, validating the adapter config first (method,
        option sizes, then stream widths, depths and modalities on the backbone's config) so that a wrong or
        hostile adapter fails before any weight is read."""
        from .hub import HUB_KWARGS, backbone_of, validate_adapter_config, validate_backbone
        from .methods.base import load_method_files

        with open(os.path.join(folder, ADAPTER_CONFIG_NAME), encoding="utf-8") as f:
            saved = json.load(f)
        validate_adapter_config(saved, folder)
        backbone_path = kwargs.pop("backbone_name_or_path", None) or backbone_of(folder, saved)
        for key in (*HUB_KWARGS, "config", "trust_remote_code"):  # they address the adapter, not the backbone
            kwargs.pop(key, None)
        validate_backbone(saved, backbone_path, folder)
        settings = {**saved["model_settings"], **kwargs}
        settings.pop("backbone_name_or_path", None)
        model = cls._load_base(backbone_path, **settings)
        model.load_adapter(folder)
        load_method_files(model, folder)
        return model

    # ---- adapters -----------------------------------------------------------------------------
    def model_settings(self) -> dict[str, Any]:
        """What a saved adapter needs to rebuild this model around its backbone (head included)."""
        keys = ("num_labels", "id2label", "label2id", "problem_type", "missing_policy", "modalities",
                "max_text_len", "head_hidden_ratio")
        settings = {k: getattr(self.config, k) for k in keys}
        settings["id2label"] = {str(k): v for k, v in settings["id2label"].items()}
        return settings

    def active_adapters(self) -> list[str]:
        """transformers reads the active adapters off the first tuner layer; head-only methods (baseline)
        inject none, so their ``modules_to_save`` wrappers answer instead."""
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        if getattr(self, "_hf_peft_config_loaded", False):
            for module in self.modules():
                if isinstance(module, BaseTunerLayer | AuxiliaryTrainingWrapper):
                    return list(module.active_adapters)
        return super().active_adapters()

    def diagnostics(self) -> dict[str, float]:
        """Scalars the injected method exposes for logging (e.g. REP's gates alpha, beta, eps)."""
        from .methods.base import collect_diagnostics

        return collect_diagnostics(self)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """Full checkpoint, or — with an adapter injected — the tiny adapter folder plus ``config.json``.

        When ``Trainer`` saves (it always passes ``state_dict=``, possibly None), the trained tensors are also
        written under their model keys with a shard index, because ``Trainer`` resumes injected adapters only
        through that path (it loads adapters by name for ``PeftModel`` alone); ``push_adapter`` skips them.
        """
        super().save_pretrained(save_directory, *args, **kwargs)
        if not getattr(self, "_hf_peft_config_loaded", False) or not kwargs.get("is_main_process", True):
            return
        self.config.save_pretrained(save_directory)
        if "state_dict" in kwargs:  # Trainer's checkpoints and save_model always pass it, users rarely do
            self._save_resume_state(str(save_directory))

    def _save_resume_state(self, folder: str) -> None:
        trained = {n for n, p in self.named_parameters() if p.requires_grad}
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items() if k in trained}
        save_file(state, os.path.join(folder, RESUME_WEIGHTS_NAME), metadata={"format": "pt"})
        with open(os.path.join(folder, SAFE_WEIGHTS_INDEX_NAME), "w", encoding="utf-8") as f:
            json.dump({"metadata": {"format": "hf_missing-trainer-resume"},
                       "weight_map": dict.fromkeys(state, RESUME_WEIGHTS_NAME)}, f)

    def push_to_hub(self, repo_id: str, *args: Any, **kwargs: Any) -> Any:
        """With an adapter injected: upload the adapter and a model card (:func:`hf_missing.hub.push_adapter`,
        which also takes ``results=``, ``plot=``, ``missing=`` and ``dataset=``); else the full checkpoint."""
        if not getattr(self, "_hf_peft_config_loaded", False):
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

        Args:
            missing_type: ``[B]`` pattern codes (0 complete, 1 missing_text, 2 missing_image for two
                modalities). Omit it only for complete inputs.
            missing_policy: how the collator filled absent modalities; defaults to the config's.
            labels: class indices ``[B]`` (single-label) or multi-hot ``[B, C]`` (multi-label), or
                ``[B]`` 0/1 for binary classification.
        """
        if input_ids is None or pixel_values is None:
            raise ValueError("Both input_ids and pixel_values are required; fill a missing modality with "
                             "MissingModalityCollator, which inserts the dummy input and sets missing_type.")
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values,
                  "token_type_ids": token_type_ids, "pixel_mask": pixel_mask}
        self.interface.check_inputs(inputs)
        policy = missing_policy or self.config.missing_policy
        if policy not in POLICIES:
            raise ValueError(f"missing_policy must be one of {list(POLICIES)}, got {policy!r}.")
        missing_type = self._resolve_missing_type(inputs, missing_type, policy)
        ctx = ForwardContext(missing_type=missing_type, present=self.patterns.present(missing_type),
                             modalities=self.patterns.modalities, policy=policy,
                             batch={k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)})
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

    def _resolve_missing_type(self, inputs: dict[str, torch.Tensor], missing_type: torch.Tensor | None,
                              policy: str) -> torch.Tensor:
        batch = inputs["input_ids"].shape[0]
        text_empty = self.interface.text_is_empty(_attention(inputs))
        image_dummy = self.interface.image_is_dummy(inputs["pixel_values"])
        if missing_type is None:
            if (text_empty | image_dummy).any():
                raise ValueError(
                    "Some samples have an empty text or the all-ones dummy image but no missing_type was "
                    "given; pass missing_type (MissingModalityCollator emits it) so the model knows what is "
                    "missing."
                )
            return torch.zeros(batch, dtype=torch.long, device=inputs["input_ids"].device)
        missing_type = torch.as_tensor(missing_type, device=inputs["input_ids"].device).long().view(-1)
        if missing_type.shape[0] != batch:
            raise ValueError(f"missing_type has {missing_type.shape[0]} entries for a batch of {batch}.")
        present = self.patterns.present(missing_type)
        checks = {"text": text_empty, "image": image_dummy}
        for k, modality in enumerate(self.patterns.modalities):
            bad = present[:, k] & checks[modality]
            if bad.any() and modality == "image":
                # A real pure-white image equals the placeholder under mean = std = 0.5 normalisation (ViLT, the
                # fused default): the two cannot be told apart, so trust missing_type and say so.
                logger.warning("Samples %s have an image identical to the all-ones placeholder but missing_type says "
                               "it is present (a white image?); it is used as given.", bad.nonzero().flatten().tolist())
            elif bad.any():
                raise ValueError(
                    f"missing_type says {modality} is present for samples {bad.nonzero().flatten().tolist()}, "
                    f"but their {modality} is the empty placeholder; set their missing_type to a pattern "
                    f"without {modality} (e.g. {self.patterns.names[self.patterns.code((modality,))]!r})."
                )
            stale = ~present[:, k] & ~checks[modality]
            if policy == "dummy" and stale.any():
                raise ValueError(
                    f"missing_type says {modality} is missing for samples {stale.nonzero().flatten().tolist()}, "
                    f"but their {modality} input is real, not the placeholder; build batches with "
                    "MissingModalityCollator, which replaces missing inputs by the dummy."
                )
        return missing_type

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        problem = self.config.problem_type or "single_label_classification"
        num_labels = self.config.num_labels
        if problem == "multi_label_classification":
            if labels.shape != logits.shape:
                raise ValueError(f"Multi-label targets must be multi-hot [B, {num_labels}], got {tuple(labels.shape)}.")
            return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        labels = labels.view(-1)
        high = max(num_labels, 2)
        if labels.numel() and (labels.min() < 0 or labels.max() >= high):
            raise ValueError(
                f"Labels must lie in [0, {high - 1}] for {problem} with num_labels={num_labels}; got values "
                f"{sorted(set(labels.tolist()))[:10]}. Set num_labels (and id2label) to the dataset's classes."
            )
        if num_labels == 1:
            return nn.functional.binary_cross_entropy_with_logits(logits.view(-1), labels.to(logits.dtype))
        return nn.functional.cross_entropy(logits, labels.long())


def _attention(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    mask = inputs.get("attention_mask")
    return mask if mask is not None else torch.ones_like(inputs["input_ids"])


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
