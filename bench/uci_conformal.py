"""Issue 18's UCI target: conformal intervals of MC dropout on calibration rows kept out of training, beside MAPIE.

Per data set, ``mcdropout.training._uci.run`` with a calibration fraction: the standard protocol (grid search,
re-training on the whole training split, RMSE and test log-likelihood), and a second network per split
trained on the first 1 - f of its training rows and calibrated on the last f (split conformal with the
normalised score |y - mean| / std, std = sqrt(MC variance + 1/tau)). On the test rows, averaged over splits:
coverage, mean width and mean interval (Winkler) score at 90% and 95% of

- our conformal interval, mean +- q std;
- the Gaussian MC interval, mean +- z std (no calibration);
- MAPIE's split-conformal interval with absolute residuals (``SplitConformalRegressor``,
  ``conformity_score="absolute"``, prefit) on the same networks' MC means and the same calibration rows.

Targets: conformal coverage >= level - 0.01 at both levels; our interval score <= MAPIE's on at least three
of the four data sets.

    PYTHONPATH=$PWD python bench/uci_conformal.py [DATASET_DIR ...] [--splits 20] [--epochs 4000]
        [--samples 10000] [--calibration-fraction 0.2] [--hyperparameters grid|reuse] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin

from mcdropout.stats import metrics
from mcdropout.training import _uci as uci

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "uci"
DATASETS = ("bostonHousing", "concrete", "energy", "yacht")


class _Means(RegressorMixin, BaseEstimator):
    """A fitted regressor whose single input column is already its prediction (the networks' MC means)."""

    fitted_ = True  # what MAPIE looks for to tell a prefit estimator

    def fit(self, x, y):
        return self

    def predict(self, x) -> np.ndarray:
        return np.asarray(x, dtype=np.float64)[:, 0]

    def __sklearn_is_fitted__(self) -> bool:
        return True


def _mapie(split: uci.CalibratedSplit) -> dict[str, float]:
    """MAPIE's split-conformal interval with absolute residuals on the split's means: coverage, width, score."""
    from mapie.regression import SplitConformalRegressor

    mapie = SplitConformalRegressor(estimator=_Means(), confidence_level=list(uci.LEVELS),
                                    conformity_score="absolute", prefit=True)
    mapie.conformalize(split.calibration.mean[:, None], split.calibration.y)
    _, bounds = mapie.predict_interval(split.test.mean[:, None])
    out = {}
    y = split.test.y
    for index, level in enumerate(uci.LEVELS):
        lower, upper = bounds[:, 0, index], bounds[:, 1, index]
        tag = round(level * 100)
        out[f"mapie_coverage_{tag}"] = float(np.mean((y >= lower) & (y <= upper)))
        out[f"mapie_width_{tag}"] = float(np.mean(upper - lower))
        out[f"mapie_interval_score_{tag}"] = metrics.interval_score(y, lower, upper, level)
    return out


def _mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def _paired(rows: list[dict], a: str, b: str) -> tuple[float, float]:
    """Mean and standard error over splits of ``a - b``."""
    difference = np.array([r[a] - r[b] for r in rows])
    return float(difference.mean()), float(difference.std(ddof=1) / np.sqrt(len(difference)))


def _tables(done: list[dict]) -> str:
    levels = [round(level * 100) for level in uci.LEVELS]
    lines = ["| data set | splits | train / calibration rows | "
             + " | ".join(f"cover {t}: conformal / Gaussian / MAPIE" for t in levels) + " | "
             + " | ".join(f"width {t}: conformal / Gaussian / MAPIE" for t in levels) + " | coverage target |",
             "|---" * (4 + 2 * len(levels)) + "|"]
    for d in done:
        rows = d["splits"]
        cover = [" / ".join(f"{_mean(rows, f'{m}_coverage_{t}'):.3f}" for m in ("conformal", "gaussian", "mapie"))
                 for t in levels]
        width = [" / ".join(f"{_mean(rows, f'{m}_width_{t}'):.2f}" for m in ("conformal", "gaussian", "mapie"))
                 for t in levels]
        met = all(_mean(rows, f"conformal_coverage_{round(lv * 100)}") >= lv - 0.01 for lv in uci.LEVELS)
        lines.append(f"| {d['dataset']} | {len(rows)} | {d['training_rows']} / {d['calibration_rows']} | "
                     + " | ".join(cover) + " | " + " | ".join(width) + f" | {'met' if met else 'NOT met'} |")
    lines += ["", "| data set | " + " | ".join(
        f"interval score {t}: conformal / MAPIE / Gaussian | conformal - MAPIE {t}" for t in levels)
        + " | ours <= MAPIE | RMSE, standard | test LL, standard | RMSE, 80% net | test LL, 80% net | time |",
        "|---" * (7 + 2 * len(levels)) + "|"]
    for d in done:
        rows = d["splits"]
        cells, wins = [], []
        for t in levels:
            scores = [_mean(rows, f"{m}_interval_score_{t}") for m in ("conformal", "mapie", "gaussian")]
            difference, error = _paired(rows, f"conformal_interval_score_{t}", f"mapie_interval_score_{t}")
            cells.append(" / ".join(f"{s:.2f}" for s in scores) + f" | {difference:+.2f} ± {error:.2f}")
            wins.append(f"{t}: {'yes' if scores[0] <= scores[1] else 'no'}")
        standard, calibrated = d["standard"], d["calibrated"]
        lines.append(
            f"| {d['dataset']} | " + " | ".join(cells) + f" | {', '.join(wins)}"
            f" | {standard['rmse'][0]:.2f} ± {standard['rmse'][1]:.2f}"
            f" | {standard['log_likelihood'][0]:.2f} ± {standard['log_likelihood'][1]:.2f}"
            f" | {calibrated['rmse'][0]:.2f} ± {calibrated['rmse'][1]:.2f}"
            f" | {calibrated['log_likelihood'][0]:.2f} ± {calibrated['log_likelihood'][1]:.2f} | {d['seconds']:.0f} s |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*", type=Path, default=[DATA / name for name in DATASETS])
    parser.add_argument("--splits", type=int)
    parser.add_argument("--epochs", type=int, help="default: the protocol's 4000")
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--validation-samples", type=int, default=1000)
    parser.add_argument("--calibration-fraction", type=float, default=0.2)
    parser.add_argument("--hyperparameters", choices=uci.HYPERPARAMETERS, default="grid")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write every split's numbers here (after each data set)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()

    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()},"
          f" load average {os.getloadavg()[0]:.1f} at start")
    print(f"# calibration fraction {args.calibration_fraction}, hyperparameters of the calibrated arm:"
          f" {args.hyperparameters}, T = {args.samples}, epochs {args.epochs or 'protocol (4000)'}\n", flush=True)
    done = []
    started = time.perf_counter()
    for folder in args.datasets:
        result = uci.run(folder, splits=args.splits, epochs=args.epochs, samples=args.samples,
                         validation_samples=args.validation_samples, seed=args.seed,
                         calibration_fraction=args.calibration_fraction, hyperparameters=args.hyperparameters,
                         quiet=args.quiet)
        record = result.to_dict()
        rows = [{**s.to_dict(), **_mapie(s)} for s in result.calibrated]
        done.append({"dataset": result.dataset, "seconds": result.seconds, "splits": rows,
                     "training_rows": result.calibrated[0].training_rows,
                     "calibration_rows": result.calibrated[0].calibration_rows,
                     "standard": {"rmse": record["rmse"], "log_likelihood": record["log_likelihood"],
                                  "splits": record["splits"]},
                     "calibrated": {"rmse": record["calibrated"]["rmse"],
                                    "log_likelihood": record["calibrated"]["log_likelihood"]}})
        print(f"{result.dataset}: {result.seconds:.0f} s", flush=True)
        if args.json:
            args.json.write_text(json.dumps({"settings": {k: str(v) if isinstance(v, Path) else v
                                                          for k, v in vars(args).items() if k != "datasets"},
                                             "datasets": done}, indent=1) + "\n")
    print()
    print(_tables(done))
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
