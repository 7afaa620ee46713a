"""Bayesian uncertainty from Monte Carlo dropout.

>>> import mcdropout as mcd
>>> pred = mcd.predict(model, x, samples=100, task="regression", seed=0)  # doctest: +SKIP
>>> pred.mean, pred.std, pred.interval(0.95)  # doctest: +SKIP

The names below load on first use, so that ``import mcdropout.client`` does not
import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Bundle": "mcdropout.bundle",
    "BundleError": "mcdropout.bundle",
    "Manifest": "mcdropout.bundle",
    "load_bundle": "mcdropout.bundle",
    "save_bundle": "mcdropout.bundle",
    "MCPredictor": "mcdropout.engine",
    "predict": "mcdropout.engine",
    "DropConnect": "mcdropout.layers",
    "LockedDropout": "mcdropout.layers",
    "STOCHASTIC_TYPES": "mcdropout.engine",
    "is_stochastic": "mcdropout.engine",
    "mc_dropout": "mcdropout.engine",
    "ClassificationPrediction": "mcdropout.stats",
    "RegressionPrediction": "mcdropout.stats",
    "metrics": "mcdropout.stats.metrics",
    "MCDropoutError": "mcdropout.errors",
    "InputError": "mcdropout.errors",
    "acquire": "mcdropout.acquisition",
    "AdaptiveLevel": "mcdropout.stats.adaptive",
}

__all__ = [
    "STOCHASTIC_TYPES",
    "AdaptiveLevel",
    "Bundle",
    "BundleError",
    "ClassificationPrediction",
    "DropConnect",
    "InputError",
    "LockedDropout",
    "MCDropoutError",
    "MCPredictor",
    "Manifest",
    "RegressionPrediction",
    "acquire",
    "is_stochastic",
    "load_bundle",
    "mc_dropout",
    "metrics",
    "predict",
    "save_bundle",
]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from mcdropout.stats import metrics
    from mcdropout.bundle import Bundle, BundleError, Manifest, load_bundle, save_bundle
    from mcdropout.engine import MCPredictor, predict
    from mcdropout.layers import DropConnect, LockedDropout
    from mcdropout.errors import InputError, MCDropoutError
    from mcdropout.engine import STOCHASTIC_TYPES, is_stochastic, mc_dropout
    from mcdropout.stats import ClassificationPrediction, RegressionPrediction
    from mcdropout.acquisition import acquire
    from mcdropout.stats.adaptive import AdaptiveLevel


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mcdropout' has no attribute {name!r}")
    try:
        module = importlib.import_module(_EXPORTS[name])
    except ModuleNotFoundError as error:
        if (error.name or "").startswith("mcdropout."):  # the client distribution ships no library modules
            raise ModuleNotFoundError(f"mcdropout.{name} is part of the library, and only the client"
                                      " (mcdropout-client) is installed here: pip install mcdropout",
                                      name=error.name) from None
        raise
    value = module if name == "metrics" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
