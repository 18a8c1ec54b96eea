"""CH-SIMS, CMU-MOSI and CMU-MOSEI from MMSA's processed feature files (``unaligned_50.pkl``, ``aligned_50.pkl``,
``unaligned_39.pkl``, or a file written by MMSA-FET's ``run_dataset``).

The layout, as verified in thuiar/MMSA ``src/MMSA/data_loader.py`` (``MMDataset.__init_mosi``, shared by MOSEI and
SIMS) and thuiar/MMSA-FET ``src/MSA_FET/main.py`` (``run_dataset``, which writes the file) and
``src/MSA_FET/dataloader.py``: one pickled ``dict`` with the splits ``train`` / ``valid`` / ``test``, each a dict of
per-sample arrays or lists in the same order:

- ``text`` ``[N, L_t, F_t]`` (GloVe or BERT features), ``audio`` ``[N, L_a, F_a]``, ``vision`` ``[N, L_v, F_v]``:
  padded with zero frames at the end (MMSA-FET pads each to ``mean + 3·std`` frames, truncating longer ones);
- ``audio_lengths`` / ``vision_lengths``: the frame counts (unaligned files only; aligned files have none);
- ``regression_labels`` ``[N]`` sentiment in [-3, 3] (MOSI / MOSEI) or [-1, 1] (SIMS); ``classification_labels``;
  CH-SIMS adds the unimodal ``regression_labels_T`` / ``_A`` / ``_V``;
- ``id`` (``"<video>$_$<clip>"``), ``raw_text``; ``text_bert`` ``[N, 3, L]`` token ids / mask / segment ids, and
  ``annotations``, which this loader does not read (it reads features, not token ids).

MMSA reads the file with ``pickle.load`` and casts features to float32 (it also sets the audio's ``-inf`` to 0:
``nonfinite="zero"`` here). A pickle runs code while it loads, so :func:`load_mmsa_features` reads only a local file
the caller vouches for (``allow_pickle=True``), never a URL, a Hub id or a file under the Hugging Face caches, and
even then through :class:`RestrictedUnpickler`, which resolves nothing but the numpy array reconstruction functions
the format needs: a file that names any other callable (``os.system``, ``torch`` storages, ...) is refused.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from datasets import Dataset, DatasetDict, Features, Value

from .sequences import build_dataset, check_frames, frame_feature, sequence_column

logger = logging.getLogger(__name__)

MMSA_SPLITS = {"train": "train", "valid": "validation", "test": "test"}  # file's split -> DatasetDict split
MMSA_MODALITIES = ("text", "audio", "vision")
MMSA_LENGTHS = {"audio": "audio_lengths", "vision": "vision_lengths"}
SIMS_LABELS = {"regression_labels_T": "label_T", "regression_labels_A": "label_A", "regression_labels_V": "label_V"}
URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The only callables a numpy pickle needs (numpy 1.x writes ``numpy.core``, numpy 2.x ``numpy._core``), and
    ``_codecs.encode``, which protocol-2 pickles use to rebuild bytes."""
    import codecs

    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2 without the _core alias
        from numpy.core import multiarray, numeric
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): codecs.encode}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers (dict, list, tuple, str, numbers, bytes) and numpy arrays,
    dtypes and scalars. Any other global (``os.system``, ``builtins.eval``, ``torch._utils._rebuild_tensor_v2``...)
    raises :class:`pickle.UnpicklingError` before it is resolved, so a hostile file cannot call it; persistent ids are
    refused too. This limits the damage a bad file can do but is no sandbox: read only files you trust."""

    ALLOWED = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self.ALLOWED.get((module, name))
        if found is None:
            hint = (" It stores torch tensors (MMSA-FET's return_type='pt'); re-save it with numpy arrays."
                    if module.startswith("torch") else "")
            raise pickle.UnpicklingError(f"the file calls {module}.{name}, which an MMSA feature file never needs "
                                         f"(only numpy arrays and plain containers are allowed).{hint}")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("the file uses persistent ids, which an MMSA feature file never holds.")


@dataclass(frozen=True)
class _Split:
    """One split's checked columns."""

    n: int
    sequences: dict[str, list[np.ndarray | None]]
    widths: dict[str, int]
    label: np.ndarray
    extra: dict[str, pa.Array]


