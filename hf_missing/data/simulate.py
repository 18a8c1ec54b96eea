"""Missing-modality simulation as a ``datasets`` transform (METHODS_REFERENCE §2).

Protocols:

* ``"map"`` — the MAP family (MAP, MemPrompt, DCP, REP): one table per split, keyed by the split's
  name. ``int(N·rate)`` samples are incomplete; with ``pattern="both"`` a share ``both_ratio`` (0.5) of them
  miss the image, the rest the text (at 0.7: 35% no text, 35% no image, 30% complete). Unlike the released
  code, the table is keyed by seed and both_ratio, so a stale table can never be reused.
* ``"ragpt"`` — the RAGPT family: one global table over all splits of a ``DatasetDict`` together (so the
  training split is incomplete too), counted as RAGPT's ``generate_missing_table``: ``int(N·rate)`` incomplete
  (the float product truncated, so 100 at 0.29 gives 28), and ``floor(int(N·rate)·share)`` per pattern, i.e.
  ``int(N·rate) // 2`` missing the text and as many the image for "both" (the odd one stays complete).
* ``"redeem"`` — REDEEM §4.1: per split, ``rate`` is the share of incomplete samples, split evenly over
  the patterns (``rate/2`` text-only and ``rate/2`` image-only for "both"), each count rounded (half up).
  Where the rounded counts add up to more than ``ceil(N·rate)`` (5 samples at 1.0: 2.5 + 2.5 -> 3 + 3) or
  less than ``floor(N·rate)``, the counts nearest to a tie move by one, so they never exceed N and
  ``rate=1.0`` leaves no complete sample.
* ``"per_epoch"`` — MPLMM: the pattern is redrawn every epoch by ``MissingModalityCollator``; this
  transform only adds the ``sample_index`` column the redraw is keyed on and an all-complete ``missing_type``.

Natural missingness: values absent in the data itself (``None``, an image with no file or no pixels, blank text, an
empty feature sequence; :meth:`~hf_missing.data.modalities.ModalityInputs.is_absent`) set a sample's pattern before
anything is simulated. The simulated draw then only removes modalities from naturally complete samples, and a rate
counts both: where ``N·rate`` samples should be incomplete and ``k`` already are, ``N·rate - k`` more are drawn (none
if ``k`` is larger), spread over the patterns that still fall short of their share. The settings record the natural
and the simulated counts separately. A split in which every row lacks a modality, or a row that lacks every
modality, raises. Modalities whose column the dataset does not have are not inspected when none of them has one (an
index table), and raise otherwise.

Rates and shares are read as the fractions they stand for (``0.29`` is 29/100: 100 samples at 0.29 give
29 incomplete, not the 28 of float ``int(100 * 0.29)``), except the ``"ragpt"`` total, which is RAGPT's float
``int(N·rate)``. Every table is a function of ``(seed, protocol,
rate, shares, split sizes)`` alone, so the columns are identical for any ``num_proc`` and any processing
order. The settings are stored as JSON in the
dataset's ``info.description`` (read back with :func:`missing_settings`) so model cards can state them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict, Features, IterableDataset, IterableDatasetDict, Value

from ..missingness import DEFAULT_MODALITIES, MISSING_TYPE_COLUMN, ModalityPattern
from .modalities import ModalityInputs, absence_test

logger = logging.getLogger(__name__)
PROTOCOLS = ("map", "ragpt", "redeem", "per_epoch")
SETTINGS_KEY = "hf_missing.missing_settings"
SAMPLE_INDEX_COLUMN = "sample_index"
SCAN_BATCH = 1000  # rows read at a time when looking for naturally missing values

ONLY_PREFIX = "only_"  # pattern "only_<m>": the incomplete samples keep modality m alone


def pattern_shares(
    pattern: str | Mapping[str, float], modalities: tuple[str, ...], both_ratio: float = 0.5
) -> dict[str, float]:
    """Shares of the incomplete samples per missing pattern name.

    ``pattern`` is a modality name (``"text"``: every incomplete sample misses the text), ``"only_<m>"`` (every
    incomplete sample keeps modality m alone: REP Table 2's "text-only" / "image-only" / "audio-only" columns; for
    two modalities ``"only_text"`` is ``"image"``), ``"both"`` / ``"mixed"`` (all incomplete patterns; for two
    modalities ``both_ratio`` of them miss the image), or a mapping ``{pattern name: share}`` whose shares sum to 1.
    """
    patterns = ModalityPattern(tuple(modalities))
    incomplete = patterns.names[1:]
    if isinstance(pattern, Mapping):
        unknown = sorted(set(pattern) - set(incomplete))
        if unknown or not np.isclose(sum(pattern.values()), 1.0) or min(pattern.values()) < 0:
            raise ValueError(
                f"pattern shares must use names from {incomplete} and be >= 0 summing to 1; got {dict(pattern)}."
            )
        return {name: float(share) for name, share in pattern.items()}
    if pattern in modalities:
        return {f"missing_{pattern}": 1.0}
    kept = pattern.removeprefix(ONLY_PREFIX)
    if kept != pattern and kept in modalities:
        return {patterns.names[patterns.code(tuple(m for m in modalities if m != kept))]: 1.0}
    if pattern in ("both", "mixed"):
        if len(modalities) == 2:
            if not 0.0 <= both_ratio <= 1.0:
                raise ValueError(f"both_ratio must lie in [0, 1], got {both_ratio}.")
            return {incomplete[0]: 1.0 - both_ratio, incomplete[1]: both_ratio}
        return {name: 1.0 / len(incomplete) for name in incomplete}
    raise ValueError(
        f"Unknown pattern {pattern!r}: use a modality name from {list(modalities)} (that modality missing), "
        f"'{ONLY_PREFIX}<modality>' (that modality alone left), 'both' (alias 'mixed'), or a dict of shares over "
        f"{incomplete}."
    )


def pattern_counts(n: int, rate: float, shares: dict[str, float], protocol: str) -> dict[str, int]:
    """How many of ``n`` samples get each incomplete pattern under ``protocol``."""
    names = list(shares)
    incomplete = n * _fraction(rate)
    if protocol == "map":
        n_incomplete = math.floor(incomplete)
        counts = [math.floor(n_incomplete * _fraction(shares[name])) for name in names[1:]]
        return dict(zip(names, [n_incomplete - sum(counts), *counts], strict=True))
    if protocol == "ragpt":
        n_incomplete = int(n * rate)  # RAGPT's float product, truncated: int(len(df) * missing_rate)
        return {name: math.floor(n_incomplete * _fraction(shares[name])) for name in names}
    return _round_counts({name: incomplete * _fraction(shares[name]) for name in names})


def _fraction(value: float) -> Fraction:
    """``value`` as the simple fraction it stands for (0.29 -> 29/100, 0.3333333333333333 -> 1/3), so that
    counts like N·rate carry no binary floating-point error."""
    return Fraction(value).limit_denominator(1_000_000)


def _round_counts(exact: dict[str, Fraction]) -> dict[str, int]:
    """Each count rounded half up, then moved by one where needed (those closest to their rounding threshold
    first) so that the total lies between floor and ceil of the exact total."""
    counts = {name: math.floor(value + Fraction(1, 2)) for name, value in exact.items()}
    total = sum(exact.values())
    excess = sum(counts.values()) - math.ceil(total)
    shortfall = math.floor(total) - sum(counts.values())
    remainder = {name: value - math.floor(value) for name, value in exact.items()}
    rounded_up = sorted((n for n in exact if counts[n] > exact[n]), key=remainder.get)
    rounded_down = sorted((n for n in exact if counts[n] < exact[n]), key=remainder.get, reverse=True)
    for name in rounded_up[: max(excess, 0)]:
        counts[name] -= 1
    for name in rounded_down[: max(shortfall, 0)]:
        counts[name] += 1
    return counts


def missing_table(n: int, counts: dict[str, int], patterns: ModalityPattern, seed: int, key: int) -> np.ndarray:
    """Codes for ``n`` samples: a seeded permutation hands out each pattern's count, the rest complete."""
    rng = np.random.default_rng([seed, key])
    codes = np.zeros(n, dtype=np.int64)
    order = rng.permutation(n)
    start = 0
    for name, count in counts.items():
        codes[order[start : start + count]] = patterns.code(name)
        start += count
    return codes


