"""MM-IMDb, UPMC Food-101 and Hateful Memes from local folders in their published layouts.

Each loader returns a ``DatasetDict`` with the columns ``id``, ``image`` (``datasets.Image(mode="RGB")``,
stored as a file path and decoded only when a sample is read), ``text`` and ``label``, ready for
:func:`hf_missing.simulate_missing` and :class:`hf_missing.MissingModalityCollator`. Split files named
``dev`` become the ``validation`` split; every other split keeps its file's name.

The task and the metric each paper reports live in :data:`DATASET_SPECS` (names that
:func:`hf_missing.metrics.for_task` and its metric keys use): MM-IMDb multi-label / ``f1_macro``,
Food-101 single-label / ``accuracy``, Hateful Memes binary / ``auroc`` (METHODS_REFERENCE §3).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, List, Value

logger = logging.getLogger(__name__)

MMIMDB_GENRES: tuple[str, ...] = (
    "Drama", "Comedy", "Romance", "Thriller", "Crime", "Action", "Adventure", "Horror", "Documentary", "Mystery",
    "Sci-Fi", "Fantasy", "Family", "Biography", "War", "History", "Music", "Animation", "Musical", "Western",
    "Sport", "Short", "Film-Noir",
)
HATEFUL_MEMES_LABELS: tuple[str, ...] = ("not_hateful", "hateful")
UNLABELED = -1
MMIMDB_PLOTS = ("first", "outline", "all")
UNLABELED_POLICIES = ("drop", "keep", "error")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLIT_RENAMES = {"dev": "validation"}

MMIMDB_LAYOUT = """\
root/
  split.json                  {"train": [ids], "dev": [ids], "test": [ids]}
  dataset/<id>.json           {"plot": [...], "genres": [...], ...}   (the original archive)
  dataset/<id>.jpeg
or MAP's reorganised copy: root/images/<id>.jpeg + root/labels/<id>.json + root/split.json"""
FOOD101_LAYOUT = """\
root/
  texts/train_titles.csv      rows: image file name, text, class name (a header row is optional)
  texts/test_titles.csv
  images/train/<class name>/<image file name>
  images/test/<class name>/<image file name>
  class_idx.json              optional: {class name: index} fixes the label order (MAP's file)"""
HATEFUL_MEMES_LAYOUT = """\
root/                         (or root/data/)
  train.jsonl                 one JSON object per line: {"id", "img", "label", "text"}
  dev.jsonl                   and/or dev_seen.jsonl, dev_unseen.jsonl
  test.jsonl                  and/or test_seen.jsonl, test_unseen.jsonl ("label" may be absent)
  img/<id>.png                "img" is relative to the folder holding the .jsonl files"""


@dataclass(frozen=True)
class DatasetSpec:
    """What a paper reports on a dataset: the ``metrics.for_task`` task and the selection metric."""

    name: str
    task: str
    metric: str
    num_labels: int
    loader: Callable[..., DatasetDict]


def _layout_error(dataset: str, root: Path, problem: str, layout: str) -> FileNotFoundError:
    return FileNotFoundError(f"{root} is not a {dataset} folder: {problem}. Expected layout:\n{layout}")


def _split_name(name: str) -> str:
    return SPLIT_RENAMES.get(name, name)


def _check_images(rows: list[dict[str, Any]], dataset: str, split: str, skip_missing_images: bool) -> list[dict]:
    """Rows whose image file exists; missing files are an error unless ``skip_missing_images``."""
    missing = [row["image"] for row in rows if not Path(row["image"]).is_file()]
    if missing and not skip_missing_images:
        raise FileNotFoundError(
            f"{dataset} {split}: {len(missing)} image file(s) are missing, e.g. {missing[:3]}; restore them or pass "
            "skip_missing_images=True to drop those samples."
        )
    if missing:
        logger.warning("%s %s: dropped %d samples whose image file is missing.", dataset, split, len(missing))
        absent = set(missing)
        rows = [row for row in rows if row["image"] not in absent]
    return rows


def _to_dataset(rows: list[dict[str, Any]], label_feature: Any, extra: dict[str, Any] | None = None) -> Dataset:
    features = Features({"id": Value("string"), "image": Image(mode="RGB"), "text": Value("string"),
                         "label": label_feature, **(extra or {})})
    columns = {name: [row[name] for row in rows] for name in features}
    return Dataset.from_dict(columns, features=features)