def load_mmsa_features(path: str | os.PathLike, *, allow_pickle: bool = False, text_key: str = "text",
                       nonfinite: str = "error") -> DatasetDict:
    """MMSA's processed features (CH-SIMS, MOSI, MOSEI) as a ``DatasetDict`` (``train`` / ``validation`` /
    ``test``).

    Columns: ``text``, ``audio``, ``vision`` (``[T, F]`` float32 frame sequences; ``None`` where a sample has no
    frame, which :func:`hf_missing.simulate_missing` treats as naturally missing), ``label`` (the regression label,
    float32), ``id`` and, where the file has them, ``raw_text``, ``classification_label`` (int64) and CH-SIMS'
    ``label_T`` / ``label_A`` / ``label_V``. Unaligned files keep each sample's first ``audio_lengths`` /
    ``vision_lengths`` frames (a recorded length beyond the stored frames, which MMSA-FET truncates, keeps them all
    and is logged); text, and every modality of aligned files, keep all stored frames, padding included, as MMSA's
    and MulT's models read them.

    Args:
        path: a local ``.pkl`` file you trust.
        allow_pickle: must be True: the file is a pickle, and loading a pickle can run code. Never pass it for a file
            downloaded from a place you do not control.
        text_key: the text feature array, ``"text"`` (the only one holding frames; ``text_bert`` holds token ids).
        nonfinite: ``"error"`` refuses NaN / infinite features; ``"zero"`` sets them to 0 (MMSA and MPLMM set the
            audio's ``-inf`` to 0).
    """
    file = _trusted_pickle_path(path, allow_pickle)
    data = _read_pickle(file)
    splits = _splits_of(data, file)
    return DatasetDict({MMSA_SPLITS[name]: _to_dataset(_check_split(split, f"{file}[{name!r}]", text_key, nonfinite))
                        for name, split in splits.items()})


def _trusted_pickle_path(path: str | os.PathLike, allow_pickle: bool) -> Path:
    """``path`` if it is a local file outside the Hugging Face caches and the caller allowed pickles."""
    text = os.fspath(path)
    if URL.match(text):
        raise ValueError(f"{text} is a URL; MMSA feature files are pickles, which can run code, so hf_missing never "
                         "reads one it downloads. Download it yourself from a source you trust and pass the local "
                         "file with allow_pickle=True.")
    file = Path(text).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{text} is not a local file (a Hub id or a missing path?); MMSA feature files are "
                                "read only from local files you trust, never fetched from the Hub.")
    cache = _inside_hf_cache(file.resolve())
    if cache:
        raise ValueError(f"{file} lies in the Hugging Face cache {cache}, so it was downloaded; a pickle can run code "
                         "and is never read from a download. Copy a file you trust elsewhere if you vouch for it.")
    if not allow_pickle:
        raise ValueError(f"{file} is a pickle (MMSA's feature format), and loading a pickle can run arbitrary code. "
                         "If you trust this local file, call load_mmsa_features(path, allow_pickle=True); never do so "
                         "for a file downloaded from a source you do not control.")
    return file


def _inside_hf_cache(file: Path) -> str | None:
    from datasets import config as datasets_config
    from huggingface_hub import constants

    for folder in (constants.HF_HUB_CACHE, datasets_config.HF_DATASETS_CACHE, datasets_config.DOWNLOADED_DATASETS_PATH):
        root = Path(folder).expanduser().resolve()
        if file.is_relative_to(root):
            return str(root)
    return None


def _read_pickle(file: Path) -> Any:
    with open(file, "rb") as f:
        try:
            return RestrictedUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as err:
            raise ValueError(f"{file} was refused: {err}") from err
        except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
            raise ValueError(f"{file} is not a readable pickle ({type(err).__name__}: {err}); is it an MMSA "
                             "feature file?") from err


def _splits_of(data: Any, file: Path) -> dict[str, dict[str, Any]]:
    if not isinstance(data, dict) or not set(MMSA_SPLITS) <= set(data):
        keys = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{file} holds {keys}, not MMSA's dict of splits {list(MMSA_SPLITS)}.")
    bad = [name for name in MMSA_SPLITS if not isinstance(data[name], dict)]
    if bad:
        raise ValueError(f"{file}: split(s) {bad} are not dicts of arrays.")
    return {name: data[name] for name in MMSA_SPLITS}


def _check_split(split: dict[str, Any], where: str, text_key: str, nonfinite: str) -> _Split:
    """The split's label, sequences and extra columns, every shape, dtype and length checked."""
    keys = {"text": text_key, "audio": "audio", "vision": "vision"}
    missing = [k for k in ("regression_labels", "id", *keys.values()) if k not in split]
    if missing:
        raise ValueError(f"{where} has no {missing} (keys: {sorted(map(str, split))}); an MMSA feature file holds "
                         f"regression_labels, id, text, audio and vision in every split.")
    label = _vector(split["regression_labels"], f"{where}['regression_labels']", np.float32)
    n = len(label)
    sequences, widths = {}, {}
    for modality, key in keys.items():
        sequences[modality], widths[modality] = _sequences(split, key, MMSA_LENGTHS.get(modality), n, where,
                                                           nonfinite)
    return _Split(n, sequences, widths, label, _extra_columns(split, n, where))


