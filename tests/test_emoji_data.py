"""The emoji demo-data builder, on a tiny folder in the npm package layout (no network)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image as PILImage

from hf_missing.data import emoji
from hf_missing.data.emoji import IMAGE_DIR, build_emoji_dataset, emoji_text, load_emoji_dataset

# Real emoji.json entries (trimmed to the fields the builder reads).
ENTRIES = [
    ("GRINNING FACE", ["grinning"], "1f600.png", "Smileys & Emotion", "face-smiling"),
    ("SMILING FACE WITH OPEN MOUTH", ["smiley"], "1f603.png", "Smileys & Emotion", "face-smiling"),
    ("WINKING FACE", ["wink"], "1f609.png", "Smileys & Emotion", "face-affection"),
    ("FACE WITH TEARS OF JOY", ["joy"], "1f602.png", "Smileys & Emotion", "face-smiling"),
    ("DOG FACE", ["dog"], "1f436.png", "Animals & Nature", "animal-mammal"),
    ("CAT FACE", ["cat"], "1f431.png", "Animals & Nature", "animal-mammal"),
    ("FROG FACE", ["frog"], "1f438.png", "Animals & Nature", "animal-amphibian"),
    ("SNAIL", ["snail"], "1f40c.png", "Animals & Nature", "animal-bug"),
    ("RED APPLE", ["apple"], "1f34e.png", "Food & Drink", "food-fruit"),
    ("BANANA", ["banana"], "1f34c.png", "Food & Drink", "food-fruit"),
    ("HOT PEPPER", ["hot_pepper"], "1f336-fe0f.png", "Food & Drink", "food-vegetable"),
    ("PIZZA", ["pizza"], "1f355.png", "Food & Drink", "food-prepared"),
    ("EMOJI MODIFIER FITZPATRICK TYPE-1-2", ["skin-tone-2"], "1f3fb.png", "Component", "skin-tone"),
]


def _write_package(folder: Path, entries: list[dict]) -> Path:
    (folder / IMAGE_DIR).mkdir(parents=True)
    for k, entry in enumerate(entries):
        image = PILImage.new("RGBA", (64, 64), (0, 0, 0, 0))
        image.paste((200, 10 * k, 30, 255), (16, 16, 48, 48))
        image.save(folder / IMAGE_DIR / entry["image"])
    (folder / "emoji.json").write_text(json.dumps(entries), encoding="utf-8")
    return folder


@pytest.fixture
def package(tmp_path: Path) -> Path:
    entries = [{"name": name, "short_names": shorts, "short_name": shorts[0], "image": image, "category": category,
                "subcategory": sub, "sort_order": k, "has_img_google": True}
               for k, (name, shorts, image, category, sub) in enumerate(ENTRIES)]
    folder = _write_package(tmp_path / "package", entries)
    entries.append({**entries[0], "name": "NO GOOGLE IMAGE", "image": "ffff.png", "has_img_google": False})
    entries.append({**entries[0], "name": "MISSING FILE", "image": "fffe.png"})
    (folder / "emoji.json").write_text(json.dumps(entries), encoding="utf-8")
    return folder


def test_builder_columns_labels_and_dropped_category(package: Path) -> None:
    dataset = build_emoji_dataset(package, seed=0, min_per_category=2)
    assert set(dataset) == {"train", "validation", "test"}
    train = dataset["train"]
    assert set(train.features) == {"image", "text", "label", "subcategory"}
    assert train.features["label"].names == ["Animals & Nature", "Food & Drink", "Smileys & Emotion"]
    assert sum(len(split) for split in dataset.values()) == 12  # Component, no-image and missing-file rows dropped
    texts = {t for split in dataset.values() for t in split["text"]}
    assert "grinning face: grinning" in texts and "missing file: grinning" not in texts
    sample = train[0]
    assert sample["image"].mode == "RGB" and sample["image"].size == (64, 64)
    assert sample["image"].getpixel((0, 0)) == (255, 255, 255)  # transparency composited onto white


def test_split_is_stratified_and_deterministic(package: Path) -> None:
    first = build_emoji_dataset(package, seed=3, min_per_category=2)
    again = build_emoji_dataset(package, seed=3, min_per_category=2)
    other = build_emoji_dataset(package, seed=4, min_per_category=2)
    assert first["train"]["text"] == again["train"]["text"]
    assert first["test"]["text"] != other["test"]["text"] or first["train"]["text"] != other["train"]["text"]
    # 4 per category: 1 test, 1 validation (at least one from 3 up), 2 train.
    assert sorted(first["test"]["label"]) == sorted(first["validation"]["label"]) == [0, 1, 2]
    assert sorted(first["train"]["label"]) == [0, 0, 1, 1, 2, 2]


def test_min_per_category_and_text_format(package: Path) -> None:
    with pytest.raises(ValueError, match="min_per_category"):
        build_emoji_dataset(package, min_per_category=100)
    assert emoji_text({"name": "HOT PEPPER", "short_names": ["hot_pepper", "chili"]}) == "hot pepper: hot_pepper, chili"


def test_load_caches_with_save_to_disk(package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / emoji.TARBALL).write_bytes(b"")  # present, so nothing is fetched
    shutil.copytree(package, cache / "package")
    monkeypatch.setattr(emoji, "MIN_PER_CATEGORY", 2)
    monkeypatch.setattr(emoji, "build_emoji_dataset",
                        lambda folder, seed=0: build_emoji_dataset(folder, seed=seed, min_per_category=2))
    dataset = load_emoji_dataset(cache)
    assert (cache / "dataset-v2-seed0" / "dataset_dict.json").is_file()
    shutil.rmtree(cache / "package")  # the saved dataset no longer needs the source files
    assert load_emoji_dataset(cache)["train"]["text"] == dataset["train"]["text"]


def test_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(emoji.CACHE_ENV, str(tmp_path))
    assert emoji.emoji_cache_dir() == tmp_path / "emoji"
    assert emoji.emoji_cache_dir(tmp_path / "x") == tmp_path / "x"


def test_fetch_errors_name_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_npm(*_args, **_kwargs):
        raise FileNotFoundError("npm")

    monkeypatch.setattr(subprocess, "run", no_npm)
    with pytest.raises(RuntimeError, match=r"npm pack emoji-datasource-google@16\.0\.0.*not installed"):
        emoji.fetch_emoji_tarball(tmp_path)

    def offline(command, **_kwargs):
        raise subprocess.CalledProcessError(1, command, stderr="npm ERR! network ENOTFOUND")

    monkeypatch.setattr(subprocess, "run", offline)
    with pytest.raises(RuntimeError, match=r"ENOTFOUND.*copy emoji-datasource-google-16\.0\.0\.tgz"):
        emoji.fetch_emoji_tarball(tmp_path)


@pytest.mark.slow  # npm pack of the real package (74 MB) when it is not cached yet
def test_real_items_from_the_npm_package(tmp_path: Path) -> None:
    root = emoji.emoji_cache_dir()
    real_package = emoji.extract_emoji_package(emoji.fetch_emoji_tarball(root), root)
    with open(real_package / "emoji.json", encoding="utf-8") as f:
        entries = json.load(f)
    subset = [e for e in entries if e["category"] in ("Flags", "Food & Drink")][:40]
    (tmp_path / IMAGE_DIR).mkdir(parents=True)
    for entry in subset:
        source = real_package / IMAGE_DIR / entry["image"]
        if source.is_file():
            shutil.copy(source, tmp_path / IMAGE_DIR / entry["image"])
    (tmp_path / "emoji.json").write_text(json.dumps(subset), encoding="utf-8")
    dataset = build_emoji_dataset(tmp_path, min_per_category=1)
    assert sum(len(s) for s in dataset.values()) == sum(e["has_img_google"] for e in subset)
    assert all(im.mode == "RGB" and im.size == (64, 64) for im in dataset["train"]["image"][:5])
