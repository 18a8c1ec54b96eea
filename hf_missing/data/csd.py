"""CMU-MultimodalSDK computational sequences (``.csd``, HDF5) for CMU-MOSI and CMU-MOSEI, and their alignment into a
``DatasetDict``.

The layout, as verified in CMU-MultiComp-Lab/CMU-MultimodalSDK ``mmsdk/mmdatasdk/computational_sequence/file_ops.py``
(``read_CSD`` / ``write_CSD``): one root group named after the sequence, holding ``data/<entry id>/features``
``[n, F]`` and ``data/<entry id>/intervals`` ``[n, 2]`` (start and end seconds of each row) and ``metadata/<key>``,
each a one-element string dataset holding JSON. Entry ids are video ids in the raw sequences and
``"<video id>[<segment index>]"`` after the SDK's ``mmdataset.align`` (``mmsdk/mmdatasdk/dataset/dataset.py``);
standard folds (``cmu_mosi_std_folds`` / ``cmu_mosei_std_folds``) list video ids, and a segment belongs to the fold
of ``segment_id.split("[")[0]``, as the SDK's ``get_tensors`` decides. No pickle is involved: h5py reads the arrays,
and every dataset's declared size is checked against ``max_bytes`` before it is read.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from datasets import Dataset, DatasetDict, Features, Value

from .sequences import build_dataset, check_frames, frame_feature, sequence_column

logger = logging.getLogger(__name__)
MAX_CSD_BYTES = 16 * 2**30  # the largest MOSEI sequence (FACET / COVAREP) is a few GB
EPSILON = 10e-6  # the SDK's interval tolerance (dataset.py ``epsilon``)
UNASSIGNED_POLICIES = ("error", "drop")


@dataclass
class ComputationalSequence:
    """One ``.csd`` file: ``entries[id] = (intervals [n, 2] float64, features [n, F] float32)``."""

    name: str
    path: str
    metadata: dict[str, Any] = field(default_factory=dict)
    entries: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def width(self) -> int:
        """F, the features' width (the same for every entry)."""
        return next(iter(self.entries.values()))[1].shape[1]


def load_csd(path: str | os.PathLike, *, max_bytes: int = MAX_CSD_BYTES,
             nonfinite: str = "error") -> ComputationalSequence:
    """Read a computational sequence with h5py: the entries' features (float32) and intervals, and the metadata.

    Args:
        path: a local ``.csd`` file.
        max_bytes: the most the file's arrays may declare in all (checked before reading).
        nonfinite: ``"error"`` refuses NaN / infinite features; ``"zero"`` sets them to 0 (COVAREP stores ``-inf``).
    """
    h5py = _h5py()
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a local .csd file.")
    try:
        handle = h5py.File(file, "r")
    except OSError as err:
        raise ValueError(f"{file} is not an HDF5 computational sequence ({err}).") from err
    with handle:
        name, root = _root(handle, file)
        shapes = _entry_shapes(root["data"], file, h5py)
        _check_budget(shapes, file, max_bytes)
        entries = {key: _read_entry(root["data"][key], f"{file}: data/{key}", nonfinite) for key in shapes}
        return ComputationalSequence(name, str(file), _metadata(root["metadata"], file), entries)


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as err:
        raise ImportError("Reading .csd files needs h5py: pip install 'hf-missing[sentiment]'.") from err
    return h5py


def _root(handle: Any, file: Path) -> tuple[str, Any]:
    """The name and group of the file's one root group."""
    roots = list(handle.keys())
    if len(roots) != 1:
        raise ValueError(f"{file} has root groups {roots}; a computational sequence has exactly one (its name).")
    root = handle[roots[0]]
    missing = [k for k in ("data", "metadata") if k not in root]
    if missing:
        raise ValueError(f"{file}: the root group {roots[0]!r} has no {missing}; a computational sequence holds "
                         "<root>/data/<id>/{features,intervals} and <root>/metadata.")
    return roots[0], root


