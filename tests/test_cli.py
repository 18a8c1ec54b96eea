import csv
import json
from pathlib import Path

import pytest
from PIL import Image
from transformers import AutoModel, ViltProcessor

from hf_missing import cli
from hf_missing.data.synthetic import tiny_backbone, tiny_processor
from hf_missing.training import read_results
from tests.test_hub import hub as fake_hub  # noqa: F401  (the fake Hub fixture, as `fake_hub`)


def test_train_runs_end_to_end_and_reports_per_pattern(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--backbone", "vilt", "--method", "baseline", "--epochs", "2", "--n-train", "64",
                     "--n-test", "32", "--output-dir", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["missing"]["rate"] == 0.7
    assert {"eval_accuracy", "eval_missing_text/accuracy"} <= set(report["eval"])
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_quickstart_trains_a_three_modality_backbone(tmp_path):
    """Catches a quickstart that only knows text and image: on the text+image+audio tiny backbone the data gets an
    audio column, every one of the six incomplete patterns is simulated, and evaluation reports them by name."""
    out = tmp_path / "run"
    assert cli.main(["train", "--backbone", "fused_audio", "--method", "map", "--epochs", "1", "--n-train", "48",
                     "--n-test", "24", "--output-dir", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["missing"]["modalities"] == ["text", "image", "audio"] and len(report["missing"]["shares"]) == 6
    assert {"eval_missing_audio/accuracy", "eval_missing_text_image/accuracy"} <= set(report["eval"])
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["model_settings"]["modalities"] == [
        "text", "image", "audio"]


def test_methods_lists_registered_methods(capsys):
    assert cli.main(["methods"]) == 0
    printed = capsys.readouterr().out
    assert "map:" in printed and "prompt_length" in printed and "baseline:" in printed


# ---- train --preset / evaluate / push on a tiny Food-101 folder and a tiny ViLT saved to disk -------------
FOOD = {"train": [(f"{label}_{i}.jpg", f"{label} dish number {i}", label) for label in ("ramen", "tacos")
                  for i in range(4)],
        "test": [(f"{label}_t{i}.jpg", f"{label} plate {i}", label) for label in ("ramen", "tacos") for i in range(3)]}
TINY_PRESET = {
    "name": "tiny-food101", "description": "tiny", "reference": "tests", "method": "map",
    "method_options": {"prompt_length": 4, "prompt_depth": 2},
    "model": {"backbone": "<set per test>", "max_text_len": None},
    "data": {"dataset": "food101", "task": "single_label", "metric": "accuracy", "loader_options": {},
             "missing": {"rate": 0.5, "pattern": "text", "protocol": "map", "seed": 0, "both_ratio": 0.5}},
    "training": {"learning_rate": 0.01, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 8,
                 "effective_batch_size": 4, "fp16": True, "use_cpu": True, "report_to": "none", "eval_strategy": "no",
                 "save_strategy": "no", "logging_steps": 1, "disable_tqdm": True, "remove_unused_columns": False},
}


def _food_folder(root: Path) -> Path:
    (root / "texts").mkdir(parents=True)
    for split, rows in FOOD.items():
        with (root / "texts" / f"{split}_titles.csv").open("w", newline="") as f:
            csv.writer(f).writerows(rows)
        for i, (file, _, label) in enumerate(rows):
            (root / "images" / split / label).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (14, 12), (40 * i % 255, 200 if label == "ramen" else 20, 90)).save(
                root / "images" / split / label / file)
    return root


def _tiny_vilt_folder(folder: Path) -> Path:
    processor = tiny_processor("vilt")
    ViltProcessor(image_processor=processor.image_processor, tokenizer=processor.tokenizer).save_pretrained(folder)
    tiny_backbone("vilt").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A preset file pointing at a tiny ViLT, a Food-101 folder, and `hf-missing train --preset` run on them."""
    root = tmp_path_factory.mktemp("cli")
    preset = root / "tiny-food101.json"
    preset.write_text(json.dumps({**TINY_PRESET, "model": {"backbone": str(_tiny_vilt_folder(root / "vilt")),
                                                           "max_text_len": None}}))
    data, out = _food_folder(root / "food"), root / "run"
    assert cli.main(["train", "--preset", str(preset), "--data", str(data), "--output-dir", str(out),
                     "--max-steps", "2", "--no-fp16"]) == 0
    return {"preset": preset, "data": data, "out": out, "root": root}


def test_train_preset_saves_adapter_missing_settings_and_eval_report(trained):
    report = json.loads((trained["out"] / "eval_report.json").read_text())
    assert (report["preset"], report["method"], report["dataset"], report["eval_split"]) == \
        ("tiny-food101", "map", "food101", "test")
    assert {"eval_accuracy", "eval_complete/accuracy", "eval_missing_text/accuracy"} <= set(report["eval"])
    assert "eval_missing_image/count" not in report["eval"], "the preset drops text only"
    adapter = trained["out"] / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    settings = json.loads((adapter / "missing_settings.json").read_text())
    assert (settings["rate"], settings["pattern"]) == (0.5, "text")
    model = AutoModel.from_pretrained(adapter)
    assert model.config.id2label == {0: "ramen", 1: "tacos"}
    assert [c.method_name for c in model.peft_config.values()] == ["map"]


def test_evaluate_writes_per_pattern_table_grid_row_and_curves(trained, capsys):
    out = trained["root"] / "eval"
    assert cli.main(["evaluate", "--adapter", str(trained["out"] / "adapter"), "--data", str(trained["data"]),
                     "--preset", str(trained["preset"]), "--rates", "0", "0.5", "1", "--output-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["per_pattern"]) == {"complete", "missing_text", "missing_image"}
    assert list(results["grid"]) == ["text"], "the grid row is the adapter's training pattern"
    assert set(results["grid"]["text"]) == {"text", "image", "both"}
    assert [p["rate"] for p in results["curves"]["image"]] == [0.0, 0.5, 1.0]
    complete, no_image = results["per_pattern"]["complete"], results["per_pattern"]["missing_image"]
    assert results["curves"]["image"][0]["accuracy"] == complete["accuracy"]
    assert results["curves"]["image"][-1]["accuracy"] == no_image["accuracy"]
    assert (out / "robustness.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "| missing_image |" in report and "50% missing 'text'" in report and report in capsys.readouterr().out


def test_push_uploads_the_trained_adapter_with_its_card(trained, fake_hub):  # noqa: F811
    evaluated = trained["root"] / "eval-for-push"
    cli.main(["evaluate", "--adapter", str(trained["out"] / "adapter"), "--data", str(trained["data"]),
              "--preset", str(trained["preset"]), "--rates", "0", "1", "--output-dir", str(evaluated)])
    assert cli.main(["push", "--adapter", str(trained["out"] / "adapter"), "--repo", "me/tiny-food",
                     "--results", str(evaluated / "results.json"), "--plot", str(evaluated / "robustness.png"),
                     "--dataset", "food101"]) == 0
    files = fake_hub.files("me/tiny-food")
    assert {"adapter_model.safetensors", "robustness.png", "README.md", "missing_settings.json"} <= set(files)
    card = files["README.md"].decode()
    assert "food101" in card and "missing_image" in card and "robustness.png" in card


def test_push_reads_train_and_evaluate_reports(trained, tmp_path):
    report = json.loads((trained["out"] / "eval_report.json").read_text())
    assert read_results(trained["out"] / "eval_report.json") == report["eval"]
    nested = {"complete": {"accuracy": 0.5}}
    (tmp_path / "results.json").write_text(json.dumps({"per_pattern": nested, "curves": {}}))
    (tmp_path / "plain.json").write_text(json.dumps(nested))
    assert read_results(tmp_path / "results.json") == read_results(tmp_path / "plain.json") == nested


def test_train_preset_errors(tmp_path):
    """Catches: a preset run without data, a real backbone sent to the tiny quickstart, a preset and a method that
    contradict each other, and a bad --training-args field reaching TrainingArguments."""
    with pytest.raises(SystemExit, match="--data"):
        cli.main(["train", "--preset", "map-food101"])
    with pytest.raises(SystemExit, match="tiny"):
        cli.main(["train", "--backbone", "dandelin/vilt-b32-mlm"])
    with pytest.raises(SystemExit, match="not both"):
        cli.main(["train", "--preset", "map-demo", "--method", "rep", "--data", str(tmp_path)])
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['learning_rat'\]"):
        cli.main(["train", "--data", str(tmp_path), "--training-args", "learning_rat=0.1"])