# ---- MM-IMDb ------------------------------------------------------------------------------------
def load_mmimdb(root: str | Path, plots: str = "first", skip_missing_images: bool = False) -> DatasetDict:
    """MM-IMDb (23 genres, multi-label) from the original archive or MAP's reorganised copy.

    Args:
        root: folder holding ``split.json`` (see ``MMIMDB_LAYOUT``).
        plots: ``"first"`` (the first plot), ``"outline"`` (RAGPT: ``plot outline``, else the first plot)
            or ``"all"`` (one row per plot, as MAP's index mapper; the ``id`` repeats, and
            ``simulate_missing`` then draws per row where MAP draws per image).
        skip_missing_images: drop samples whose image file is absent instead of raising.

    Returns:
        splits ``train`` / ``validation`` / ``test`` with ``label`` a multi-hot float list over
        :data:`MMIMDB_GENRES` (genres outside the 23 are ignored, as in MAP) and ``genres`` the names.
    """
    if plots not in MMIMDB_PLOTS:
        raise ValueError(f"plots must be one of {list(MMIMDB_PLOTS)}, got {plots!r}.")
    root = Path(root)
    image_dir, label_dir = _mmimdb_dirs(root)
    splits = _read_json(root / "split.json", "MM-IMDb", MMIMDB_LAYOUT)
    label_feature = List(Value("float32"), length=len(MMIMDB_GENRES))
    extra = {"genres": List(ClassLabel(names=list(MMIMDB_GENRES)))}
    out = {}
    for split, ids in splits.items():
        rows = [row for item in ids for row in _mmimdb_rows(str(item), image_dir, label_dir, plots)]
        rows = _check_images(rows, "MM-IMDb", split, skip_missing_images)
        out[_split_name(split)] = _to_dataset(rows, label_feature, extra)
    return DatasetDict(out)


def _mmimdb_dirs(root: Path) -> tuple[Path, Path]:
    if not (root / "split.json").is_file():
        raise _layout_error("MM-IMDb", root, "split.json is missing", MMIMDB_LAYOUT)
    if (root / "dataset").is_dir():
        return root / "dataset", root / "dataset"
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return root / "images", root / "labels"
    raise _layout_error("MM-IMDb", root, "neither dataset/ nor images/ + labels/ exists", MMIMDB_LAYOUT)


def _read_json(path: Path, dataset: str, layout: str) -> Any:
    if not path.is_file():
        raise _layout_error(dataset, path.parent, f"{path.name} is missing", layout)
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def _mmimdb_rows(item: str, image_dir: Path, label_dir: Path, plots: str) -> list[dict[str, Any]]:
    meta = _read_json(label_dir / f"{item}.json", "MM-IMDb", MMIMDB_LAYOUT)
    all_plots = meta.get("plot") or []
    if not all_plots:
        raise ValueError(f"MM-IMDb item {item}: {label_dir / (item + '.json')} has no 'plot'; every item needs text.")
    texts = {"first": all_plots[:1], "outline": [meta.get("plot outline") or all_plots[0]], "all": all_plots}[plots]
    genres = [g for g in MMIMDB_GENRES if g in meta.get("genres", [])]
    label = [1.0 if g in genres else 0.0 for g in MMIMDB_GENRES]
    image = str(image_dir / f"{item}.jpeg")
    return [{"id": item, "image": image, "text": text, "label": label, "genres": genres} for text in texts]


# ---- UPMC Food-101 ------------------------------------------------------------------------------
def load_food101(root: str | Path, validation_size: float | int | None = None, seed: int = 0,
                 skip_missing_images: bool = False) -> DatasetDict:
    """UPMC Food-101 (single-label) from the Kaggle/MAP layout: ``texts/{train,test}_titles.csv`` + images.

    Args:
        root: see ``FOOD101_LAYOUT``.
        validation_size: UPMC Food-101 has no validation split. Pass a fraction or a count to carve a
            stratified ``validation`` split from ``train`` (MAP held out 6,846 training samples) rather
            than selecting checkpoints on ``test`` as RAGPT does.
        seed: seed of that carve-out.
        skip_missing_images: drop rows whose image file is absent instead of raising.

    Returns:
        ``train`` / ``test`` (and ``validation``) with ``label`` a ClassLabel over the class names, in
        ``class_idx.json`` order when that file exists, else sorted (``images/train/`` folder names).
    """
    root = Path(root)
    names = _food101_classes(root)
    label_feature = ClassLabel(names=names)
    out = {}
    for split in ("train", "test"):
        rows = _food101_rows(root, split, set(names))
        out[split] = _to_dataset(_check_images(rows, "Food-101", split, skip_missing_images), label_feature)
    if validation_size is not None:
        carved = out["train"].train_test_split(test_size=validation_size, seed=seed, stratify_by_column="label")
        out = {"train": carved["train"], "validation": carved["test"], "test": out["test"]}
    return DatasetDict(out)


def _food101_classes(root: Path) -> list[str]:
    for part in ("texts/train_titles.csv", "texts/test_titles.csv", "images/train", "images/test"):
        if not (root / part).exists():
            raise _layout_error("UPMC Food-101", root, f"{part} is missing", FOOD101_LAYOUT)
    if (root / "class_idx.json").is_file():
        order = _read_json(root / "class_idx.json", "UPMC Food-101", FOOD101_LAYOUT)
        return sorted(order, key=order.get)
    return sorted(p.name for p in (root / "images" / "train").iterdir() if p.is_dir())


