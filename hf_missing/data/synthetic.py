"""A small offline image+text(+audio) classification set, a text/audio/vision frame-sequence set, and tiny random
CLIP/ViLT backbones.

Used by ``hf-missing train`` (a short end-to-end run) and by the tests: no weights or data are
downloaded. Each class has a colour and a shape, drawn into the image, and a name, written into the
text with filler words; with ``audio=True`` also a short sequence of feature frames around a class-specific
tone. Any one modality alone identifies the class, so missing-modality robustness is measurable.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, List, Value
from PIL import Image as PILImage
from PIL import ImageDraw
from transformers import (
    BertTokenizerFast,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    PreTrainedModel,
    ViltConfig,
    ViltImageProcessorPil,
    ViltModel,
)

CLASSES = ("red circle", "green square", "blue triangle", "yellow cross")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
FILLER = ("a", "photo", "of", "the", "small", "big", "shape", "drawing", "on", "white", "picture", "some")
SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
IMAGE_SIZE = 30
AUDIO_WIDTH = 8  # features per audio frame
# The feature modalities of sequence_dataset (MOSI's text / audio / vision frames, much narrower): name -> width.
SEQUENCE_WIDTHS = {"text": 12, "audio": AUDIO_WIDTH, "vision": 6}


def _draw(label: int, rng: np.random.Generator) -> PILImage.Image:
    colour_name, shape = CLASSES[label].split()
    image = PILImage.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    c, r = rng.integers(11, 19, size=2), int(rng.integers(6, 10))
    box = [int(c[0] - r), int(c[1] - r), int(c[0] + r), int(c[1] + r)]
    colour = COLOURS[colour_name]
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(box[0], box[3]), (box[2], box[3]), (int(c[0]), box[1])], fill=colour)
    else:
        draw.line([(box[0], box[1]), (box[2], box[3])], fill=colour, width=4)
        draw.line([(box[0], box[3]), (box[2], box[1])], fill=colour, width=4)
    return image


def _text(label: int, rng: np.random.Generator) -> str:
    words = list(rng.choice(FILLER, size=int(rng.integers(2, 6))))
    words.insert(int(rng.integers(0, len(words) + 1)), CLASSES[label])
    return " ".join(words)


def _audio(label: int, rng: np.random.Generator) -> list[list[float]]:
    """3-8 frames of ``AUDIO_WIDTH`` features: the class's tone (two active features) plus noise."""
    tone = np.zeros(AUDIO_WIDTH, np.float32)
    tone[[2 * label, 2 * label + 1]] = 1.0
    frames = tone + 0.3 * rng.standard_normal((int(rng.integers(3, 9)), AUDIO_WIDTH)).astype(np.float32)
    return frames.tolist()


def _frames(label: int, rng: np.random.Generator, width: int) -> list[list[float]]:
    """3-8 frames of ``width`` features: the class's tone (every len(CLASSES)-th feature from the label on) plus
    noise."""
    tone = np.zeros(width, np.float32)
    tone[label::len(CLASSES)] = 1.0
    frames = tone + 0.3 * rng.standard_normal((int(rng.integers(3, 9)), width)).astype(np.float32)
    return frames.tolist()


def sequence_dataset(n_train: int = 256, n_test: int = 128, seed: int = 0) -> DatasetDict:
    """Train/test splits of samples whose modalities are all frame sequences (``SEQUENCE_WIDTHS``: text, audio and
    vision columns of ``[T, F]`` frames, T in 3..8, as MOSI's precomputed features), plus ``label``; each modality
    alone identifies the class."""
    columns = {name: List(List(Value("float32"))) for name in SEQUENCE_WIDTHS}
    columns["label"] = ClassLabel(names=list(CLASSES))
    splits = {}
    for key, (name, n) in enumerate((("train", n_train), ("test", n_test))):
        rng = np.random.default_rng([seed, key, 2])
        labels = rng.integers(0, len(CLASSES), size=n).tolist()
        rows = {m: [_frames(y, rng, width) for y in labels] for m, width in SEQUENCE_WIDTHS.items()}
        splits[name] = Dataset.from_dict({**rows, "label": labels}, features=Features(columns))
    return DatasetDict(splits)


def shapes_dataset(n_train: int = 256, n_test: int = 128, seed: int = 0, audio: bool = False) -> DatasetDict:
    """Train/test splits of (image, text, label) samples, plus an ``audio`` column of frames when asked."""
    columns = {"image": Image(), "text": Value("string"), "label": ClassLabel(names=list(CLASSES))}
    if audio:
        columns["audio"] = List(List(Value("float32")))
    splits = {}
    for key, (name, n) in enumerate((("train", n_train), ("test", n_test))):
        rng = np.random.default_rng([seed, key])
        labels = rng.integers(0, len(CLASSES), size=n).tolist()
        rows = {"image": [_draw(y, rng) for y in labels], "text": [_text(y, rng) for y in labels], "label": labels}
        if audio:
            audio_rng = np.random.default_rng([seed, key, 1])
            rows["audio"] = [_audio(y, audio_rng) for y in labels]
        splits[name] = Dataset.from_dict(rows, features=Features(columns))
    return DatasetDict(splits)


def tiny_tokenizer() -> BertTokenizerFast:
    """A word-level BERT tokenizer over this dataset's vocabulary ([CLS] text [SEP])."""
    words = sorted({w for c in CLASSES for w in c.split()} | set(FILLER))
    return BertTokenizerFast(vocab={w: i for i, w in enumerate([*SPECIAL, *words])}, do_lower_case=True)


def tiny_processor(model_type: str) -> SimpleNamespace:
    """A processor (``tokenizer`` + ``image_processor``) matching :func:`tiny_backbone`."""
    if model_type == "clip":
        image_processor = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                                crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    elif model_type == "vilt":
        image_processor = ViltImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, size_divisor=6)
    else:
        raise ValueError(f"No tiny processor for {model_type!r}; use 'clip' or 'vilt'.")
    return SimpleNamespace(tokenizer=tiny_tokenizer(), image_processor=image_processor)


def tiny_backbone(model_type: str, seed: int = 0) -> PreTrainedModel:
    """A tiny randomly initialised CLIP or ViLT (the HF_NOTES test configs) for the tokenizer above."""
    import torch

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    if model_type == "clip":
        config = CLIPConfig(
            text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=16, bos_token_id=tokenizer.cls_token_id,
                             eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id),
            vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                               image_size=IMAGE_SIZE, patch_size=6),
            projection_dim=16,
        )
        return CLIPModel(config)
    if model_type == "vilt":
        config = ViltConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=37, image_size=IMAGE_SIZE, patch_size=6, max_position_embeddings=16,
                            initializer_range=0.2)  # at 0.02 the random [CLS] output barely depends on the input
        return ViltModel(config)
    raise ValueError(f"No tiny backbone for {model_type!r}; use 'clip' or 'vilt'.")