def natural_table(split: Dataset, patterns: ModalityPattern, tests: Mapping[str, Callable[[Any], bool]],
                  columns: Mapping[str, str], name: str = "dataset") -> np.ndarray:
    """The pattern code of every row as the data has it: a modality whose value is absent (``tests[modality]``)
    is missing. Images are read undecoded. Raises on a row with no modality left and on a modality absent from
    every row of a non-empty split."""
    inspected = [m for m in patterns.modalities if columns[m] in split.column_names]
    if not inspected:
        return np.zeros(len(split), dtype=np.int64)
    if len(inspected) < len(patterns.modalities):
        absent = [columns[m] for m in patterns.modalities if m not in inspected]
        raise ValueError(f"Split {name!r} has no column {absent} for modalities "
                         f"{[m for m in patterns.modalities if m not in inspected]}, but has columns for {inspected}; "
                         f"its columns are {split.column_names}. Map each modality to its column with "
                         "columns={modality: column}.")
    raw = split.select_columns([columns[m] for m in inspected]).with_format("arrow")
    missing = np.zeros((len(split), len(patterns.modalities)), dtype=bool)
    for start, batch in zip(range(0, len(split), SCAN_BATCH), raw.iter(batch_size=SCAN_BATCH), strict=False):
        for k, modality in enumerate(patterns.modalities):
            values = batch.column(columns[modality]).to_pylist()
            missing[start:start + len(values), k] = [tests[modality](v) for v in values]
    _check_natural(missing, patterns, columns, name)
    lookup = {tuple(row): code for code, row in enumerate((~patterns.present_matrix()).tolist())}
    return np.array([lookup[tuple(row)] for row in missing.tolist()], dtype=np.int64)


