"""Inference: the ``"missing-modality-classification"`` task of ``transformers.pipeline``.

Importing :mod:`hf_missing` registers :class:`MissingModalityClassificationPipeline` with transformers' pipeline
registry, so ``pipeline("missing-modality-classification", model=<adapter folder, Hub repo or model>)`` works. It
takes one dict ``{"text": str | None, "image": PIL image | local path | bytes | None, ...}`` (one key per modality of
the model; a key left out is missing) or a list of them, fills the placeholders and ``missing_type`` itself through
:class:`~hf_missing.MissingModalityCollator`, batches (``batch_size=``) and returns, per input, the ``top_k`` labels
with their scores (softmax for single-label heads, sigmoid for multi-label and one-logit binary heads).

Inputs are untrusted: an image path must be a local file (URLs are refused: download it yourself), and an image's
size is read from its header and checked against :data:`MAX_IMAGE_PIXELS` before its pixels are decoded.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator

from .backbones.processing import load_processor
from .data import MissingModalityCollator
from .data.modalities import ImageInputs
from .missingness import MISSING_TYPE_COLUMN
from .modeling import MissingModalityForClassification

TASK = "missing-modality-classification"
MAX_IMAGE_PIXELS = 40_000_000  # width x height of an input image, checked on its header before decoding
DEFAULT_TOP_K = 5


class MissingModalityClassificationPipeline(Pipeline):
    """Classify samples with any modality absent with a :class:`~hf_missing.MissingModalityForClassification`.

    Args (besides ``Pipeline``'s ``model``, ``device``, ``batch_size``):
        processor: the backbone's processor (``tokenizer`` + ``image_processor``); default: loaded from the
            model's ``backbone_name_or_path``.
        policy: the absent-modality policy the collator emits (default: the model's ``missing_policy``).

    Call arguments: ``top_k`` (default 5, at most the number of labels).
    """

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False
    _load_video_processor = False

    def __init__(self, model: MissingModalityForClassification, processor: Any = None, policy: str | None = None,
                 **kwargs: Any) -> None:
        if not isinstance(model, MissingModalityForClassification):
            raise TypeError(f"{TASK} needs an hf_missing model (an adapter folder or repo saved by hf_missing, or a "
                            f"MissingModalityForClassification), got {type(model).__name__}.")
        processor = processor if processor is not None else load_processor(model.config.backbone_name_or_path)
        super().__init__(model=model, processor=processor, **kwargs)
        self.collator = MissingModalityCollator(processor, policy or model.config.missing_policy,
                                                max_length=model.config.max_text_len,
                                                modalities=model.interface.inputs)

    def _sanitize_parameters(self, top_k: int | None = None, **kwargs: Any) -> tuple[dict, dict, dict]:
        if kwargs:
            raise TypeError(f"Unknown argument(s) {sorted(kwargs)} for the {TASK} pipeline; it takes top_k "
                            "(and batch_size, num_workers).")
        postprocess = {}
        if top_k is not None:
            if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
                raise ValueError(f"top_k must be a positive int, got {top_k!r}.")
            postprocess["top_k"] = top_k
        return {}, {}, postprocess

    def sample(self, inputs: Any) -> dict[str, Any]:
        """One raw sample for the collator: each modality's value (None where absent) and its ``missing_type``."""
        if not isinstance(inputs, Mapping):
            raise TypeError(f"{TASK} takes a dict {{modality: value or None}} or a list of them, got "
                            f"{type(inputs).__name__}; e.g. {{'text': 'a caption', 'image': None}}.")
        modalities = {m.name: m for m in self.collator.inputs}
        unknown = sorted(set(inputs) - set(modalities))
        if unknown:
            raise ValueError(f"Input keys {unknown} are not modalities of this model {list(modalities)}; nothing "
                             "is dropped silently, so remove them or rename them to a modality.")
        sample = {}
        for name, spec in modalities.items():
            value = inputs.get(name)
            if isinstance(spec, ImageInputs):
                value = _image(value)
            sample[self.collator.column(name)] = None if spec.is_absent(value) else value
        missing = tuple(name for name in modalities if sample[self.collator.column(name)] is None)
        sample[MISSING_TYPE_COLUMN] = self.collator.patterns.code(missing)
        return sample

    def preprocess(self, inputs: Any) -> dict[str, Any]:
        return self.collator([self.sample(inputs)])

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"logits": self.model(**model_inputs).logits}

    def postprocess(self, model_outputs: dict[str, torch.Tensor], top_k: int = DEFAULT_TOP_K) -> list[dict[str, Any]]:
        logits = model_outputs["logits"][0].float()
        config = self.model.config
        if config.problem_type == "regression":  # the predicted values themselves, one per output
            return [{"label": config.id2label[i], "score": float(v)} for i, v in enumerate(logits.tolist())]
        sigmoid = config.problem_type == "multi_label_classification" or logits.numel() == 1
        scores = torch.sigmoid(logits) if sigmoid else torch.softmax(logits, dim=-1)
        order = torch.argsort(scores, descending=True)[:top_k].tolist()
        return [{"label": config.id2label[i], "score": float(scores[i])} for i in order]

    def get_iterator(self, inputs: Any, num_workers: int, batch_size: int, preprocess_params: dict,
                     forward_params: dict, postprocess_params: dict) -> PipelineIterator:
        """Batches built by the collator from raw samples (padding text and filling placeholders per batch)."""
        dataset = PipelineDataset(inputs, self.sample, preprocess_params)
        loader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=self.collator)
        model_iterator = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)


def _image(value: Any) -> Any:
    """A PIL RGB image from a PIL image, a local file path or encoded bytes; None / empty stays as it is."""
    if value is None or (isinstance(value, str | bytes) and not value.strip()):
        return value
    if isinstance(value, str | os.PathLike):
        path = os.fspath(value)
        if "://" in path:
            raise ValueError(f"Image {path[:80]!r} is a URL; the pipeline reads local files only. Download it and "
                             "pass the file path, its bytes or a PIL image.")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Image file {path!r} does not exist; pass an existing file, bytes or a PIL image.")
        value = Image.open(path)
    elif isinstance(value, bytes):
        value = Image.open(io.BytesIO(value))
    elif isinstance(value, np.ndarray):
        raise TypeError("Pass images as PIL images, file paths or encoded bytes, not arrays: a channel order or "
                        "scale guessed wrongly would change the prediction silently.")
    if not isinstance(value, Image.Image):
        raise TypeError(f"An image must be a PIL image, a local file path, bytes or None; got {type(value).__name__}.")
    if value.width * value.height > MAX_IMAGE_PIXELS:
        raise ValueError(f"Image of {value.width} x {value.height} pixels exceeds MAX_IMAGE_PIXELS = "
                         f"{MAX_IMAGE_PIXELS:,}; resize it first (or raise hf_missing.pipeline.MAX_IMAGE_PIXELS).")
    return value if value.mode == "RGB" else value.convert("RGB")


def register() -> None:
    """Register the task with transformers' pipeline registry (done on ``import hf_missing``)."""
    if TASK not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=MissingModalityClassificationPipeline,
                                            pt_model=AutoModelForSequenceClassification, type="multimodal")
