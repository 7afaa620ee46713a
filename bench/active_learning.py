"""Active learning on digits: BatchBALD, BALD, power and random acquisition, a CNN retrained each round.

    .venv/bin/python bench/active_learning.py [--seeds 5] [--rounds 15] [--plot docs/images/active-learning.png]

The set-up of Kirsch et al. (2019), scaled to scikit-learn's 1,797 digits (8x8): a fixed test set of
500 digits (stratified, the same for every seed), the other 1,297 the pool. Each seed draws 20 labelled
rows (2 a class), the same for every method; each round the network is trained from scratch on the
labelled rows and 10 more rows are acquired, for 15 rounds (20 -> 170 labels). Training is the shipped
``digits`` recipe (Adam with its learning rate, weight decay and batch size, dropout 0.25, inputs on one
scale), with one change for tiny training sets: at least ``--min-steps`` gradient steps (the recipe's
40 epochs are 40 steps on 20 rows). The network: ``--network cnn`` is the recipe's small CNN (Dropout2d
and dropout); the default ``mlp`` is a cheaper one, 64 pixels -> 128 -> 10 with dropout 0.25 (the
recipe's hidden width), so that the 300 trainings of a run fit in minutes on a busy 2-core machine.
Accuracy is that of the MC predictive mean (T = ``--samples``) on the test set. Acquisition uses
T = ``--samples`` with the library's defaults (BatchBALD: exact up to C^3 configurations, then 1,000
sampled; power: beta = 1).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mcdropout as mcd  # noqa: E402
from mcdropout.bundle import architectures  # noqa: E402
from mcdropout.training._fit import fit  # noqa: E402
from mcdropout.training._recipes import RECIPES  # noqa: E402

METHODS = ("batchbald", "bald", "power", "random")
COLOURS = {"batchbald": "tab:red", "bald": "tab:blue", "power": "tab:green", "random": "tab:grey"}


def load(test_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = data.images.astype(np.float32)[:, None]
    x_pool, x_test, y_pool, y_test = train_test_split(images, data.target.astype(np.int64), test_size=test_rows,
                                                      stratify=data.target, random_state=0)
    mean, std = float(x_pool.mean()), float(x_pool.std())  # one scale for all pixels, as the recipe
    return (x_pool - mean) / std, y_pool, (x_test - mean) / std, y_test


def build(network: str) -> torch.nn.Module:
    recipe = RECIPES["digits"]
    if network == "cnn":
        return architectures.build(recipe.architecture,
                                   {"in_channels": 1, "height": 8, "width": 8, "classes": 10, **recipe.config})
    mlp = architectures.build("mlp", {"in_features": 64, "out_features": 10, "hidden": [recipe.config["hidden"]],
                                      "dropout": recipe.config["dropout"]})
    return torch.nn.Sequential(torch.nn.Flatten(), *mlp)


def train(x: np.ndarray, y: np.ndarray, seed: int, min_steps: int, network: str) -> torch.nn.Module:
    recipe = RECIPES["digits"]
    torch.manual_seed(seed)
    model = build(network)
    batches = math.ceil(len(x) / recipe.batch_size)
    epochs = max(recipe.epochs, math.ceil(min_steps / batches))
    fit(model, x, y, loss=recipe.loss, epochs=epochs, batch_size=recipe.batch_size, lr=recipe.lr,
        weight_decay=recipe.weight_decay, seed=seed, quiet=True)
    return model


def initial(y_pool: np.ndarray, seed: int, per_class: int = 2) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(i) for c in range(10) for i in rng.choice(np.flatnonzero(y_pool == c), per_class, replace=False)]


def run(method: str, seed: int, data, rounds: int, batch: int, samples: int, min_steps: int, network: str) -> dict:
    x_pool, y_pool, x_test, y_test = data
    labelled = initial(y_pool, seed)
    accuracy, seconds = [], 0.0
    for step in range(rounds + 1):
        model = train(x_pool[labelled], y_pool[labelled], seed * 1000 + step, min_steps, network)
        predictor = mcd.MCPredictor(model, task="classification", samples=samples)
        mean = predictor.predict(x_test, seed=step).probs.numpy()
        accuracy.append(float((mean.argmax(axis=1) == y_test).mean()))
        if step == rounds:
            break
        unlabelled = np.setdiff1d(np.arange(len(x_pool)), labelled)
        start = time.perf_counter()
        picked = mcd.acquire(predictor, x_pool[unlabelled], batch, method, samples=samples, seed=seed * 1000 + step)
        seconds += time.perf_counter() - start
        labelled += unlabelled[picked.indices].tolist()
    return {"method": method, "seed": seed, "labels": [20 + batch * i for i in range(rounds + 1)],
            "accuracy": accuracy, "acquire_seconds": seconds}


def summarise(results: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for method in METHODS:
        curves = np.array([r["accuracy"] for r in results if r["method"] == method])
        if len(curves):
            out[method] = (curves.mean(axis=0), curves.std(axis=0, ddof=1) / math.sqrt(len(curves))
                           if len(curves) > 1 else np.zeros(curves.shape[1]))
    return out


def plot(results: list[dict], path: Path, network: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = results[0]["labels"]
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for method, (mean, error) in summarise(results).items():
        axes.plot(labels, mean, marker="o", markersize=3, label=method, color=COLOURS[method])
        axes.fill_between(labels, mean - error, mean + error, alpha=0.2, color=COLOURS[method])
    seeds = len({r["seed"] for r in results})
    axes.set(xlabel="labelled rows", ylabel="test accuracy",
             title=f"digits: 10 acquired a round, {network.upper()} retrained ({seeds} seeds, mean ± 1 s.e.)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def table(results: list[dict], every: int = 3) -> str:
    labels = results[0]["labels"]
    columns = list(range(0, len(labels), every)) + ([len(labels) - 1] if (len(labels) - 1) % every else [])
    summary = summarise(results)
    lines = ["| method | " + " | ".join(f"{labels[c]} labels" for c in columns) + " | mean over rounds | acquire s/round |",
             "|---|" + "---|" * (len(columns) + 2)]
    for method, (mean, error) in summary.items():
        per_round = np.mean([r["acquire_seconds"] for r in results if r["method"] == method]) / (len(labels) - 1)
        lines.append(f"| {method} | " + " | ".join(f"{mean[c]:.3f} ± {error[c]:.3f}" for c in columns)
                     + f" | {mean.mean():.3f} | {per_round:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--min-steps", type=int, default=200)
    parser.add_argument("--network", choices=["mlp", "cnn"], default="mlp")
    parser.add_argument("--test-rows", type=int, default=500)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "images" / "active-learning.png")
    parser.add_argument("--json", type=Path, help="also write every curve here")
    parser.add_argument("--jobs", type=int, default=1, help="runs (method, seed) in this many processes")
    parser.add_argument("--replot", type=Path, help="draw the plot and table from a --json file of an earlier run")
    args = parser.parse_args()
    if args.replot:
        results = json.loads(args.replot.read_text())
        print(table(results))
        plot(results, args.plot, args.network)
        return
    torch.set_num_threads(1)  # tiny batches: one thread, no spinning workers on a shared machine
    data = load(args.test_rows)
    started = time.perf_counter()
    tasks = [(method, seed, data, args.rounds, args.batch, args.samples, args.min_steps, args.network)
             for seed in range(args.seeds) for method in args.methods]
    with concurrent.futures.ProcessPoolExecutor(args.jobs, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        results = []
        for result in pool.map(run, *zip(*tasks)):
            results.append(result)
            print(f"seed {result['seed']} {result['method']:9s} " + " ".join(f"{a:.2f}" for a in result["accuracy"])
                  + f"  ({time.perf_counter() - started:.0f} s)", flush=True)
    print(f"\n{args.network}, {args.seeds} seeds, {args.rounds} rounds of {args.batch}, T = {args.samples},"
          f" {time.perf_counter() - started:.0f} s in all\n")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    plot(results, args.plot, args.network)
    print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
