"""Dataset loaders on tiny fixtures written in the published MM-IMDb, UPMC Food-101 and Hateful Memes layouts."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel
from PIL import Image

import hf_missing
from hf_missing import MissingModalityCollator, simulate_missing
from hf_missing.data.loaders import DATASET_SPECS, MMIMDB_GENRES, UNLABELED
from hf_missing.data.synthetic import tiny_processor
from hf_missing.metrics import classification_metrics


def _image(path: Path, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (12, 10), (200, 30, 30, 255)[: len(mode)]).save(path)


# ---- MM-IMDb ------------------------------------------------------------------------------------
MMIMDB_ITEMS = {
    "0000001": {"plot": ["A cop chases a thief.", "Second plot."], "genres": ["Action", "Crime", "News"],
                "plot outline": "Cop and thief."},
    "0000002": {"plot": ["Two people fall in love."], "genres": ["Romance", "Comedy"]},
    "0000003": {"plot": ["A ghost haunts a house."], "genres": ["Horror"]},
    "0000004": {"plot": ["War is hell."], "genres": ["War", "Drama"]},
}
MMIMDB_SPLIT = {"train": ["0000001", "0000002"], "dev": ["0000003"], "test": ["0000004"]}


def _mmimdb(root: Path, map_layout: bool = False) -> Path:
    image_dir, label_dir = (root / "images", root / "labels") if map_layout else (root / "dataset",) * 2
    label_dir.mkdir(parents=True)
    for item, meta in MMIMDB_ITEMS.items():
        (label_dir / f"{item}.json").write_text(json.dumps(meta))
        _image(image_dir / f"{item}.jpeg")
    (root / "split.json").write_text(json.dumps(MMIMDB_SPLIT))
    return root


@pytest.mark.parametrize("map_layout", [False, True])
def test_mmimdb_multi_hot_labels_and_lazy_images(tmp_path, map_layout):
    ds = hf_missing.load_mmimdb(_mmimdb(tmp_path, map_layout))
    assert {k: len(v) for k, v in ds.items()} == {"train": 2, "validation": 1, "test": 1}
    first = ds["train"][0]
    assert first["id"] == "0000001" and first["text"] == "A cop chases a thief."
    assert len(first["label"]) == 23
    assert [MMIMDB_GENRES[i] for i, v in enumerate(first["label"]) if v == 1.0] == ["Crime", "Action"]
    assert ds["train"].features["genres"].feature.int2str(first["genres"]) == ["Crime", "Action"]  # "News" ignored
    stored = ds["train"].data.column("image")[0].as_py()
    assert stored["bytes"] is None and stored["path"].endswith("0000001.jpeg")  # a path, decoded on access
    assert first["image"].mode == "RGB" and first["image"].size == (12, 10)


def test_mmimdb_plot_choices(tmp_path):
    root = _mmimdb(tmp_path)
    assert hf_missing.load_mmimdb(root, plots="outline")["train"]["text"] == ["Cop and thief.",
                                                                             "Two people fall in love."]
    every = hf_missing.load_mmimdb(root, plots="all")["train"]
    assert every["id"] == ["0000001", "0000001", "0000002"]
    assert every["text"][:2] == ["A cop chases a thief.", "Second plot."]
    with pytest.raises(ValueError, match="plots must be one of"):
        hf_missing.load_mmimdb(root, plots="longest")


def test_mmimdb_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"split\.json is missing\. Expected layout:\nroot/"):
        hf_missing.load_mmimdb(tmp_path)
    (tmp_path / "split.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="neither dataset/ nor images/ \\+ labels/ exists"):
        hf_missing.load_mmimdb(tmp_path)


def test_mmimdb_missing_images_raise_or_are_skipped(tmp_path, caplog):
    root = _mmimdb(tmp_path)
    (root / "dataset" / "0000002.jpeg").unlink()
    with pytest.raises(FileNotFoundError, match=r"MM-IMDb train: 1 image file\(s\) are missing"):
        hf_missing.load_mmimdb(root)
    with caplog.at_level(logging.WARNING):
        ds = hf_missing.load_mmimdb(root, skip_missing_images=True)
    assert ds["train"]["id"] == ["0000001"] and "dropped 1 samples" in caplog.text


# ---- UPMC Food-101 ------------------------------------------------------------------------------
FOOD_ROWS = {
    "train": [("apple_pie_0.jpg", "Best apple pie", "apple_pie"), ("apple_pie_1.jpg", "Apple pie, again", "apple_pie"),
              ("ramen_0.jpg", "Tonkotsu ramen", "ramen"), ("ramen_1.jpg", "Miso ramen", "ramen"),
              ("tacos_0.jpg", "Fish tacos", "tacos"), ("tacos_1.jpg", "Beef tacos", "tacos")],
    "test": [("ramen_9.jpg", "Shoyu ramen", "ramen")],
}


def _food101(root: Path, header: bool = False, class_idx: dict[str, int] | None = None) -> Path:
    (root / "texts").mkdir(parents=True)
    for split, rows in FOOD_ROWS.items():
        with (root / "texts" / f"{split}_titles.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            if header:
                writer.writerow(["image_path", "text", "food"])
            writer.writerows(rows)
        for file, _, label in rows:
            _image(root / "images" / split / label / file)
    if class_idx:
        (root / "class_idx.json").write_text(json.dumps(class_idx))
    return root


@pytest.mark.parametrize("header", [False, True])
def test_food101_class_labels(tmp_path, header):
    ds = hf_missing.load_food101(_food101(tmp_path, header=header))
    assert ds["train"].features["label"] == ClassLabel(names=["apple_pie", "ramen", "tacos"])
    assert (len(ds["train"]), len(ds["test"])) == (6, 1)
    sample = ds["test"][0]
    assert (sample["id"], sample["text"], sample["label"]) == ("ramen_9", "Shoyu ramen", 1)
    assert sample["image"].mode == "RGB"


def test_food101_label_order_from_class_idx_and_validation_split(tmp_path):
    root = _food101(tmp_path, class_idx={"tacos": 0, "apple_pie": 1, "ramen": 2})
    ds = hf_missing.load_food101(root, validation_size=3, seed=0)
    assert ds["train"].features["label"].names == ["tacos", "apple_pie", "ramen"]
    assert {k: len(v) for k, v in ds.items()} == {"train": 3, "validation": 3, "test": 1}
    assert sorted(ds["validation"]["label"]) == [0, 1, 2]  # stratified: one per class


def test_food101_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"texts/train_titles\.csv is missing\. Expected layout"):
        hf_missing.load_food101(tmp_path)
    root = _food101(tmp_path)
    with (root / "texts" / "test_titles.csv").open("a") as f:
        f.write("sushi_0.jpg,Salmon nigiri,sushi\n")
    with pytest.raises(ValueError, match="row 2: class 'sushi' is not in images/train/"):
        hf_missing.load_food101(root)


# ---- Hateful Memes ------------------------------------------------------------------------------
def _hateful_memes(root: Path, test_labels: bool = False) -> Path:
    lines = {
        "train": [{"id": 42953, "img": "img/42953.png", "label": 0, "text": "its their character not their color"},
                  {"id": 23058, "img": "img/23058.png", "label": 1, "text": "a hateful caption"}],
        "dev": [{"id": 8291, "img": "img/08291.png", "label": 1, "text": "another caption"}],
        "test": [{"id": 16395, "img": "img/16395.png", "text": "no label here"}],
    }
    if test_labels:
        lines["test"][0]["label"] = 0
    root.mkdir(parents=True, exist_ok=True)
    for split, records in lines.items():
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        for r in records:
            _image(root / r["img"], mode="RGBA")
    return root


def test_hateful_memes_drops_the_unlabelled_test_split_by_default(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        ds = hf_missing.load_hateful_memes(_hateful_memes(tmp_path))
    assert set(ds) == {"train", "validation"} and "test.jsonl has no labels" in caplog.text
    assert ds["train"].features["label"].names == ["not_hateful", "hateful"]
    sample = ds["validation"][0]
    assert (sample["id"], sample["label"], sample["image"].mode) == ("8291", 1, "RGB")  # RGBA file decoded as RGB


def test_hateful_memes_unlabelled_keep_and_error(tmp_path):
    root = _hateful_memes(tmp_path)
    assert hf_missing.load_hateful_memes(root, unlabeled="keep")["test"]["label"] == [UNLABELED]
    with pytest.raises(ValueError, match=r"test\.jsonl has no labels"):
        hf_missing.load_hateful_memes(root, unlabeled="error")
    with pytest.raises(ValueError, match="unlabeled must be one of"):
        hf_missing.load_hateful_memes(root, unlabeled="ignore")


def test_hateful_memes_labelled_test_in_data_folder(tmp_path):
    _hateful_memes(tmp_path / "data", test_labels=True)
    ds = hf_missing.load_hateful_memes(tmp_path, unlabeled="error")  # root/data/ is found from root
    assert set(ds) == {"train", "validation", "test"} and ds["test"]["label"] == [0]


def test_hateful_memes_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no \.jsonl split files in it or in data/\. Expected layout"):
        hf_missing.load_hateful_memes(tmp_path)
    root = _hateful_memes(tmp_path)
    with (root / "dev.jsonl").open("a") as f:
        f.write(json.dumps({"id": 1, "img": "img/00001.png", "text": "unlabelled line"}) + "\n")
    with pytest.raises(ValueError, match="some lines have a 'label' and some do not"):
        hf_missing.load_hateful_memes(root)
    (root / "dev.jsonl").write_text(json.dumps({"id": 1, "img": "img/00001.png"}) + "\n")
    with pytest.raises(ValueError, match=r"dev\.jsonl line 1: missing field\(s\) \['text'\]"):
        hf_missing.load_hateful_memes(root)


# ---- with the rest of the library ---------------------------------------------------------------
def test_loaded_data_feeds_simulate_missing_and_the_collator(tmp_path):
    mmimdb = simulate_missing(hf_missing.load_mmimdb(_mmimdb(tmp_path / "mmimdb")), rate=0.5, seed=0)
    memes = simulate_missing(hf_missing.load_hateful_memes(_hateful_memes(tmp_path / "hm")), rate=0.5, seed=0)
    collator = MissingModalityCollator(tiny_processor("vilt"), max_length=16)
    multi = collator([mmimdb["train"][i] for i in range(2)])
    assert multi["labels"].dtype == torch.float32 and multi["labels"].shape == (2, 23)
    binary = collator([memes["train"][i] for i in range(2)])
    assert binary["labels"].tolist() == [0, 1] and binary["labels"].dtype == torch.long


def test_dataset_specs_name_tasks_and_metrics_that_metrics_computes():
    logits = np.zeros((2, 2))
    labels = {"multilabel": np.array([[1, 0], [0, 1]]), "single_label": np.array([0, 1]), "binary": np.array([0, 1])}
    for name, spec in DATASET_SPECS.items():
        assert spec.name == name
        assert spec.metric in classification_metrics(spec.task, logits, labels[spec.task])
    assert [DATASET_SPECS[n].loader for n in ("mmimdb", "food101", "hateful_memes")] == [
        hf_missing.load_mmimdb, hf_missing.load_food101, hf_missing.load_hateful_memes]
