"""Your own data end to end, as the README's worked example runs it: a folder of images with captions and labels
where some captions and some images are missing -> `hf-missing train` -> `hf-missing evaluate` (report with a
natural row and the robustness plot) -> the pipeline -> push_to_hub; and load_data's sources and errors."""

import json
from pathlib import Path

import pytest
import torch
from datasets import DatasetDict
from transformers import pipeline

from hf_missing import cli
from hf_missing.backbones.fused import FusedProcessor
from hf_missing.backbones.tiny import tiny_backbone, tiny_processor
from hf_missing.data.sources import load_data, write_table_folder
from hf_missing.data.synthetic import shapes_dataset
from tests.test_hub import hub as fake_hub  # noqa: F401  (the fake Hub fixture, as `fake_hub`)


def with_gaps(data: DatasetDict) -> DatasetDict:
    """Blank every 5th caption and drop every 7th image (never both), as the README's example does to the emoji
    set."""
    def blank(sample: dict, i: int) -> dict:
        no_image = i % 7 == 2 and i % 5 != 1
        return {"text": "" if i % 5 == 1 else sample["text"], "image": None if no_image else sample["image"]}
    return data.map(blank, with_indices=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The worked example on the shapes set with a tiny fused backbone folder (the README uses --backbone fused)."""
    root = tmp_path_factory.mktemp("own")
    backbone = root / "backbone"
    tiny_backbone("fused").save_pretrained(backbone)
    parts = tiny_processor("fused")
    FusedProcessor(parts.tokenizer, parts.image_processor).save_pretrained(backbone)
    folder = write_table_folder(with_gaps(shapes_dataset(n_train=48, n_test=24, seed=0)), root / "my-posts")
    out = root / "runs" / "mine"
    assert cli.main(["train", "--data", str(folder), "--method", "map", "--backbone", str(backbone),
                     "--rate", "0.5", "--epochs", "1", "--output-dir", str(out),
                     "--training-args", "per_device_train_batch_size=16", "logging_steps=1",
                     "disable_tqdm=true", "eval_strategy=no"]) == 0
    assert cli.main(["evaluate", "--adapter", str(out / "adapter"), "--data", str(folder), "--rates", "0", "0.5",
                     "1", "--output-dir", str(out / "eval")]) == 0
    return {"folder": folder, "out": out}


def test_a_folder_with_real_gaps_trains_without_a_missing_type_column(run):
    """Catches: the issue's failure (None images marked complete, collator crash) and natural gaps not recorded
    apart from the simulated ones."""
    settings = json.loads((run["out"] / "adapter" / "missing_settings.json").read_text())
    natural = settings["natural_counts"]["train"]
    assert natural[1] == 10 and natural[2] == 6  # 48 rows: captions 1, 6, ..., 46 blank; images 2, 9, 23, ..., 44
    assert sum(settings["counts"]["train"][1:]) == 24  # rate 0.5 counts the natural gaps too


def test_evaluation_reports_natural_missingness_and_the_plot(run):
    """Catches: evaluation that forces absent images 'present' or hides the data-as-is row."""
    results = json.loads((run["out"] / "eval" / "results.json").read_text())
    assert {"complete", "missing_text", "missing_image", "natural"} == set(results["per_pattern"])
    assert (run["out"] / "eval" / "robustness.png").stat().st_size > 0
    assert "| natural |" in (run["out"] / "eval" / "report.md").read_text()


def test_the_trained_adapter_serves_the_pipeline_and_pushes(run, fake_hub):  # noqa: F811
    """Catches: an adapter trained from the CLI that the pipeline or push_to_hub cannot take."""
    pipe = pipeline("missing-modality-classification", model=str(run["out"] / "adapter"))
    out = pipe({"text": "a photo of the red circle", "image": None}, top_k=1)
    assert out[0]["label"] in {"red circle", "green square", "blue triangle", "yellow cross"}
    pipe.model.push_to_hub("me/my-posts-map")
    assert "adapter_model.safetensors" in fake_hub.files("me/my-posts-map")


def test_load_data_reads_save_to_disk_and_renames_mapped_columns(tmp_path):
    """Catches: a save_to_disk folder or renamed columns not reaching the canonical text / image / label."""
    data = shapes_dataset(n_train=8, n_test=4, seed=0).rename_columns({"text": "caption", "label": "y"})
    data.save_to_disk(tmp_path / "disk")
    loaded = load_data(tmp_path / "disk", columns={"text": "caption"}, label_column="y")
    assert {"text", "image", "label"} <= set(loaded["train"].column_names)
    assert loaded["test"].features["label"].names == data["test"].features["y"].names


def test_load_data_carves_a_test_split_only_when_asked(tmp_path):
    """Catches: a test split silently carved (or the data silently used for both training and testing)."""
    folder = write_table_folder(DatasetDict({"train": shapes_dataset(n_train=16, n_test=4)["train"]}), tmp_path / "t")
    with pytest.raises(ValueError, match="no 'test' split"):
        load_data(folder)
    carved = load_data(folder, test_size=0.25)
    assert (len(carved["train"]), len(carved["test"])) == (12, 4)


def test_load_data_refuses_missing_files_columns_and_labels(tmp_path):
    """Catches: rows whose image file is gone, an unmapped column, or unlabelled rows silently dropped."""
    folder = write_table_folder(shapes_dataset(n_train=6, n_test=4), tmp_path / "d")
    Path(folder / "images" / "train" / "0.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image file\(s\) do not exist"):
        load_data(folder)
    with pytest.raises(ValueError, match=r"no column \['caption'\]"):
        load_data(folder, columns={"text": "caption"})
    lines = (folder / "test.jsonl").read_text().splitlines()
    (folder / "test.jsonl").write_text("\n".join([json.dumps({**json.loads(lines[0]), "label": None}), *lines[1:]]))
    (folder / "images" / "train" / "0.png").write_bytes((folder / "images" / "train" / "1.png").read_bytes())
    with pytest.raises(ValueError, match=r"rows \[0\].*have no label"):
        load_data(folder)


def test_string_labels_share_one_class_label_across_splits(tmp_path):
    """Catches: labels encoded per split (a class's index differing between train and test)."""
    folder = write_table_folder(shapes_dataset(n_train=8, n_test=4), tmp_path / "s")
    loaded = load_data(folder)
    assert loaded["train"].features["label"] == loaded["test"].features["label"]
    assert torch.tensor(loaded["train"]["label"]).max() < 4
