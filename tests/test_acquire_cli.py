"""`mcdropout acquire`: the picks file (row, id, step scores) is the library's picks, an NPY pool of whole
images, resume from recorded picks, bad arguments, and Ray Data's sharded greedy steps picking what the
local engine picks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import mcdropout as mcd
from mcdropout import tables
from mcdropout.acquisition import AcquireJob, acquire_probabilities, acquire_ray
from mcdropout.cli import main
from mcdropout.scoring import Partial
from mcdropout.training import datasets

from .conftest import MODELS

CLASSIFIER = MODELS / "breast-cancer"
ARGS = ["--samples", "20", "--seed", "3", "--chunk-rows", "64", "--quiet"]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """150 rows of the breast-cancer features with a text id column, and those rows as an array."""
    split = datasets.breast_cancer(0)
    x = np.concatenate([split.x_test, split.x_train])[:150]
    frame = pd.DataFrame(x, columns=split.feature_names)
    frame.insert(0, "pid", [f"p{i}" for i in range(len(frame))])
    path = tmp_path_factory.mktemp("pool") / "pool.csv"
    frame.to_csv(path, index=False)
    return path, frame[split.feature_names].to_numpy()


@pytest.fixture(scope="module")
def bundle():
    return mcd.load_bundle(CLASSIFIER)


def _acquire(*args) -> int:
    return main(["acquire", *map(str, args)])


def test_picks_file_has_rows_ids_and_step_scores_of_the_librarys_picks(pool, bundle, tmp_path, capsys):
    source, x = pool
    out = tmp_path / "picks.csv"
    assert _acquire(CLASSIFIER, source, "--k", 4, "--out", out, "--id-column", "pid", *ARGS) == 0
    assert "wrote" in capsys.readouterr().out
    picks = pd.read_csv(out)
    assert list(picks.columns) == ["step", "row", "pid", "score", "standard_error"]
    expected = mcd.acquire(bundle, x, 4, samples=20, seed=3, chunk_rows=64)
    assert picks.step.tolist() == [0, 1, 2, 3]
    assert picks.row.tolist() == expected.indices.tolist()
    assert picks.pid.tolist() == [f"p{r}" for r in expected.indices]
    np.testing.assert_allclose(picks.score, expected.scores, rtol=1e-12)
    assert (np.diff(picks.score) > 0).all()  # BatchBALD of a growing batch grows (here: exact, T = 20)


def test_an_npy_pool_of_whole_images_for_an_image_model(tmp_path):
    digits = MODELS / "digits"
    images = datasets.digits(0).x_test[:40].reshape(40, 1, 8, 8).astype(np.float32)
    source = tmp_path / "images.npy"
    np.save(source, images)
    out = tmp_path / "picks.parquet"
    assert _acquire(digits, source, "--k", 3, "--method", "bald", "--out", out, *ARGS) == 0
    picks = pd.read_parquet(out)
    expected = mcd.acquire(mcd.load_bundle(digits), images, 3, "bald", samples=20, seed=3, chunk_rows=64)
    assert picks.row.tolist() == expected.indices.tolist()
    np.testing.assert_allclose(picks.score, expected.bald[expected.indices], rtol=1e-12)


def _interrupted(source, out, first_pick: dict, seed: int = 3) -> None:
    """What a run interrupted after its first pick leaves: OUTPUT.partial/ with that pick recorded, written
    by the same Partial (job record, lock, checksummed part) the command writes through."""
    job = AcquireJob(model=str(CLASSIFIER), input=str(source), output=str(out), k=4, samples=20, seed=seed,
                     id_column="pid", chunk_rows=64)
    job = replace(job, input_size=source.stat().st_size, input_blake2b=tables.file_blake2b(source))
    partial = Partial(out, job, resume=False, command="mcdropout acquire")
    partial.add(pa.table({key: [value] for key, value in first_pick.items()}))
    partial.close()


def test_resume_replays_the_recorded_picks_and_goes_on(pool, tmp_path, capsys):
    source, _ = pool
    whole = tmp_path / "whole.csv"
    assert _acquire(CLASSIFIER, source, "--k", 4, "--out", whole, "--id-column", "pid", *ARGS) == 0
    expected = pd.read_csv(whole)
    out = tmp_path / "resumed.csv"
    _interrupted(source, out, expected.iloc[0].to_dict())
    assert _acquire(CLASSIFIER, source, "--k", 4, "--out", out, "--id-column", "pid", *ARGS) == 2
    assert "holds an interrupted run: pass --resume" in capsys.readouterr().err
    assert _acquire(CLASSIFIER, source, "--k", 4, "--out", out, "--id-column", "pid", "--resume", *ARGS) == 0
    assert "resumed after 1" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_csv(out), expected)
    assert not (tmp_path / "resumed.csv.partial").exists()

    # A record of another run (here: another seed) is refused, never mixed with this one's picks.
    other = tmp_path / "other.csv"
    _interrupted(source, other, expected.iloc[0].to_dict(), seed=4)
    assert _acquire(CLASSIFIER, source, "--k", 4, "--out", other, "--id-column", "pid", "--resume", *ARGS) == 2
    assert "cannot resume, the interrupted run had a different seed" in capsys.readouterr().err
    assert not other.exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--k", 0], "k: expected a positive whole number"),
    (["--k", 151], "k: asked for 151 rows from a pool of 150"),
    (["--k", 2, "--method", "coreset"], "method: unknown method 'coreset'"),
    (["--k", 2, "--candidates", 1], "candidates: expected a whole number >= k"),
])
def test_bad_arguments_are_one_line_and_leave_nothing(pool, tmp_path, capsys, extra, message):
    source, _ = pool
    out = tmp_path / "picks.csv"
    assert _acquire(CLASSIFIER, source, "--out", out, *extra, *ARGS) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_regression_model_is_refused_naming_the_method(tmp_path, capsys):
    source = tmp_path / "pool.npy"
    np.save(source, np.zeros((5, 10)))
    assert _acquire(MODELS / "diabetes", source, "--k", 2, "--out", tmp_path / "p.csv", *ARGS) == 2
    assert "method: 'batchbald' scores class probabilities; the model is a regression model" in \
        capsys.readouterr().err


def test_ray_shards_pick_what_the_local_engine_picks(pool, tmp_path):
    """On a local two-CPU Ray: the command's Ray Data engine (two workers, the pool in three row groups of 64,
    64 and 22 rows) and acquire_ray over chunks of probabilities. Every greedy step is a map over the shards
    with the joint state broadcast, and a reduce; the same seed gives the local picks."""
    ray = pytest.importorskip("ray")
    source, _ = pool
    local, sharded = tmp_path / "local.csv", tmp_path / "ray.csv"
    # exact while 2^n x T fits 16 T values: steps 5 and 6 score candidates against 16 sampled configurations
    settings = ["--k", 6, "--id-column", "pid", "--configurations", 16, *ARGS]
    assert _acquire(CLASSIFIER, source, "--out", local, *settings) == 0
    probs = np.random.default_rng(0).dirichlet(np.full(4, 0.5), size=(600, 10)).astype(np.float32)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        assert _acquire(CLASSIFIER, source, "--out", sharded, "--engine", "ray", "--workers", 2, *settings) == 0
        assert ray.is_initialized()  # a running Ray is used, and left running
        for method, candidates in (("batchbald", None), ("batchbald", 100), ("power", None)):
            def chunks():
                return (probs[first:first + 250] for first in range(0, len(probs), 250))

            expected = acquire_probabilities(chunks, 5, method, seed=2, candidates=candidates, configurations=20)
            got = acquire_ray(chunks, 5, method, seed=2, candidates=candidates, configurations=20, workers=2)
            assert got.indices.tolist() == expected.indices.tolist(), (method, candidates)
            np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-9)
            assert got.exact_steps == expected.exact_steps
    finally:
        ray.shutdown()
    expected, got = pd.read_csv(local), pd.read_csv(sharded)
    assert got.row.tolist() == expected.row.tolist() and got.pid.tolist() == expected.pid.tolist()
    np.testing.assert_allclose(got.score, expected.score, rtol=1e-9)
    assert expected.standard_error[5] > 0  # a sampled step ran, with the library's per-step draws