def _check_natural(missing: np.ndarray, patterns: ModalityPattern, columns: Mapping[str, str], name: str) -> None:
    if len(missing) == 0:
        return
    for k, modality in enumerate(patterns.modalities):
        if missing[:, k].all():
            raise ValueError(f"Split {name!r}: every row's {columns[modality]!r} is None or empty, so the "
                             f"{modality} is missing from the whole split. Check the column mapping "
                             f"(columns={{{modality!r}: <column>}}, or --{modality}-column in the CLI), or use a "
                             f"backbone without the {modality} modality.")
    empty = np.flatnonzero(missing.all(axis=1))
    if len(empty):
        raise ValueError(f"Split {name!r}: rows {empty[:10].tolist()} ({len(empty)} in all) have no "
                         f"{list(patterns.modalities)} at all (every value None or empty), so no input is left. Drop "
                         "them, e.g. dataset.filter(lambda s: s['text'] or s['image']), or supply a modality.")


def allot(counts: Mapping[str, int], natural: Mapping[str, int]) -> dict[str, int]:
    """How many samples to draw per pattern from the naturally complete ones so that the natural and the
    simulated incomplete samples together reach ``sum(counts)`` (none when they already do): each pattern's
    shortfall ``counts - natural``, scaled down (largest remainder) when natural samples of another pattern
    already cover part of the total."""
    shortfall = {name: max(count - natural.get(name, 0), 0) for name, count in counts.items()}
    extra = max(sum(counts.values()) - sum(natural.values()), 0)
    total = sum(shortfall.values())
    if total <= extra:
        return shortfall
    exact = {name: Fraction(extra * value, total) for name, value in shortfall.items()}
    out = {name: math.floor(value) for name, value in exact.items()}
    order = sorted(exact, key=lambda n: exact[n] - out[n], reverse=True)
    for name in order[: extra - sum(out.values())]:
        out[name] += 1
    return out


def combined_table(natural: np.ndarray, counts: dict[str, int], patterns: ModalityPattern, seed: int,
                   key: int) -> np.ndarray:
    """Natural codes kept; the naturally complete samples get the draw of :func:`missing_table` for the counts
    :func:`allot` leaves. Without natural missingness this is ``missing_table(len(natural), counts, ...)``."""
    names = patterns.names
    found = np.bincount(natural, minlength=patterns.num_patterns)
    extra = allot(counts, {names[c]: int(found[c]) for c in range(1, patterns.num_patterns) if found[c]})
    complete = np.flatnonzero(natural == 0)
    codes = natural.copy()
    codes[complete] = missing_table(len(complete), extra, patterns, seed, key)
    return codes


