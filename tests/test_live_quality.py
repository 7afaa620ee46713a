"""Answers with ids, the answer store, outcomes in and live quality out, against real servers on 127.0.0.1."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from scipy.stats import binom

from mcdropout.client import Client
from tests.conftest import ROOT, free_port, run_server

DIABETES_ROWS = np.random.default_rng(3).normal(scale=0.05, size=(400, 10)).round(4).tolist()


RETAINED = 1000  # the module server's MCD_STORE_MAX_ROWS


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """One server for the module, gRPC on (its port in ``http.grpc_port``), answers written every 0.05 s."""
    folder = tmp_path_factory.mktemp("live")
    port = free_port()
    with run_server(folder, reload="false", store_flush_s="0.05", store_max_rows=str(RETAINED),
                    grpc_port=str(port)) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        http.grpc_port = port
        yield http, folder / "answers.sqlite3"


def _predict(http: httpx.Client, model: str, rows: list, **parameters) -> dict:
    answer = http.post(f"/v1/models/{model}/predict", json={"inputs": rows, **parameters})
    assert answer.status_code == 200, answer.text
    return answer.json()


def _outcomes(http: httpx.Client, model: str, entries: list) -> httpx.Response:
    return http.post(f"/v1/models/{model}/outcomes", json=entries)


def _rows_stored(path, table: str, model: str) -> int:
    with sqlite3.connect(path) as connection:
        return connection.execute(f"SELECT COUNT(*) FROM {table} WHERE model = ?", (model,)).fetchone()[0]


def test_answers_carry_an_id_the_client_may_set(live):
    http, _ = live
    fresh = [_predict(http, "diabetes", DIABETES_ROWS[:1], samples=4)["id"] for _ in range(2)]
    assert all(len(value) == 32 for value in fresh) and fresh[0] != fresh[1]
    assert _predict(http, "diabetes", DIABETES_ROWS[:1], samples=4, id="order-17.a")["id"] == "order-17.a"
    for bad in ("", "x" * 129, "white space", "ü", 17):
        refused = http.post("/v1/models/diabetes/predict", json={"inputs": DIABETES_ROWS[:1], "id": bad})
        assert refused.status_code == 422 and refused.json()["field"] == "id", refused.text
        assert "A-Z a-z 0-9" in refused.json()["error"]
    v2 = http.post("/v2/models/diabetes/infer", json={"id": "v2-call", "inputs": [
        {"name": "input", "shape": [1, 10], "datatype": "FP32", "data": DIABETES_ROWS[0]}]}).json()
    assert v2["id"] == v2["parameters"]["id"] == "v2-call"
    unnamed = http.post("/v2/models/diabetes/infer", json={"inputs": [
        {"name": "input", "shape": [1, 10], "datatype": "FP32", "data": DIABETES_ROWS[0]}]}).json()
    assert len(unnamed["id"]) == 32 and unnamed["parameters"]["id"] == unnamed["id"]


def test_an_exchangeable_stream_keeps_live_coverage_within_binomial_bounds(live):
    """Outcomes drawn from each row's own Gaussian predictive distribution fall in its gaussian 90% interval
    with probability 0.9, independently: the window's covered count is Binomial(n, 0.9). The check is the
    exact binomial interval holding all but 1e-6 of that mass (so the fixed seed is not what makes it pass)."""
    http, _ = live
    rng = np.random.default_rng(11)
    n = len(DIABETES_ROWS)
    answer = _predict(http, "diabetes", DIABETES_ROWS, samples=16, interval=0.9, interval_method="gaussian")
    y = rng.normal(np.asarray(answer["mean"])[:, 0], np.asarray(answer["std"])[:, 0])
    reported = _outcomes(http, "diabetes", [{"id": answer["id"], "row": i, "y": float(v)} for i, v in enumerate(y)])
    assert reported.status_code == 200 and reported.json() == {"model": "diabetes", "accepted": n, "duplicates": 0}
    quality = http.get("/v1/models/diabetes/quality").json()
    window = quality["windows"]["count"]
    (interval,) = [entry for entry in window["intervals"] if entry["level"] == 0.9]
    low, high = binom.ppf(5e-7, n, 0.9) / n, binom.isf(5e-7, n, 0.9) / n
    assert interval["rows"] == n and low <= interval["coverage"] <= high, (interval, low, high)
    width = np.mean(np.asarray(answer["interval"]["upper"]) - np.asarray(answer["interval"]["lower"]))
    assert interval["mean_width"] == pytest.approx(width)
    assert quality["windows"]["time"]["rows"] == n and window["nll"] > 0
    metrics = http.get("/metrics").text
    assert 'mcdropout_live_coverage{kind="interval",level="0.9",model="diabetes",window="count"}' in metrics


def test_classifier_outcomes_give_accuracy_ece_and_class_names(live):
    http, _ = live
    rows = np.random.default_rng(5).uniform(0, 16, size=(60, 1, 8, 8)).round(2).tolist()
    answer = _predict(http, "digits", rows, samples=8)
    labels = answer["label"]
    names = answer["classes"]
    entries = [{"id": answer["id"], "row": i, "y": names[label] if i % 2 else label} for i, label in enumerate(labels)]
    assert _outcomes(http, "digits", entries).json()["accepted"] == 60
    window = http.get("/v1/models/digits/quality").json()["windows"]["count"]
    assert window["accuracy"] == 1.0 and window["rows"] == 60
    confidence = np.max(np.asarray(answer["probs"]), axis=1)
    assert window["ece"] == pytest.approx(1.0 - confidence.mean(), abs=1e-9)  # all correct: the gap is 1 - conf


@pytest.mark.parametrize("entry, field", [
    ({"id": "never-answered", "row": 0, "y": 1.0}, "[1].id"),
    ({"row": 0, "y": 1.0}, "[1].id"),
    ({"id": "ANSWER", "row": 2, "y": 1.0}, "[1].row"),
    ({"id": "ANSWER", "row": -1, "y": 1.0}, "[1].row"),
    ({"id": "ANSWER", "row": 2**64, "y": 1.0}, "[1].row"),
    ({"id": "ANSWER", "row": 0, "y": "tall"}, "[1].y"),
    ({"id": "ANSWER", "row": 0, "y": [1.0, 2.0]}, "[1].y"),
    ({"id": "ANSWER", "row": 0, "y": None}, "[1].y"),
    ({"id": "ANSWER", "row": 0, "y": 1.0, "weight": 2}, "[1].weight"),
])
def test_bad_outcomes_are_refused_naming_the_field_and_nothing_is_stored(live, entry, field):
    http, store = live
    answer = _predict(http, "diabetes", DIABETES_ROWS[:2], samples=4)
    entry = {key: answer["id"] if value == "ANSWER" else value for key, value in entry.items()}
    before = _rows_stored(store, "outcomes", "diabetes")
    refused = _outcomes(http, "diabetes", [{"id": answer["id"], "row": 1, "y": 3.0}, entry])
    assert refused.status_code == 422 and refused.json()["field"] == field, refused.text
    assert refused.json()["error"].startswith(field)
    assert _rows_stored(store, "outcomes", "diabetes") == before
    # the good entry was not kept: it is accepted now, not a duplicate
    assert _outcomes(http, "diabetes", [{"id": answer["id"], "row": 1, "y": 3.0}]).json()["accepted"] == 1


def test_the_first_outcome_of_a_row_wins_and_a_retry_is_harmless(live):
    http, _ = live
    answer = _predict(http, "diabetes", DIABETES_ROWS[:2], samples=4)
    first = [{"id": answer["id"], "row": 0, "y": 1.0}, {"id": answer["id"], "row": 0, "y": 500.0}]
    assert _outcomes(http, "diabetes", first).json() == {"model": "diabetes", "accepted": 1, "duplicates": 1}
    again = [{"id": answer["id"], "row": 0, "y": 2.0}, {"id": answer["id"], "row": 1, "y": 2.0}]
    assert _outcomes(http, "diabetes", again).json() == {"model": "diabetes", "accepted": 1, "duplicates": 1}
    for body in ({"id": "x"}, [], "text"):
        assert _outcomes(http, "diabetes", body).json()["field"] == "body"


def test_the_client_reports_a_results_outcomes_and_reads_quality(live):
    http, _ = live
    with Client(str(http.base_url)) as client:
        result = client.predict("diabetes", DIABETES_ROWS[:5], samples=4, id="client-run")
        assert list(result.answer_id) == ["client-run"] * 5 and list(result.answer_row) == list(range(5))
        assert list(result.to_pandas().columns[-2:]) == ["answer_id", "answer_row"]
        assert client.report_outcomes("diabetes", result, result.mean[:, 0]) == {"accepted": 5, "duplicates": 0}
        assert client.report_outcomes("diabetes", [{"id": "client-run", "row": 0, "y": 1.0}])["duplicates"] == 1
        assert client.quality("diabetes")["windows"]["count"]["rows"] >= 5


GRPC_CLIENT = r"""
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient

