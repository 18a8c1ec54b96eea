"""What one modality is to the core: the model inputs it fills, its placeholder, how to recognise the placeholder,
and how raw samples of it become a batch.

A backbone declares its modalities as a tuple of these (``BackboneInterface.inputs``); the wrapper's forward, its
missing-type checks and :class:`~hf_missing.data.MissingModalityCollator` are driven by that declaration, never by
the words "text" and "image". Adding a kind of input (raw audio, a new sensor) is one subclass here.

- :class:`TextInputs`: ``input_ids`` / ``attention_mask`` / ``token_type_ids``; the placeholder is the empty string
  (only the tokenizer's special tokens), as in MAP, DCP and REP.
- :class:`ImageInputs`: ``pixel_values`` (+ ``pixel_mask`` for processors that pad); the placeholder is all ones
  after normalisation (MAP, DCP, REP), at the processor's nominal size, so it does not depend on the other
  images of its batch.
- :class:`FeatureInputs`: a precomputed float sequence ``[B, T, F]`` and its 0/1 mask ``[B, T]`` (MulT's
  COVAREP / Facet features on CH-SIMS, MOSI, MOSEI; acoustic or seismic sensor frames); the placeholder is one
  all-zero frame, as the papers zero absent audio.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch.nn.utils.rnn import pad_sequence

IMAGE_MODES = ("RGB",)


@dataclass(frozen=True)
class ModalityInputs(ABC):
    """One modality's inputs.

    Attributes:
        name: the modality's name (``missing_type`` pattern names use it: ``missing_<name>``).
        ambiguous: a real input can equal the placeholder (a white image, a silent recording), so a present sample
            that looks like the placeholder is used as given, with a warning, instead of raising.
    """

    name: str
    ambiguous: ClassVar[bool] = False

    @property
    @abstractmethod
    def input_names(self) -> tuple[str, ...]:
        """The keyword inputs of the model this modality fills; the first is required."""

    @abstractmethod
    def is_placeholder(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B]`` True where the sample's input is this modality's placeholder."""

    @abstractmethod
    def collate(self, values: list[Any], processor: Any) -> dict[str, torch.Tensor]:
        """Model inputs for raw values (``None`` = missing: the placeholder), one per sample."""

    def check_value(self, value: Any, sample: int, column: str) -> Any:
        """Raise a clear error on a raw value this modality cannot take; return it."""
        return value

    def is_absent(self, value: Any) -> bool:
        """Whether a raw value (as stored, decoded or not) is naturally missing: ``None`` for every modality;
        subclasses add their own empty values (blank text, an image with no file, an empty sequence)."""
        return value is None


