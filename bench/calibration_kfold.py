"""digits ECE before and after temperature on all 1,797 rows, by 5-fold cross-fitting (issue 18's target).

The shipped digits bundle has only 629 rows it never trained on, where even perfectly calibrated
probabilities show an ECE near 0.011 (see bench/calibration.py). Here the digits recipe (same network,
epochs and optimiser, seed 0) is trained five times, each on 4/5 of sklearn's 1,797 rows, and MC-predicts
the held-out fifth (T = 100). Within each fifth the temperature is cross-fitted: fitted on one random
half, applied to the other, and the other way round. ECE (15 bins), its floor (perfectly calibrated
probabilities with the same confidences), NLL and accuracy are taken over all 1,797 out-of-fold rows,
averaged over ``--repeats`` random halvings. "served": the temperature divides every MC sample's logits
(fitted by the NLL of their average); "averaged": a diagnostic, fitted and applied to the log of the
MC-averaged probabilities.

    python bench/calibration_kfold.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.datasets import load_digits

from calibration import _ece_floor
from mcdropout.bundle import Bundle, Manifest, Standardisation, architectures
from mcdropout.stats import calibration as cal
from mcdropout.stats import metrics
from mcdropout.training import _fit as training
from mcdropout.training._recipes import RECIPES

FOLDS = 5


def _out_of_fold_logits(x: np.ndarray, y: np.ndarray, folds: list[np.ndarray]) -> np.ndarray:
    recipe = RECIPES["digits"]
    logits = np.empty((len(y), 100, 10))
    for k, held in enumerate(folds):
        started = time.perf_counter()
        train = np.setdiff1d(np.concatenate(folds), held)
        torch.manual_seed(0)
        scaler = Standardisation(*training.standardisation(x[train], tuple(range(x.ndim))))
        config = {"in_channels": 1, "height": 8, "width": 8, "classes": 10, **recipe.config}
        model = architectures.build("cnn", config)
        training.fit(model, scaler.forward(torch.from_numpy(x[train])).numpy(), y[train], loss="cross_entropy",
                     epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr,
                     weight_decay=recipe.weight_decay, seed=0, description="", quiet=True)
        manifest = Manifest(name="fold", description="", task="classification", architecture="cnn", config=config,
                            input_shape=[1, 8, 8], class_names=[str(i) for i in range(10)],
                            input_standardisation=scaler, samples=100, dropout=recipe.config["dropout"])
        prediction = Bundle(manifest, model, device="cpu").predict(x[held], samples=100, seed=0, return_samples=True)
        logits[held] = np.log(np.maximum(prediction.samples.numpy().astype(np.float64), np.finfo(float).tiny))
        print(f"# fold {k}: trained and predicted in {time.perf_counter() - started:.1f} s", flush=True)
    return logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    data = load_digits()
    x, y = data.images.astype(np.float32)[:, None], data.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    folds = np.array_split(order, FOLDS)
    logits = _out_of_fold_logits(x, y, folds)
    averaged = np.log(cal.summarise_logits(logits)["probs"])[:, None]
    generator = np.random.default_rng(1)
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for key, z in (("raw", None), ("served", logits), ("averaged", averaged)):
            probs, temperatures = np.empty((len(y), 10)), []
            for held in folds:
                shuffled = generator.permutation(held)
                halves = (shuffled[: len(shuffled) // 2], shuffled[len(shuffled) // 2:])
                for fit, apply in (halves, halves[::-1]):
                    temperature = 1.0 if z is None else cal.fit_temperature(z[fit], y[fit])
                    temperatures.append(temperature)
                    probs[apply] = cal.summarise_logits(logits[apply] if z is None else z[apply], temperature)["probs"]
            for name, value in (("ece", metrics.ece(probs, y)), ("floor", _ece_floor(probs, generator)),
                                ("nll", metrics.classification_nll(probs, y)), ("T", float(np.mean(temperatures))),
                                ("acc", metrics.accuracy(probs, y))):
                results.setdefault((key, name), []).append(value)
    print(f"| {FOLDS}-fold, all {len(y):,} rows, {args.repeats} re-splits of the halves | ECE (15 bins) | its floor"
          " | NLL | mean temperature | accuracy |")
    print("|---|---|---|---|---|---|")
    for key in ("raw", "served", "averaged"):
        print(f"| {key} | " + " | ".join(f"{np.mean(results[(key, n)]):.4f}" for n in ("ece", "floor", "nll", "T", "acc"))
              + " |")


if __name__ == "__main__":
    main()