def _validate(dataset: Any, rate: Any, protocol: str, seed: Any, column: str, overwrite: bool) -> tuple[float, int]:
    """Check the arguments; return ``rate`` as a float and ``seed`` as an int."""
    _check_dataset(dataset)
    rate = _real("rate", rate)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate is the share of samples with a missing modality and must lie in [0, 1]; got {rate}.")
    if protocol not in PROTOCOLS:
        raise ValueError(f"Unknown protocol {protocol!r}; choose one of {list(PROTOCOLS)}.")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise TypeError(f"seed must be a non-negative int, got {seed!r}; the table is a function of the seed (None, "
                        "fresh entropy, would make it irreproducible), so pass e.g. seed=0.")
    if column == SAMPLE_INDEX_COLUMN:
        raise ValueError(f"column={column!r} is taken: simulate_missing writes each sample's row index into "
                         f"{SAMPLE_INDEX_COLUMN!r}; pass another name, e.g. column={MISSING_TYPE_COLUMN!r}.")
    splits = dataset.values() if isinstance(dataset, DatasetDict) else [dataset]
    for split in splits:
        _check_columns(split, column, overwrite)
    return rate, int(seed)


def _check_dataset(dataset: Any) -> None:
    if isinstance(dataset, IterableDataset | IterableDatasetDict):
        raise TypeError(
            "simulate_missing needs a map-style Dataset or DatasetDict: the table is drawn over each split's size "
            "and written by row index, which a streamed IterableDataset does not have. Load the data without "
            "streaming=True, or materialise it with Dataset.from_generator(lambda: (yield from iterable), "
            "features=iterable.features)."
        )
    if not isinstance(dataset, Dataset | DatasetDict):
        raise TypeError(f"simulate_missing needs a datasets.Dataset or DatasetDict, got {type(dataset).__name__}; "
                        "build one with Dataset.from_dict / from_list / load_dataset.")


def _real(name: str, value: Any) -> float:
    """``value`` as a finite float. NumPy floats are read as the decimal they print as, so that
    ``np.float32(0.29)`` means 0.29 and not its binary value 0.28999999165...; bools and strings raise."""
    if isinstance(value, bool | np.bool_ | str) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__}); pass e.g. {name}=0.5.")
    value = float(str(value)) if isinstance(value, np.floating) else float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number in [0, 1], got {value}.")
    return value


def _check_columns(split: Dataset, column: str, overwrite: bool) -> None:
    """Refuse to replace existing columns unless ``overwrite``; a ``sample_index`` column that already holds
    the row indices (as simulate_missing wrote it) is kept, since rewriting it changes nothing."""
    if overwrite:
        return
    if column in split.column_names:
        raise ValueError(
            f"The dataset already has a {column!r} column; pass overwrite=True to replace it, or "
            "column=<other name> to keep both."
        )
    if SAMPLE_INDEX_COLUMN in split.column_names and not _is_row_index(split):
        raise ValueError(
            f"The dataset already has a {SAMPLE_INDEX_COLUMN!r} column that is not the row index 0..{len(split) - 1}; "
            f"simulate_missing writes each sample's row index into {SAMPLE_INDEX_COLUMN!r} (per-epoch redraws are "
            f"keyed on it), which would replace those values. Keep them under another name with "
            f"dataset.rename_column({SAMPLE_INDEX_COLUMN!r}, 'original_index'), drop them with "
            f"remove_columns({SAMPLE_INDEX_COLUMN!r}), or pass overwrite=True."
        )


def _is_row_index(split: Dataset) -> bool:
    values = split.select_columns([SAMPLE_INDEX_COLUMN]).with_format("numpy")[SAMPLE_INDEX_COLUMN]
    return np.array_equal(np.asarray(values), np.arange(len(split)))


