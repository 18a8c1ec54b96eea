"""The three-modality demo (``--task speech``): tiny fused backbone with an audio modality + shapes data with audio
frames (fast), the real spoken emoji set (slow)."""

import json
from pathlib import Path

import numpy as np
import pytest

from hf_missing import MissingModalityCollator
from hf_missing import demo as demo_module
from hf_missing.backbones.fused import FusedProcessor
from hf_missing.backbones.tiny import tiny_backbone, tiny_dataset, tiny_processor
from hf_missing.data.modalities import FeatureInputs
from hf_missing.data.simulate import ONLY_PREFIX
from hf_missing.data.synthetic import AUDIO_WIDTH
from hf_missing.demo import (
    DEMO_TASKS,
    DemoSettings,
    DemoTask,
    Workspace,
    aggregate,
    demo_preset,
    prepare,
    table2_columns,
    train_and_evaluate,
    write_benchmark,
    write_outputs,
)
from hf_missing.evaluation import PatternPredictions
from hf_missing.missingness import DEFAULT_MODALITIES, MISSING_TYPE_COLUMN, ModalityPattern

TINY_OPTIONS = {"rep": {"prompt_length": 4, "prompt_depth": 2, "shared_dim": 8, "mlp_reduction": 4}}
MODALITIES = ("text", "image", "audio")
TABLE2 = ["text-only 70%", "image-only 70%", "audio-only 70%", "text-missing 70%", "image-missing 70%",
          "audio-missing 70%", "mixed 70%"]


def _tiny_task() -> DemoTask:
    return DemoTask("speech", DEMO_TASKS["speech"].description, {"audio": AUDIO_WIDTH})


def _collator() -> MissingModalityCollator:
    return MissingModalityCollator(tiny_processor("fused"),
                                   modalities=[*DEFAULT_MODALITIES, FeatureInputs("audio", AUDIO_WIDTH)])


@pytest.fixture(scope="module")
def speech_workspace(tmp_path_factory):
    data = tiny_dataset("fused_audio", n_train=64, n_test=40)
    folder = tmp_path_factory.mktemp("fused_audio")
    tiny_backbone("fused_audio").save_pretrained(folder)
    return Workspace(data, folder, _collator(), data["train"].features["label"].names, task=_tiny_task())


