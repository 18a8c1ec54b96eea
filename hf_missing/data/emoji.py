"""Real demo data: Google's Noto emoji (image + name) labelled with their Unicode category.

Source: the npm package ``emoji-datasource-google`` 16.0.0 (MIT; the Noto images are Apache-2.0). Its
``emoji.json`` lists every emoji with a name, short names, a category and a subcategory; its
``img/google/64/`` folder holds a 64 px PNG per emoji. Each sample is

- ``image``: the 64 px PNG, RGBA composited onto white, as RGB;
- ``text``: the lower-cased name and short names, e.g. ``"grinning face: grinning"``;
- ``label``: the category (``ClassLabel``);
- ``subcategory``: the subcategory (``ClassLabel``).

Only base emoji (no skin-tone variants) with ``has_img_google`` true and an existing image file are
kept. Categories with fewer than ``min_per_category`` emoji are dropped: with the default 20 that is
"Component" (5 hair/skin-tone swatches), leaving 9 categories and 1,906 emoji. The split is a
stratified (per category) 70/10/20 train/validation/test split, seeded, each split shuffled.

The tarball is fetched once with ``npm pack`` (package registry only) and the built dataset is cached
with ``save_to_disk`` under ``$HF_MISSING_CACHE/emoji`` (default ``~/.cache/hf_missing/emoji``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value, load_from_disk
from PIL import Image as PILImage

from ..cache import CACHE_ENV, default_cache_dir

NPM_PACKAGE = "emoji-datasource-google@16.0.0"
TARBALL = "emoji-datasource-google-16.0.0.tgz"
IMAGE_DIR = "img/google/64"
MIN_PER_CATEGORY = 20
SPLITS = {"train": 0.7, "validation": 0.1, "test": 0.2}
DATASET_VERSION = 2


def emoji_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the emoji tarball and the built dataset live (``cache_dir`` or ``<default cache>/emoji``)."""
    return Path(cache_dir) if cache_dir is not None else default_cache_dir() / "emoji"