def _assign(split: Dataset, codes: np.ndarray, column: str, patterns: ModalityPattern, fingerprint: str,
            num_proc: int | None) -> Dataset:
    """Write the table into ``split``; the batch is lazy, so images are never decoded here."""
    split = split.remove_columns([c for c in (column, SAMPLE_INDEX_COLUMN) if c in split.column_names])
    if len(split) == 0:  # map() adds no columns to an empty split
        features = Features({**split.features, column: patterns.feature(), SAMPLE_INDEX_COLUMN: Value("int64")})
        info = split.info.copy()
        info.features = features
        return Dataset.from_dict({name: [] for name in features}, features=features, info=info)

    def add_codes(_batch: Mapping[str, list], indices: list[int]) -> dict[str, list]:
        return {column: codes[indices].tolist(), SAMPLE_INDEX_COLUMN: list(indices)}

    split = split.map(add_codes, with_indices=True, batched=True, num_proc=num_proc,
                      new_fingerprint=fingerprint, desc="simulate_missing")
    return split.cast_column(column, patterns.feature())


def simulate_missing(
    dataset: Dataset | DatasetDict,
    rate: float,
    pattern: str | Mapping[str, float] = "both",
    protocol: str = "map",
    seed: int = 0,
    *,
    modalities: Sequence[str | ModalityInputs] = DEFAULT_MODALITIES,
    columns: Mapping[str, str] | None = None,
    both_ratio: float = 0.5,
    column: str = MISSING_TYPE_COLUMN,
    num_proc: int | None = None,
    overwrite: bool = False,
    return_settings: bool = False,
    split: str | None = None,
) -> Dataset | DatasetDict | tuple[Dataset | DatasetDict, dict[str, Any]]:
    """Add a ``missing_type`` ClassLabel column that says which modalities each sample lacks: those absent in the
    data (natural missingness, see the module docstring), plus those the protocol removes at ``rate``.

    Also writes each sample's row index into a ``sample_index`` column (per-epoch redraws are keyed on it).

    Args:
        dataset: a map-style ``Dataset`` or ``DatasetDict`` (each split gets its own table except under
            "ragpt"); an ``IterableDataset`` raises, since the table needs each split's size.
        rate: share of samples with at least one modality missing, in [0, 1]: a finite int or float. NumPy
            floats are read as the decimal they print as (``np.float32(0.29)`` is 0.29); bools and strings raise.
        pattern: a modality name, ``"both"``, or ``{pattern name: share}`` (see :func:`pattern_shares`).
        modalities: the modalities in code order: names, or declarations (``model.interface.inputs``) whose
            ``is_absent`` recognises a naturally missing value.
        columns: the dataset column of each modality (default: its name).
        protocol: ``"map"``, ``"ragpt"``, ``"redeem"`` or ``"per_epoch"`` (module docstring).
        seed: a non-negative int (None raises: the table is a function of the seed, never of processing
            order or ``num_proc``).
        column: name of the codes column; ``"sample_index"`` is taken.
        overwrite: replace existing ``column`` and ``sample_index`` columns (e.g. to re-simulate a dataset at
            another rate). Without it an existing ``column`` raises, and so does an existing ``sample_index``
            unless it already holds the row indices 0..N-1 (as simulate_missing wrote it).
        return_settings: also return the recorded settings dict.
        split: the split name a lone ``Dataset``'s table is keyed by (default: its ``dataset.split``, else
            ``"dataset"``). Each split's table is keyed by its name, never by its position, so
            ``simulate_missing(ds["test"], split="test")`` equals ``simulate_missing(ds)["test"]``, and adding a
            validation split leaves the test table unchanged (except under "ragpt", whose one table spans all
            splits in order).
    """
    rate, seed = _validate(dataset, rate, protocol, seed, column, overwrite)
    both_ratio = _real("both_ratio", both_ratio)
    names = tuple(m.name if isinstance(m, ModalityInputs) else m for m in modalities)
    patterns = ModalityPattern(names)
    shares = pattern_shares(pattern, patterns.modalities, both_ratio)
    splits = dict(dataset) if isinstance(dataset, DatasetDict) else {split or str(dataset.split or "dataset"): dataset}
    tests = {name: absence_test(m) for name, m in zip(names, modalities, strict=True)}
    columns = {m: (columns or {}).get(m, m) for m in names}
    natural = {name: natural_table(s, patterns, tests, columns, name) for name, s in splits.items()}
    tables = _tables(natural, rate, shares, protocol, patterns, seed)
    settings = {
        "protocol": protocol, "rate": rate, "pattern": pattern if isinstance(pattern, str) else dict(pattern),
        "shares": shares, "both_ratio": both_ratio, "seed": seed, "modalities": list(patterns.modalities),
        "column": column, "pattern_names": patterns.names,
        "counts": _counts(tables, patterns), "natural_counts": _counts(natural, patterns),
        "simulated_counts": {name: (np.bincount(tables[name], minlength=patterns.num_patterns)
                                    - np.bincount(natural[name], minlength=patterns.num_patterns)).tolist()
                             for name in tables},
    }
    _warn_if_over(settings, rate)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    out = {}
    for name, split in splits.items():
        fingerprint = _fingerprint(split, digest, name, tables[name])
        out[name] = _assign(split, tables[name], column, patterns, fingerprint, num_proc)
        out[name].info.description = json.dumps({SETTINGS_KEY: settings})
    result = DatasetDict(out) if isinstance(dataset, DatasetDict) else next(iter(out.values()))
    return (result, settings) if return_settings else result


