"""``POST /v1/models/{name}/acquire`` on a real server: the library's picks through the client (blocking and
async) and through ``mcdropout acquire --engine remote``, and every bad value a 4xx naming its field."""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import pytest

import mcdropout as mcd
from mcdropout.acquisition import METHODS
from mcdropout.cli import main
from mcdropout.client import AsyncClient, Client, InvalidInput
from mcdropout.training import datasets
from service.codecs import acquire as codec

from .conftest import MODELS

SPLIT = datasets.breast_cancer(0)
POOL = np.concatenate([SPLIT.x_test, SPLIT.x_train])[:120].astype(np.float32)
URL = "/v1/models/breast-cancer/acquire"


@pytest.fixture(scope="module")
def bundle():
    return mcd.load_bundle(MODELS / "breast-cancer")


def test_the_client_gets_the_librarys_picks(server, bundle):
    expected = mcd.acquire(bundle, POOL, 4, samples=20, seed=3)
    with Client(server.url) as client:
        picks = client.acquire("breast-cancer", POOL, 4, samples=20, seed=3)
    assert picks.indices.tolist() == expected.indices.tolist()
    np.testing.assert_allclose(picks.scores, expected.scores, rtol=1e-12)
    np.testing.assert_allclose(picks.bald, expected.bald, rtol=1e-12)
    assert (picks.method, picks.samples, picks.seed) == ("batchbald", 20, 3)

    power = mcd.acquire(bundle, POOL, 5, "power", samples=20, seed=3, beta=2.0)

    async def asynchronous():
        async with AsyncClient(server.url) as client:
            return await client.acquire("breast-cancer", POOL, 5, method="power", samples=20, seed=3, beta=2.0)

    picks = asyncio.run(asynchronous())
    assert picks.indices.tolist() == power.indices.tolist()
    assert picks.raw["parameters"]["beta"] == 2.0


@pytest.mark.parametrize(("change", "field", "message"), [
    ({"k": 0}, "k", "expected a positive whole number"),
    ({"k": 121}, "k", "asked for 121 rows from a pool of 120"),
    ({"k": "3"}, "k", "expected a positive whole number"),
    ({"method": "coreset"}, "method", "unknown method 'coreset'"),
    ({"samples": "auto"}, "samples", "needs a fixed T"),
    ({"samples": 1}, "samples", "must be an integer from 2"),
    ({"seed": -1}, "seed", "must be an integer from 0"),
    ({"beta": 0}, "beta", "expected a positive number"),
    ({"candidates": 1}, "candidates", "expected a whole number >= k"),
    ({"configurations": 10**6}, "configurations", f"at most {codec.MAX_CONFIGURATIONS}"),
    ({"temperature": 2}, "temperature", "unknown field"),
    ({"inputs": [[0.0] * 29]}, "inputs[0]", ""),
])
def test_bad_values_answer_422_naming_the_field(http, change, field, message):
    body = {"inputs": POOL.tolist(), "k": 3, **change}
    answer = http.post(URL, json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field and message in answer.json()["error"]


def test_batchbald_of_a_regression_model_and_a_pool_over_the_row_limit_are_refused(http, server):
    answer = http.post("/v1/models/diabetes/acquire", json={"inputs": [[0.0] * 10] * 5, "k": 2})
    assert answer.status_code == 422 and answer.json()["field"] == "method", answer.text
    assert "'batchbald' scores class probabilities; model 'diabetes' is a regression model" in answer.json()["error"]
    too_many = np.zeros((1001, POOL.shape[1]))  # MCD_MAX_ROWS is 1000 by default
    answer = http.post(URL, json={"inputs": too_many.tolist(), "k": 2})
    assert answer.status_code == 422 and answer.json()["field"] == "inputs", answer.text
    with Client(server.url) as client, pytest.raises(InvalidInput, match="picked from as a whole") as refused:
        client.acquire("breast-cancer", too_many, 2)  # refused before it is sent
    assert refused.value.field == "inputs"


def test_remote_engine_picks_what_the_local_engine_picks(server, tmp_path):
    frame = pd.DataFrame(POOL.astype(np.float64), columns=SPLIT.feature_names)
    frame.insert(0, "pid", [f"p{i}" for i in range(len(frame))])
    source = tmp_path / "pool.parquet"
    frame.to_parquet(source)
    settings = ["--k", 4, "--samples", 20, "--seed", 3, "--id-column", "pid", "--chunk-rows", 1000, "--quiet"]
    local, remote = tmp_path / "local.csv", tmp_path / "remote.csv"
    assert main(["acquire", str(MODELS / "breast-cancer"), str(source), "--out", str(local), *map(str, settings)]) == 0
    assert main(["acquire", "breast-cancer", str(source), "--out", str(remote), "--engine", "remote", "--url",
                 server.url, *map(str, settings)]) == 0
    expected, got = pd.read_csv(local), pd.read_csv(remote)
    assert got.row.tolist() == expected.row.tolist() and got.pid.tolist() == expected.pid.tolist()
    np.testing.assert_allclose(got.score, expected.score, rtol=1e-12)


def test_the_documented_methods_are_the_librarys():
    assert codec.METHODS == METHODS