def _vector(value: Any, where: str, dtype: type) -> np.ndarray:
    """A finite ``[N]`` (or ``[N, 1]``) numeric vector as ``dtype``."""
    array = np.asarray(value) if isinstance(value, list | tuple | np.ndarray) else None
    if array is None or array.dtype.kind not in "fiub" or array.ndim not in (1, 2) or (
            array.ndim == 2 and array.shape[1] != 1):
        shape = getattr(array, "shape", None)
        raise ValueError(f"{where} must be a numeric vector [N] or [N, 1]; got {type(value).__name__} of shape "
                         f"{shape} and dtype {getattr(array, 'dtype', None)}.")
    array = array.reshape(-1)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"{where} holds NaN or infinite values at samples "
                         f"{np.flatnonzero(~np.isfinite(array))[:10].tolist()}; labels must be finite.")
    if np.dtype(dtype).kind in "iu" and array.dtype.kind == "f" and (array != np.round(array)).any():
        raise ValueError(f"{where} holds non-integral values; class labels must be whole numbers.")
    return array.astype(dtype)


def _sequences(split: dict[str, Any], key: str, length_key: str | None, n: int, where: str,
               nonfinite: str) -> tuple[list[np.ndarray | None], int]:
    """Each sample's frames of ``split[key]`` (``[N, L, F]``), cut to its recorded length where there is one."""
    array = split[key]
    if not isinstance(array, np.ndarray) or array.ndim != 3 or array.shape[0] != n:
        raise ValueError(f"{where}[{key!r}] must be a numpy array [N={n}, frames, features]; got "
                         f"{type(array).__name__} of shape {getattr(array, 'shape', None)}.")
    frames = check_frames(array, f"{where}[{key!r}]", nonfinite)
    lengths = _lengths(split, length_key, n, frames.shape[1], where) if length_key in split else None
    if lengths is None:
        return list(frames), frames.shape[2]
    return [frames[i, :length] if length else None for i, length in enumerate(lengths)], frames.shape[2]


def _lengths(split: dict[str, Any], key: str, n: int, stored: int, where: str) -> np.ndarray:
    lengths = _vector(split[key], f"{where}[{key!r}]", np.int64)
    if len(lengths) != n or (lengths < 0).any():
        raise ValueError(f"{where}[{key!r}] must hold one non-negative frame count per sample ({n}); got "
                         f"{len(lengths)} values, minimum {lengths.min() if len(lengths) else None}.")
    longer = int((lengths > stored).sum())
    if longer:
        logger.warning("%s[%r]: %d sample(s) record more frames than the %d stored (the file was truncated when it "
                       "was written); they keep the %d stored frames.", where, key, longer, stored, stored)
    return np.minimum(lengths, stored)


def _extra_columns(split: dict[str, Any], n: int, where: str) -> dict[str, pa.Array]:
    """``id``, and ``raw_text``, ``classification_label`` and CH-SIMS' unimodal labels where present."""
    columns = {"id": pa.array(_strings(split["id"], n, f"{where}['id']"))}
    if "raw_text" in split:
        columns["raw_text"] = pa.array(_strings(split["raw_text"], n, f"{where}['raw_text']"))
    if "classification_labels" in split:
        columns["classification_label"] = pa.array(
            _vector(split["classification_labels"], f"{where}['classification_labels']", np.int64))
    for key, column in SIMS_LABELS.items():
        if key in split:
            columns[column] = pa.array(_vector(split[key], f"{where}[{key!r}]", np.float32))
    wrong = {k: len(v) for k, v in columns.items() if len(v) != n}
    if wrong:
        raise ValueError(f"{where}: {wrong} entries where regression_labels has {n}; every key holds one value "
                         "per sample.")
    return columns


def _strings(value: Any, n: int, where: str) -> list[str]:
    items = list(value) if isinstance(value, list | tuple | np.ndarray) else None
    if items is None or len(items) != n or not all(isinstance(v, str | np.str_) for v in items):
        raise ValueError(f"{where} must hold one string per sample ({n}); got {type(value).__name__} "
                         f"of {len(items) if items is not None else '?'} entries.")
    return [str(v) for v in items]


def _to_dataset(split: _Split) -> Dataset:
    columns = {m: sequence_column(split.sequences[m], split.widths[m]) for m in MMSA_MODALITIES}
    columns["label"] = pa.array(split.label)
    columns.update(split.extra)
    features = Features({**{m: frame_feature(split.widths[m]) for m in MMSA_MODALITIES}, "label": Value("float32"),
                         **{k: _value_feature(v) for k, v in split.extra.items()}})
    return build_dataset(columns, features)


def _value_feature(column: pa.Array) -> Value:
    return Value({"int64": "int64", "float": "float32", "string": "string"}[str(column.type)])
