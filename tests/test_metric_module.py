"""Metrics as an offline `evaluate` module: loadable by path, accumulating batches, combinable with
`evaluate.combine`, and the engine of `metrics.for_task` (issue 18 item 4)."""

import evaluate
import numpy as np
import pytest
from transformers import EvalPrediction

from hf_missing import metrics
from hf_missing.metrics import METRIC_MODULE, classification_metrics, load_metric, per_pattern_metrics

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(40, 3)).astype(np.float32)
LABELS = RNG.integers(0, 3, size=40)
CODES = RNG.integers(0, 3, size=40)
NAMES = ["complete", "missing_text", "missing_image"]

COUNT_SCRIPT = '''import datasets
import evaluate


class Count(evaluate.Metric):
    def _info(self):
        features = {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
        return evaluate.MetricInfo(description="", citation="", inputs_description="",
                                   features=datasets.Features(features))

    def _compute(self, predictions, references, **kwargs):
        return {"n": len(references)}
'''


def test_loaded_by_path_offline_it_gives_the_overall_and_per_pattern_metrics():
    """Catches: a module that needs the Hub, or whose numbers differ from the scikit-learn arithmetic."""
    module = evaluate.load(METRIC_MODULE, config_name="single_label", keep_in_memory=True)
    results = module.compute(predictions=LOGITS, references=LABELS, missing_type=CODES)
    expected = {**classification_metrics("single_label", LOGITS, LABELS),
                **per_pattern_metrics("single_label", LOGITS, LABELS, CODES, NAMES)}
    assert results.keys() == expected.keys()
    assert all(np.isclose(results[k], expected[k]) for k in expected)


def test_batches_accumulate_like_one_call():
    """Catches: add_batch losing the missing_type column or reordering samples across batches."""
    module = load_metric("single_label")
    for start in range(0, 40, 16):
        module.add_batch(predictions=LOGITS[start:start + 16], references=LABELS[start:start + 16],
                         missing_type=CODES[start:start + 16])
    assert module.compute() == load_metric("single_label").compute(predictions=LOGITS, references=LABELS,
                                                                   missing_type=CODES)


def test_it_combines_with_other_evaluate_modules(tmp_path):
    """Catches: a module evaluate.combine cannot join (wrong features or kwargs handling)."""
    (tmp_path / "count.py").write_text(COUNT_SCRIPT)
    combined = evaluate.combine([load_metric("single_label"),
                                 evaluate.load(str(tmp_path / "count.py"), keep_in_memory=True)])
    results = combined.compute(predictions=LOGITS, references=LABELS, missing_type=CODES)
    assert results["n"] == 40 and "missing_text/accuracy" in results


@pytest.mark.parametrize(("task", "logits", "labels"), [
    ("multilabel", LOGITS, (LOGITS > 0).astype(np.float32)),
    ("binary", LOGITS[:, :2], LABELS % 2),
])
def test_for_task_computes_through_the_module_for_every_task(task, logits, labels, monkeypatch):
    """Catches: for_task bypassing the evaluate module, or a task whose references the module's features reject."""
    calls = []
    original = evaluate.EvaluationModule.compute

    def spy(self, *args, **kwargs):
        """Records the module's task (evaluate appends the inputs description to this docstring)."""
        calls.append(self.config_name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(evaluate.EvaluationModule, "compute", spy)
    results = metrics.for_task(task)(EvalPrediction(predictions=(logits, CODES), label_ids=labels))
    assert calls == [task]
    expected = {**classification_metrics(task, logits, labels),
                **per_pattern_metrics(task, logits, labels, CODES, NAMES)}
    assert results.keys() == expected.keys()
    assert all(np.isclose(results[k], expected[k], equal_nan=True) for k in expected)


def test_without_missing_types_only_the_overall_metrics_are_reported():
    """Catches: a per-pattern breakdown invented from placeholder codes when the model returned none."""
    results = metrics.for_task("single_label")(EvalPrediction(predictions=LOGITS, label_ids=LABELS))
    assert results == pytest.approx(classification_metrics("single_label", LOGITS, LABELS))


def test_an_unknown_task_is_refused_before_loading():
    """Catches: a typo in the task reaching evaluate as a config name."""
    with pytest.raises(ValueError, match="Unknown task 'multi_label'"):
        load_metric("multi_label")
