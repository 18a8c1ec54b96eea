"""Speech synthesis with eSpeak NG, the library and voices bundled in PyPI ``espeakng-loader`` 0.2.4.

eSpeak NG is GPL-3.0-or-later. hf_missing does not ship or link it: this module loads the copy the user installed
(``pip install 'hf-missing[audio]'``) through ``ctypes`` when a spoken dataset is built, and only the synthesised
audio's features end up in the dataset.

eSpeak NG keeps state in static variables that neither ``espeak_Terminate`` nor ``espeak_ng_SetRandSeed`` resets
(e.g. the phase of its pitch flutter), so the same call gives slightly different audio depending on what the process
said before. Each :class:`EspeakSynthesizer` therefore loads its own private copy of the library (copied into a
temporary folder, so the dynamic loader maps it afresh): a sequence of calls on a new synthesiser is reproducible,
and a dataset built with one is identical on every rebuild. A sample's audio still depends on the samples spoken
before it by the same synthesiser.
"""

from __future__ import annotations

import ctypes
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

AUDIO_OUTPUT_SYNCHRONOUS = 0x02
ESPEAK_CHARS_UTF8 = 1
PARAMETERS = {"rate": 1, "pitch": 3, "range": 4}  # espeak_PARAMETER: espeakRATE, espeakPITCH, espeakRANGE
INSTALL_HINT = "pip install 'hf-missing[audio]' (espeakng-loader==0.2.4 bundles libespeak-ng and its voices)"
MAX_TEXT_CHARS = 1_000
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True)
class Voice:
    """How one utterance is spoken.

    Attributes:
        name: an eSpeak NG voice, ``<language>+<variant>`` (e.g. ``"en-us+f2"``).
        rate: words per minute (80-450).
        pitch: base pitch, 0-100 (50 is the voice's default).
        range: pitch range, 0-100 (0 is monotone).
    """

    name: str
    rate: int = 175
    pitch: int = 50
    range: int = 50

    def __post_init__(self) -> None:
        for field, low, high in (("rate", 80, 450), ("pitch", 0, 100), ("range", 0, 100)):
            value = getattr(self, field)
            if not (isinstance(value, int) and low <= value <= high):
                raise ValueError(f"Voice {field} must be an integer in [{low}, {high}], got {value!r}.")


class EspeakSynthesizer:
    """Text -> int16 waveform at :attr:`sampling_rate` (22,050 Hz) with a private copy of the bundled eSpeak NG.

    Use it as a context manager, or call :meth:`close`, to free eSpeak NG's data and remove the copy.
    """

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as err:
            raise ImportError(f"Speech synthesis needs espeakng-loader: {INSTALL_HINT}.") from err
        self._folder = tempfile.TemporaryDirectory(prefix="hf_missing_espeak_")
        private = Path(self._folder.name) / Path(espeakng_loader.get_library_path()).name
        shutil.copyfile(espeakng_loader.get_library_path(), private)
        self._lib = ctypes.CDLL(str(private))
        self._lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                           ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        data_path = espeakng_loader.get_data_path().encode()
        self.sampling_rate = int(self._lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, 0))
        if self.sampling_rate <= 0:
            raise RuntimeError(f"eSpeak NG failed to initialise with its data at {data_path.decode()}: reinstall "
                               f"espeakng-loader ({INSTALL_HINT}).")
        self._chunks: list[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._collect)  # kept alive as long as the library may call it
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lock = threading.Lock()
        self._closed = False

    def __call__(self, text: str, voice: Voice, seed: int = 0) -> np.ndarray:
        """``text`` spoken by ``voice``: a 1-D int16 waveform at :attr:`sampling_rate`.

        ``seed`` seeds eSpeak NG's own random generator (the breath noise of variants such as ``f2``); the result
        also depends on this synthesiser's earlier calls (see the module docstring).
        """
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"Nothing to say: text must be a non-empty string, got {text!r}.")
        if len(text) > MAX_TEXT_CHARS:
            raise ValueError(f"Text of {len(text)} characters is over {MAX_TEXT_CHARS}; synthesise it in parts.")
        with self._lock:
            if self._closed:
                raise RuntimeError("This EspeakSynthesizer is closed; create a new one.")
            self._set_voice(voice)
            self._lib.espeak_ng_SetRandSeed(seed)
            self._chunks = []
            encoded = text.encode("utf-8")
            status = self._lib.espeak_Synth(encoded, len(encoded) + 1, 0, 1, 0, ESPEAK_CHARS_UTF8, None, None)
            self._lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if status != 0 or not chunks:
            raise RuntimeError(f"eSpeak NG produced no audio for {text!r} with {voice} (status {status}).")
        return np.concatenate(chunks)

    def close(self) -> None:
        """Free eSpeak NG's data and delete the private copy of the library (the mapping stays until exit)."""
        with self._lock:
            if not self._closed:
                self._lib.espeak_Terminate()
                self._folder.cleanup()
            self._closed = True

    def __enter__(self) -> EspeakSynthesizer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _set_voice(self, voice: Voice) -> None:
        if self._lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice {voice.name!r}; use '<language>+<variant>' with a language "
                             "and a variant from espeakng_loader's espeak-ng-data (e.g. 'en-us+f2').")
        for field, parameter in PARAMETERS.items():
            self._lib.espeak_SetParameter(parameter, getattr(voice, field), 0)

    def _collect(self, wav: ctypes.POINTER(ctypes.c_short), count: int, _events: ctypes.c_void_p) -> int:
        """eSpeak NG's synthesis callback: keep a copy of each block of samples; 0 = continue."""
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0
