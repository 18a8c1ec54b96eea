import numpy as np
from sklearn.metrics import f1_score, roc_auc_score
from transformers import EvalPrediction

from hf_missing import metrics


def test_multilabel_thresholds_sigmoid_at_half():
    logits = np.array([[2.0, -1.0, 0.1], [-3.0, 0.5, -0.2], [1.0, 1.0, -1.0]])
    labels = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 0]])
    predictions = (logits >= 0).astype(int)
    out = metrics.classification_metrics("multilabel", logits, labels)
    for avg in ("macro", "micro", "samples", "weighted"):
        assert out[f"f1_{avg}"] == f1_score(labels, predictions, average=avg, zero_division=0)


def test_binary_auroc_on_softmax():
    logits = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 0.2], [0.3, 0.0]])
    labels = np.array([1, 0, 1, 1])
    scores = np.exp(logits[:, 1]) / np.exp(logits).sum(1)
    assert metrics.classification_metrics("binary", logits, labels)["auroc"] == roc_auc_score(labels, scores)


def test_per_pattern_breakdown_from_model_outputs():
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 0.0]])
    labels = np.array([0, 1, 1, 0])
    codes = np.array([0, 0, 2, 1])
    out = metrics.for_task("single_label")(EvalPrediction(predictions=(logits, codes), label_ids=labels))
    assert out["accuracy"] == 0.75
    assert out["complete/accuracy"] == 1.0 and out["missing_image/accuracy"] == 0.0
    assert out["missing_text/count"] == 1.0
