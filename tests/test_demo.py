"""The demo / benchmark pipeline end to end: tiny fused backbone + shapes data (fast), real assets (slow)."""

import json

import pytest
import torch
from transformers import AutoModel

from hf_missing import MissingModalityCollator
from hf_missing.demo import (
    TEST_RATES,
    DemoSettings,
    Workspace,
    aggregate,
    demo_preset,
    markdown_table,
    train_and_evaluate,
    write_outputs,
)
from tests.test_fused import tiny_config, tiny_processor

TINY_OPTIONS = {"map": {"prompt_length": 2}, "rep": {"prompt_length": 4, "prompt_depth": 2, "shared_dim": 8,
                                                     "mlp_reduction": 4}}


@pytest.fixture(scope="module")
def workspace(shapes, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fused")
    AutoModel.from_config(tiny_config()).save_pretrained(folder)
    return Workspace(shapes, folder, MissingModalityCollator(tiny_processor()), shapes["train"].features["label"].names)


def test_pipeline_trains_evaluates_and_writes_the_report(workspace, tmp_path):
    settings = DemoSettings(output_dir=str(tmp_path), methods=["baseline", "rep"], epochs=1, progress=False,
                            method_options=TINY_OPTIONS)
    runs = {m: [train_and_evaluate(m, workspace, settings, seed, "both") for seed in (0, 1)] for m in settings.methods}
    methods = aggregate(runs)
    rep = methods["rep"]
    assert rep["seeds"] == 2 and [p["rate"] for p in rep["curves"]["both"]] == list(TEST_RATES)
    assert set(rep["per_pattern"]) == {"complete", "missing_text", "missing_image"}
    assert rep["trainable_beside_head_pct"] > 0 and rep["step_seconds"] > 0 and rep["inference_ms_per_sample"] > 0
    assert rep["both_70"] == pytest.approx(sum(r["curves"]["both"][7]["accuracy"] for r in runs["rep"]) / 2)
    write_outputs({"settings": {"train_rate": 0.7, "train_pattern": "both", "seeds": [0, 1]}, "methods": methods},
                  tmp_path, title="test")
    report = (tmp_path / "report.md").read_text()
    assert "| baseline |" in report and "| rep |" in report and "robustness.png" in report
    assert (tmp_path / "robustness.png").stat().st_size > 1000
    assert json.loads((tmp_path / "results.json").read_text())["methods"]["rep"]["seeds"] == 2
    assert "| 1.00 |" in markdown_table(methods).splitlines()[2]  # the baseline's own cost ratios


def test_methods_plug_in_by_name_with_or_without_a_demo_preset():
    assert demo_preset("rep", {"prompt_depth": 3}).method_config.prompt_depth == 3
    assert demo_preset("baseline").method == "baseline"


@pytest.mark.slow
def test_cli_demo_on_real_assets_tiny_subset(tmp_path):
    from hf_missing.cli import main

    assert main(["demo", "--methods", "baseline", "map", "--epochs", "1", "--train-limit", "64", "--test-limit",
                 "32", "--output-dir", str(tmp_path), "--no-progress"]) == 0
    assert (tmp_path / "report.md").is_file() and (tmp_path / "robustness.png").is_file()


def test_retrieval_methods_get_their_bank_through_the_method_hooks(workspace, tmp_path):
    settings = DemoSettings(output_dir=str(tmp_path), methods=["ragpt"], epochs=1, progress=False,
                            method_options={"ragpt": {"bank_tokens": 4}})
    result = train_and_evaluate("ragpt", workspace, settings, 0, "both")
    assert set(result["per_pattern"]) == {"complete", "missing_text", "missing_image"}
    assert (tmp_path / "runs" / "ragpt-both-seed0").is_dir()


def test_subcategory_task_predicts_the_subcategory(monkeypatch):
    """Catches a subcategory task that still trains on the 9 categories (or keeps both label columns, so a collator
    or the stage-1 alignment could read the wrong one)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    from hf_missing import demo as demo_module

    features = Features({"text": Value("string"), "label": ClassLabel(names=["a", "b"]),
                         "subcategory": ClassLabel(names=["a1", "a2", "b1"])})
    split = Dataset.from_dict({"text": ["x", "y", "z"], "label": [0, 0, 1], "subcategory": [0, 1, 2]},
                              features=features)
    monkeypatch.setattr(demo_module, "load_emoji_dataset", lambda cache: DatasetDict(train=split, test=split))
    data = demo_module.demo_task("subcategory").load(None)
    assert data["train"].features["label"].names == ["a1", "a2", "b1"] and data["train"]["label"] == [0, 1, 2]
    assert "subcategory" not in data["train"].column_names
    assert demo_module.demo_task("subcategory").preset_suffix == "demo"


def test_a_later_process_starts_from_the_image_features_the_demo_kept(shapes, tmp_path):
    """Guards: a demo that recomputes every frozen image feature in each new process (the warm `make run` paid
    seconds for it), or that keeps features a later run cannot reuse bit for bit."""
    from hf_missing.backbones.fused import FEATURES_FILE
    from hf_missing.demo import RunStore, stored_run

    folder = tmp_path / "fused"
    AutoModel.from_config(tiny_config()).save_pretrained(folder)
    labels = shapes["train"].features["label"].names
    first = Workspace(shapes, folder, MissingModalityCollator(tiny_processor()), labels)
    settings = DemoSettings(output_dir=str(tmp_path), methods=["baseline"], epochs=0.01, progress=False)
    stored_run(RunStore(tmp_path / "runs.json"), "baseline", first, settings, 0, "both")
    assert (folder / FEATURES_FILE).is_file() and first.features_kept == len(first.feature_cache) > 0
    later = Workspace(shapes, folder, MissingModalityCollator(tiny_processor()), labels)
    later.load_image_features()
    assert len(later.feature_cache) == len(first.feature_cache)
    for key, value in first.feature_cache._entries.items():
        assert torch.equal(later.feature_cache.get(key), value)
