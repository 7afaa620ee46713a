"""Bayesian uncertainty from Monte Carlo dropout.

>>> import mcdropout as mcd
>>> pred = mcd.predict(model, x, samples=100, task="regression", seed=0)  # doctest: +SKIP
>>> pred.mean, pred.std, pred.interval(0.95)  # doctest: +SKIP
"""

from mcdropout import metrics
from mcdropout.engine import MCPredictor, predict
from mcdropout.layers import DropConnect, LockedDropout
from mcdropout.stochastic import STOCHASTIC_TYPES, is_stochastic, mc_dropout
from mcdropout.summary import ClassificationPrediction, RegressionPrediction

__all__ = [
    "ClassificationPrediction",
    "DropConnect",
    "LockedDropout",
    "MCPredictor",
    "RegressionPrediction",
    "STOCHASTIC_TYPES",
    "is_stochastic",
    "mc_dropout",
    "metrics",
    "predict",
]

__version__ = "0.1.0"
