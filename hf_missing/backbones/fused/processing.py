"""The fused backbone's processor: MiniLM's tokenizer and a PIL image processor."""

from __future__ import annotations

import os
from dataclasses import dataclass

from transformers import AutoTokenizer, PreTrainedTokenizerBase, ViTImageProcessorPil

from .configuration import DEFAULT_IMAGE_SIZE
from .modeling import minilm_path


@dataclass
class FusedProcessor:
    """MiniLM's tokenizer and a PIL image processor (resize to ``image_size``, mean = std = 0.5); what
    :class:`~hf_missing.MissingModalityCollator` needs."""

    tokenizer: PreTrainedTokenizerBase
    image_processor: ViTImageProcessorPil

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> FusedProcessor:
        """Load from a fused checkpoint folder (written by :func:`build_fused_backbone`)."""
        return cls(AutoTokenizer.from_pretrained(str(path)), ViTImageProcessorPil.from_pretrained(str(path)))

    @classmethod
    def from_packaged(cls, image_size: int = DEFAULT_IMAGE_SIZE) -> FusedProcessor:
        """MiniLM's packaged tokenizer and a fresh image processor for ``image_size`` px."""
        return cls(AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True), image_processor(image_size))

    def save_pretrained(self, path: str | os.PathLike) -> None:
        self.tokenizer.save_pretrained(str(path))
        self.image_processor.save_pretrained(str(path))


def image_processor(image_size: int = DEFAULT_IMAGE_SIZE) -> ViTImageProcessorPil:
    """Resize to ``image_size`` x ``image_size`` (bicubic), scale to [0, 1], normalise with mean = std = 0.5."""
    return ViTImageProcessorPil(do_resize=True, size={"height": image_size, "width": image_size}, do_rescale=True,
                                do_normalize=True, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
