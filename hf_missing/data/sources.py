"""Any dataset as a ``DatasetDict`` ready for :func:`hf_missing.simulate_missing`: the loader behind
``hf-missing train --data`` and ``hf-missing evaluate --data``.

:func:`load_data` reads, through ``datasets``' own loaders:

- a ``save_to_disk`` folder (``load_from_disk``: Arrow files and JSON, no pickle);
- a folder of ``.csv`` or ``.jsonl`` / ``.json`` files, one split per file named after it (``dev`` becomes
  ``validation``), or one such file (its ``train`` split); the image column holds file paths, relative to the
  file's folder, and an empty or null path means the sample has no image;
- any other folder as an ``imagefolder`` (class subfolders give the labels; a ``metadata.jsonl`` / ``.csv`` beside
  the images can add a text column);
- else a Hub dataset id (``load_dataset(id)``; needs the network or a populated ``datasets`` cache).

Columns are then renamed to the modality names (``text``, ``image``, ...) and ``label``; string labels become a
``ClassLabel`` over every split's labels, sorted; a split without labels, a missing image file or a missing column
is an error, never a silent drop. A dataset without a ``test`` split gets one carved from ``train`` only when
``test_size`` is given. :func:`write_table_folder` writes the layout :func:`load_data` reads (the README's worked
example starts from it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from datasets import ClassLabel, Dataset, DatasetDict, Image, Value, load_dataset, load_from_disk

from ..missingness import DEFAULT_MODALITIES

TABLE_SUFFIXES = {".csv": "csv", ".jsonl": "json", ".json": "json"}
SPLIT_RENAMES = {"dev": "validation", "valid": "validation", "val": "validation"}
LABEL = "label"
FILES_SHOWN = 5


def load_data(source: str | os.PathLike, *, columns: Mapping[str, str] | None = None, label_column: str = LABEL,
              modalities: Sequence[str] = DEFAULT_MODALITIES, test_size: float | int | None = None,
              seed: int = 0) -> DatasetDict:
    """Read ``source`` (see the module docstring) into a ``DatasetDict`` with the columns ``modalities`` +
    ``label``.

    Args:
        source: a folder, a ``.csv`` / ``.jsonl`` file or a Hub dataset id.
        columns: the source's column of each modality, e.g. ``{"text": "caption", "image": "file"}`` (default:
            the modality's name).
        label_column: the source's label column.
        modalities: the modalities to read (the model's: ``model.interface.modalities``).
        test_size: carve a stratified ``test`` split of this fraction or count from ``train`` when the source has
            no test split (without it, a missing test split raises).
        seed: seed of that carve-out.
    """
    data, folders = _read(source)
    data = DatasetDict({SPLIT_RENAMES.get(name, name): split for name, split in data.items()})
    folders = {SPLIT_RENAMES.get(name, name): folder for name, folder in folders.items()}
    mapping = {**{m: (columns or {}).get(m, m) for m in modalities}, LABEL: label_column}
    data = _rename(data, mapping, source)
    if "image" in modalities:
        data = DatasetDict({name: _images(split, folders.get(name), name) for name, split in data.items()})
    data = _labels(data, source)
    return _with_test_split(data, test_size, seed, source)


def _read(source: str | os.PathLike) -> tuple[DatasetDict, dict[str, Path]]:
    """The raw splits and, for table files, the folder each split's relative image paths start from."""
    path = Path(source)
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return _as_dict(load_from_disk(str(path))), {}
        tables = sorted(p for p in path.iterdir() if p.suffix in TABLE_SUFFIXES and p.is_file())
        if tables:
            return _read_tables(tables)
        return _as_dict(load_dataset("imagefolder", data_dir=str(path))), {}
    if path.is_file():
        if path.suffix not in TABLE_SUFFIXES:
            raise ValueError(f"{path}: a data file must be one of {sorted(TABLE_SUFFIXES)}; pass a folder for a "
                             "save_to_disk dataset or an imagefolder.")
        return _read_tables([path], single=True)
    if str(source).count("/") > 1 or str(source).startswith((".", "/", "~")):
        raise FileNotFoundError(f"{source} does not exist. --data takes a save_to_disk folder, a folder of images or "
                                "of .csv/.jsonl files, one such file, or a Hub dataset id (org/name).")
    return _as_dict(load_dataset(str(source))), {}


def _read_tables(tables: list[Path], single: bool = False) -> tuple[DatasetDict, dict[str, Path]]:
    kinds = {TABLE_SUFFIXES[p.suffix] for p in tables}
    if len(kinds) > 1:
        raise ValueError(f"{tables[0].parent} mixes CSV and JSON Lines files {[p.name for p in tables]}; keep one "
                         "format, one file per split (train, validation, test).")
    names = {"train": tables[0]} if single else {p.stem: p for p in tables}
    data = load_dataset(kinds.pop(), data_files={name: str(p) for name, p in names.items()})
    return _as_dict(data), {name: p.parent for name, p in names.items()}


def _as_dict(data: Dataset | DatasetDict) -> DatasetDict:
    return data if isinstance(data, DatasetDict) else DatasetDict({"train": data})


def _rename(data: DatasetDict, mapping: dict[str, str], source: Any) -> DatasetDict:
    """Each split's mapped columns renamed to the modality names and ``label``."""
    out = {}
    for name, split in data.items():
        absent = {target: column for target, column in mapping.items() if column not in split.column_names}
        if absent:
            raise ValueError(f"{source}, split {name!r}: no column {sorted(absent.values())} (for "
                             f"{sorted(absent)}); its columns are {split.column_names}. Map them with "
                             "--text-column / --image-column / --label-column (columns= in load_data).")
        moves = {column: target for target, column in mapping.items() if column != target}
        taken = sorted(t for c, t in moves.items() if t in split.column_names and t not in moves)
        if taken:
            raise ValueError(f"{source}, split {name!r}: column(s) {taken} exist but other columns are mapped to "
                             f"them ({moves}); rename or drop the existing ones first.")
        out[name] = split.rename_columns(moves) if moves else split
    return DatasetDict(out)


def _images(split: Dataset, folder: Path | None, name: str) -> Dataset:
    """Image paths (relative to the data file's folder) checked and cast to ``Image(mode="RGB")``; an empty or
    null path stays None, a path to a missing file raises."""
    feature = split.features["image"]
    if isinstance(feature, Image):
        return split.cast_column("image", Image(mode="RGB")) if feature.mode != "RGB" else split
    if feature != Value("string") and feature != Value("large_string"):
        raise ValueError(f"Split {name!r}: the image column is {feature}; it must hold images or file paths.")
    base = folder or Path(".")

    def resolve(batch: dict[str, list]) -> dict[str, list]:
        return {"image": [str(base / p.strip()) if p and p.strip() else None for p in batch["image"]]}

    split = split.map(resolve, batched=True, desc="resolve image paths")
    missing = [p for p in split["image"] if p is not None and not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"Split {name!r}: {len(missing)} image file(s) do not exist, e.g. "
                                f"{missing[:FILES_SHOWN]}; paths are relative to the data file's folder {base}. "
                                "Restore them, or leave the path empty for a sample that has no image.")
    return split.cast_column("image", Image(mode="RGB"))


def _labels(data: DatasetDict, source: Any) -> DatasetDict:
    """String or integer labels as one ``ClassLabel`` shared by every split; multi-hot lists kept as they are."""
    for name, split in data.items():
        unlabelled = [i for i, v in enumerate(split[LABEL]) if v is None]
        if unlabelled:
            raise ValueError(f"{source}, split {name!r}: rows {unlabelled[:10]} ({len(unlabelled)} in all) have no "
                             "label; label them or remove them (unlabelled rows cannot be trained or evaluated).")
    feature = next(iter(data.values())).features[LABEL]
    if isinstance(feature, ClassLabel) or not isinstance(feature, Value):
        return data
    values = sorted({v for split in data.values() for v in split[LABEL]})
    if feature.dtype.startswith("int") and values and values[0] < 0:
        raise ValueError(f"{source}: integer labels must be class indices >= 0; found {values[0]}.")
    names = [str(i) for i in range(values[-1] + 1)] if feature.dtype.startswith("int") else [str(v) for v in values]
    return data.cast_column(LABEL, ClassLabel(names=names))


def _with_test_split(data: DatasetDict, test_size: float | int | None, seed: int, source: Any) -> DatasetDict:
    if "train" not in data:
        raise ValueError(f"{source} has splits {sorted(data)} but no 'train' split; name the training file "
                         "train.csv / train.jsonl (or the split 'train').")
    if "test" in data:
        return data
    if test_size is None:
        raise ValueError(f"{source} has no 'test' split (splits {sorted(data)}); add one, or pass --test-size "
                         "(test_size=) to carve a stratified one from 'train'.")
    stratify = LABEL if isinstance(data["train"].features[LABEL], ClassLabel) else None
    carved = data["train"].train_test_split(test_size=test_size, seed=seed, stratify_by_column=stratify)
    return DatasetDict({**data, "train": carved["train"], "test": carved["test"]})


def write_table_folder(data: DatasetDict, folder: str | os.PathLike) -> Path:
    """Write ``data`` (``text``, ``image``, ``label`` columns) as ``<split>.jsonl`` files plus
    ``images/<split>/<row>.png``, the layout :func:`load_data` reads: an absent image is an empty path, an absent
    text an empty string, class labels their names. Returns the folder."""
    folder = Path(folder)
    for name, split in data.items():
        (folder / "images" / name).mkdir(parents=True, exist_ok=True)
        label = split.features[LABEL]
        with (folder / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            for i, row in enumerate(split):
                path = ""
                if row["image"] is not None:
                    path = f"images/{name}/{i}.png"
                    row["image"].save(folder / path)
                value = label.int2str(row[LABEL]) if isinstance(label, ClassLabel) else row[LABEL]
                f.write(json.dumps({"text": row["text"] or "", "image": path, LABEL: value}) + "\n")
    return folder
