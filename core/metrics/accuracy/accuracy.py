"""Accuracy: the share of predictions equal to their reference (omnitune's offline metric module)."""

import datasets
import evaluate
import numpy as np


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Share of predictions that equal the reference label.",
            citation="",
            inputs_description="predictions, references: lists of int labels",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        correct = np.asarray(predictions) == np.asarray(references)
        if sample_weight is not None:
            w = np.asarray(sample_weight, dtype=float)
            value = (correct * w).sum() / (w.sum() if normalize else 1.0)
        else:
            value = correct.mean() if normalize else correct.sum()
        return {"accuracy": float(value)}
