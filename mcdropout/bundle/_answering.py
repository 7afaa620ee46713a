"""A bundle's calibrated answer: the one place where a calibration is applied.

Two steps, so that one engine run can answer several requests that ask different options (the
service's batcher merges them): ``Bundle.predict`` runs the T passes with the bundle's temperature and
turns them into the user's units with the sigma-scaling applied (:func:`user_units`); :func:`summarise` makes the plain
result (:mod:`mcdropout.answer`) at one interval level with the options asked: conformal intervals
(where calibrated, unless ``interval_method`` is ``"gaussian"``), prediction sets and abstention.
Each interval is computed once, by the method that answers it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from mcdropout.answer import (
    ClassificationResult,
    OptionError,
    Options,
    RegressionResult,
    Result,
    check_level,
    parse_options,
)
from mcdropout.stats import ClassificationPrediction, RegressionPrediction, normal_interval
from mcdropout.stats.adaptive import adapted_interval, adapted_sets

Manifest = Any  # a mcdropout.bundle.Manifest (not imported: the bundle module imports this one)


def options_for(manifest: Manifest, options: Options | Mapping[str, Any] | None, level: float) -> Options | None:
    """``options`` checked against the bundle (:func:`mcdropout.answer.parse_options`); None asks the defaults."""
    level = check_level(level)
    if isinstance(options, Options):
        options = {item.name: getattr(options, item.name) for item in dataclasses.fields(Options)
                   if getattr(options, item.name) != item.default}
    checked = parse_options(dict(options or {}), manifest, level)
    if checked is not None and checked.adaptive and checked.adapted_level is None:
        raise OptionError("adaptive", "adapts from outcomes the server holds; in the library give adapted_level,"
                                      " the level of a mcdropout.AdaptiveLevel (docs/adaptive.md)")
    return checked


def user_units(manifest: Manifest, prediction: Any, calibrated: bool) -> Any:
    """A regression prediction from standardised targets back in the user's units; with ``calibrated``,
    the variances sigma-scaled as the bundle's calibration says. Classifier predictions pass through."""
    if not isinstance(prediction, RegressionPrediction):
        return prediction
    target = manifest.target_standardisation
    scale = manifest.calibration.sigma_scale if calibrated and manifest.calibration is not None else None
    if target is None and scale is None:
        return prediction
    mean = torch.tensor([0.0] if target is None else target.mean, dtype=torch.float64)
    std = torch.tensor([1.0] if target is None else target.std, dtype=torch.float64)
    variance_std = std if scale is None else std * torch.tensor(scale, dtype=torch.float64)
    return dataclasses.replace(
        prediction,
        mean=prediction.mean if target is None else prediction.mean * std + mean,
        epistemic=prediction.epistemic * variance_std**2,
        aleatoric=prediction.aleatoric * variance_std**2,
        samples=None if prediction.samples is None or target is None else (prediction.samples * std + mean).float(),
    )


def summarise(manifest: Manifest, prediction: Any, level: float = 0.95, options: Options | None = None) -> Result:
    """The plain result of a calibrated ``Bundle.predict`` at ``level``, with ``options`` (already checked by
    :func:`options_for`; None: the raw MC numbers, Gaussian intervals)."""
    level = check_level(level)
    if isinstance(prediction, ClassificationPrediction):
        return _classification(manifest, prediction, options)
    return _regression(manifest, prediction, level, options)


def _rows(values: torch.Tensor, rows: int) -> np.ndarray:
    return values.reshape(rows, -1).numpy().astype(np.float64, copy=False)


def _common(manifest: Manifest, prediction: Any) -> dict[str, Any]:
    return {"model": manifest.name, "version": manifest.version, "seed": prediction.seed,
            "samples_used": prediction.num_samples.numpy().astype(np.int64, copy=False),
            "draws": _draws(prediction)}


def _draws(prediction: Any) -> np.ndarray | list[np.ndarray] | None:
    """The returned samples as (rows, T, outputs); with samples='auto' a list of each row's own draws."""
    if prediction.samples is None:
        return None
    rows = len(prediction.num_samples)
    draws = prediction.samples.reshape(rows, prediction.samples.shape[1], -1).numpy()
    counts = prediction.num_samples.tolist()
    if all(count == draws.shape[1] for count in counts):
        return draws
    return [row[:count] for row, count in zip(draws, counts)]


def _regression(manifest: Manifest, prediction: Any, level: float, options: Options | None) -> RegressionResult:
    rows = len(prediction.num_samples)
    means, epistemic, aleatoric = _rows(prediction.mean, rows), _rows(prediction.epistemic, rows), \
        _rows(prediction.aleatoric, rows)
    variance = epistemic + aleatoric
    std = np.sqrt(variance)
    calibration = manifest.calibration
    conformal = None if calibration is None else calibration.conformal
    adapted = None if options is None else options.adapted_level
    if adapted is not None:  # parse_options refuses it without a conformal calibration
        (lower, upper), method = adapted_interval(conformal, means, std, adapted), "conformal"
    elif options is not None and conformal is not None and options.interval_method != "gaussian":
        (lower, upper), method = conformal.interval(means, std, level), "conformal"
    else:
        (lower, upper), method = normal_interval(means, std, level), "gaussian"
    abstain = None
    if options is not None and options.abstains:
        abstain = np.zeros(rows, dtype=bool)
        if options.max_std is not None:
            abstain |= (std > options.max_std).any(axis=1)
        if options.max_interval_width is not None:
            abstain |= (upper - lower > options.max_interval_width).any(axis=1)
    return RegressionResult(
        **_common(manifest, prediction), outputs=manifest.output_names or [f"y{i}" for i in range(means.shape[1])],
        level=level, mean=means, std=std, variance=variance, epistemic_variance=epistemic,
        aleatoric_variance=aleatoric, lower=lower, upper=upper, abstain=abstain, interval_method=method,
        adapted_level=adapted,
    )


def _classification(manifest: Manifest, prediction: Any, options: Options | None) -> ClassificationResult:
    probs = prediction.probs.numpy()
    classes = manifest.class_names or [str(i) for i in range(probs.shape[1])]
    labels = prediction.label.numpy().astype(np.int64, copy=False)

    def vector(values: torch.Tensor) -> np.ndarray:
        return values.numpy().astype(np.float64, copy=False)

    result = ClassificationResult(
        **_common(manifest, prediction), classes=classes, probs=probs, label=labels,
        class_name=np.asarray([classes[i] for i in labels], dtype=object), entropy=vector(prediction.entropy),
        expected_entropy=vector(prediction.expected_entropy),
        mutual_information=vector(prediction.mutual_information), variation_ratio=vector(prediction.variation_ratio),
    )
    if options is None:
        return result
    calibration = manifest.calibration
    if options.set_level is not None:
        if options.adapted_level is not None:
            members = adapted_sets(calibration.sets, probs, options.adapted_level, options.set_method)
        else:
            members = calibration.sets.predict_sets(probs, options.set_level, options.set_method)
        result.prediction_set, result.set_size = members, members.sum(axis=1).astype(np.int64)
        result.set_level, result.adapted_level = options.set_level, options.adapted_level
    if options.max_risk is not None:
        statistics = {"probs": probs, "entropy": result.entropy, "mutual_information": result.mutual_information}
        result.abstain = calibration.selective.abstain(statistics, options.max_risk, options.abstain_score,
                                                       options.delta)
    return result
