"""The service's adaptive conformal option against a real server on 127.0.0.1: the answer says the adapted level,
reported outcomes move it as ACI's update says (exactly), only adapted answers count, and the level is kept in
the answer store's file (which every worker and a restarted server read)."""

from __future__ import annotations

import sqlite3

import httpx
import numpy as np
import pytest

from mcdropout.client import Client
from tests.conftest import run_server

GAMMA = 0.05
ROWS = np.random.default_rng(5).normal(scale=0.05, size=(4, 10)).round(4).tolist()  # diabetes: 10 features


def _predict(http: httpx.Client, model: str, rows: list, **parameters) -> dict:
    answer = http.post(f"/v1/models/{model}/predict", json={"inputs": rows, "samples": 8, **parameters})
    assert answer.status_code == 200, answer.text
    return answer.json()


def _report(http: httpx.Client, model: str, answer: dict, ys: list) -> None:
    sent = http.post(f"/v1/models/{model}/outcomes",
                     json=[{"id": answer["id"], "row": i, "y": y} for i, y in enumerate(ys)])
    assert sent.status_code == 200 and sent.json()["accepted"] == len(ys), sent.text


def _adapted(http: httpx.Client, level: float = 0.9) -> float:
    return _predict(http, "diabetes", ROWS[:1], interval=level, adaptive=True)["interval"]["adapted_level"]


def test_outcomes_move_the_adapted_level_kept_in_the_store(tmp_path):
    alpha_t = 0.1  # ACI by hand: alpha_{t+1} = alpha_t + gamma (alpha - err_t)
    with run_server(tmp_path, reload="false", store_flush_s="0.05", adaptive_gamma=str(GAMMA)) as server, \
            httpx.Client(base_url=server.url, timeout=60) as http:
        first = _predict(http, "diabetes", ROWS, interval=0.9, adaptive=True)
        assert first["interval"]["level"] == 0.9 and first["interval"]["method"] == "conformal"
        assert first["interval"]["adapted_level"] == pytest.approx(0.9)  # no outcome yet: the nominal level
        _report(http, "diabetes", first, [1e6])  # a miss: wider intervals next
        alpha_t += GAMMA * (0.1 - 1.0)
        wider = _predict(http, "diabetes", ROWS, interval=0.9, adaptive=True)
        assert wider["interval"]["adapted_level"] == pytest.approx(1 - alpha_t, abs=1e-12)
        assert (np.array(wider["interval"]["upper"]) > np.array(first["interval"]["upper"])).all()

        static = _predict(http, "diabetes", ROWS[:2], interval=0.9)  # not adaptive: its outcomes move nothing
        assert "adapted_level" not in static["interval"]
        _report(http, "diabetes", static, [1e6, 1e6])
        other = _predict(http, "diabetes", ROWS[:1], interval=0.8, adaptive=True)  # another nominal level
        _report(http, "diabetes", other, [1e6])
        assert _adapted(http) == pytest.approx(1 - alpha_t, abs=1e-12)
        assert _adapted(http, 0.8) == pytest.approx(0.8 + GAMMA * 0.8, abs=1e-12)  # alpha 0.2: a miss adds 0.8 gamma

        means = [row[0] for row in wider["mean"]]
        _report(http, "diabetes", wider, means)  # four covered: narrower again
        alpha_t += 4 * GAMMA * 0.1
        assert _adapted(http) == pytest.approx(1 - alpha_t, abs=1e-12)

        # Past n / (n + 1) of the 66 calibration rows the interval is unbounded: null in JSON, inf in the client.
        for _ in range(3):
            answer = _predict(http, "diabetes", ROWS, interval=0.9, adaptive=True)
            _report(http, "diabetes", answer, [1e6] * 4)
        unbounded = _predict(http, "diabetes", ROWS[:1], interval=0.9, adaptive=True)
        assert unbounded["interval"]["adapted_level"] > 66 / 67
        assert unbounded["interval"]["lower"] == [[None]] and unbounded["interval"]["upper"] == [[None]]
        _report(http, "diabetes", unbounded, [1e6])  # scored as covered: the level comes down
        with Client(server.url) as client:
            result = client.predict("diabetes", ROWS[:1], samples=8, interval=0.9, adaptive=True)
        assert result.adapted_level == pytest.approx(unbounded["interval"]["adapted_level"] - GAMMA * 0.1)
        assert np.isneginf(result.lower).all() and np.isposinf(result.upper).all()
        held = _adapted(http)
        quality = http.get("/v1/models/diabetes/quality").json()
        assert quality["windows"]["count"]["rows"] > 0  # the live figures took these outcomes too
        shown = {(entry["kind"], entry["level"]): entry for entry in quality["adaptive"]}
        assert shown["interval", 0.9]["adapted_level"] == pytest.approx(held, abs=1e-12)
        assert shown["interval", 0.9]["outcomes"] == 18 and shown["interval", 0.8]["miss_rate"] == 1.0
        metrics = http.get("/metrics").text
        assert f'mcdropout_adaptive_level{{kind="interval",level="0.9",model="diabetes"}} {held}' in metrics
        # The level is kept in the store's file, where every worker and a restarted server read it.
        with sqlite3.connect(tmp_path / "answers.sqlite3") as db:
            kept = db.execute("SELECT alpha_t, steps FROM adaptive_levels WHERE model = 'diabetes' AND level = 0.9"
                              " AND kind = 'interval'").fetchone()
        assert 1 - kept[0] == pytest.approx(held, abs=1e-12) and kept[1] == 18

        v2 = http.post("/v2/models/diabetes/infer", json={"parameters": {"adaptive": True, "interval": 0.9},
                                                          "inputs": [{"name": "input", "shape": [1, 10],
                                                                      "datatype": "FP64", "data": ROWS[0]}]})
        assert v2.status_code == 200 and v2.json()["parameters"]["adapted_level"] == pytest.approx(held), v2.text

        for body, field in (({"adaptive": True, "interval_method": "gaussian"}, "adaptive"),
                            ({"adaptive": "yes"}, "adaptive"), ({"adapted_level": 0.99}, "adapted_level")):
            refused = http.post("/v1/models/diabetes/predict", json={"inputs": ROWS[:1], **body})
            assert refused.status_code == 422 and refused.json()["field"] == field, refused.text

        classified = http.post("/v1/models/digits/predict", json={"inputs": [[0.0] * 64], "samples": 8,
                                                                 "set_level": 0.9, "adaptive": True})
        assert classified.status_code == 200, classified.text
        body = classified.json()
        assert body["adapted_level"] == pytest.approx(0.9) and body["set_level"] == 0.9
        outside = [c for c in range(10) if c not in body["prediction_set"][0]]
        _report(http, "digits", body, [outside[0] if outside else 0])  # a miss, unless the set holds every class
        moved = http.post("/v1/models/digits/predict", json={"inputs": [[0.0] * 64], "samples": 8,
                                                             "set_level": 0.9, "adaptive": True}).json()
        assert moved["adapted_level"] == pytest.approx(0.9 + GAMMA * (0.9 if outside else -0.1), abs=1e-12)


