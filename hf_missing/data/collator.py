"""``MissingModalityCollator``: raw image/text samples -> model inputs with placeholders for absent modalities."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..backbones import BackboneInterface
from ..context import POLICIES
from ..missingness import DEFAULT_MODALITIES, MISSING_TYPE_COLUMN, ModalityPattern
from .simulate import SAMPLE_INDEX_COLUMN

IMAGE_MODES = ("RGB",)


class MissingModalityCollator:
    """Builds a batch for :class:`~hf_missing.MissingModalityForClassification` from raw samples.

    Works as ``Trainer(data_collator=...)`` on datasets that keep raw ``image`` (PIL) and ``text``
    columns, lazily: no preprocessing is stored. Each sample's ``missing_type`` (an integer code or a
    pattern name such as ``"missing_text"``) decides which modalities are dropped; a sample whose image/text
    is ``None`` must be marked missing. Labels (class indices, or multi-hot lists) are emitted when every
    sample of the batch has one; a batch where only some do raises.

    Args:
        processor: a CLIP/ViLT processor (``image_processor`` + ``tokenizer``).
        policy: "dummy" (the papers' placeholders: empty text, all-ones pixels after normalisation),
            "mask" (placeholders, and the model removes the missing tokens from attention) or "zero"
            (placeholders, and the model zeroes the missing modality's features). Emitted as
            ``missing_policy`` so the model applies the same policy.
        redraw_rate: MPLMM's protocol: redraw each training sample's pattern every epoch, incomplete
            with this probability (uniform over patterns); needs the ``sample_index`` column that
            ``simulate_missing(protocol="per_epoch")`` adds. Call :meth:`set_epoch` each epoch
            (``trainer_callbacks.RedrawMissingCallback`` does).
    """

    def __init__(self, processor: Any, policy: str = "dummy", *, text_column: str = "text",
                 image_column: str = "image", label_column: str = "label", max_length: int | None = None,
                 modalities: Sequence[str] = DEFAULT_MODALITIES, redraw_rate: float | None = None,
                 seed: int = 0) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {list(POLICIES)}, got {policy!r}.")
        if redraw_rate is not None and not 0.0 <= redraw_rate <= 1.0:
            raise ValueError(f"redraw_rate must lie in [0, 1], got {redraw_rate}.")
        self.processor, self.policy = processor, policy
        self.text_column, self.image_column, self.label_column = text_column, image_column, label_column
        self.max_length = max_length
        self.patterns = ModalityPattern(tuple(modalities))
        if set(self.patterns.modalities) != {"text", "image"}:
            raise ValueError(f"This collator builds text+image batches; got modalities {self.patterns.modalities}.")
        self.redraw_rate, self.seed, self.epoch = redraw_rate, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if not features:
            raise ValueError("Cannot collate an empty batch; the data loader handed over no samples.")
        codes = self._codes(features)
        present = self.patterns.present(codes)
        texts, images = [], []
        text_k, image_k = self.patterns.modalities.index("text"), self.patterns.modalities.index("image")
        for i, sample in enumerate(features):
            has_text, has_image = bool(present[i, text_k]), bool(present[i, image_k])
            texts.append(self._text(sample, i) if has_text else BackboneInterface.dummy_text())
            images.append(self._image(sample, i) if has_image else None)
        batch = self._tokenize(texts)
        batch.update(self._pixels(images))
        batch[MISSING_TYPE_COLUMN] = codes
        batch["missing_policy"] = self.policy
        labels = self._labels(features)
        if labels is not None:
            batch["labels"] = labels
        return batch

    def _labels(self, features: list[dict[str, Any]]) -> torch.Tensor | None:
        """Labels of every sample, or None when no sample has one (the column is absent or all None)."""
        unlabelled = [i for i, f in enumerate(features) if f.get(self.label_column) is None]
        if len(unlabelled) == len(features):
            return None
        if unlabelled:
            raise ValueError(
                f"Samples {unlabelled[:10]} of this batch have no {self.label_column!r} (absent or None) while the "
                f"others have one; a batch is labelled for every sample or for none. Drop or fill the unlabelled "
                f"samples, e.g. dataset.filter(lambda s: s[{self.label_column!r}] is not None)."
            )
        return _labels([f[self.label_column] for f in features])

    def _codes(self, features: list[dict[str, Any]]) -> torch.Tensor:
        if self.redraw_rate is not None:
            return torch.tensor([self._redraw(f) for f in features])
        if MISSING_TYPE_COLUMN not in features[0]:
            raise ValueError(
                f"Samples have no {MISSING_TYPE_COLUMN!r} column; run hf_missing.simulate_missing on the dataset "
                "(rate=0.0 for complete data) or pass redraw_rate= to redraw patterns per epoch."
            )
        return self.patterns.codes([f[MISSING_TYPE_COLUMN] for f in features])

    def _redraw(self, sample: dict[str, Any]) -> int:
        if SAMPLE_INDEX_COLUMN not in sample:
            raise ValueError(f"redraw_rate needs the {SAMPLE_INDEX_COLUMN!r} column; run "
                             "simulate_missing(..., protocol='per_epoch') first.")
        rng = np.random.default_rng([self.seed, self.epoch, int(sample[SAMPLE_INDEX_COLUMN])])
        if rng.random() >= self.redraw_rate:
            return 0
        return int(rng.integers(1, self.patterns.num_patterns))

    def _text(self, sample: dict[str, Any], i: int) -> str:
        text = sample.get(self.text_column)
        if text is None:
            raise ValueError(f"Sample {i} has no {self.text_column!r} but its missing_type says the text is present; "
                             "mark it missing_text (simulate_missing keeps naturally missing samples' codes only if "
                             "you set them) or fill the text.")
        return text

    def _image(self, sample: dict[str, Any], i: int) -> Image.Image:
        image = sample.get(self.image_column)
        if image is None:
            raise ValueError(f"Sample {i} has no {self.image_column!r} but its missing_type says the image is "
                             "present; mark it missing_image or supply the image.")
        if not isinstance(image, Image.Image):
            raise ValueError(f"Sample {i}: {self.image_column!r} must be a PIL image, got {type(image).__name__}; "
                             "cast the column with datasets.Image().")
        if image.mode not in IMAGE_MODES:
            raise ValueError(f"Sample {i}: image mode {image.mode!r}, expected 'RGB'; convert with "
                             "dataset.cast_column('image', datasets.Image(mode='RGB')).")
        return image

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        tokenizer = self.processor.tokenizer
        kwargs = {"max_length": self.max_length, "truncation": True} if self.max_length else {"truncation": True}
        encoded = tokenizer(texts, padding=True, return_tensors="pt", **kwargs)
        return dict(encoded)

    def _pixels(self, images: list[Image.Image | None]) -> dict[str, torch.Tensor]:
        real = [im for im in images if im is not None]
        if not real:
            size = _image_size(self.processor.image_processor)
            return {"pixel_values": BackboneInterface.dummy_pixel_values((len(images), 3, *size))}
        try:
            processed = dict(self.processor.image_processor(real, return_tensors="pt"))
        except ValueError as err:
            sizes = [im.size for im in real]
            raise ValueError(f"The image processor cannot take images of (width, height) {sizes}: {err} Very thin "
                             "images resize to a zero side; pad or crop them first.") from err
        values = processed["pixel_values"]
        out = BackboneInterface.dummy_pixel_values((len(images), *values.shape[1:]), values.dtype)
        rows = [i for i, im in enumerate(images) if im is not None]
        out[rows] = values
        result = {"pixel_values": out}
        if "pixel_mask" in processed:
            mask = torch.ones((len(images), *processed["pixel_mask"].shape[1:]), dtype=processed["pixel_mask"].dtype)
            mask[rows] = processed["pixel_mask"]
            result["pixel_mask"] = mask
        return result


def _image_size(image_processor: Any) -> tuple[int, int]:
    size = getattr(image_processor, "crop_size", None) or image_processor.size
    if "height" in size:
        return size["height"], size["width"]
    edge = size.get("shortest_edge", 224)
    return edge, edge


def _labels(values: list[Any]) -> torch.Tensor:
    """Multi-hot rows -> float ``[B, C]``; class indices (ints or integral floats) -> long ``[B]``."""
    if isinstance(values[0], list | tuple | np.ndarray):
        try:
            return torch.tensor(np.asarray(values, dtype=np.float32))
        except (TypeError, ValueError) as err:
            raise ValueError(f"Multi-label targets must be multi-hot rows of equal length (num_labels numbers) for "
                             f"every sample; got {[v if np.ndim(v) == 0 else len(v) for v in values][:10]} "
                             f"(row lengths or values): {err}") from err
    return torch.tensor([_class_index(value, i) for i, value in enumerate(values)], dtype=torch.long)


def _class_index(value: Any, sample: int) -> int:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, numbers.Integral) or (isinstance(value, numbers.Real) and float(value).is_integer()):
        return int(value)
    hint = ("encode class names as indices with dataset.class_encode_column(...)" if isinstance(value, str) else
            "single-label targets are class indices (a float such as 1.7 would be truncated to the wrong class); "
            "give multi-label targets as a multi-hot list per sample")
    raise ValueError(f"The label of sample {sample} is {value!r}; {hint}.")
