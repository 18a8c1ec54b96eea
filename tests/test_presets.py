"""Presets in hub_configs/: schema, method configs, TrainingArguments, and the papers' numbers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import hf_missing
from hf_missing.metrics import classification_metrics
from hf_missing.presets import PRESET_DIR, TASK_METRICS, PresetError

PRESETS = hf_missing.list_presets()
REPO = Path(__file__).resolve().parent.parent


MAP_FAMILY = ("baseline", "map", "rep")  # METHODS_REFERENCE §4's first and third columns
DEMO_ONLY = ("lora",)  # no paper protocol for the datasets: LoRA is in none of the MAP-family papers
DATASETS = ("mmimdb", "food101", "hateful-memes")


def test_every_method_and_dataset_has_a_preset():
    """Catches a registered method without its demo preset, or a paper method without a preset per dataset (and a
    demo-only method that gained dataset presets without leaving DEMO_ONLY)."""
    methods = hf_missing.list_methods()
    expected = {f"{m}-demo" for m in methods} | {f"{m}-{d}" for m in methods if m not in DEMO_ONLY for d in DATASETS}
    assert expected <= set(PRESETS)
    assert not {f"{m}-{d}" for m in DEMO_ONLY for d in DATASETS} & set(PRESETS)
    assert {hf_missing.load_preset(name).method for name in PRESETS} <= set(hf_missing.list_methods())
    assert PRESET_DIR == REPO / "hub_configs"


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_and_builds_its_method_config(name, tmp_path):
    preset = hf_missing.load_preset(name)
    assert preset.name == name
    assert type(preset.method_config) is type(hf_missing.get_method_config(preset.method))
    for option, value in preset.method_options.items():
        assert getattr(preset.method_config, option) == value
    args = preset.training_arguments(str(tmp_path), fp16=False)
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == preset.effective_batch_size
    assert preset.data.metric in TASK_METRICS[preset.data.task]


@pytest.mark.parametrize("name", [n for n in PRESETS if n.split("-")[0] in MAP_FAMILY and not n.endswith("-demo")])
def test_paper_hyperparameters(name, tmp_path):
    """METHODS_REFERENCE §2 and §4 for the MAP family (MAP, its baseline, REP)."""
    preset = hf_missing.load_preset(name)
    args = preset.training_arguments(str(tmp_path), fp16=False)
    assert (args.adam_beta1, args.adam_beta2, args.adam_epsilon) == (0.9, 0.98, 1e-8)
    assert (args.learning_rate, args.weight_decay, args.num_train_epochs) == (1e-2, 2e-2, 20)
    assert args.warmup_steps == 0.1 and args.lr_scheduler_type.value == "polynomial"
    assert args.lr_scheduler_kwargs == {"power": 1.0, "lr_end": 0.0}
    assert preset.effective_batch_size == 256 and preset.training["fp16"] is True
    assert preset.data.missing.simulate_kwargs() == {"rate": 0.7, "pattern": "both", "protocol": "map", "seed": 0,
                                                     "both_ratio": 0.5}
    assert args.metric_for_best_model == preset.data.metric


@pytest.mark.parametrize(("dataset", "task", "metric", "num_labels", "map_text_len"), [
    ("mmimdb", "multilabel", "f1_macro", 23, 1024),
    ("food101", "single_label", "accuracy", 101, 512),
    ("hateful-memes", "binary", "auroc", 2, 128),
])
def test_dataset_settings(dataset, task, metric, num_labels, map_text_len):
    for method in ("baseline", "map", "rep"):
        preset = hf_missing.load_preset(f"{method}-{dataset}")
        assert (preset.data.task, preset.data.metric, preset.data.num_labels) == (task, metric, num_labels)
        expected_backbone = "openai/clip-vit-base-patch16" if method == "rep" else "dandelin/vilt-b32-mlm"
        assert preset.backbone == expected_backbone
        assert preset.max_text_len == (77 if method == "rep" else map_text_len)


def test_method_numbers():
    rep = hf_missing.load_preset("rep-mmimdb")
    config = rep.method_config
    assert (config.prompt_length, config.prompt_depth, config.noise_scale) == (36, 6, 0.2)
    assert (config.noise_type, config.ortho_weight) == ("gaussian", 0.1)
    assert rep.training_kwargs()["gradient_accumulation_steps"] == 64
    mapped = hf_missing.load_preset("map-food101")
    assert (mapped.method_config.prompt_length, mapped.method_config.prompt_depth) == (16, 6)
    assert mapped.method_config.prompt_type == "input"


def test_task_metrics_match_the_metrics_module():
    logits = np.array([[2.0, -1.0], [-1.0, 2.0], [0.5, -0.5]])
    labels = {"multilabel": np.array([[1, 0], [0, 1], [1, 1]]), "single_label": np.array([0, 1, 0]),
              "binary": np.array([0, 1, 0]), "regression": np.array([1.5, -0.5, 0.0]),
              "regression_sims": np.array([0.5, -0.5, 0.0])}
    for task, metrics in TASK_METRICS.items():
        outputs = logits[:, :1] if task in ("regression", "regression_sims") else logits
        assert set(metrics) == set(classification_metrics(task, outputs, labels[task]))


def test_effective_batch_size_with_devices_and_overrides(tmp_path):
    preset = hf_missing.load_preset("map-mmimdb")
    assert preset.training_kwargs(num_devices=4)["gradient_accumulation_steps"] == 8
    args = preset.training_arguments(str(tmp_path), per_device_train_batch_size=16, fp16=False)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (16, 16)
    with pytest.raises(ValueError, match="not a multiple"):
        preset.training_kwargs(num_devices=3)


def test_demo_presets_are_cpu_sized():
    for method in hf_missing.list_methods():
        preset = hf_missing.load_preset(f"{method}-demo")
        assert preset.data.dataset == "emoji" and preset.data.num_labels is None
        assert preset.training["use_cpu"] is True and "fp16" not in preset.training


# ---- bad files ------------------------------------------------------------------------------------
def _write(tmp_path: Path, **changes) -> Path:
    """A copy of map-mmimdb.json with ``changes`` (``a__b`` addresses raw["a"]["b"]) in tmp_path."""
    raw = json.loads((PRESET_DIR / "map-mmimdb.json").read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        target = raw
        for part in parents:
            target = target[part]
        if value is _DELETE:
            del target[key]
        else:
            target[key] = value
    path = tmp_path / "map-mmimdb.json"
    path.write_text(json.dumps(raw))
    return path


_DELETE = object()


@pytest.mark.parametrize(("changes", "message"), [
    ({"colour": "blue"}, r"unknown key\(s\) \['colour'\]"),
    ({"data__missing__seed": _DELETE}, r"missing key\(s\) \['seed'\]"),
    ({"method": "nope"}, "unknown method 'nope'"),
    ({"method_options__prompt_lenght": 4}, r"method_options has unknown key\(s\) \['prompt_lenght'\]"),
    ({"method_options__prompt_length": "16"}, "method_options.prompt_length must be an integer"),
    ({"method_options__prompt_type": "sideways"}, "do not build a map config: prompt_type must be one of"),
    ({"training__learning_rate": "1e-2"}, "training.learning_rate must be a number"),
    ({"training__fp16": 1}, "training.fp16 must be true/false"),
    ({"training__learning_rat": 0.01}, r"training has unknown key\(s\) \['learning_rat'\]"),
    ({"training__gradient_accumulation_steps": 4}, "set training.effective_batch_size"),
    ({"training__effective_batch_size": _DELETE}, "training.effective_batch_size must be a positive integer"),
    ({"data__missing__rate": "high"}, "data.missing.rate must be a number"),
    ({"data__missing__protocol": "mine"}, "unknown protocol 'mine'"),
    ({"data__dataset": "imagenet"}, "unknown dataset 'imagenet'"),
    ({"data__metric": "accuracy"}, "mmimdb is evaluated as task 'multilabel' with metric 'f1_macro'"),
    ({"data__loader_options": {"plot": "all"}}, r"loader_options \['plot'\] are not options"),
    ({"model": []}, "model must be an object, got"),
    ({"name": "other"}, "'name' is 'other' but the file is map-mmimdb.json"),
])
def test_bad_preset_files_name_the_file_and_the_problem(tmp_path, changes, message):
    path = _write(tmp_path, **changes)
    with pytest.raises(PresetError, match=message) as info:
        hf_missing.load_preset(path)
    assert str(path) in str(info.value)


def test_unknown_preset_and_invalid_json(tmp_path):
    with pytest.raises(PresetError, match=r"Unknown preset 'map-imagenet'; available: \["):
        hf_missing.load_preset("map-imagenet")
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(PresetError, match=r"broken\.json: not valid JSON"):
        hf_missing.load_preset(path)
    path.write_text("[]")
    with pytest.raises(PresetError, match=r"broken\.json: the top level must be a JSON object, got list"):
        hf_missing.load_preset(path)


@pytest.mark.slow
def test_presets_ship_in_the_wheel(tmp_path):
    """A wheel carries hub_configs/*.json and load_preset finds them from site-packages."""
    source = tmp_path / "source"
    for part in ("hf_missing", "trainer_callbacks", "hub_configs"):
        shutil.copytree(REPO / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / part, source / part)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True)
    wheel = zipfile.ZipFile(next((tmp_path / "dist").glob("*.whl")))
    assert {f"hub_configs/{n}.json" for n in PRESETS} <= set(wheel.namelist())
    site = tmp_path / "site"
    wheel.extractall(site)
    code = ("import hf_missing, sys; assert hf_missing.__file__.startswith(sys.argv[1]), hf_missing.__file__; "
            "print(len(hf_missing.list_presets()), hf_missing.load_preset('map-mmimdb').method)")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code, str(site)], env=env, check=True, capture_output=True,
                         text=True, cwd=tmp_path)
    assert out.stdout.split() == [str(len(PRESETS)), "map"]
