"""trainer_callbacks: method diagnostics in the logs, the missing-rate curriculum, per-pattern evaluation, the model
card written at the end of training."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from huggingface_hub import ModelCard
from peft import get_peft_model
from transformers import Trainer, TrainerCallback, TrainerState, TrainingArguments

import hf_missing
from hf_missing import MissingModalityCollator, metrics, simulate_missing
from hf_missing.callbacks import (
    MethodDiagnosticsCallback,
    MissingRateCurriculumCallback,
    ModelCardCallback,
    RedrawMissingCallback,
    find_diagnostics_model,
    last_eval_results,
)
from hf_missing.data.synthetic import tiny_processor
from tests.conftest import make_model

REP_OPTIONS = {"prompt_length": 4, "prompt_depth": 2, "shared_dim": 8, "mlp_reduction": 4}


def _args(tmp_path, **overrides) -> TrainingArguments:
    settings = dict(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", per_device_train_batch_size=8,
                    per_device_eval_batch_size=16, learning_rate=1e-2, logging_steps=1, save_strategy="no",
                    remove_unused_columns=False, disable_tqdm=True)
    return TrainingArguments(**{**settings, **overrides})


class LogRecorder(TrainerCallback):
    """Keeps a copy of every ``logs`` dict it is handed."""

    def __init__(self) -> None:
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        self.logs.append(dict(logs))


# ---- MethodDiagnosticsCallback ---------------------------------------------------------------------------
def test_diagnostics_reach_logs_history_and_later_callbacks(shapes_missing, tmp_path):
    model = make_model("clip", "rep", **REP_OPTIONS)
    assert model.diagnostics(), "REP with replay exposes its gates"
    recorder = LogRecorder()
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=3), train_dataset=shapes_missing["train"],
                      data_collator=MissingModalityCollator(tiny_processor("clip")),
                      callbacks=[MethodDiagnosticsCallback(prefix="diag/"), recorder])
    trainer.train()
    final = {f"diag/{k}": v for k, v in model.diagnostics().items()}
    history = [h for h in trainer.state.log_history if "loss" in h]
    seen = [log for log in recorder.logs if "loss" in log]
    assert len(history) == len(seen) == 3
    assert all(set(final) <= set(h) for h in [*history, *seen])
    assert {k: history[-1][k] for k in final} == pytest.approx(final)  # logged after the last update
    assert history[0][next(iter(final))] != history[-1][next(iter(final))], "gates are trained, not constants"
    summary = [h for h in trainer.state.log_history if "train_runtime" in h]
    assert summary and not set(final) & set(summary[0])


def test_find_diagnostics_model_unwraps_peft_and_ddp_style_wrappers():
    model = make_model("clip", None)
    peft_model = get_peft_model(model, hf_missing.get_method_config("rep", **REP_OPTIONS))
    ddp_like = torch.nn.DataParallel(peft_model)  # same .module layout as DistributedDataParallel
    assert find_diagnostics_model(peft_model) is model
    assert find_diagnostics_model(ddp_like) is model
    assert find_diagnostics_model(ddp_like).diagnostics() == model.diagnostics() != {}
    with pytest.raises(TypeError, match="exposes no diagnostics"):
        find_diagnostics_model(torch.nn.Linear(2, 2))


def test_diagnostics_callback_rejects_a_model_without_the_hook_before_training(tmp_path):
    callback = MethodDiagnosticsCallback()
    with pytest.raises(TypeError, match="MethodDiagnosticsCallback"):
        callback.on_train_begin(_args(tmp_path), TrainerState(), None, model=torch.nn.Linear(2, 2))


# ---- MissingRateCurriculumCallback ----------------------------------------------------------------------
class RecordingCollator(MissingModalityCollator):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[int, float, list[int]]] = []

    def __call__(self, features):
        batch = super().__call__(features)
        self.seen.append((self.epoch, self.redraw_rate, batch["missing_type"].tolist()))
        return batch


def test_curriculum_raises_the_rate_per_epoch_in_training(shapes, tmp_path):
    train = simulate_missing(shapes["train"].select(range(32)), rate=0.0, protocol="per_epoch")
    collator = RecordingCollator(tiny_processor("clip"), redraw_rate=0.5)
    trainer = Trainer(model=make_model("clip", "map", prompt_length=4), args=_args(tmp_path, num_train_epochs=3),
                      train_dataset=train, data_collator=collator,
                      callbacks=[MissingRateCurriculumCallback(collator, start_rate=0.0, end_rate=1.0)])
    trainer.train()
    by_epoch = {e: ([r for ep, r, _ in collator.seen if ep == e], [c for ep, _, cs in collator.seen if ep == e
                                                                    for c in cs]) for e in range(3)}
    assert [set(rates) for rates, _ in by_epoch.values()] == [{0.0}, {0.5}, {1.0}]
    assert all(c == 0 for c in by_epoch[0][1]) and all(c != 0 for c in by_epoch[2][1])
    assert 0 < sum(c != 0 for c in by_epoch[1][1]) < 32
    assert sorted(set(by_epoch[2][1])) == [1, 2]


def test_curriculum_rate_is_a_function_of_the_epoch_only():
    collator = MissingModalityCollator(tiny_processor("clip"), redraw_rate=0.0)
    callback = MissingRateCurriculumCallback(collator, start_rate=0.1, end_rate=0.7, ramp_epochs=4)
    assert isinstance(callback, RedrawMissingCallback)
    assert [callback.rate(e, 10) for e in range(6)] == pytest.approx([0.1, 0.3, 0.5, 0.7, 0.7, 0.7])
    assert MissingRateCurriculumCallback(collator, 0.2, 0.6).rate(0, 1) == 0.6  # one epoch: the target rate
    resumed = TrainerState(epoch=2.625, num_train_epochs=10)  # what a run resumed mid-epoch 2 reports
    callback.on_epoch_begin(None, resumed, None)
    assert (collator.epoch, collator.redraw_rate) == (2, pytest.approx(0.5))


@pytest.mark.parametrize(("kwargs", "message"), [({"start_rate": -0.1}, "start_rate"),
                                                 ({"end_rate": 1.5}, "end_rate"),
                                                 ({"ramp_epochs": 0}, "ramp_epochs")])
def test_curriculum_rejects_bad_settings(kwargs, message):
    collator = MissingModalityCollator(tiny_processor("clip"), redraw_rate=0.0)
    with pytest.raises(ValueError, match=message):
        MissingRateCurriculumCallback(collator, **kwargs)
    with pytest.raises(ValueError, match="redraw_rate"):
        MissingRateCurriculumCallback(MissingModalityCollator(tiny_processor("clip")))


# ---- per-pattern evaluation: compute_metrics + Trainer's named eval sets, no callback needed -----------
def test_per_pattern_eval_on_named_test_settings_needs_no_callback(shapes, tmp_path):
    test = shapes["test"].select(range(16))
    settings = {"missing_text": simulate_missing(test, rate=1.0, pattern="text"),
                "mixed": simulate_missing(test, rate=0.5, pattern="both")}
    trainer = Trainer(model=make_model("clip", "map", prompt_length=4), args=_args(tmp_path), eval_dataset=settings,
                      data_collator=MissingModalityCollator(tiny_processor("clip")),
                      compute_metrics=metrics.for_task("single_label"))
    results = trainer.evaluate()
    assert results["eval_missing_text_missing_text/count"] == 16
    assert "eval_missing_text_complete/count" not in results
    assert [results[f"eval_mixed_{p}/count"] for p in ("complete", "missing_text", "missing_image")] == [8, 4, 4]
    assert {"eval_missing_text_accuracy", "eval_mixed_accuracy", "eval_mixed_missing_image/accuracy"} <= set(results)


# ---- ModelCardCallback ----------------------------------------------------------------------------------
def test_model_card_callback_writes_the_card_with_the_last_eval_results(shapes_missing, tmp_path):
    args = _args(tmp_path, max_steps=2, eval_strategy="steps", eval_steps=1)
    trainer = Trainer(model=make_model("vilt", "baseline"), args=args, train_dataset=shapes_missing["train"],
                      eval_dataset=shapes_missing["test"].select(range(16)),
                      data_collator=MissingModalityCollator(tiny_processor("vilt")),
                      compute_metrics=metrics.for_task("single_label"),
                      callbacks=[ModelCardCallback("me/shapes-baseline", dataset="shapes",
                                                   missing=shapes_missing["train"])])
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_accuracy" in h]
    assert len(evals) == 2
    folder = tmp_path / "out"
    assert (folder / "adapter_model.safetensors").is_file(), "the adapter is saved beside its card"
    card = ModelCard.load(folder / "README.md")
    assert card.data.model_name == "shapes-baseline"
    values = {(r.dataset_config, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert values[("all", "accuracy")] == pytest.approx(evals[-1]["eval_accuracy"])
    assert values[("missing_text", "accuracy")] == pytest.approx(evals[-1]["eval_missing_text/accuracy"])
    assert "0.7" in card.text and "baseline" in card.text


def test_model_card_callback_refreshes_an_existing_card_and_needs_a_dataset(tmp_path):
    model = make_model("clip", "map", prompt_length=4)
    model.save_pretrained(tmp_path)
    (tmp_path / "README.md").write_text("stale")
    state = TrainerState(log_history=[{"eval_accuracy": 0.25, "epoch": 1.0}, {"loss": 1.0},
                                      {"eval_accuracy": 0.5, "eval_loss": 0.7}, {"train_runtime": 1.0}])
    assert last_eval_results(state.log_history) == {"eval_accuracy": 0.5, "eval_loss": 0.7}
    ModelCardCallback("me/card", dataset="shapes", folder=tmp_path).on_train_end(_args(tmp_path), state, None)
    card = ModelCard.load(tmp_path / "README.md")
    assert [(r.dataset_config, r.metric_value) for r in card.data.eval_results] == [("all", 0.5)]
    ModelCardCallback("me/card", dataset="shapes", folder=tmp_path / "other").on_train_end(
        _args(tmp_path), TrainerState(is_world_process_zero=False), None)
    assert not (tmp_path / "other").exists(), "only the main process writes"
    with pytest.raises(ValueError, match="dataset"):
        ModelCardCallback("me/card", dataset="")


def test_trainer_callbacks_can_be_the_first_import():
    """hf_missing's __init__ imported trainer_callbacks eagerly, so a script starting with `import trainer_callbacks`
    hit a circular ImportError (trainer_callbacks -> hf_missing -> trainer_callbacks)."""
    code = "import trainer_callbacks, hf_missing; assert hf_missing.callbacks.ModelCardCallback"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