def test_workers_share_one_controller_through_the_store_file(tmp_path):
    # Two AdaptiveLevels over one file stand for two worker processes: outcomes received by either move the
    # level both read, by the sum of ACI's steps (so the order of the workers' writes does not matter).
    from service.adaptive import AdaptiveLevels
    from service.live import Outcome, StoredAnswer

    first, second = (AdaptiveLevels(True, tmp_path / "answers.sqlite3", 0.01) for _ in range(2))
    kept = {"mean": [0.0], "std": [1.0], "lower": [-1.0], "upper": [1.0], "level": 0.9, "adapted_level": 0.9}

    def pair(covered: float, adapted: bool = True) -> tuple[StoredAnswer, Outcome]:
        return (StoredAnswer("m", "a", 0, "regression", {**kept, "adapted_level": 0.9 if adapted else None}),
                Outcome("a", 0, [0.0], {"covered": covered}))

    first.observe("m", [pair(0.0), pair(1.0)])
    second.observe("m", [pair(0.0), pair(0.0, adapted=False)])  # a plain answer's outcome moves nothing
    expected = 0.9 - 0.01 * ((0.1 - 1) + (0.1 - 0) + (0.1 - 1))
    assert first.current("m", "interval", 0.9) == pytest.approx(expected, abs=1e-12)
    assert second.current("m", "interval", 0.9) == pytest.approx(expected, abs=1e-12)
    assert second.current("m", "interval", 0.95) == 0.95  # no outcome at that level yet
    assert first.state("m") == [{"kind": "interval", "level": 0.9, "adapted_level": pytest.approx(expected),
                                 "gamma": 0.01, "outcomes": 3, "miss_rate": pytest.approx(2 / 3)}]
    first.close()
    second.close()
