"""A bundle's calibration fitted from its own raw predictions on held-out rows (see mcdropout.stats.calibration)."""

from __future__ import annotations

import functools

import numpy as np

from mcdropout.bundle._bundle import Bundle, Manifest  # noqa: F401 (Bundle: the type of fit_bundle's argument)
from mcdropout.errors import InputError
from mcdropout.stats import calibration as cal

CHUNK_ROWS = 2048


def fit_bundle(bundle: Bundle, x: np.ndarray, y: np.ndarray, *, source: str = "", samples: int | None = None,
               seed: int = 0, delta: float = 0.1) -> cal.Calibration:
    """The calibration of ``bundle`` on rows ``x`` (user units, the model's input shape) and true values ``y``.

    Predicts with the bundle's raw numbers (any calibration it has is ignored); ``y``: targets (rows,) or
    (rows, outputs) for regression, class indices or names for classifiers. The bundle is not changed:
    ``dataclasses.replace(bundle.manifest, calibration=...)`` and :func:`write_manifest` or ``save_bundle``.
    """
    manifest = bundle.manifest
    raw = functools.partial(bundle.predict, calibrated=False)  # no temperature, no sigma-scaling
    if manifest.task == "regression":
        means, stds = [], []
        for start in range(0, len(x), CHUNK_ROWS):
            prediction = raw(x[start:start + CHUNK_ROWS], samples=samples, seed=seed)
            means.append(prediction.mean.reshape(prediction.mean.shape[0], -1).numpy())
            stds.append(prediction.std.reshape(prediction.mean.shape[0], -1).numpy())
        return cal.fit_regression(np.concatenate(means), np.concatenate(stds), y, source=source)
    log_probs = []  # the samples' log-probabilities serve as their logits (a softmax ignores a per-row shift)
    for start in range(0, len(x), CHUNK_ROWS):
        prediction = raw(x[start:start + CHUNK_ROWS], samples=samples, seed=seed, return_samples=True)
        probs = prediction.samples.numpy().astype(np.float64)  # (rows, T, classes)
        log_probs.append(np.log(np.maximum(probs, np.finfo(np.float64).tiny)))
    return cal.fit_classification(np.concatenate(log_probs), _class_indices(manifest, np.asarray(y)),
                                  source=source, delta=delta)


def _class_indices(manifest: Manifest, y: np.ndarray) -> np.ndarray:
    names = manifest.class_names or []
    if y.dtype == object:
        lookup = {name: index for index, name in enumerate(names)}
        unknown = sorted({str(v) for v in y if v not in lookup})
        if unknown:
            raise InputError(f"labels {', '.join(map(repr, unknown[:5]))} are not classes of {manifest.name}"
                             f" ({', '.join(names)})")
        return np.asarray([lookup[v] for v in y], dtype=np.int64)
    y = np.asarray(y, dtype=np.float64)
    if not np.all(y == np.round(y)) or y.min() < 0 or y.max() >= len(names):
        raise InputError(f"labels must be class indices 0..{len(names) - 1} or class names of {manifest.name};"
                         f" got values {y.min():g}..{y.max():g}")
    return y.astype(np.int64)
