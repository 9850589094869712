"""Precision: true positives over predicted positives (omnitune's offline metric module).

average: "binary" (default, pos_label=1), "macro", "micro", "weighted", or None for per-class.
"""

import datasets
import evaluate
from sklearn.metrics import precision_score


class Precision(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Precision: true positives over predicted positives.",
            citation="",
            inputs_description="predictions, references: lists of int labels",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, labels=None, pos_label=1, average="binary", sample_weight=None,
                 zero_division=0):
        value = precision_score(references, predictions, labels=labels, pos_label=pos_label, average=average,
                    sample_weight=sample_weight, zero_division=zero_division)
        return {"precision": value.tolist() if hasattr(value, "tolist") and getattr(value, "ndim", 0) else float(value)}
