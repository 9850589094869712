"""Mean squared error between predictions and references (omnitune's offline metric module)."""

import datasets
import evaluate
import numpy as np


class MSE(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Mean squared error.",
            citation="",
            inputs_description="predictions, references: lists of floats",
            features=datasets.Features({"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}),
        )

    def _compute(self, predictions, references):
        d = np.asarray(predictions, dtype=float) - np.asarray(references, dtype=float)
        return {"mse": float(np.mean((d ** 2)))}
