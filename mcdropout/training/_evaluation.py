"""Held-out evaluation of a bundle, the deterministic comparison, OOD detection, and plots."""

from __future__ import annotations

import numpy as np
import torch

from mcdropout.bundle import Bundle
from mcdropout.errors import BundleError
from mcdropout.stats import metrics, normal_interval, to_probabilities
from mcdropout.training import datasets
from mcdropout.training._calibration_report import served_interval

LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)


def evaluate(bundle: Bundle, split: datasets.Split | None = None, *, samples: int | None = None,
             seed: int = 0) -> dict:
    """Metrics on the test part of the bundle's data set (re-made from the manifest's training record)."""
    split = split if split is not None else split_of(bundle)
    if bundle.manifest.task == "regression":
        result = _regression(bundle, split, samples, seed)
    else:
        result = _classification(bundle, split, samples, seed)
    result["samples"] = samples or bundle.manifest.samples
    result["seed"] = seed
    result["test_rows"] = len(split.x_test)
    return result


def calibrated_metrics(bundle: Bundle, split: datasets.Split, before: dict, *, samples: int | None = None,
                       seed: int = 0) -> dict:
    """The held-out metrics of a calibrated ``bundle``, with the uncalibrated ones (``before``, as
    :func:`evaluate` gave them) kept beside them under ``uncalibrated``."""
    metrics = evaluate(bundle, split, samples=samples, seed=seed)
    metrics["uncalibrated"] = {key: before[key] for key in ("mc", "deterministic") if key in before}
    return metrics


def split_of(bundle: Bundle, allowed_dirs=None) -> datasets.Split:
    """The data split a bundle of ``mcdropout train`` was trained on, re-made from its manifest; a recorded
    table is read only inside ``allowed_dirs`` where given (see ``recorded_split``)."""
    data = bundle.manifest.training.get("data", {})
    if "path" in data:  # trained with `mcdropout train --data`: re-read the table
        from mcdropout.training._table_data import recorded_split

        return recorded_split(bundle.manifest, allowed_dirs)
    name = data.get("name")
    if name not in datasets.LOADERS:
        raise BundleError(
            f"bundle {bundle.name!r} was trained on {name or 'unrecorded data'}, which mcdropout cannot re-make;"
            f" known data sets: {', '.join(datasets.LOADERS)}"
        )
    fractions = {"val": data["validation_fraction_of_train"]} if "validation_fraction_of_train" in data else {}
    if "calibration_fraction" in data:
        fractions["calibration"] = data["calibration_fraction"]
    return datasets.load(name, seed=data.get("split_seed", 0), **fractions)


def _regression(bundle: Bundle, split: datasets.Split, samples: int | None, seed: int) -> dict:
    y = split.y_test.astype(np.float64)
    pred = bundle.predict(split.x_test, samples=samples, seed=seed, return_samples=True)
    mc = _gaussian_scores(y, pred.mean.numpy(), pred.variance.numpy())
    if bundle.manifest.tau is not None:
        tau_user = bundle.manifest.tau / np.asarray(bundle.manifest.target_standardisation.std) ** 2
        mc["mc_log_likelihood"] = metrics.mc_log_likelihood(y, pred.samples.numpy(), float(np.mean(tau_user)))
    calibration = bundle.manifest.calibration
    if calibration is not None and calibration.conformal is not None:  # the coverage of the intervals served
        for level in LEVELS:
            interval = served_interval(bundle.manifest, pred, level)  # None: too high for the calibration rows
            mc[f"coverage_{round(level * 100)}"] = None if interval is None else \
                metrics.interval_coverage(y, *(np.asarray(bound).reshape(y.shape) for bound in interval))
        mc["interval_method"] = "conformal"
    mc["mean_epistemic_std"] = float(np.sqrt(pred.epistemic.numpy()).mean())
    mc["mean_aleatoric_std"] = float(np.sqrt(pred.aleatoric.numpy()).mean())
    result = {"mc": mc}
    deterministic = _deterministic_regression(bundle, split.x_test)
    if deterministic is not None:
        result["deterministic"] = _gaussian_scores(y, *deterministic)
        result["mc_wins_nll"] = mc["nll"] < result["deterministic"]["nll"]
        if not result["mc_wins_nll"]:
            share = float(pred.epistemic.sum() / pred.variance.sum())
            gap = mc["nll"] - result["deterministic"]["nll"]
            if share < 0.2:
                why = (f"epistemic variance is {share:.0%} of the predictive variance on the test rows: the noise"
                       f" dominates, so sampling the network adds little (NLL {gap:+.3f} over {len(y)} rows)")
            else:
                why = (f"epistemic variance is {share:.0%} of the predictive variance: the test rows lie where the"
                       f" training data is dense, and the wider MC intervals over-cover (coverage_95"
                       f" {mc['coverage_95']:.3f}), costing {gap:+.3f} in NLL over {len(y)} rows")
            result["why_mc_does_not_win_nll"] = why
    if bundle.manifest.training.get("data", {}).get("name") == "heteroscedastic-1d":
        result["ood"] = _inside_outside(bundle, split, seed)
        true_std = datasets.noise_std(split.x_test[:, 0].astype(np.float64))
        predicted = np.sqrt(pred.aleatoric.numpy()[:, 0])
        result["aleatoric_vs_true_noise"] = {
            "correlation": float(np.corrcoef(predicted, true_std)[0, 1]),
            "mean_relative_error": float(np.mean(np.abs(predicted - true_std) / true_std)),
        }
    return result


