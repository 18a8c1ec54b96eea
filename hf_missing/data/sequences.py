"""Shared helpers of the sentiment feature loaders (:mod:`.sentiment`, :mod:`.csd`): checking float frame arrays and
building ``datasets`` columns of variable-length frame sequences straight from numpy (no per-frame Python lists).

A modality column is ``List(List(Value("float32"), length=F))``: one ``[T, F]`` sequence per sample, ``None`` where
the sample has no frame of that modality (natural missingness, which :func:`hf_missing.simulate_missing` reads).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from datasets import Dataset, DatasetInfo, Features, List, Value
from datasets.table import InMemoryTable

logger = logging.getLogger(__name__)
NONFINITE_POLICIES = ("error", "zero")


def frame_feature(width: int) -> List:
    """The ``datasets`` feature of a column of ``[T, width]`` float32 sequences."""
    return List(List(Value("float32"), length=width))


def check_frames(frames: np.ndarray, where: str, nonfinite: str) -> np.ndarray:
    """``frames`` as float32, with NaN / infinite values refused (``nonfinite="error"``) or set to 0 (``"zero"``,
    what MMSA's and MPLMM's loaders do to the audio's ``-inf``; the count is logged)."""
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite must be one of {list(NONFINITE_POLICIES)}, got {nonfinite!r}.")
    if frames.dtype.kind not in "fiub":
        raise ValueError(f"{where} holds {frames.dtype} values, not numbers; a feature array must be numeric.")
    frames = frames.astype(np.float32, copy=False)
    bad = ~np.isfinite(frames)
    if not bad.any():
        return frames
    if nonfinite == "error":
        raise ValueError(f"{where} holds {int(bad.sum())} NaN or infinite value(s) (COVAREP audio stores -inf for "
                         "silence); pass nonfinite='zero' to set them to 0 as MMSA's and MPLMM's loaders do.")
    logger.warning("%s: %d NaN or infinite value(s) set to 0 (nonfinite='zero').", where, int(bad.sum()))
    frames = frames.copy()
    frames[bad] = 0.0
    return frames


def sequence_column(sequences: Sequence[np.ndarray | None], width: int) -> pa.Array:
    """An arrow ``list<fixed_size_list<float32>[width]>`` column of ``[T_i, width]`` arrays (``None``: a null)."""
    lengths = np.array([0 if s is None else len(s) for s in sequences], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32 if lengths.sum() < 2**31 else np.int64)
    present = [s for s in sequences if s is not None]
    flat = (np.concatenate([s.reshape(-1) for s in present]) if present else np.zeros(0)).astype(np.float32)
    frames = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), width)
    mask = pa.array(np.array([s is None for s in sequences], dtype=bool))
    list_type = pa.list_ if offsets.dtype == np.int32 else pa.large_list
    return (pa.ListArray if list_type is pa.list_ else pa.LargeListArray).from_arrays(
        pa.array(offsets), frames, mask=mask)


def build_dataset(columns: dict[str, pa.Array], features: Features) -> Dataset:
    """A ``Dataset`` from arrow columns, cast to ``features``."""
    table = pa.table(columns).cast(features.arrow_schema)
    return Dataset(InMemoryTable(table), info=DatasetInfo(features=features))
