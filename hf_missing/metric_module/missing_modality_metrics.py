"""An offline ``evaluate`` metric: classification metrics overall and per missing-modality pattern.

Load it by path (it is never downloaded): ``evaluate.load(hf_missing.metrics.METRIC_MODULE, config_name=task)``
with ``task`` one of ``single_label``, ``multilabel``, ``binary``. Inputs: ``predictions`` (each sample's logits),
``references`` (class indices, or multi-hot rows for ``multilabel``) and ``missing_type`` (pattern codes). Pass
``modalities=`` to ``compute`` when the model has other modalities than text and image. ``regression`` and
``regression_sims`` take one real output per sample and real labels (MMSA's sentiment metrics). scikit-learn and scipy
do the arithmetic (:func:`hf_missing.metrics.classification_metrics`).
"""

import datasets
import evaluate
import numpy as np

from hf_missing.metrics import REGRESSION_TASKS, TASKS, classification_metrics, per_pattern_metrics
from hf_missing.missingness import DEFAULT_MODALITIES, ModalityPattern

_DESCRIPTION = __doc__
_CITATION = ""
_KWARGS_DESCRIPTION = """
Args:
    predictions: logits per sample, a list of floats each.
    references: class indices (single_label, binary), multi-hot rows (multilabel) or real labels (regression,
        regression_sims).
    missing_type: the sample's missing-pattern code (0 complete, 1 missing_text, 2 missing_image for text + image).
    modalities: the model's modalities in code order (default ("text", "image")).
    threshold: the sigmoid threshold of multi-label predictions (default 0.5).
Returns:
    the task's metrics overall, and "<pattern>/<metric>" plus "<pattern>/count" for each pattern present.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MissingModalityMetrics(evaluate.Metric):
    """Accuracy / F1 / AUROC (or MMSA's sentiment metrics) of a task, overall and per missing pattern."""

    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in TASKS:
            raise ValueError(f"config_name must be a task, one of {list(TASKS)}; got {self.config_name!r}.")
        reference = (datasets.Sequence(datasets.Value("float32")) if self.config_name == "multilabel"
                     else datasets.Value("float32") if self.config_name in REGRESSION_TASKS
                     else datasets.Value("int64"))
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32")),
                                        "references": reference, "missing_type": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, missing_type, modalities=DEFAULT_MODALITIES, threshold=0.5):
        logits = np.asarray(predictions, dtype=np.float32)
        labels = np.asarray(references)
        codes = np.asarray(missing_type, dtype=np.int64)
        names = ModalityPattern(tuple(modalities)).names
        return {**classification_metrics(self.config_name, logits, labels, threshold),
                **per_pattern_metrics(self.config_name, logits, labels, codes, names, threshold)}
