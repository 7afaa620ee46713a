"""Choosing dropout rate and tau by validation log-likelihood, for many training sets at once.

Gal & Ghahramani's protocol, per training set: hold out its last 20% as
validation, train one network per grid point (p, tau) on the rest, keep the
point with the best validation log-likelihood, and re-train with it on the whole
training set. Features and target are standardised on the rows each network is
trained on; the weight decay is ``l**2 (1 - p) / (2 N tau)`` with ``l = 1e-2``.
Every network of a phase (all grid points of all training sets) trains as one
stacked computation (:mod:`mcdropout.training._stacked`).

Without a tau grid (``taus=None``) the weight decay takes tau = 1 in
standardised units, and tau is then chosen per grid point on the validation
part from a log grid spanning 1 to 10^4 over the target's variance.

With ``patience`` (own tables; the UCI protocol trains a fixed number of epochs)
each network of the first phase also stops early on the validation part, and the
re-training runs the chosen point's best number of epochs.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from mcdropout.training import _fit as training
from mcdropout.training import _stacked as stacked

LENGTHSCALE = 1e-2
VALIDATION_FRACTION = 0.2
FITTED_TAUS = np.geomspace(1.0, 1e4, 81)  # times 1 / var(y) when tau is fitted, not given


@dataclass
class TrainingSet:
    """Rows to fit: ``x`` (rows, features); ``y`` (rows, outputs) floats or (rows,) class indices."""

    x: np.ndarray
    y: np.ndarray


@dataclass
class Fitted:
    """The re-trained network of one training set, in standardised units, and how it was chosen."""

    model: nn.Sequential
    dropout: float
    tau: float | None  # precision in the target's units (regression)
    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: np.ndarray | None
    y_std: np.ndarray | None
    validation: list[dict] = field(default_factory=list)  # one entry per grid point
    epochs: int | None = None  # the epochs the final network trained


@dataclass(frozen=True)
class Settings:
    task: str = "regression"
    hidden: tuple[int, ...] = (50,)
    dropouts: tuple[float, ...] = (0.05,)
    taus: tuple[float, ...] | None = None
    epochs: int = 4000
    batch_size: int = 128
    validation_samples: int = 1000
    classes: int | None = None
    seed: int = 0
    standardised_tau: bool = False  # weight decay from tau in standardised units (own tables); UCI: target units
    processes: int = 2  # see stacked.train; results depend on it, so it is a setting, not the machine's core count
    patience: int | None = None  # early stopping on the validation part: epochs without improvement; None: off


def fit(sets: Sequence[TrainingSet], settings: Settings, *, quiet: bool = False) -> list[Fitted]:
    """Run the protocol on each training set; all networks of a phase train together."""
    regression = settings.task == "regression"
    grid = list(itertools.product(settings.dropouts, settings.taus or [None]))
    scores: list[list[dict]] = [[] for _ in sets]
    if len(grid) > 1 or (regression and settings.taus is None) or settings.patience is not None:
        cut = [int((1 - VALIDATION_FRACTION) * len(s.x)) for s in sets]
        parts = [(TrainingSet(s.x[:c], s.y[:c]), TrainingSet(s.x[c:], s.y[c:])) for s, c in zip(sets, cut)]
        jobs = [(index, point) for index in range(len(sets)) for point in grid]
        validation = _train_and_score([parts[i] for i, _ in jobs], [p for _, p in jobs], settings,
                                      f"grid search ({len(grid)} points x {len(sets)} sets)", quiet)
        for (index, _), result in zip(jobs, validation):
            scores[index].append(result)
        chosen = [max(entries, key=lambda e: e["log_likelihood"]) for entries in scores]
        if not quiet:
            _report(grid, scores, chosen)
    else:
        chosen = [{"dropout": grid[0][0], "tau": grid[0][1]} for _ in sets]
    stop_at = [c["epochs"] for c in chosen] if settings.patience is not None else None
    return refit(sets, [(c["dropout"], c["tau"]) for c in chosen], settings, scores=scores, quiet=quiet,
                 stop_at=stop_at)


def refit(sets: Sequence[TrainingSet], points: Sequence[tuple[float, float | None]], settings: Settings, *,
          scores: Sequence[list[dict]] | None = None, quiet: bool = False,
          stop_at: Sequence[int] | None = None) -> list[Fitted]:
    """Train one network per set at its own (dropout, tau), all stacked: the protocol's final training
    (``stop_at``: each network's epochs, chosen by early stopping on the validation part)."""
    regression = settings.task == "regression"
    final = _train(list(sets), list(points), settings, "final training" if len(sets) == 1 else
                   f"final training ({len(sets)} sets)", quiet, stop_at=stop_at)
    return [
        Fitted(model=final.model.select(i), dropout=float(p), tau=tau, x_mean=final.x_mean[i],
               x_std=final.x_std[i], y_mean=final.y_mean[i] if regression else None,
               y_std=final.y_std[i] if regression else None, validation=list(scores[i]) if scores else [],
               epochs=int(final.model.epochs[i]))
        for i, (p, tau) in enumerate(points)
    ]


def _report(grid: list[tuple[float, float | None]], scores: list[list[dict]], chosen: list[dict]) -> None:
    """Per grid point: mean validation log-likelihood over the sets, and how many sets chose it."""
    print("validation log-likelihood per grid point (mean over sets; sets that chose it):", file=sys.stderr)
    for index, (p, tau) in enumerate(grid):
        mean = float(np.mean([entries[index]["log_likelihood"] for entries in scores]))
        wins = sum(c is entries[index] for c, entries in zip(chosen, scores))
        label = f"p={p:g}" + (f", tau={tau:g}" if tau is not None else "")
        print(f"  {label}: {mean:.4f} ({wins})", file=sys.stderr)


@dataclass
class _Stack:
    model: stacked.StackedMLP
    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: np.ndarray
    y_std: np.ndarray


def _train(sets: list[TrainingSet], points: list[tuple[float, float | None]], settings: Settings,
           description: str, quiet: bool, *, held_out: list[TrainingSet] | None = None,
           stop_at: list[int] | None = None) -> _Stack:
    """Standardise each set on its own rows and train one network per (set, point), stacked.

    Sets of unequal size cannot share a stack; callers pass sets of one size
    (the splits of a data set are), or one set. ``held_out``: each set's
    validation rows, for early stopping (``settings.patience``); ``stop_at``: the
    epochs each network trains (at most ``settings.epochs``).
    """
    sizes = {len(s.x) for s in sets}
    if len(sizes) != 1:
        raise ValueError(f"training sets of one stack must have the same number of rows, got sizes {sorted(sizes)}")
    regression = settings.task == "regression"
    x_scales = [_scale(s.x) for s in sets]
    x = np.stack([(s.x - m) / sd for s, (m, sd) in zip(sets, x_scales)])
    if regression:
        y_scales = [_scale(s.y) for s in sets]
        y = torch.from_numpy(np.stack([(s.y - m) / sd for s, (m, sd) in zip(sets, y_scales)]).astype(np.float32))
    else:
        y_scales = [(None, None)] * len(sets)
        y = torch.from_numpy(np.stack([s.y for s in sets]).astype(np.int64))
    rows = sizes.pop()
    decay = [LENGTHSCALE**2 * (1 - p) / (2 * rows * _decay_tau(tau, scale, settings.standardised_tau))
             for (p, tau), (_, scale) in zip(points, y_scales)]
    validation = None
    if held_out is not None and settings.patience is not None:
        x_valid = np.stack([(v.x - m) / sd for v, (m, sd) in zip(held_out, x_scales)])
        y_valid = (np.stack([(v.y - m) / sd for v, (m, sd) in zip(held_out, y_scales)]).astype(np.float32)
                   if regression else np.stack([v.y for v in held_out]).astype(np.int64))
        validation = (torch.from_numpy(x_valid.astype(np.float32)), torch.from_numpy(y_valid))
    model = stacked.train(
        torch.from_numpy(x.astype(np.float32)), y, hidden=settings.hidden, dropout=[p for p, _ in points],
        weight_decay=decay, epochs=max(stop_at) if stop_at else settings.epochs,
        loss="mse" if regression else "cross_entropy", classes=settings.classes, batch_size=settings.batch_size,
        seed=settings.seed, processes=settings.processes, validation=validation,
        patience=None if validation is None else settings.patience, stop_at=stop_at, description=description,
        quiet=quiet,
    )
    x_mean, x_std = (np.stack(values) for values in zip(*x_scales))
    y_mean, y_std = (np.stack(values) for values in zip(*y_scales)) if regression else (None, None)
    return _Stack(model, x_mean, x_std, y_mean, y_std)


def _scale(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per column as arrays (training.standardisation: std 1 for a constant column)."""
    mean, std = training.standardisation(values)
    return np.asarray(mean), np.asarray(std)


def _decay_tau(tau: float | None, y_std: np.ndarray | None, standardised: bool) -> float:
    """The tau of the weight decay. The network fits the standardised target, so in standardised units
    (``standardised``) the fit is the same whatever the target's units; Gal's UCI protocol used target units."""
    if not standardised:
        return tau if tau is not None else _unit_tau(y_std)
    scale = 1.0 if y_std is None else float(np.mean(y_std)) ** 2
    return 1.0 if tau is None else tau * scale


def _unit_tau(y_std: np.ndarray | None) -> float:
    """Tau = 1 in standardised units, expressed in the target's units (the formula's convention)."""
    return 1.0 if y_std is None else float(np.mean(y_std)) ** -2


def _train_and_score(parts: list[tuple[TrainingSet, TrainingSet]], points: list[tuple[float, float | None]],
                     settings: Settings, description: str, quiet: bool) -> list[dict]:
    held_out = [valid for _, valid in parts]
    stack = _train([train for train, _ in parts], points, settings, description, quiet, held_out=held_out)
    epochs = stack.model.epochs.tolist()
    x = torch.from_numpy(np.stack([(v.x - m) / s for v, m, s in zip(held_out, stack.x_mean, stack.x_std)])
                         .astype(np.float32))
    samples, seed = settings.validation_samples, settings.seed + 1
    if settings.task != "regression":
        labels = torch.from_numpy(np.stack([v.y for v in held_out]).astype(np.int64))
        result = stacked.classification_scores(stack.model, x, labels, samples, seed=seed)
        return [{"dropout": p, "tau": None, "log_likelihood": float(ll), "accuracy": float(acc), "epochs": e}
                for (p, _), ll, acc, e in zip(points, result["log_likelihood"], result["accuracy"], epochs)]
    y = torch.from_numpy(np.stack([v.y for v in held_out]).astype(np.float64))
    if settings.taus is not None:
        taus = torch.tensor([[tau] for _, tau in points], dtype=torch.float64)
    else:
        variance = np.stack([t.y.var() for t, _ in parts])
        taus = torch.from_numpy(FITTED_TAUS[None, :] / np.maximum(variance, 1e-300)[:, None])
    result = stacked.regression_scores(stack.model, x, y, taus, samples, y_mean=torch.from_numpy(stack.y_mean),
                                       y_std=torch.from_numpy(stack.y_std), seed=seed)
    best = result["log_likelihood"].argmax(dim=1)
    return [{"dropout": p, "tau": float(taus[i, best[i]]), "log_likelihood": float(result["log_likelihood"][i, best[i]]),
             "rmse": float(result["rmse"][i]), "epochs": epochs[i]} for i, (p, _) in enumerate(points)]
