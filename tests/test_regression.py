"""Sentiment regression: the wrapper's regression head (``problem_type="regression"``), the collator's real targets,
and MMSA's MOSI / MOSEI / CH-SIMS metrics checked against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from datasets import Value
from transformers import EvalPrediction, Trainer, TrainingArguments

import hf_missing
from hf_missing import MissingModalityCollator, MissingModalityForClassification, predict_patterns, simulate_missing
from hf_missing.backbones.tiny import tiny_backbone, tiny_processor
from hf_missing.data.synthetic import shapes_dataset
from hf_missing.loading import AdapterLoadError, check_settings
from hf_missing.metrics import classification_metrics, for_task
from hf_missing.training import task_of

MODALITIES = ("text", "image", "audio")
MAP_OPTIONS = {"prompt_length": 2, "prompt_depth": 2}


# ---- metrics -------------------------------------------------------------------------------------------------------
LABELS = np.array([2.4, -0.6, 0.0, 1.0, -3.5])
PREDICTIONS = np.array([1.6, 0.2, -0.4, 1.0, -2.6])


def test_mosi_metrics_match_hand_computed_values():
    """Catches metrics that differ from MMSA's metricsTop (__eval_mosei_regression): Non0 must drop label-0 samples
    and use > 0, Has0 must keep them and use >= 0 (so label 0 counts as positive), F1 is weighted, Acc-7 rounds
    clip(x, -3, 3) (an unclipped -3.5 would round to -4 and miss), and MAE uses the unclipped values."""
    out = classification_metrics("regression", PREDICTIONS[:, None], LABELS)
    # |0.8| + |0.8| + |0.4| + 0 + |0.9| over 5
    assert out["mae"] == pytest.approx(0.58)
    assert out["corr"] == pytest.approx(np.corrcoef(PREDICTIONS, LABELS)[0, 1])
    # non-zero labels (0, 1, 3, 4): truth > 0 = T F T F, prediction > 0 = T T T F
    assert out["acc2_non0"] == pytest.approx(0.75)
    assert out["f1_non0"] == pytest.approx((2 * 0.8 + 2 * 2 / 3) / 4)  # F1(T) = 0.8, F1(F) = 2/3, two each
    # every label: truth >= 0 = T F T T F, prediction >= 0 = T T F T F
    assert out["acc2_has0"] == pytest.approx(0.6)
    assert out["f1_has0"] == pytest.approx((3 * 2 / 3 + 2 * 0.5) / 5)
    # round(clip(x, -3, 3)): truth 2 -1 0 1 -3, prediction 2 0 -0 1 -3
    assert out["acc7"] == pytest.approx(0.8)
    assert out["acc5"] == pytest.approx(0.8)  # clip(x, -2, 2): truth 2 -1 0 1 -2, prediction 2 0 0 1 -2


def test_sims_metrics_match_hand_computed_values():
    """Catches CH-SIMS metrics computed like MOSI's: MMSA clips both sides to [-1, 1] first (MAE of the clipped
    values), and its classes are right-closed intervals ((-0.1, 0.1] holds 0.1, so a prediction of 0.1 is neutral,
    not positive)."""
    labels = np.array([0.8, -0.2, 0.0, 0.05, -1.0])
    predictions = np.array([1.4, 0.1, -0.3, 0.6, -0.8])  # clipped: 1.0 0.1 -0.3 0.6 -0.8
    out = classification_metrics("regression_sims", predictions, labels)
    assert out["acc2"] == pytest.approx(0.8)  # truth > 0: 1 0 0 1 0, prediction: 1 1 0 1 0
    assert out["f1"] == pytest.approx(0.8)  # F1 = 0.8 for both classes
    assert out["acc3"] == pytest.approx(0.4)  # truth 2 0 1 1 0, prediction 2 1 0 2 0
    assert out["acc5"] == pytest.approx(0.4)  # truth 4 1 2 2 0, prediction 4 2 1 3 0
    assert out["mae"] == pytest.approx((0.2 + 0.3 + 0.3 + 0.55 + 0.2) / 5)
    clipped = np.clip(predictions, -1, 1)
    assert out["corr"] == pytest.approx(np.corrcoef(clipped, labels)[0, 1])


def test_regression_metrics_are_nan_where_undefined_and_refuse_several_outputs():
    """Catches a correlation of constant predictions reported as a number (or a warning storm), a Non0 accuracy
    over no sample reported as 0 or 1, and a [N, 2] output silently flattened into twice the samples."""
    out = classification_metrics("regression", np.zeros(3), np.array([0.0, 0.0, 0.0]))
    assert math.isnan(out["corr"]) and math.isnan(out["acc2_non0"]) and out["acc2_has0"] == 1.0
    with pytest.raises(ValueError, match="one output and one label per sample"):
        classification_metrics("regression", np.zeros((3, 2)), np.zeros(3))


def test_for_task_regression_breaks_down_per_pattern():
    """Catches the evaluate module declaring integer references for regression (the labels would be truncated to
    ints) and a per-pattern breakdown that mixes the patterns' samples."""
    compute = for_task("regression", modalities=MODALITIES)
    codes = np.array([0, 0, 1, 1, 1])
    out = compute(EvalPrediction(predictions=(PREDICTIONS[:, None], codes), label_ids=LABELS))
    assert out["mae"] == pytest.approx(0.58)
    assert out["complete/mae"] == pytest.approx(0.8) and out["complete/count"] == 2
    assert out["missing_text/mae"] == pytest.approx((0.4 + 0.0 + 0.9) / 3)