def _entry_shapes(data: Any, file: Path, h5py: Any) -> dict[str, tuple[tuple, tuple, int]]:
    """Each entry's (features shape, intervals shape, bytes), checked without reading any array."""
    shapes, width = {}, None
    for key, entry in data.items():
        where = f"{file}: data/{key}"
        if not isinstance(entry, h5py.Group) or not {"features", "intervals"} <= set(entry):
            raise ValueError(f"{where} must be a group holding the datasets 'features' and 'intervals'.")
        features, intervals = entry["features"], entry["intervals"]
        for name, dataset in (("features", features), ("intervals", intervals)):
            if not isinstance(dataset, h5py.Dataset) or dataset.dtype.kind not in "fiu":
                raise ValueError(f"{where}/{name} must be a numeric dataset, got {getattr(dataset, 'dtype', dataset)}.")
        if features.ndim != 2 or intervals.shape != (features.shape[0], 2):
            raise ValueError(f"{where}: features {features.shape} and intervals {intervals.shape} must be [n, F] and "
                             "[n, 2] with one interval per feature row.")
        if width is not None and features.shape[1] != width:
            raise ValueError(f"{where}/features has {features.shape[1]} columns where earlier entries have {width}; "
                             "every entry of a sequence has the same width.")
        width = features.shape[1]
        size = features.size * features.dtype.itemsize + intervals.size * intervals.dtype.itemsize
        shapes[key] = (features.shape, intervals.shape, size)
    if not shapes:
        raise ValueError(f"{file} has no entries under data/.")
    return shapes


def _check_budget(shapes: dict[str, tuple[tuple, tuple, int]], file: Path, max_bytes: int) -> None:
    total = sum(size for _, _, size in shapes.values())
    if total > max_bytes:
        raise ValueError(f"{file} declares {total / 2**30:.1f} GiB of arrays, more than max_bytes="
                         f"{max_bytes / 2**30:.1f} GiB; raise max_bytes if you expect a sequence this large.")


def _read_entry(entry: Any, where: str, nonfinite: str) -> tuple[np.ndarray, np.ndarray]:
    intervals = np.asarray(entry["intervals"][()], dtype=np.float64)
    if not np.isfinite(intervals).all():
        raise ValueError(f"{where}/intervals holds NaN or infinite times.")
    return intervals, check_frames(np.asarray(entry["features"][()]), f"{where}/features", nonfinite)


def _metadata(group: Any, file: Path) -> dict[str, Any]:
    """Each metadata value, JSON-decoded where it is JSON (the SDK writes ``json.dumps``), else its text."""
    out = {}
    for key, dataset in group.items():
        try:
            raw = dataset[()]
            raw = raw[0] if getattr(raw, "shape", ()) else raw
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
        except (TypeError, ValueError, IndexError, AttributeError) as err:
            raise ValueError(f"{file}: metadata/{key} is not a string ({err}).") from err
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def align_csd(modalities: Mapping[str, str | os.PathLike | ComputationalSequence],
              labels: str | os.PathLike | ComputationalSequence, *, folds: Mapping[str, Sequence[str]] | None = None,
              label_index: int = 0, unassigned: str = "error", nonfinite: str = "error",
              max_bytes: int = MAX_CSD_BYTES) -> DatasetDict:
    """Join feature sequences to a labels sequence, one row per labelled segment, split by ``folds``.

    Each labels row is a segment: an entry ``"<video>[<i>]"`` (aligned files) is one segment; an entry keyed by video
    id holds one row per segment, which becomes ``"<video>[<row>]"`` (the SDK's numbering). A modality's frames for a
    segment are its entry of the same id, else the rows of its video's entry whose intervals overlap the segment's
    by more than the SDK's epsilon, in order of start time (the SDK's ``align`` to the labels, without collapsing
    functions); a segment with no frame of a modality holds ``None``
    there (natural missingness). Segments of zero duration, which the SDK's ``align`` skips, are skipped and counted
    in the log.

    Args:
        modalities: column name -> ``.csd`` path or :func:`load_csd` result (``{"text": glove, "audio": covarep,
            "vision": facet}``).
        labels: the labels sequence (``CMU_MOSI_Opinion_Labels``, ``CMU_MOSEI_Labels``).
        folds: split name -> video ids (the SDK's ``standard_train_fold`` / ``standard_valid_fold`` /
            ``standard_test_fold``; pass them, nothing is downloaded). Without folds, one split ``"all"``.
        label_index: the labels' column holding the sentiment (0 for MOSI and for MOSEI's sentiment).
        unassigned: segments whose video is in no fold: ``"error"``, or ``"drop"`` them (counted in the log; the SDK
            skips them too).
        nonfinite: for the modalities' features, as in :func:`load_csd`; NaN / infinite labels are always refused.
    """
    if unassigned not in UNASSIGNED_POLICIES:
        raise ValueError(f"unassigned must be one of {list(UNASSIGNED_POLICIES)}, got {unassigned!r}.")
    sequences = {name: _as_sequence(s, max_bytes, nonfinite) for name, s in modalities.items()}
    label_seq = _as_sequence(labels, max_bytes, "error")
    if not 0 <= label_index < label_seq.width:
        raise ValueError(f"label_index {label_index} is outside the {label_seq.width} label columns of "
                         f"{label_seq.path}.")
    segments = _segments(label_seq, label_index)
    rows = {name: [_frames(seq, seg_id, interval) for seg_id, interval, _ in segments]
            for name, seq in sequences.items()}
    _check_coverage(rows, sequences)
    split_of = _split_of(segments, folds, unassigned)
    return DatasetDict({split: _dataset([i for i, s in enumerate(split_of) if s == split], segments, rows, sequences)
                        for split in (folds or {"all": None})})