def _food101_rows(root: Path, split: str, names: set[str]) -> list[dict[str, Any]]:
    path = root / "texts" / f"{split}_titles.csv"
    with path.open(encoding="utf-8", newline="") as f:
        records = [r for r in csv.reader(f) if r]
    if records and not records[0][0].lower().endswith(IMAGE_SUFFIXES):
        records = records[1:]  # header row
    rows = []
    for line, record in enumerate(records, start=1):
        if len(record) != 3:
            raise ValueError(f"{path} row {line}: expected 3 fields (image file, text, class name), got {record!r}.")
        file, text, label = record
        if label not in names:
            raise ValueError(f"{path} row {line}: class {label!r} is not in images/train/ or class_idx.json.")
        image = str(root / "images" / split / label / file)
        rows.append({"id": Path(file).stem, "image": image, "text": text, "label": label})
    return rows


# ---- Hateful Memes ------------------------------------------------------------------------------
def load_hateful_memes(root: str | Path, unlabeled: str = "drop", skip_missing_images: bool = False) -> DatasetDict:
    """Hateful Memes (binary) from its ``*.jsonl`` files and ``img/`` folder; one split per ``.jsonl``.

    The test files of the public releases carry no labels (MAP issues #6, #9, #10; MAP evaluates on
    ``test_seen``, which does). ``unlabeled`` says what happens to a split without labels:
    ``"drop"`` (default) leaves it out and logs a warning, ``"keep"`` keeps it with label -1
    (the ``datasets`` convention for an unknown label; usable for prediction only), ``"error"`` raises.
    A split where only some lines have a label is always an error.

    Returns:
        splits named after the files (``dev`` becomes ``validation``), ``label`` a ClassLabel over
        :data:`HATEFUL_MEMES_LABELS` (0 not hateful, 1 hateful).
    """
    if unlabeled not in UNLABELED_POLICIES:
        raise ValueError(f"unlabeled must be one of {list(UNLABELED_POLICIES)}, got {unlabeled!r}.")
    folder = _hateful_memes_folder(Path(root))
    label_feature = ClassLabel(names=list(HATEFUL_MEMES_LABELS))
    out = {}
    for path in sorted(folder.glob("*.jsonl")):
        records = _read_jsonl(path)
        has_label = _labelled(records, path)
        if not has_label and unlabeled != "keep":
            if unlabeled == "error":
                raise ValueError(f"{path} has no labels; pass unlabeled='drop' or 'keep', or use test_seen.jsonl.")
            logger.warning("Hateful Memes: %s has no labels and is left out (unlabeled='keep' keeps it "
                           "with label -1).", path.name)
            continue
        rows = [{"id": str(r["id"]), "image": str(folder / r["img"]), "text": r["text"],
                 "label": int(r["label"]) if has_label else UNLABELED} for r in records]
        out[_split_name(path.stem)] = _to_dataset(_check_images(rows, "Hateful Memes", path.stem,
                                                                skip_missing_images), label_feature)
    return DatasetDict(out)


def _hateful_memes_folder(root: Path) -> Path:
    for folder in (root, root / "data"):
        if any(folder.glob("*.jsonl")):
            if not (folder / "img").is_dir():
                raise _layout_error("Hateful Memes", folder, "img/ is missing", HATEFUL_MEMES_LAYOUT)
            return folder
    raise _layout_error("Hateful Memes", root, "no .jsonl split files in it or in data/", HATEFUL_MEMES_LAYOUT)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    with path.open(encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            if text.strip():
                record = json.loads(text)
                missing = {"id", "img", "text"} - set(record)
                if missing:
                    raise ValueError(f"{path} line {line}: missing field(s) {sorted(missing)}; every line needs "
                                     "'id', 'img' and 'text' (and 'label' in labelled splits).")
                records.append(record)
    return records


def _labelled(records: Iterable[dict[str, Any]], path: Path) -> bool:
    flags = {"label" in r for r in records}
    if len(flags) > 1:
        raise ValueError(f"{path}: some lines have a 'label' and some do not; fix the file (a split is either "
                         "labelled or not).")
    return flags == {True}


DATASET_SPECS: dict[str, DatasetSpec] = {
    "mmimdb": DatasetSpec("mmimdb", "multilabel", "f1_macro", len(MMIMDB_GENRES), load_mmimdb),
    "food101": DatasetSpec("food101", "single_label", "accuracy", 101, load_food101),
    "hateful_memes": DatasetSpec("hateful_memes", "binary", "auroc", len(HATEFUL_MEMES_LABELS), load_hateful_memes),
}