def _counts(tables: Mapping[str, np.ndarray], patterns: ModalityPattern) -> dict[str, list[int]]:
    return {name: np.bincount(t, minlength=patterns.num_patterns).tolist() for name, t in tables.items()}


def _warn_if_over(settings: dict[str, Any], rate: float) -> None:
    """Natural missingness above the requested rate cannot be undone: say so rather than pretend."""
    for name, counts in settings["natural_counts"].items():
        n = sum(counts)
        if n and (n - counts[0]) / n > rate and settings["protocol"] != "per_epoch":
            logger.warning("Split %r: %d of %d samples already miss a modality in the data, more than rate=%s; "
                           "none is simulated and the split's missing rate is %.3f.", name, n - counts[0], n, rate,
                           (n - counts[0]) / n)


def _fingerprint(split: Dataset, digest: str, name: str, codes: np.ndarray) -> str:
    """The cache fingerprint of a split's ``map()``: its own fingerprint, the settings digest, its name and a hash of
    its codes. The codes are in it because the settings do not fix the table: a pattern dict's order decides which
    samples get which pattern, and ``columns=`` or an absence test which gaps are natural; a dataset loaded from disk
    would otherwise serve another table cached under the same settings."""
    table = hashlib.sha256(np.ascontiguousarray(codes, dtype=np.int64).tobytes()).hexdigest()
    return hashlib.sha256(f"{split._fingerprint}-{digest}-{name}-{table}".encode()).hexdigest()[:32]


def _tables(natural: dict[str, np.ndarray], rate: float, shares: dict[str, float], protocol: str,
            patterns: ModalityPattern, seed: int) -> dict[str, np.ndarray]:
    """Each split's codes: its natural codes, plus the protocol's draw among its naturally complete samples."""
    if protocol == "per_epoch":
        return dict(natural)
    if protocol == "ragpt":
        whole = np.concatenate([*natural.values(), np.zeros(0, dtype=np.int64)])
        table = combined_table(whole, pattern_counts(len(whole), rate, shares, protocol), patterns, seed, key=0)
        bounds = np.cumsum([0, *(len(t) for t in natural.values())])
        return {name: table[bounds[i] : bounds[i + 1]] for i, name in enumerate(natural)}
    return {name: combined_table(codes, pattern_counts(len(codes), rate, shares, protocol), patterns, seed,
                                 key=split_key(name))
            for name, codes in natural.items()}


def split_key(name: str) -> int:
    """The random-stream key of a split's table: a hash of the split's name, so a split's table does not depend on
    which other splits were simulated with it (nor on their order)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


def missing_settings(dataset: Dataset) -> dict[str, Any]:
    """The settings :func:`simulate_missing` recorded on ``dataset`` (raises if it was never applied)."""
    try:
        return json.loads(dataset.info.description or "")[SETTINGS_KEY]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(
            "This dataset carries no missing-modality settings; run hf_missing.simulate_missing first."
        ) from err