@dataclass(frozen=True)
class TextInputs(ModalityInputs):
    """Tokenised text. ``max_length`` truncates (None: the tokenizer's own limit)."""

    name: str = "text"
    max_length: int | None = None

    @property
    def input_names(self) -> tuple[str, ...]:
        return ("input_ids", "attention_mask", "token_type_ids")

    def is_placeholder(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Only the tokenizer's special tokens ([CLS] [SEP], or CLIP's start and end) are attended."""
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(inputs["input_ids"])
        return mask.sum(dim=-1) <= 2

    def collate(self, values: list[Any], processor: Any) -> dict[str, torch.Tensor]:
        texts = ["" if v is None else v for v in values]
        kwargs = {"max_length": self.max_length} if self.max_length else {}
        return dict(processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt", **kwargs))

    def check_value(self, value: Any, sample: int, column: str) -> Any:
        if not isinstance(value, str):
            raise ValueError(f"Sample {sample}: {column!r} must be a string, got {type(value).__name__}; cast the "
                             "column with datasets.Value('string').")
        return value

    def is_absent(self, value: Any) -> bool:
        """``None``, the empty string or whitespace only."""
        return value is None or (isinstance(value, str) and not value.strip())


@dataclass(frozen=True)
class ImageInputs(ModalityInputs):
    """RGB images through the processor's ``image_processor``."""

    name: str = "image"
    ambiguous: ClassVar[bool] = True  # a pure-white image equals the placeholder under mean = std = 0.5

    @property
    def input_names(self) -> tuple[str, ...]:
        return ("pixel_values", "pixel_mask")

    def is_placeholder(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """All ones wherever the pixel mask (if any) is set."""
        pixels, mask = inputs["pixel_values"], inputs.get("pixel_mask")
        ones = pixels == 1
        if mask is not None:
            ones = ones | ~mask.bool()[:, None]
        return ones.flatten(1).all(dim=1)

    def collate(self, values: list[Any], processor: Any) -> dict[str, torch.Tensor]:
        real = [v for v in values if v is not None]
        nominal = image_size(processor.image_processor)
        if not real:
            return {"pixel_values": placeholder_pixels((len(values), 3, *nominal))}
        try:
            processed = dict(processor.image_processor(real, return_tensors="pt"))
        except ValueError as err:
            raise ValueError(f"The image processor cannot take images of (width, height) {[v.size for v in real]}: "
                             f"{err} Very thin images resize to a zero side; pad or crop them first.") from err
        return _with_placeholders(processed, [v is not None for v in values], nominal)

    def check_value(self, value: Any, sample: int, column: str) -> Any:
        if not isinstance(value, Image.Image):
            raise ValueError(f"Sample {sample}: {column!r} must be a PIL image, got {type(value).__name__}; "
                             "cast the column with datasets.Image().")
        if value.mode not in IMAGE_MODES:
            raise ValueError(f"Sample {sample}: image mode {value.mode!r}, expected 'RGB'; convert with "
                             f"dataset.cast_column({column!r}, datasets.Image(mode='RGB')).")
        return value

    def is_absent(self, value: Any) -> bool:
        """``None``; an undecoded ``datasets.Image`` value ``{"bytes", "path"}`` with neither; an empty path or
        byte string; a decoded image with no pixels."""
        if isinstance(value, dict):
            return not value.get("bytes") and not value.get("path")
        if isinstance(value, str):
            return not value.strip()
        if isinstance(value, bytes):
            return not value
        if isinstance(value, Image.Image):
            return value.width == 0 or value.height == 0
        return value is None


@dataclass(frozen=True)
class FeatureInputs(ModalityInputs):
    """A precomputed float sequence per sample (``[T, F]`` frames), padded to the batch's longest with a mask.

    Attributes:
        width: F, the frame width.
        values_name / mask_name: the model inputs (default ``<name>_features`` and ``<name>_mask``).
    """

    name: str
    width: int
    values_name: str = ""
    mask_name: str = ""
    ambiguous: ClassVar[bool] = True  # a silent recording or a dead sensor can be all zeros

    @property
    def input_names(self) -> tuple[str, ...]:
        return (self.values_name or f"{self.name}_features", self.mask_name or f"{self.name}_mask")

    def is_placeholder(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Every attended frame is all zeros."""
        values_name, mask_name = self.input_names
        values, mask = inputs[values_name], inputs.get(mask_name)
        zero = (values == 0).all(dim=-1)
        if mask is not None:
            zero = zero | ~mask.bool()
        return zero.all(dim=1)

    def collate(self, values: list[Any], processor: Any) -> dict[str, torch.Tensor]:
        frames = [torch.zeros(1, self.width) if v is None else torch.from_numpy(v) for v in values]
        values_name, mask_name = self.input_names
        return {values_name: pad_sequence(frames, batch_first=True),
                mask_name: pad_sequence([torch.ones(len(f), dtype=torch.long) for f in frames], batch_first=True)}

    def check_value(self, value: Any, sample: int, column: str) -> np.ndarray:
        try:
            frames = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError) as err:
            raise ValueError(f"Sample {sample}: {column!r} must be a [T, {self.width}] sequence of float frames: "
                             f"{err}") from err
        if frames.ndim != 2 or frames.shape[1] != self.width or frames.shape[0] == 0:
            raise ValueError(f"Sample {sample}: {column!r} has shape {frames.shape}, expected [T, {self.width}] "
                             f"with T >= 1 frames of {self.width} features; mark an absent {self.name} missing "
                             "instead of storing an empty sequence.")
        if not np.isfinite(frames).all():
            raise ValueError(f"Sample {sample}: {column!r} holds NaN or infinite values; clean or mark it missing.")
        return frames

    def is_absent(self, value: Any) -> bool:
        """``None`` or a sequence with no frames."""
        return absent_sequence(value)


def absent_sequence(value: Any) -> bool:
    """``None`` or an empty list / tuple / array: how a stored feature sequence says "no recording"."""
    return value is None or (isinstance(value, list | tuple | np.ndarray) and len(value) == 0)


def absence_test(modality: str | ModalityInputs) -> Any:
    """The function telling whether a raw value of ``modality`` is naturally missing: its declaration's
    :meth:`ModalityInputs.is_absent`, the default text / image one for those names, else :func:`absent_sequence`."""
    if isinstance(modality, ModalityInputs):
        return modality.is_absent
    if modality in ("text", "image"):
        return default_inputs(modality).is_absent
    return absent_sequence


def default_inputs(name: str) -> ModalityInputs:
    """The inputs a modality name means when nothing else is declared: text, image, else precomputed features."""
    if name == "text":
        return TextInputs()
    if name == "image":
        return ImageInputs()
    raise ValueError(f"Modality {name!r} has no default inputs (only 'text' and 'image' do); pass its declaration, "
                     f"e.g. FeatureInputs({name!r}, width=<frame width>), or the model's own: "
                     "model.interface.inputs.")


def resolve_inputs(modalities: Sequence[str | ModalityInputs]) -> tuple[ModalityInputs, ...]:
    return tuple(m if isinstance(m, ModalityInputs) else default_inputs(m) for m in modalities)


def placeholder_pixels(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The papers' placeholder image: all ones *after* normalisation (MAP, DCP, REP)."""
    return torch.ones(shape, dtype=dtype)


def image_size(image_processor: Any) -> tuple[int, int]:
    """The (height, width) an image processor produces for a square image."""
    size = getattr(image_processor, "crop_size", None) or image_processor.size
    if "height" in size:
        return size["height"], size["width"]
    edge = size.get("shortest_edge", 224)
    return edge, edge


def _with_placeholders(processed: dict[str, torch.Tensor], present: list[bool],
                       nominal: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Scatter the processed real images into a batch whose missing rows hold the placeholder.

    Processors that pad (ViLT) return a ``pixel_mask``: there the placeholder keeps the nominal size, padded and
    masked like a real image, so a missing image's tokens do not depend on the size of its batch's largest image.
    """
    values, rows = processed["pixel_values"], [i for i, p in enumerate(present) if p]
    if "pixel_mask" not in processed:
        out = placeholder_pixels((len(present), *values.shape[1:]), values.dtype)
        out[rows] = values
        return {"pixel_values": out}
    height, width = max(values.shape[-2], nominal[0]), max(values.shape[-1], nominal[1])
    out = torch.zeros((len(present), values.shape[1], height, width), dtype=values.dtype)
    mask = torch.zeros((len(present), height, width), dtype=processed["pixel_mask"].dtype)
    out[:, :, :nominal[0], :nominal[1]] = 1
    mask[:, :nominal[0], :nominal[1]] = 1
    out[rows] = 0
    mask[rows] = 0
    out[rows, :, :values.shape[-2], :values.shape[-1]] = values
    mask[rows, :values.shape[-2], :values.shape[-1]] = processed["pixel_mask"]
    return {"pixel_values": out, "pixel_mask": mask}
