"""Calibration targets on the shipped digits model's held-out rows (issue 18), beside MAPIE.

The digits bundle never trained on its calibration (270) and test (359) rows of sklearn's 1,797. Each of
``--splits`` random halvings of the test rows calibrates on one half and is scored on the other:

- temperature scaling: ECE (15 bins) before and after, and NLL;
- conformal prediction sets at 90% (LAC and APS): coverage and mean size, beside MAPIE's split-conformal
  LAC sets on the same MC-averaged probabilities and the same halves;
- selective classification at max_risk 0.02 (delta 0.1, score 1 - max prob): how often the accepted rows'
  error is within 0.02, and the accepted fraction.

ECE on 180 rows is mostly noise (one error moves it by 0.0056), so the temperature is also cross-fitted on
all 629 rows the network never trained on: each re-split halves them, the temperature fitted on each half
scales the other, and the ECE is taken over all 629 out-of-sample rows. Beside each ECE: the ECE that
perfectly calibrated probabilities with the same confidences would show on as many rows (labels drawn
right with probability equal to the confidence), the floor the metric's binning noise sets. Two
temperatures: the served one (dividing every MC sample's logits, fitted by the NLL of their average) and,
as a diagnostic only, one fitted and applied to the log of the MC-averaged probabilities.

    python bench/calibration.py [--splits 100] [--samples 100]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time

import numpy as np

from mcdropout.bundle import Bundle, load_bundle
from mcdropout.stats import calibration as cal
from mcdropout.stats import metrics
from mcdropout.training import datasets, split_of

LEVEL = 0.9
MAX_RISK = 0.02


class _Lookup:
    """A fitted sklearn-style classifier whose inputs are row numbers into fixed probabilities (for MAPIE)."""

    def __init__(self, probs: np.ndarray) -> None:
        self.probs = probs
        self.classes_ = np.arange(probs.shape[1])
        self.n_features_in_ = 1

    def fit(self, x, y):
        return self

    def predict_proba(self, x) -> np.ndarray:
        return self.probs[np.asarray(x, dtype=np.int64).ravel()]

    def predict(self, x) -> np.ndarray:
        return self.predict_proba(x).argmax(axis=1)

    def get_params(self, deep: bool = True) -> dict:
        return {"probs": self.probs}

    def __sklearn_is_fitted__(self) -> bool:
        return True


def _mapie_sets(probs: np.ndarray, calib: np.ndarray, test: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    try:
        from mapie.classification import SplitConformalClassifier
    except ImportError:
        return None
    mapie = SplitConformalClassifier(estimator=_Lookup(probs), confidence_level=LEVEL, conformity_score="lac",
                                     prefit=True)
    mapie.conformalize(calib[:, None], y[calib])
    _, sets = mapie.predict_set(test[:, None])
    return sets[:, :, 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=100)
    parser.add_argument("--samples", type=int, default=100)
    args = parser.parse_args()

    shipped = load_bundle("models/digits", device="cpu")  # its own calibration removed: the raw MC numbers
    bundle = Bundle(dataclasses.replace(shipped.manifest, calibration=None), shipped.model, device="cpu")
    split = split_of(bundle)
    x, y = split.x_test, split.y_test.astype(np.int64)
    started = time.perf_counter()
    prediction = bundle.predict(x, samples=args.samples, seed=0, return_samples=True)
    logits = np.log(np.maximum(prediction.samples.numpy().astype(np.float64), np.finfo(np.float64).tiny))
    raw = cal.summarise_logits(logits)
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"# digits: {len(y)} test rows, T = {args.samples}, {args.splits} random halvings"
          f" (MC pass {time.perf_counter() - started:.1f} s)\n")

    rows: dict[str, list[float]] = {key: [] for key in (
        "ece_raw", "ece_temp", "nll_raw", "nll_temp", "temperature", "lac_cover", "lac_size", "aps_cover",
        "aps_size", "mapie_cover", "mapie_size", "risk_ok", "accepted", "accepted_error", "floor_raw",
        "floor_temp")}
    generator, floors = np.random.default_rng(0), np.random.default_rng(2)
    for _ in range(args.splits):
        order = generator.permutation(len(y))
        calib, test = order[: len(y) // 2], order[len(y) // 2:]
        temperature = cal.fit_temperature(logits[calib], y[calib])
        scaled = cal.summarise_logits(logits, temperature)
        rows["temperature"].append(temperature)
        rows["ece_raw"].append(metrics.ece(raw["probs"][test], y[test]))
        rows["ece_temp"].append(metrics.ece(scaled["probs"][test], y[test]))
        rows["floor_raw"].append(_ece_floor(raw["probs"][test], floors))
        rows["floor_temp"].append(_ece_floor(scaled["probs"][test], floors))
        rows["nll_raw"].append(metrics.classification_nll(raw["probs"][test], y[test]))
        rows["nll_temp"].append(metrics.classification_nll(scaled["probs"][test], y[test]))
        sets = cal.fit_conformal_sets(scaled["probs"][calib], y[calib])
        for method in cal.SET_METHODS:
            members = sets.predict_sets(scaled["probs"][test], LEVEL, method)
            rows[f"{method}_cover"].append(float(members[np.arange(len(test)), y[test]].mean()))
            rows[f"{method}_size"].append(float(members.sum(axis=1).mean()))
        mapie = _mapie_sets(raw["probs"], calib, test, y)
        if mapie is not None:
            rows["mapie_cover"].append(float(mapie[np.arange(len(test)), y[test]].mean()))
            rows["mapie_size"].append(float(mapie.sum(axis=1).mean()))
        score = cal.uncertainty_score(scaled, "one_minus_max_prob")
        wrong = scaled["probs"].argmax(axis=1) != y
        threshold = cal.selective_threshold(score[calib], wrong[calib], MAX_RISK, delta=0.1)
        accepted = score[test] <= threshold
        error = float(wrong[test][accepted].mean()) if accepted.any() else 0.0
        rows["risk_ok"].append(float(error <= MAX_RISK))
        rows["accepted"].append(float(accepted.mean()))
        rows["accepted_error"].append(error)

    rows.update(_cross_fitted(bundle, split, args.samples, args.splits))

    def mean(key: str) -> str:
        return f"{statistics.mean(rows[key]):.4f}" if rows[key] else "-"

    print("| quantity | before | after temperature |")
    print("|---|---|---|")
    print(f"| ECE (15 bins), mean over halvings | {mean('ece_raw')} | {mean('ece_temp')} |")
    print(f"| ECE of perfectly calibrated predictions with these confidences (the floor) | {mean('floor_raw')}"
          f" | {mean('floor_temp')} |")
    print(f"| NLL | {mean('nll_raw')} | {mean('nll_temp')} |")
    print(f"| fitted temperature | | {mean('temperature')} |")
    print(f"\n| cross-fitted on all {int(rows['rows'][0])} never-trained rows, {args.splits} re-splits |"
          " ECE (15 bins) | its floor | NLL | temperature |")
    print("|---|---|---|---|---|")
    for key, label in (("raw", "uncalibrated"), ("served", "temperature on every sample's logits (served)"),
                       ("averaged", "temperature on the averaged probabilities (diagnostic)")):
        temperature = mean(f"cf_t_{key}") if key != "raw" else "1"
        print(f"| {label} | {mean(f'cf_ece_{key}')} | {mean(f'cf_floor_{key}')} | {mean(f'cf_nll_{key}')}"
              f" | {temperature} |")
    print("\n| 90% sets | coverage | mean size |\n|---|---|---|")
    print(f"| mcdropout LAC (after temperature) | {mean('lac_cover')} | {mean('lac_size')} |")
    print(f"| mcdropout APS (after temperature) | {mean('aps_cover')} | {mean('aps_size')} |")
    print(f"| MAPIE split LAC (raw MC probabilities) | {mean('mapie_cover')} | {mean('mapie_size')} |")
    print(f"\n| selective, max_risk {MAX_RISK}, delta 0.1 | value |\n|---|---|")
    print(f"| halvings whose accepted rows err <= {MAX_RISK} | {mean('risk_ok')} |")
    print(f"| accepted fraction | {mean('accepted')} |")
    print(f"| accepted rows' error | {mean('accepted_error')} |")


def _cross_fitted(bundle, split: datasets.Split, samples: int, splits: int) -> dict[str, list[float]]:
    """ECE, its floor and NLL of out-of-sample temperature-scaled probabilities on every never-trained row."""
    x = np.concatenate([split.x_val, split.x_calibration, split.x_test])
    y = np.concatenate([split.y_val, split.y_calibration, split.y_test]).astype(np.int64)
    prediction = bundle.predict(x, samples=samples, seed=0, return_samples=True)
    logits = np.log(np.maximum(prediction.samples.numpy().astype(np.float64), np.finfo(np.float64).tiny))
    averaged = np.log(cal.summarise_logits(logits)["probs"])[:, None]  # one "sample": the MC average
    generator = np.random.default_rng(1)
    out: dict[str, list[float]] = {"rows": [float(len(y))]}
    for _ in range(splits):
        order = generator.permutation(len(y))
        halves = (order[: len(y) // 2], order[len(y) // 2:])
        for key, z in (("raw", None), ("served", logits), ("averaged", averaged)):
            probs = np.empty((len(y), logits.shape[2]))
            for fit, apply in (halves, halves[::-1]):
                temperature = 1.0 if z is None else cal.fit_temperature(z[fit], y[fit])
                probs[apply] = cal.summarise_logits(logits[apply] if z is None else z[apply], temperature)["probs"]
                out.setdefault(f"cf_t_{key}", []).append(temperature)
            out.setdefault(f"cf_ece_{key}", []).append(metrics.ece(probs, y))
            out.setdefault(f"cf_nll_{key}", []).append(metrics.classification_nll(probs, y))
            out.setdefault(f"cf_floor_{key}", []).append(_ece_floor(probs, generator))
    return out


def _ece_floor(probs: np.ndarray, generator: np.random.Generator, draws: int = 20) -> float:
    """The mean ECE of perfectly calibrated predictions with these confidences: each row right with
    probability equal to its confidence (the predicted class stays, the label is drawn)."""
    confidence = probs.max(axis=1)
    predicted = probs.argmax(axis=1)
    values = []
    for _ in range(draws):
        right = generator.random(len(confidence)) < confidence
        labels = np.where(right, predicted, (predicted + 1) % probs.shape[1])
        values.append(metrics.ece(probs, labels))
    return float(np.mean(values))


if __name__ == "__main__":
    main()