def _gaussian_scores(y: np.ndarray, mean: np.ndarray, variance: np.ndarray) -> dict:
    std = np.sqrt(variance)
    scores = {"rmse": metrics.rmse(y, mean), "nll": metrics.gaussian_nll(y, mean, variance),
              "crps": metrics.crps_gaussian(y, mean, std)}
    for level in LEVELS:
        lower, upper = normal_interval(mean, std, level)
        scores[f"coverage_{round(level * 100)}"] = metrics.interval_coverage(y, lower, upper)
    return scores


def deterministic_forward(bundle: Bundle, x: np.ndarray):
    """The network with dropout off (eval mode) on standardised inputs."""
    with torch.inference_mode():
        return bundle.model.eval()(bundle.model_inputs(x).to(bundle.predictor.device))


def _deterministic_regression(bundle: Bundle, x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean and variance of the same network run once, dropout off: noise from tau or its own head."""
    output = deterministic_forward(bundle, x)
    target = bundle.manifest.target_standardisation
    scale = np.asarray(target.std) if target else 1.0
    shift = np.asarray(target.mean) if target else 0.0
    if isinstance(output, tuple):
        mean, variance = output[0].double().cpu().numpy(), output[1].double().exp().cpu().numpy()
    elif bundle.manifest.tau is not None:
        mean = output.double().cpu().numpy()
        variance = np.full_like(mean, 1.0 / bundle.manifest.tau)
    else:
        return None
    return mean * scale + shift, variance * scale**2


def _classification(bundle: Bundle, split: datasets.Split, samples: int | None, seed: int) -> dict:
    labels = split.y_test
    pred = bundle.predict(split.x_test, samples=samples, seed=seed)
    probs = pred.probs.numpy()
    result = {"mc": _class_scores(probs, labels)}
    result["mc"]["mean_mutual_information"] = float(pred.mutual_information.mean())
    det = to_probabilities(deterministic_forward(bundle, split.x_test)).cpu().numpy()
    result["deterministic"] = _class_scores(det, labels)
    result["mc_wins_nll"] = result["mc"]["nll"] < result["deterministic"]["nll"]
    if not result["mc_wins_nll"]:
        result["why_mc_does_not_win_nll"] = (
            f"mean mutual information is {result['mc']['mean_mutual_information']:.3g} nats: the samples agree on"
            f" nearly every test row, and the NLL difference"
            f" ({result['mc']['nll'] - result['deterministic']['nll']:+.3f}) is within what {len(labels)} rows resolve"
        )
    if bundle.manifest.training.get("data", {}).get("name") == "digits":
        result["ood"] = _digits_ood(bundle, split, pred, seed)
    if bundle.manifest.training.get("data", {}).get("name") == "reviews":
        outside = bundle.predict(datasets.reviews_outside(), seed=seed)
        result["ood"] = {"text_unlike_the_reviews": {
            "rows": len(outside.mutual_information),
            "auroc_mutual_information": metrics.auroc(pred.mutual_information, outside.mutual_information),
            "auroc_entropy": metrics.auroc(pred.entropy, outside.entropy),
            "mean_mutual_information_outside": float(outside.mutual_information.mean())}}
    return result


def _class_scores(probs: np.ndarray, labels: np.ndarray) -> dict:
    return {"accuracy": metrics.accuracy(probs, labels), "nll": metrics.classification_nll(probs, labels),
            "ece": metrics.ece(probs, labels), "brier": metrics.brier(probs, labels)}


def digits_shifted(x: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Inputs a digits model never saw: uniform noise images, and test digits with their pixels shuffled."""
    rng = np.random.default_rng(seed + 1)
    noise = rng.uniform(0.0, 16.0, size=x.shape).astype(np.float32)
    flat = x.reshape(len(x), -1)
    shuffled = np.stack([row[rng.permutation(flat.shape[1])] for row in flat]).reshape(x.shape)
    return {"uniform_noise": noise, "shuffled_pixels": shuffled.astype(np.float32)}


def _digits_ood(bundle: Bundle, split: datasets.Split, inside, seed: int) -> dict:
    result = {}
    for name, x in digits_shifted(split.x_test, seed).items():
        outside = bundle.predict(x, seed=seed)
        result[name] = {
            "auroc_mutual_information": metrics.auroc(inside.mutual_information, outside.mutual_information),
            "auroc_entropy": metrics.auroc(inside.entropy, outside.entropy),
        }
    return result


def _inside_outside(bundle: Bundle, split: datasets.Split, seed: int) -> dict:
    inside = bundle.predict(split.x_test, seed=seed)
    outside = bundle.predict(datasets.outside_inputs(), seed=seed)
    return {
        "auroc_epistemic_std": metrics.auroc(inside.epistemic.sqrt(), outside.epistemic.sqrt()),
        "auroc_total_std": metrics.auroc(inside.std, outside.std),
        "mean_epistemic_std_inside": float(inside.epistemic.sqrt().mean()),
        "mean_epistemic_std_outside": float(outside.epistemic.sqrt().mean()),
    }


def plot(bundle: Bundle, file: str, *, samples: int | None = None, seed: int = 0) -> None:
    """Draw what a person would rather look at: the 1-D predictive band, a reliability diagram, or calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split = split_of(bundle)
    figure, axes = plt.subplots(figsize=(8, 5))
    if bundle.manifest.task == "classification":
        _reliability(axes, bundle, split, samples, seed)
    elif split.x_test.ndim == 2 and split.x_test.shape[1] == 1:
        _band(axes, bundle, split, samples, seed)
    else:
        _calibration(axes, bundle, split, samples, seed)
    axes.set_title(f"{bundle.name}: {axes.get_title()}")
    figure.tight_layout()
    figure.savefig(file, dpi=120)
    plt.close(figure)


def _band(axes, bundle: Bundle, split: datasets.Split, samples, seed) -> None:
    low = min(-7.0, float(split.x_train.min()) - 1)
    high = max(7.0, float(split.x_train.max()) + 1)
    grid = np.linspace(low, high, 600, dtype=np.float32)[:, None]
    pred = bundle.predict(grid, samples=samples, seed=seed)
    x, mean = grid[:, 0], pred.mean.numpy()[:, 0]
    total = 2 * pred.std.numpy()[:, 0]
    aleatoric = 2 * np.sqrt(pred.aleatoric.numpy()[:, 0])
    axes.fill_between(x, mean - total, mean + total, color="#f4a261", label="±2 std, total (epistemic + aleatoric)")
    axes.fill_between(x, mean - aleatoric, mean + aleatoric, color="#a8dadc", label="±2 std, aleatoric")
    axes.scatter(split.x_train[:, 0], split.y_train[:, 0], s=3, color="#1d3557", alpha=0.5, label="training data")
    axes.plot(x, mean, color="tab:red", label="predictive mean")
    if bundle.manifest.training.get("data", {}).get("name") == "heteroscedastic-1d":
        axes.plot(x, datasets.truth(x), color="black", linestyle="--", linewidth=1, label="true function")
    axes.set_xlabel(split.feature_names[0] if split.feature_names else "x")
    axes.set_ylabel(split.output_names[0] if split.output_names else "y")
    axes.set_title("predictive band; the orange margin beyond blue is epistemic")
    axes.legend(loc="upper left", fontsize=8)


def _reliability(axes, bundle: Bundle, split: datasets.Split, samples, seed, bins: int = 15) -> None:
    probs = bundle.predict(split.x_test, samples=samples, seed=seed).probs.numpy()
    confidence, accuracy, counts = metrics.reliability_bins(probs, split.y_test, bins)
    centres = (np.clip(np.ceil(confidence * bins), 1, bins) - 0.5) / bins  # a bin's mean lies in the bin
    axes.bar(centres, accuracy, width=1 / bins, edgecolor="black", alpha=0.7, label="accuracy")
    axes.plot([0, 1], [0, 1], color="black", linestyle="--", label="perfect calibration")
    for centre, acc, count in zip(centres, accuracy, counts):
        axes.annotate(str(count), (centre, acc), ha="center", va="bottom", fontsize=7)
    axes.set_xlabel("confidence (max mean probability)")
    axes.set_ylabel("accuracy")
    axes.set_title(f"reliability diagram, ECE {metrics.ece(probs, split.y_test):.3f} (bar labels: rows per bin)")
    axes.legend(loc="upper left")


def _calibration(axes, bundle: Bundle, split: datasets.Split, samples, seed) -> None:
    pred = bundle.predict(split.x_test, samples=samples, seed=seed)
    levels = np.linspace(0.05, 0.99, 40)
    y, mean, std = split.y_test, pred.mean.numpy(), pred.std.numpy()
    observed = [metrics.interval_coverage(y, *normal_interval(mean, std, level)) for level in levels]
    axes.plot(levels, observed, marker="o", markersize=3, label="MC dropout")
    deterministic = _deterministic_regression(bundle, split.x_test)
    if deterministic is not None:
        d_mean, d_var = deterministic
        d_observed = [metrics.interval_coverage(y, *normal_interval(d_mean, np.sqrt(d_var), level)) for level in levels]
        axes.plot(levels, d_observed, marker="s", markersize=3, label="same network, dropout off")
    axes.plot([0, 1], [0, 1], color="black", linestyle="--", label="perfect calibration")
    axes.set_xlabel("nominal interval level")
    axes.set_ylabel("observed coverage on held-out rows")
    axes.set_title("interval calibration")
    axes.legend(loc="upper left")
