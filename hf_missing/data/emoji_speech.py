"""Real three-modality demo data: the emoji set plus each emoji's name spoken by eSpeak NG.

Each sample of :func:`~hf_missing.data.emoji.load_emoji_dataset` (image, text, label, subcategory, same split) gets

- ``audio``: speech-embedding frames ``[T, 96]`` (float32, one per 80 ms; :mod:`hf_missing.data.audio`) of the
  emoji's name (the text before ``": "``, e.g. ``"grinning face"``) spoken by eSpeak NG (:mod:`hf_missing.data.espeak`);
- ``voice``, ``rate``, ``pitch``, ``pitch_range``: how it was spoken, drawn per sample from
  ``np.random.default_rng([seed, split, index])``: one of :data:`LANGUAGES` x :data:`VARIANTS`, 120-220 words per
  minute, pitch 20-80, range 20-80. The audio says the name, not the short names, in a varied voice, so it is not a
  copy of the text column. One synthesiser speaks a whole build in order, so a rebuild is identical (eSpeak NG
  carries some state from one utterance to the next: :mod:`hf_missing.data.espeak`).

The dataset is built once and saved under ``$HF_MISSING_CACHE/emoji-speech/dataset-v<version>-seed<seed>-<key>``
(``key``: a hash of the base data's texts and labels), written to a temporary sibling folder and renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, List, Value, load_from_disk

from ..cache import default_cache_dir
from .audio import FEATURE_SIZE, SpeechEmbeddingExtractor
from .emoji import load_emoji_dataset
from .espeak import EspeakSynthesizer, Voice

DATASET_VERSION = 1
LANGUAGES = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
RATES = (120, 220)
PITCHES = (20, 80)
RANGES = (20, 80)
SPEECH_COLUMNS = ("audio", "voice", "rate", "pitch", "pitch_range")


def emoji_speech_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the spoken emoji set is saved (``cache_dir`` or ``<default cache>/emoji-speech``)."""
    return Path(cache_dir) if cache_dir is not None else default_cache_dir() / "emoji-speech"


def load_emoji_speech_dataset(cache_dir: str | os.PathLike | None = None, seed: int = 0,
                              emoji: DatasetDict | None = None, num_threads: int = 1) -> DatasetDict:
    """The emoji set with a spoken name per sample (text, image, audio, label), built and cached on first use.

    Args:
        cache_dir: folder for the saved dataset; defaults to ``$HF_MISSING_CACHE/emoji-speech``.
        seed: seed of the emoji split and of the voices (each seed is cached separately).
        emoji: the base dataset (default: :func:`load_emoji_dataset` with ``seed``); any ``DatasetDict`` with a
            ``text`` column of ``"<name>: <short names>"``.
        num_threads: onnxruntime threads for the audio features.
    """
    base = emoji if emoji is not None else load_emoji_dataset(seed=seed)
    saved = emoji_speech_cache_dir(cache_dir) / f"dataset-v{DATASET_VERSION}-seed{seed}-{content_key(base)}"
    if (saved / "dataset_dict.json").is_file():
        return load_from_disk(str(saved))
    with EspeakSynthesizer() as synthesizer:
        spoken = add_spoken_names(base, seed, synthesizer, SpeechEmbeddingExtractor(num_threads=num_threads))
    _save_atomically(spoken, saved)
    return load_from_disk(str(saved))


def content_key(dataset: DatasetDict) -> str:
    """12 hex digits naming the base data: its split names, texts and labels."""
    digest = hashlib.sha256()
    for split in sorted(dataset):
        digest.update(f"\0{split}\0".encode())
        for text, label in zip(dataset[split]["text"], dataset[split]["label"], strict=True):
            digest.update(f"{text}\0{label}\0".encode())
    return digest.hexdigest()[:12]


def add_spoken_names(dataset: DatasetDict, seed: int, synthesizer: EspeakSynthesizer,
                     extractor: SpeechEmbeddingExtractor) -> DatasetDict:
    """``dataset`` with :data:`SPEECH_COLUMNS` added to every split (see the module docstring)."""
    return DatasetDict({name: _speak_split(dataset[name], [seed, k], synthesizer, extractor)
                        for k, name in enumerate(dataset)})


def spoken_name(text: str) -> str:
    """The part of an emoji text that is spoken: its name, before the ``": "`` that starts the short names."""
    return text.rsplit(": ", 1)[0]


def draw_voice(rng: np.random.Generator) -> Voice:
    """A voice, rate, pitch and pitch range for one sample."""
    name = f"{LANGUAGES[rng.integers(len(LANGUAGES))]}+{VARIANTS[rng.integers(len(VARIANTS))]}"
    rate, pitch, pitch_range = (int(rng.integers(low, high + 1)) for low, high in (RATES, PITCHES, RANGES))
    return Voice(name, rate=rate, pitch=pitch, range=pitch_range)


def _speak_split(split: Dataset, seed: list[int], synthesizer: EspeakSynthesizer,
                 extractor: SpeechEmbeddingExtractor) -> Dataset:
    """One split's speech columns, one sample at a time (eSpeak NG is not reentrant)."""
    columns: dict[str, list] = {name: [] for name in SPEECH_COLUMNS}
    for index, text in enumerate(split["text"]):
        voice = draw_voice(np.random.default_rng([*seed, index]))
        waveform = synthesizer(spoken_name(text), voice, seed=index)
        columns["audio"].append(extractor.frames(waveform, synthesizer.sampling_rate).tolist())
        for column, value in zip(SPEECH_COLUMNS[1:], (voice.name, voice.rate, voice.pitch, voice.range),
                                 strict=True):
            columns[column].append(value)
    features = split.features.copy()
    features.update({"audio": List(List(Value("float32"), length=FEATURE_SIZE)), "voice": Value("string"),
                     "rate": Value("int32"), "pitch": Value("int32"), "pitch_range": Value("int32")})
    for name in SPEECH_COLUMNS:
        split = split.add_column(name, columns[name], feature=features[name])
    return split


def _save_atomically(dataset: DatasetDict, saved: Path) -> None:
    """Write to a temporary sibling folder, then rename it to ``saved``; on failure the temporary folder is removed
    (and a concurrent build that finished first keeps its copy)."""
    tmp = saved.with_name(f".{saved.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    saved.parent.mkdir(parents=True, exist_ok=True)
    try:
        dataset.save_to_disk(str(tmp))
        tmp.rename(saved)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (saved / "dataset_dict.json").is_file():
            raise