def _as_sequence(source: str | os.PathLike | ComputationalSequence, max_bytes: int,
                 nonfinite: str) -> ComputationalSequence:
    return source if isinstance(source, ComputationalSequence) else load_csd(source, max_bytes=max_bytes,
                                                                              nonfinite=nonfinite)


def _segments(labels: ComputationalSequence, index: int) -> list[tuple[str, np.ndarray, float]]:
    """(segment id, [start, end], label) of every labelled segment of non-zero duration."""
    out, skipped = [], 0
    for key, (intervals, features) in labels.entries.items():
        if "[" in key and len(features) != 1:
            raise ValueError(f"{labels.path}: the aligned segment {key} holds {len(features)} label rows; an aligned "
                             "labels entry holds one.")
        for row, (interval, values) in enumerate(zip(intervals, features, strict=True)):
            if abs(interval[1] - interval[0]) < EPSILON:
                skipped += 1
                continue
            out.append((key if "[" in key else f"{key}[{row}]", interval, float(values[index])))
    if skipped:
        logger.warning("%s: %d labelled segment(s) of zero duration skipped (as the SDK's align does).", labels.path,
                       skipped)
    return out


def _frames(seq: ComputationalSequence, segment: str, interval: np.ndarray) -> np.ndarray | None:
    if segment in seq.entries:
        return seq.entries[segment][1]
    video = seq.entries.get(segment.split("[")[0])
    if video is None:
        return None
    times, features = video
    overlap = np.minimum(times[:, 1], interval[1]) - np.maximum(times[:, 0], interval[0])
    rows = np.flatnonzero(overlap > EPSILON)  # the SDK's __intersect_and_copy: an intersection longer than epsilon
    return features[rows[np.argsort(times[rows, 0], kind="stable")]] if len(rows) else None


def _check_coverage(rows: dict[str, list[np.ndarray | None]], sequences: dict[str, ComputationalSequence]) -> None:
    for name, frames in rows.items():
        absent = sum(f is None for f in frames)
        if absent == len(frames):
            raise ValueError(f"{sequences[name].path} ({name}) has no frame for any labelled segment; its entry ids "
                             "match neither the labels' segments nor their videos. Is it the same dataset?")
        if absent:
            logger.warning("%s: %d of %d segment(s) have no %s frame; they hold None (naturally missing).",
                           sequences[name].path, absent, len(frames), name)


def _split_of(segments: list[tuple[str, np.ndarray, float]], folds: Mapping[str, Sequence[str]] | None,
              unassigned: str) -> list[str | None]:
    if folds is None:
        return ["all"] * len(segments)
    owner: dict[str, str] = {}
    for split, videos in folds.items():
        for video in videos:
            if owner.setdefault(video, split) != split:
                raise ValueError(f"Video {video!r} is in folds {owner[video]!r} and {split!r}; folds must not overlap.")
    split_of = [owner.get(seg_id.split("[")[0]) for seg_id, _, _ in segments]
    orphans = sorted({segments[i][0].split("[")[0] for i, s in enumerate(split_of) if s is None})
    if orphans and unassigned == "error":
        raise ValueError(f"{len(orphans)} labelled video(s) are in no fold ({orphans[:5]}...); pass folds that cover "
                         "them, or unassigned='drop' to leave them out (the SDK skips them).")
    if orphans:
        logger.warning("%d labelled video(s) in no fold dropped (unassigned='drop').", len(orphans))
    return split_of


def _dataset(indices: list[int], segments: list[tuple[str, np.ndarray, float]],
             rows: dict[str, list[np.ndarray | None]], sequences: dict[str, ComputationalSequence]) -> Dataset:
    columns = {name: sequence_column([frames[i] for i in indices], sequences[name].width)
               for name, frames in rows.items()}
    columns["label"] = pa.array(np.array([segments[i][2] for i in indices], dtype=np.float32))
    columns["id"] = pa.array([segments[i][0] for i in indices], type=pa.string())
    features = Features({**{name: frame_feature(seq.width) for name, seq in sequences.items()},
                         "label": Value("float32"), "id": Value("string")})
    return build_dataset(columns, features)