# ---- model ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sentiment():
    """Tiny text + image + audio data with real sentiment labels in [-3, 3] and every missing pattern drawn."""
    data = shapes_dataset(n_train=16, n_test=8, seed=0, audio=True)
    data = data.map(lambda row: {"label": row["label"] * 1.5 - 2.25}).cast_column("label", Value("float32"))
    return simulate_missing(data, rate=0.7, pattern="both", modalities=MODALITIES, seed=0)


def _model(loss: str = "mse", method: str | None = "map") -> MissingModalityForClassification:
    model = MissingModalityForClassification.from_backbone(tiny_backbone("fused_audio"), num_labels=1,
                                                           problem_type="regression", regression_loss=loss)
    if method:
        model.add_adapter(hf_missing.get_method_config(method, **MAP_OPTIONS))
    return model


def _collator(model) -> MissingModalityCollator:
    return MissingModalityCollator(tiny_processor("fused_audio"), modalities=model.interface.inputs, regression=True)


@pytest.mark.parametrize(("loss", "reference"), [("mse", torch.nn.functional.mse_loss),
                                                 ("l1", torch.nn.functional.l1_loss)])
def test_regression_loss_is_mse_or_l1_of_one_output(sentiment, loss, reference):
    """Catches a regression head that trains with cross-entropy or BCE (the classification default for
    num_labels=1), truncates real targets to class indices, or ignores regression_loss='l1' (MMSA's and MulT's
    nn.L1Loss)."""
    model = _model(loss).eval()
    batch = _collator(model)([sentiment["train"][i] for i in range(6)])
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == pytest.approx([sentiment["train"][i]["label"] for i in range(6)])
    out = model(**batch)
    assert out.logits.shape == (6, 1)
    assert out.loss.item() == pytest.approx(reference(out.logits.view(-1), batch["labels"]).item(), rel=1e-5)


def test_regression_trains_one_trainer_step_and_evaluates_per_pattern(sentiment, tmp_path):
    """Catches a regression head Trainer cannot train (float labels refused, a loss of the wrong shape) and an
    evaluation whose compute_metrics ignores the regression task or the audio patterns."""
    model = _model("l1")
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", max_steps=1,
                             per_device_train_batch_size=8, per_device_eval_batch_size=8, remove_unused_columns=False,
                             save_strategy="no", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=sentiment["train"], eval_dataset=sentiment["test"],
                      data_collator=_collator(model), compute_metrics=for_task("regression", modalities=MODALITIES))
    result = trainer.train()
    assert result.global_step == 1 and math.isfinite(result.training_loss) and result.training_loss > 0
    metrics = trainer.evaluate()
    assert {"eval_mae", "eval_corr", "eval_acc2_non0", "eval_f1_has0", "eval_acc7"} <= set(metrics)
    assert any(k.endswith("/mae") for k in metrics)


def test_predict_patterns_reports_regression_metrics_per_pattern(sentiment):
    """Catches predict_patterns (and its collator) handling only class indices: every pattern of the three
    modalities gets MMSA's metrics computed from the same outputs."""
    model = _model(method=None)
    predictions = predict_patterns(model, sentiment["test"], _collator(model), "regression", progress=False)
    rows = predictions.per_pattern()
    assert len(rows) == 7 and all({"mae", "acc7", "acc2_non0"} <= set(row) for row in rows.values())
    assert predictions.labels.dtype == np.float32


def test_regression_settings_survive_an_adapter_round_trip(tmp_path):
    """Catches problem_type='regression' or regression_loss lost when an adapter is saved and reloaded (the reloaded
    head would train with MSE, or classify)."""
    backbone = tmp_path / "backbone"
    tiny_backbone("fused_audio").save_pretrained(backbone)
    model = MissingModalityForClassification.from_pretrained(str(backbone), adapter="map", adapter_options=MAP_OPTIONS,
                                                             num_labels=1, problem_type="regression",
                                                             regression_loss="l1")
    model.save_pretrained(tmp_path / "adapter")
    loaded = MissingModalityForClassification.from_pretrained(str(tmp_path / "adapter"))
    assert loaded.config.problem_type == "regression" and loaded.config.regression_loss == "l1"
    assert task_of(loaded) == "regression"