def test_three_modality_pipeline_reports_rep_table2(speech_workspace, tmp_path):
    """Catches: a three-modality demo that still reports the two-modality columns (missing text / missing image
    only), drops the 'only_<m>' curves, or reads a column off the wrong pattern or rate (each cell must be the mean
    over seeds of that pattern's curve at 70%)."""
    settings = DemoSettings(output_dir=str(tmp_path), methods=["baseline", "rep"], epochs=1, progress=False,
                            method_options=TINY_OPTIONS, task="speech")
    runs = {m: [train_and_evaluate(m, speech_workspace, settings, seed, "both") for seed in (0, 1)]
            for m in settings.methods}
    methods = aggregate(runs)
    rep = methods["rep"]
    assert set(rep["curves"]) == {"text", "image", "audio", "only_text", "only_image", "only_audio", "both"}
    assert {"complete", "missing_audio", "missing_text_image"} <= set(rep["per_pattern"])
    for pattern in rep["curves"]:
        assert rep["at_70"][pattern] == pytest.approx(
            np.mean([r["curves"][pattern][7]["accuracy"] for r in runs["rep"]]))
    write_outputs({"settings": {"train_rate": 0.7, "train_pattern": "both", "seeds": [0, 1], "task": "speech"},
                   "methods": methods}, tmp_path, title="test")
    report = (tmp_path / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| method"))
    assert [c.strip() for c in header.split("|")[2:10]] == ["complete", *TABLE2]
    row = next(line for line in report.splitlines() if line.startswith("| rep |"))
    cells = [c.strip() for c in row.split("|")[3:10]]
    expected = [rep["at_70"][p] for p, _ in table2_columns(MODALITIES)]
    assert [float(c.split(" ± ")[0]) for c in cells] == pytest.approx(expected, abs=1e-3)
    assert "spoken emoji" in report and (tmp_path / "robustness.png").stat().st_size > 1000
    assert json.loads((tmp_path / "results.json").read_text())["methods"]["rep"]["at_70"]["only_audio"] >= 0
    write_benchmark({"settings": {"task": "speech", "train_rate": 0.7, "seeds": [0, 1],
                                  "precisions": {"baseline": "bf16", "rep": "bf16"}},
                     "grid": {"only_audio": methods}}, tmp_path)
    benchmark = (tmp_path / "benchmark.md").read_text()
    assert "trained with 70% missing 'only_audio'" in benchmark and "| audio-only 70% |" in benchmark
    assert "Seeds [0, 1], in bf16;" in benchmark


@pytest.mark.parametrize(("pattern", "heading"), table2_columns(MODALITIES))
def test_each_table2_column_tests_the_stated_modalities(speech_workspace, pattern, heading):
    """Catches: a column whose test samples do not lack what its heading says, e.g. 'audio-only' built from
    pattern 'audio' (audio missing) or the placeholders never reaching the model: at 70% the collated test batch
    has exactly 70% of its samples incomplete, each with the stated modality placeholder-filled (or, for
    '<m>-only', every other modality), and the rest complete."""
    test = speech_workspace.data["test"]
    patterns = ModalityPattern(MODALITIES)
    dummy = {name: np.zeros((len(test), 2)) for name in patterns.names}
    codes = PatternPredictions(dummy, np.zeros(len(test)), "single_label", patterns).codes_at(0.7, pattern)
    collator = speech_workspace.collator
    batch = collator([test[i] | {MISSING_TYPE_COLUMN: int(code)} for i, code in enumerate(codes)])
    missing = np.stack([m.is_placeholder(batch).numpy() for m in collator.inputs], axis=1)
    incomplete = missing.any(axis=1)
    assert incomplete.sum() == round(0.7 * len(test))
    kept = pattern.removeprefix(ONLY_PREFIX)
    stated = ([m != kept for m in MODALITIES] if pattern.startswith(ONLY_PREFIX)
              else [m == pattern for m in MODALITIES])
    if pattern == "both":
        assert len({tuple(row) for row in missing[incomplete]}) == 6  # every incomplete pattern occurs
    else:
        assert (missing[incomplete] == stated).all(), heading


def test_prepare_aligns_the_speech_backbone_with_audio(monkeypatch, tmp_path):
    """Catches: the speech task aligned (and cached) as a text + image backbone, so the audio frame embedding stays
    random and the checkpoint shares the emoji one's folder, or a collator that does not know the audio modality."""
    data = tiny_dataset("fused_audio", n_train=16, n_test=8)
    folder = tmp_path / "fused"
    tiny_backbone("fused_audio").save_pretrained(folder)
    parts = tiny_processor("fused")
    FusedProcessor(parts.tokenizer, parts.image_processor).save_pretrained(folder)
    calls = []

    def build(cache, dataset, feature_modalities=None):
        calls.append(feature_modalities)
        return folder

    monkeypatch.setattr(DemoTask, "load", lambda self, cache: data)
    monkeypatch.setattr(demo_module, "build_fused_backbone", build)
    work = prepare(DemoSettings(methods=["baseline"], task="speech", train_limit=8))
    assert calls == [{"audio": 96}] and [m.name for m in work.collator.inputs] == list(MODALITIES)
    assert len(work.data["train"]) == 8 and work.task.modalities == MODALITIES
    prepare(DemoSettings(methods=["baseline"]))
    assert calls[-1] is None  # text + image: aligned exactly as before


def test_speech_task_trains_rep_with_its_vla_preset():
    """Catches: the speech task silently training REP with the text + image demo preset (the VLA settings unused),
    or an unknown task accepted."""
    preset = demo_preset("rep", task="speech")
    assert preset.name == "rep-speech-demo" and preset.data.dataset == "emoji_speech"
    assert (preset.method_config.prompt_length, preset.method_config.prompt_depth) == (12, 6)
    assert demo_preset("map", task="speech").name == "map-demo"
    with pytest.raises(ValueError, match="Unknown demo task"):
        demo_preset("rep", task="video")


@pytest.mark.slow
def test_cli_speech_demo_on_real_assets_tiny_subset(tmp_path):
    from hf_missing.cli import main

    assert main(["demo", "--task", "speech", "--methods", "baseline", "rep", "--epochs", "1", "--train-limit", "64",
                 "--test-limit", "32", "--output-dir", str(tmp_path), "--no-progress"]) == 0
    assert "audio-only 70%" in (tmp_path / "report.md").read_text()


def test_cli_task_speech_reaches_the_settings_and_its_own_output_folder(monkeypatch, tmp_path):
    """Catches: ``--task speech`` parsed but not passed on (the emoji demo runs instead), or its default output
    folder overwriting the emoji demo's runs/demo."""
    from hf_missing.cli import main

    seen = []

    def run(settings):
        seen.append(settings)
        Path(settings.output_dir).mkdir(parents=True)
        (Path(settings.output_dir) / "report.md").write_text("report")

    monkeypatch.setattr(demo_module, "run_demo", run)
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--task", "speech", "--methods", "baseline", "--no-progress"]) == 0
    assert seen[0].task == "speech" and seen[0].output_dir == "runs/demo-speech"
    with pytest.raises(SystemExit):
        main(["demo", "--task", "video"])
