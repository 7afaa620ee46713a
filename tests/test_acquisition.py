"""Acquisition: BALD, BatchBALD (exact and sampled), the stochastic and simple methods, chunked pools."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import mcdropout as mcd
from mcdropout.acquisition import (
    Chunk,
    JointState,
    RowScores,
    acquire_probabilities,
    gumbel_top_k,
    sampling_error_bound,
)
from mcdropout.errors import InputError


def _probs(rows: int, samples: int, classes: int, seed: int = 0) -> np.ndarray:
    """Per-sample probabilities with a row-specific spread between samples (so BALD varies by row)."""
    rng = np.random.default_rng(seed)
    spread = rng.uniform(0.1, 2.5, size=(rows, 1, 1))
    logits = 2.0 * rng.normal(size=(rows, 1, classes)) + spread * rng.normal(size=(rows, samples, classes))
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return probs / probs.sum(axis=-1, keepdims=True)


def _exact_greedy(probs: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    """Greedy BatchBALD by brute force: the joint of the chosen labels enumerated per sample."""
    rows, samples, _ = probs.shape
    expected = (-(probs * np.log(probs)).sum(-1)).mean(1)
    chosen: list[int] = []
    scores: list[float] = []
    joint = np.ones((samples, 1))  # p(y_A = c | t)
    for _ in range(k):
        best, best_row = -np.inf, -1
        for row in range(rows):
            if row in chosen:
                continue
            p = (joint[:, :, None] * probs[row][:, None, :]).reshape(samples, -1).mean(0)
            score = -(p * np.log(p)).sum() - expected[chosen].sum() - expected[row]
            if score > best:
                best, best_row = score, row
        chosen.append(best_row)
        scores.append(best)
        joint = (joint[:, :, None] * probs[best_row][:, None, :]).reshape(samples, -1)
    return chosen, scores


def test_exact_batchbald_picks_what_brute_force_picks():
    probs = _probs(300, 16, 4)
    rows, scores = _exact_greedy(probs, 5)
    result = acquire_probabilities(probs, 5, "batchbald", seed=0, joint_budget=10**9)
    assert result.indices.tolist() == rows
    assert result.exact_steps == 5 and not result.standard_errors.any()
    # the candidates' probabilities are kept as float32 (as the engine returns them): 1e-7 relative each
    np.testing.assert_allclose(result.scores, scores, rtol=1e-6)
    # the first pick is BALD's: with nothing chosen BatchBALD is BALD
    assert result.indices[0] == np.argmax(result.bald)
    np.testing.assert_allclose(result.bald, RowScores.of(probs).bald)


@pytest.mark.parametrize("configurations", [None, 300])  # exact throughout; sampled past C^2
def test_chunked_streamed_and_spilled_pools_pick_what_one_array_picks(tmp_path, configurations):
    probs = _probs(400, 12, 5, seed=1)
    options = {"seed": 3, "joint_budget": 10**9} if configurations is None else \
        {"seed": 3, "configurations": configurations}
    whole = acquire_probabilities(probs, 6, **options)
    chunks = [Chunk(start, probs[start:start + 57]) for start in range(0, 400, 57)]
    listed = acquire_probabilities(chunks, 6, **options)
    generated = acquire_probabilities(lambda: (probs[s:s + 91] for s in range(0, 400, 91)), 6, **options)
    spilled = acquire_probabilities(iter(chunks), 6, memory_budget=20_000, spill_dir=tmp_path, **options)
    for other in (listed, generated, spilled):
        assert other.indices.tolist() == whole.indices.tolist()
        np.testing.assert_allclose(other.scores, whole.scores, rtol=1e-12)
    assert list(tmp_path.iterdir()) == []  # the spilled file is removed
    if configurations is not None:
        assert 0 < whole.exact_steps < 6 and whole.standard_errors[-1] > 0
    # the BALD prefilter, in fixed slots over chunks, equals the top rows chosen from the whole pool
    top = np.argsort(-whole.bald, kind="stable")[:40]
    prefiltered = acquire_probabilities(chunks, 6, candidates=40, **options)
    reference = acquire_probabilities(probs[np.sort(top)], 6, **options)
    assert prefiltered.indices.tolist() == np.sort(top)[reference.indices].tolist()


def test_a_resumed_run_picks_what_the_whole_run_picks():
    probs = _probs(200, 10, 6, seed=2)
    whole = acquire_probabilities(probs, 6, seed=5, configurations=200)
    assert whole.exact_steps < 6  # the resumed steps draw configurations
    resumed = acquire_probabilities(probs, 6, seed=5, configurations=200, start=whole.indices[:3].tolist())
    assert resumed.indices.tolist() == whole.indices.tolist()
    np.testing.assert_allclose(resumed.scores, whole.scores, rtol=1e-12)


def test_sampled_configurations_are_within_the_documented_error():
    classes, draws = 6, 4000
    probs = _probs(300, 20, classes, seed=4)
    state = JointState.empty(20)
    for row in (0, 1, 2):  # 6^3 = 216 configurations: the exact state is cheap
        state = state.extend(probs[row], 0.0, joint_budget=10**9, draws=draws, rng=np.random.default_rng(0))
    exact = state.extend(probs[3], 0.0, joint_budget=10**9, draws=draws, rng=np.random.default_rng(0))
    sampled = state.extend(probs[3], 0.0, joint_budget=0, draws=draws, rng=np.random.default_rng(1))
    assert exact.exact and not sampled.exact and sampled.weights.sum() == pytest.approx(1.0)
    truth, zero = exact.conditional_entropy(probs[4:])
    estimate, errors = sampled.conditional_entropy(probs[4:])
    assert not zero.any()
    # Each estimate is a mean of `draws` independent values in [0, log C]: Hoeffding, with a union bound
    # over the 296 candidates at total failure probability 1e-6.
    bound = sampling_error_bound(classes, draws, 1e-6 / len(truth))
    assert np.abs(estimate - truth).max() <= bound
    # the reported standard errors obey Popoviciu's bound log(C) / (2 sqrt(M))
    assert (errors <= math.log(classes) / (2 * math.sqrt(draws - 1)) + 1e-12).all()
    # and most candidates (>= 90%; 95% expected) lie within 2 reported standard errors of the truth
    assert np.mean(np.abs(estimate - truth) <= 2 * errors) >= 0.9


@pytest.mark.parametrize("method", ["power", "softmax", "softrank", "random"])
def test_seeded_stochastic_methods_are_reproducible(method):
    probs = _probs(500, 8, 3, seed=6)
    first = acquire_probabilities(probs, 20, method, seed=11, beta=2.0)
    again = acquire_probabilities([Chunk(s, probs[s:s + 64]) for s in range(0, 500, 64)], 20, method, seed=11,
                                  beta=2.0)
    other = acquire_probabilities(probs, 20, method, seed=12, beta=2.0)
    assert first.indices.tolist() == again.indices.tolist()
    assert first.indices.tolist() != other.indices.tolist()
    assert len(set(first.indices.tolist())) == 20
    if method != "random":
        assert first.parameters == {"beta": 2.0, "score": "bald"}


def test_gumbel_top_k_draws_in_proportion_to_the_weights():
    weights = np.array([1.0, 2.0, 5.0, 0.0])
    rng = np.random.default_rng(0)
    draws = 20_000
    firsts = np.bincount([gumbel_top_k(np.log(weights + 1e-300), 1, 1.0, rng)[0] for _ in range(draws)], minlength=4)
    expected = weights / weights.sum()
    # binomial counts: within 5 standard deviations sqrt(n p (1 - p)) of n p
    assert (np.abs(firsts - draws * expected) <= 5 * np.sqrt(draws * expected * (1 - expected)) + 1e-9).all()


def test_simple_methods_rank_by_their_scores():
    probs = _probs(100, 8, 4, seed=7)
    scores = RowScores.of(probs)
    for method in ("bald", "entropy", "margin"):
        result = acquire_probabilities(probs, 7, method, seed=0)
        assert result.indices.tolist() == np.argsort(-getattr(scores, method), kind="stable")[:7].tolist()


def test_bad_requests_name_the_field():
    probs = _probs(20, 4, 3)
    for kwargs, field in [({"k": 0}, "k:"), ({"k": 21}, "k:"), ({"k": 2, "method": "coreset"}, "method:"),
                          ({"k": 5, "candidates": 3}, "candidates:"), ({"k": 2, "beta": -1.0}, "beta:"),
                          ({"k": 2, "method": "bald", "start": [1]}, "start:"), ({"k": 2, "seed": -1}, "seed:")]:
        with pytest.raises(InputError, match=field):
            acquire_probabilities(probs, **kwargs)
    with pytest.raises(InputError, match="shape"):
        acquire_probabilities(probs[:, :, 0], 2)
    with pytest.raises(InputError, match="empty"):
        acquire_probabilities(probs[:0], 2)


def _classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))


def test_a_model_over_a_chunked_pool_picks_what_its_probabilities_pick():
    model = _classifier()
    pool = np.random.default_rng(0).normal(size=(150, 4)).astype(np.float32)
    samples = mcd.predict(model, pool, samples=20, task="classification", seed=9, return_samples=True).samples
    direct = acquire_probabilities(samples.numpy(), 4, seed=9)
    # shared masks: sample t is the same sub-network in every chunk, so chunking changes nothing
    chunked = mcd.acquire(model, pool, 4, samples=20, seed=9, chunk_rows=64)
    streamed = mcd.acquire(model, (pool[s:s + 70] for s in range(0, 150, 70)), 4, samples=20, seed=9)
    assert chunked.indices.tolist() == direct.indices.tolist() == streamed.indices.tolist()
    np.testing.assert_allclose(chunked.bald, direct.bald, rtol=1e-6)
    assert chunked.samples == 20 and chunked.classes == 3 and chunked.seed == 9


def test_a_bundle_acquires_with_its_calibrated_probabilities(tmp_path):
    model = _classifier()
    path = mcd.save_bundle(model, tmp_path / "toy", task="classification", input_shape=[4], architecture="mlp",
                           config={"in_features": 4, "out_features": 3, "hidden": [32], "dropout": 0.5},
                           class_names=["a", "b", "c"], samples=10)
    bundle = mcd.load_bundle(path, device="cpu")
    pool = np.random.default_rng(1).normal(size=(60, 4))
    result = mcd.acquire(bundle, pool, 3, method="bald", seed=2)
    probs = bundle.predict(pool, samples=10, seed=2, return_samples=True).samples.numpy()
    assert result.indices.tolist() == acquire_probabilities(probs, 3, "bald", seed=2).indices.tolist()
    assert result.samples == 10


def test_regression_is_refused_with_a_clear_error():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))
    with pytest.raises(InputError, match="regression"):
        mcd.acquire(mcd.MCPredictor(model, task="regression"), np.zeros((10, 4)), 2)
