"""The MC dropout engine: T stochastic passes as one batched computation.

Public here: :class:`MCPredictor`, :func:`predict` and the MC mode switch
:func:`mc_dropout`; everything in the ``_`` modules is internal.
"""

from mcdropout.engine._modes import STOCHASTIC_TYPES, is_stochastic, mc_dropout, stochastic_modules
from mcdropout.engine._predictor import ArrayLike, MCPredictor, Prediction, Task, parse_bytes, predict, resolve_device

__all__ = [
    "STOCHASTIC_TYPES",
    "ArrayLike",
    "MCPredictor",
    "Prediction",
    "Task",
    "is_stochastic",
    "mc_dropout",
    "parse_bytes",
    "predict",
    "resolve_device",
    "stochastic_modules",
]
