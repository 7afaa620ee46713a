"""Bayesian uncertainty from Monte Carlo dropout.

>>> import mcdropout as mcd
>>> pred = mcd.predict(model, x, samples=100, task="regression", seed=0)  # doctest: +SKIP
>>> pred.mean, pred.std, pred.interval(0.95)  # doctest: +SKIP
"""

from mcdropout import metrics
from mcdropout.bundle import Bundle, BundleError, Manifest, load_bundle, save_bundle
from mcdropout.engine import MCPredictor, predict
from mcdropout.layers import DropConnect, LockedDropout
from mcdropout.stochastic import STOCHASTIC_TYPES, is_stochastic, mc_dropout
from mcdropout.summary import ClassificationPrediction, RegressionPrediction

__all__ = [
    "Bundle",
    "BundleError",
    "ClassificationPrediction",
    "DropConnect",
    "LockedDropout",
    "MCPredictor",
    "Manifest",
    "RegressionPrediction",
    "STOCHASTIC_TYPES",
    "is_stochastic",
    "load_bundle",
    "mc_dropout",
    "metrics",
    "predict",
    "save_bundle",
]

__version__ = "0.1.0"