def load_emoji_dataset(cache_dir: str | os.PathLike | None = None, seed: int = 0) -> DatasetDict:
    """The emoji ``DatasetDict`` (train/validation/test), built and cached on first use.

    Args:
        cache_dir: folder for the npm tarball, its extracted files and the saved dataset; defaults to
            ``$HF_MISSING_CACHE/emoji`` or ``~/.cache/hf_missing/emoji``.
        seed: seed of the stratified split (each seed is cached separately).

    Raises:
        RuntimeError: when the tarball is absent and ``npm pack`` cannot fetch it.
    """
    root = emoji_cache_dir(cache_dir)
    saved = root / f"dataset-v{DATASET_VERSION}-seed{seed}"
    if (saved / "dataset_dict.json").is_file():
        return load_from_disk(str(saved))
    package_dir = extract_emoji_package(fetch_emoji_tarball(root), root)
    dataset = build_emoji_dataset(package_dir, seed=seed)
    tmp = saved.with_name(saved.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    dataset.save_to_disk(str(tmp))
    tmp.rename(saved)
    return load_from_disk(str(saved))


def fetch_emoji_tarball(root: Path) -> Path:
    """``root/<tarball>``, downloaded from the npm registry with ``npm pack`` if absent."""
    tarball = root / TARBALL
    if tarball.is_file():
        return tarball
    root.mkdir(parents=True, exist_ok=True)
    command = ["npm", "pack", NPM_PACKAGE, "--silent"]
    how_to_fix = (f"Install npm and make the npm registry reachable, or run `{' '.join(command)}` elsewhere and "
                  f"copy {TARBALL} into {root} (or point {CACHE_ENV} at a cache that has it).")
    try:
        subprocess.run(command, cwd=root, check=True, capture_output=True, text=True, timeout=600)
    except FileNotFoundError as err:
        raise RuntimeError(f"`{' '.join(command)}` failed: npm is not installed. {how_to_fix}") from err
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        detail = (getattr(err, "stderr", None) or "").strip()[-500:]
        raise RuntimeError(f"`{' '.join(command)}` failed in {root}: {detail or err}. {how_to_fix}") from err
    if not tarball.is_file():
        raise RuntimeError(f"`{' '.join(command)}` ran but {tarball} is missing. {how_to_fix}")
    return tarball


def extract_emoji_package(tarball: Path, root: Path) -> Path:
    """Extract ``emoji.json`` and the 64 px Google images into ``root/package`` (once)."""
    package_dir = root / "package"
    if (package_dir / "emoji.json").is_file() and (package_dir / IMAGE_DIR).is_dir():
        return package_dir
    wanted = ("package/emoji.json", f"package/{IMAGE_DIR}/")
    with tarfile.open(tarball) as archive:
        members = [m for m in archive.getmembers() if m.isfile() and m.name.startswith(wanted)]
        archive.extractall(root, members=members, filter="data")
    return package_dir


def build_emoji_dataset(package_dir: str | os.PathLike, seed: int = 0,
                        min_per_category: int = MIN_PER_CATEGORY) -> DatasetDict:
    """Build the dataset from a folder in the npm package layout (``emoji.json`` + ``img/google/64``).

    Args:
        package_dir: the extracted ``package`` folder.
        seed: seed of the stratified 70/10/20 split.
        min_per_category: categories with fewer usable emoji are dropped.
    """
    package_dir = Path(package_dir)
    with open(package_dir / "emoji.json", encoding="utf-8") as f:
        entries = json.load(f)
    records = _usable_records(entries, package_dir / IMAGE_DIR)
    counts: dict[str, int] = defaultdict(int)
    for record in records:
        counts[record["category"]] += 1
    records = [r for r in records if counts[r["category"]] >= min_per_category]
    if not records:
        raise ValueError(f"No category in {package_dir} has {min_per_category} usable emoji; lower min_per_category.")
    features = Features({
        "image": Image(),
        "text": Value("string"),
        "label": ClassLabel(names=sorted({r["category"] for r in records})),
        "subcategory": ClassLabel(names=sorted({r["subcategory"] for r in records})),
    })
    splits = _stratified_split(records, seed)
    return DatasetDict({
name: Dataset.from_dict(_columns(rows), features=features) for name, rows in splits.items()
    })


def _usable_records(entries: list[dict[str, Any]], image_dir: Path) -> list[dict[str, Any]]:
    """Entries with a Google image on disk, in the package's sort order."""
    records = []
    for entry in sorted(entries, key=lambda e: e.get("sort_order", 0)):
        path = image_dir / str(entry.get("image", ""))
        if not entry.get("has_img_google") or not entry.get("name") or not path.is_file():
            continue
        records.append({"path": str(path), "text": emoji_text(entry), "category": entry["category"],
                        "subcategory": entry["subcategory"]})
    return records


def emoji_text(entry: dict[str, Any]) -> str:
    """The text of one emoji: ``"<name>: <short names, comma-separated>"``, lower-cased."""
    short_names = entry.get("short_names") or [entry.get("short_name")]
    return f"{entry['name']}: {', '.join(n for n in short_names if n)}".lower()


def _stratified_split(records: list[dict[str, Any]], seed: int) -> dict[str, list[dict[str, Any]]]:
    """Per category, a seeded permutation cut 70/10/20 (at least one test and one validation item from 3 up);
    each split is then shuffled so that categories are interleaved."""
    by_category: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_category[record["category"]].append(record)
    splits: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLITS}
    for k, category in enumerate(sorted(by_category)):
        rows = by_category[category]
        order = np.random.default_rng([seed, k]).permutation(len(rows))
        n_test, n_val = (round(SPLITS[name] * len(rows)) for name in ("test", "validation"))
        if len(rows) >= 3:  # every split sees every category
            n_test, n_val = max(n_test, 1), max(n_val, 1)
        cuts = {"test": order[:n_test], "validation": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
        for name, idx in cuts.items():
            splits[name].extend(rows[i] for i in sorted(idx))
    for k, name in enumerate(SPLITS):  # interleave the categories
        order = np.random.default_rng([seed, len(by_category) + k]).permutation(len(splits[name]))
        splits[name] = [splits[name][i] for i in order]
    return splits


def _columns(records: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The dataset's columns: RGB images on white, texts, category and subcategory names."""
    return {"image": [rgb_on_white(r["path"]) for r in records], "text": [r["text"] for r in records],
            "label": [r["category"] for r in records], "subcategory": [r["subcategory"] for r in records]}


def rgb_on_white(path: str | os.PathLike) -> PILImage.Image:
    """Load a (possibly transparent) image and composite it onto a white background, as RGB."""
    with PILImage.open(path) as image:
        rgba = image.convert("RGBA")
    background = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
    return PILImage.alpha_composite(background, rgba).convert("RGB")