def test_bad_regression_settings_and_targets_are_refused(sentiment):
    """Catches an unknown regression loss accepted (silently MSE), a hostile adapter setting reaching the config,
    fractional labels truncated by a classification collator, and NaN targets reaching the loss."""
    with pytest.raises(ValueError, match=r"regression_loss must be one of \['mse', 'l1'\]"):
        _model("huber", method=None)
    settings = {"num_labels": 1, "modalities": list(MODALITIES), "problem_type": "regression",
                "regression_loss": "huber"}
    with pytest.raises(AdapterLoadError, match="regression_loss"):
        check_settings(settings, "adapter_config.json")
    model = _model(method=None)
    rows = [sentiment["train"][i] for i in range(2)]
    with pytest.raises(ValueError, match="regression=True"):
        MissingModalityCollator(tiny_processor("fused_audio"), modalities=model.interface.inputs)(rows)
    rows[1] = {**rows[1], "label": float("nan")}
    with pytest.raises(ValueError, match=r"samples \[1\] are NaN"):
        _collator(model)(rows)
    batch = _collator(model)([sentiment["train"][i] for i in range(2)])
    with pytest.raises(ValueError, match="num_labels=1 value"):
        model(**{**batch, "labels": torch.zeros(2, 3)})


def test_a_regression_preset_trains_saves_and_evaluates_end_to_end(sentiment, tmp_path):
    """Catches the training helpers building a classification head and a class-index collator for a regression
    task (float labels refused or truncated), and evaluate_adapter reporting classification metrics for a
    regression adapter."""
    from hf_missing.backbones.fused import FusedProcessor
    from hf_missing.presets import method_preset
    from hf_missing.training import build_training, evaluate_adapter, train_and_save

    backbone = tmp_path / "backbone"
    tiny_backbone("fused_audio").save_pretrained(backbone)
    parts = tiny_processor("fused_audio")
    FusedProcessor(parts.tokenizer, parts.image_processor).save_pretrained(backbone)
    raw = sentiment.remove_columns("missing_type")
    preset = method_preset("map", MAP_OPTIONS).with_settings(dataset="sentiment", task="regression")
    run = build_training(preset, raw, tmp_path / "run", backbone=str(backbone), max_steps=1, eval_strategy="no",
                         per_device_train_batch_size=8, disable_tqdm=True, fp16=False)
    assert run.model.config.problem_type == "regression" and run.model.config.num_labels == 1
    report = train_and_save(run)
    assert "eval_mae" in report["eval"]
    summary = evaluate_adapter(report["adapter_dir"], None, raw, rates=(0.0, 1.0))
    assert summary["task"] == "regression" and "acc2_non0" in summary["per_pattern"]["complete"]


def test_pipeline_returns_a_regression_heads_value(tmp_path):
    """Catches the pipeline squashing a regression output through a sigmoid (every sentiment would read as a
    probability in (0, 1))."""
    from transformers import pipeline

    from hf_missing.backbones.fused import FusedProcessor
    from hf_missing.pipeline import TASK

    tiny_backbone("fused").save_pretrained(tmp_path / "backbone")
    parts = tiny_processor("fused")
    FusedProcessor(parts.tokenizer, parts.image_processor).save_pretrained(tmp_path / "backbone")
    model = MissingModalityForClassification.from_pretrained(str(tmp_path / "backbone"), adapter="map",
                                                             adapter_options=MAP_OPTIONS, num_labels=1,
                                                             problem_type="regression")
    with torch.no_grad():
        model.head.out.bias.fill_(-2.5)  # a strongly negative sentiment, outside (0, 1)
    model.save_pretrained(tmp_path / "adapter")
    text = shapes_dataset(n_train=1, n_test=1, seed=0)["test"][0]["text"]
    [out] = pipeline(TASK, model=str(tmp_path / "adapter"))({"text": text})
    loaded = MissingModalityForClassification.from_pretrained(str(tmp_path / "adapter")).eval()
    collator = MissingModalityCollator(FusedProcessor.from_pretrained(str(tmp_path / "backbone")),
                                       modalities=loaded.interface.inputs)
    expected = loaded(**collator([{"text": text, "image": None, "missing_type": "missing_image"}])).logits.item()
    assert out["score"] == pytest.approx(expected, abs=1e-5) and expected < 0
