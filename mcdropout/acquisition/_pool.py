"""``acquire``: a model, an MC predictor or a bundle, and a pool of inputs, streamed through the engine."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from mcdropout.acquisition._acquire import Acquisition, acquire_probabilities, check_request, new_seed, parse_budget
from mcdropout.acquisition._source import Chunk
from mcdropout.errors import InputError


def acquire(model_or_bundle: Any, pool: Any, k: int, method: str = "batchbald", *, samples: int | None = None,
            seed: int | None = None, calibrated: bool = True, chunk_rows: int | None = None,
            memory_budget: int | str = 256_000_000, **options: Any) -> Acquisition:
    """Choose ``k`` rows of ``pool`` to label next, by MC dropout's per-sample class probabilities.

    ``model_or_bundle``: a :class:`~mcdropout.Bundle` (its probabilities are calibrated: each sample's
    logits divided by the bundle's temperature, as the service answers; ``calibrated=False``: the raw
    softmax), an :class:`~mcdropout.MCPredictor` of a classifier, or a classifier ``nn.Module``
    (logits; run through an ``MCPredictor`` with ``memory_budget``).

    ``pool``: an array of input rows (numpy, a memmap, a torch tensor), read ``chunk_rows`` at a time, or
    an iterable of input arrays in row order. Every chunk is predicted with the same ``seed``, so sample t
    is the same sub-network for every row of the pool. ``samples``: T (default: the bundle's or the
    predictor's, else 100). ``seed`` picks the sub-networks and every later random draw; None draws one
    (reported). The other ``options`` go to :func:`acquire_probabilities` (``beta``, ``candidates``,
    ``configurations``, ``joint_budget``, ``spill_dir``, ``start``, ``on_pick``), which documents the
    methods, the returned :class:`Acquisition` and the memory they take.
    """
    check_request(k, method, **{name: options[name] for name in ("beta", "candidates", "configurations")
                                if name in options})
    seed = new_seed() if seed is None else seed
    predict, samples, classes = _predictor(model_or_bundle, samples, calibrated, memory_budget)
    size = len(pool) if hasattr(pool, "__len__") and hasattr(pool, "shape") else None
    if size is not None:
        check_request(k, method, pool_rows=size)
    if chunk_rows is None:  # the samples of one chunk within an eighth of the budget
        chunk_rows = max(1, parse_budget(memory_budget) // (8 * 4 * samples * max(classes, 2)))

    def chunks() -> Iterator[Chunk]:
        offset = 0
        for inputs in _input_chunks(pool, chunk_rows):
            probs = predict(inputs, samples, seed)
            yield Chunk(offset, probs)
            offset += len(probs)

    return acquire_probabilities(chunks, k, method, seed=seed, memory_budget=memory_budget, **options)


def _input_chunks(pool: Any, chunk_rows: int) -> Iterable[Any]:
    if hasattr(pool, "shape") and hasattr(pool, "__getitem__"):
        for start in range(0, len(pool), chunk_rows):
            yield pool[start:start + chunk_rows]
        return
    if isinstance(pool, (list, tuple)):
        yield np.asarray(pool)
        return
    yield from pool


def _predictor(model_or_bundle: Any, samples: int | None, calibrated: bool, memory_budget: int | str):
    """predict(inputs, T, seed) -> (rows, T, C) float32 probabilities, T and C (C: 0 until known)."""
    from torch import nn  # noqa: PLC0415  (torch only where a model runs)

    from mcdropout.bundle import Bundle  # noqa: PLC0415
    from mcdropout.engine import MCPredictor  # noqa: PLC0415

    if samples == "auto":
        raise InputError("samples: acquisition needs a fixed T (every row the same sub-networks), not 'auto'")
    if isinstance(model_or_bundle, Bundle):
        bundle = model_or_bundle
        if bundle.manifest.task != "classification":
            raise _regression(f"model {bundle.name!r} is a regression model")
        samples = bundle.manifest.samples if samples is None else samples

        def predict(inputs, t, seed):
            prediction = bundle.predict(inputs, samples=t, seed=seed, return_samples=True, calibrated=calibrated)
            return prediction.samples.numpy()

        return predict, samples, len(bundle.manifest.class_names or [])
    if isinstance(model_or_bundle, nn.Module):
        model_or_bundle = MCPredictor(model_or_bundle, task="classification", memory_budget=memory_budget)
    if not isinstance(model_or_bundle, MCPredictor):
        raise InputError(f"model_or_bundle: expected a Bundle, an MCPredictor or a torch nn.Module, got"
                         f" {type(model_or_bundle).__name__}")
    predictor = model_or_bundle
    if predictor.task != "classification":
        raise _regression("the predictor's task is regression")
    samples = (predictor.samples if predictor.samples != "auto" else 100) if samples is None else samples

    def predict_raw(inputs, t, seed):
        return predictor.predict(inputs, samples=t, seed=seed, return_samples=True).samples.numpy()

    return predict_raw, samples, 0


def _regression(what: str) -> InputError:
    return InputError(f"{what}: BALD, BatchBALD and the other acquisition methods here score class probabilities;"
                      " acquisition for regression is not supported (use a classifier)")