client = grpcclient.InferenceServerClient(sys.argv[1])
tensor = grpcclient.InferInput("input", [1, 10], "FP32")
tensor.set_data_from_numpy(np.zeros((1, 10), dtype=np.float32))
named = client.infer("diabetes", [tensor], request_id="grpc-17", parameters={"samples": 4}).get_response()
fresh = client.infer("diabetes", [tensor], parameters={"samples": 4}).get_response()
print(json.dumps({"named": [named.id, named.parameters["id"].string_param],
                  "fresh": [fresh.id, fresh.parameters["id"].string_param]}))
"""


def test_grpc_answers_carry_the_id(live):
    """The gRPC client runs in a process of its own (tritonclient's protos and kserve's cannot share one)."""
    pytest.importorskip("tritonclient")
    http, _ = live
    done = subprocess.run([sys.executable, "-c", GRPC_CLIENT, f"127.0.0.1:{http.grpc_port}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ids = json.loads(done.stdout)
    assert ids["named"] == ["grpc-17", "grpc-17"] and len(ids["fresh"][0]) == 32 and ids["fresh"][1] == ids["fresh"][0]
    entries = [{"id": "grpc-17", "row": 0, "y": 1.0}, {"id": ids["fresh"][0], "row": 0, "y": 1.0}]
    assert _outcomes(http, "diabetes", entries).json()["accepted"] == 2


def test_retention_bounds_the_store_by_count(live):
    http, store = live
    xs = np.linspace(-3, 3, 600).reshape(-1, 1).round(4).tolist()
    first = _predict(http, "heteroscedastic-1d", xs, samples=2)
    _predict(http, "heteroscedastic-1d", xs, samples=2)  # 1200 rows answered, 1000 kept
    deadline = time.monotonic() + 20  # retention runs after the writer's flushes, at most once a second
    while _rows_stored(store, "answers", "heteroscedastic-1d") != RETAINED and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _rows_stored(store, "answers", "heteroscedastic-1d") == RETAINED
    refused = _outcomes(http, "heteroscedastic-1d", [{"id": first["id"], "row": 0, "y": 1.0}])
    assert refused.status_code == 422 and refused.json()["field"] == "[0].row"  # the oldest rows went first
    assert "past the store's retention (rows 200 to 599 are kept)" in refused.json()["error"]
    assert _outcomes(http, "heteroscedastic-1d", [{"id": first["id"], "row": 599, "y": 1.0}]).status_code == 200


def test_processes_share_the_store_and_a_restart_keeps_it(live, tmp_path):
    """Two processes on one store file (as the workers of ``mcdropout serve --workers N``): an answer of one is
    scored by the other; a process started after the first stopped finds its answers, and both report the
    same figures from the file."""
    http, store = live
    with run_server(tmp_path, reload="false", store_flush_s="0.05", store_path=str(store)) as server:
        answer = httpx.post(f"{server.url}/v1/models/sequence/predict",
                            json={"inputs": np.zeros((3, 20, 1)).tolist(), "samples": 4}).json()
    # stopped (SIGTERM): its writer wrote what it had queued
    assert _outcomes(http, "sequence", [{"id": answer["id"], "row": 0, "y": 0.5}]).json()["accepted"] == 1
    with run_server(tmp_path, reload="false", store_path=str(store)) as server:
        reported = httpx.post(f"{server.url}/v1/models/sequence/outcomes", json=[
            {"id": answer["id"], "row": 0, "y": 9.0}, {"id": answer["id"], "row": 2, "y": 0.5}])
        assert reported.json() == {"model": "sequence", "accepted": 1, "duplicates": 1}, reported.text
        there = httpx.get(f"{server.url}/v1/models/sequence/quality").json()["windows"]["count"]
    assert there == http.get("/v1/models/sequence/quality").json()["windows"]["count"] and there["rows"] == 2


def test_the_outcomes_command_joins_a_scoring_runs_output_with_later_labels(live, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.csv as csv
    import pyarrow.parquet as pq

    from mcdropout.cli import main

    http, _ = live
    names = http.get("/v1/models/diabetes").json()["feature_names"]
    x = np.asarray(DIABETES_ROWS[:30])
    csv.write_csv(pa.table({"pid": [f"p{i}" for i in range(30)], **dict(zip(names, x.T))}), tmp_path / "rows.csv")
    scores = tmp_path / "scores.parquet"
    assert main(["score", "diabetes", str(tmp_path / "rows.csv"), str(scores), "--engine", "remote", "--url",
                 str(http.base_url), "--id-column", "pid", "--samples", "4", "--interval", "0.9", "--quiet"]) == 0
    table = pq.read_table(scores).to_pandas()
    assert table.answer_id.nunique() == 1 and table.answer_row.tolist() == list(range(30))
    later = table.sample(frac=1, random_state=0).head(20)  # labels arrive later, in another order
    y = later["mean"] + 10.0
    csv.write_csv(pa.table({"pid": later.pid.tolist(), "progression": y.tolist()}), tmp_path / "labels.csv")
    command = ["outcomes", str(scores), str(tmp_path / "labels.csv"), "--id-column", "pid", "--target", "progression"]
    capsys.readouterr()
    assert main([*command, "--server", str(http.base_url), "--model", "diabetes"]) == 0
    assert "20 accepted, 0 already reported" in capsys.readouterr().out
    assert main([*command, "--server", str(http.base_url), "--model", "diabetes"]) == 0
    assert "0 accepted, 20 already reported" in capsys.readouterr().out
    assert main([*command, "--interval", "0.9", "--report", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    inside = ((later.lower <= y) & (y <= later.upper)).mean()
    assert report["rows"] == 20 and report["intervals"][0] == {
        "level": 0.9, "rows": 20, "coverage": pytest.approx(inside),
        "mean_width": pytest.approx((later.upper - later.lower).mean()),
        "interval_score": pytest.approx(report["intervals"][0]["interval_score"])}
    csv.write_csv(pa.table({"pid": ["nobody"], "progression": [1.0]}), tmp_path / "stray.csv")
    assert main(["outcomes", str(scores), str(tmp_path / "stray.csv"), "--target", "progression"]) == 2
    assert "1 label(s) with no scored row of that 'pid'" in capsys.readouterr().err


def test_the_model_page_loads_the_live_quality_panel(live):
    http, _ = live
    assert '<script src="quality.js"></script>' in http.get("/ui/").text
    script = http.get("/ui/quality.js")
    assert script.status_code == 200 and "/quality`" in script.text and "function liveQuality" in script.text
    assert "liveQuality(name, view, api, el, fmt)" in http.get("/ui/app.js").text
