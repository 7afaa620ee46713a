"""Is a model better than a constant? Held-out R^2 against the training mean, accuracy against the majority class.

A network that collapsed to a constant (a bad scale, too much weight decay, too few epochs) still gives
intervals that can look calibrated; this comparison names it. ``train`` and ``evaluate`` record it in the
metrics as ``baseline`` and print its ``warning`` as one line.
"""

from __future__ import annotations

import numpy as np

from mcdropout.training import datasets

R2_FLOOR = 0.05  # held-out R^2 at or below it: no better than predicting the training mean


def compare(task: str, split: datasets.Split, metrics: dict) -> dict | None:
    """The model's held-out score beside the constant predictor's, fitted on the training part; a ``warning``
    when the model is no better. None without test rows or MC metrics."""
    scores = metrics.get("mc")
    if not scores or len(split.y_test) == 0 or len(split.y_train) == 0:
        return None
    rows = len(split.y_test)
    if task == "regression":
        y = np.asarray(split.y_test, dtype=np.float64).reshape(rows, -1)
        training_mean = np.asarray(split.y_train, dtype=np.float64).reshape(len(split.y_train), -1).mean(axis=0)
        spread = float(np.mean((y - training_mean) ** 2))
        r2 = 1.0 - scores["rmse"] ** 2 / spread if spread > 0 else float("nan")
        result: dict = {"r2": r2, "constant_rmse": spread ** 0.5, "against": "the training mean"}
        if not r2 > R2_FLOOR:
            result["warning"] = (f"the model is no better than predicting the training mean: held-out R^2 {r2:.3f}"
                                 f" <= {R2_FLOOR} on {rows} test rows (RMSE {scores['rmse']:.4g}, the mean's"
                                 f" {spread ** 0.5:.4g})")
        return result
    labels = np.asarray(split.y_test).astype(np.int64)
    majority = int(np.bincount(np.asarray(split.y_train).astype(np.int64)).argmax())
    rate = float(np.mean(labels == majority))
    result = {"accuracy": scores["accuracy"], "majority_class_accuracy": rate, "majority_class": majority,
              "against": "the training part's most frequent class"}
    if not scores["accuracy"] > rate:
        result["warning"] = (f"the model is no better than always answering the majority class: held-out accuracy"
                             f" {scores['accuracy']:.3f} <= {rate:.3f} on {rows} test rows")
    return result
