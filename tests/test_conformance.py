"""Conformance across protocols: one question, one answer, whichever way it is asked.

For every shipped model and a grid of options (interval level and method, set level and method, max_risk,
max_std / max_interval_width, integer and "auto" samples with and without tolerance, return_samples), v1,
v2 over HTTP (JSON and binary tensor data), v2 over gRPC, the Python client and the library's
``Bundle.answer`` give the same numbers for every output they carry; ``mcdropout score`` (local and remote)
gives the library's columns for one option set per model. The same bad value is the same 4xx everywhere:
v1 names the field, v2 and gRPC name ``parameters.<field>`` (gRPC: INVALID_ARGUMENT). Model metadata lists
the same outputs on v2 HTTP and gRPC, and every output an answer carries is listed there.

What each surface carries: v2 and gRPC have no draws (return_samples is refused there: 422 naming it); the
client carries tolerance and return_samples; the score runs use integer samples with the interval, set,
risk and std options.

One server (gRPC on) over the shipped models folder. The gRPC client and the score runs each run in one
process of their own: tritonclient's gRPC protobuf modules and kserve's (test_service_v2) declare the same
``inference`` messages, which one process's descriptor pool refuses to hold twice.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton

from mcdropout.answer import OPTION_NAMES, statistics
from mcdropout.client import Client, InvalidInput

from .conftest import MODELS, ROOT, free_port, run_server

ROWS = 4
RTOL = 1e-6  # float64 answers travel exactly (orjson, FP64 bytes); draws are float32 in the library


def _shipped() -> dict[str, str]:
    """Every shipped model, by name, with its task (read from the manifest: no torch at collection)."""
    tasks = {}
    for folder in sorted(MODELS.iterdir()):
        manifest = folder / "manifest.json"
        if folder.is_dir() and not folder.name.startswith(".") and manifest.is_file():
            tasks[folder.name] = json.loads(manifest.read_text())["task"]
    return tasks


TASKS = _shipped()

# "MID": a threshold between the rows' own values (from the library's answer to the same request without
# it), so that abstain holds both true and false; "MIN_RISK": the model's calibration.min_max_risk.
GRID: dict[str, dict[str, dict[str, Any]]] = {
    "regression": {
        "defaults": {"samples": 20, "seed": 11},
        "gaussian-0.8-width": {"samples": 30, "seed": 12, "interval": 0.8, "interval_method": "gaussian",
                               "max_interval_width": "MID"},
        "conformal-0.9-max_std": {"samples": 25, "seed": 13, "interval": 0.9, "interval_method": "conformal",
                                  "max_std": "MID"},
        "conformal-0.5-both": {"samples": 16, "seed": 14, "interval": 0.5, "max_std": "MID",
                               "max_interval_width": "MID"},
        "auto": {"samples": "auto", "seed": 15},
        "auto-tolerance-draws": {"samples": "auto", "seed": 16, "tolerance": 0.05, "return_samples": True,
                                 "interval_method": "gaussian", "interval": 0.9},
        "draws": {"samples": 8, "seed": 17, "return_samples": True, "interval": 0.7},
    },
    "classification": {
        "defaults": {"samples": 20, "seed": 21},
        "lac-0.9": {"samples": 30, "seed": 22, "set_level": 0.9, "interval": 0.9},
        "aps-0.8-risk": {"samples": 25, "seed": 23, "set_level": 0.8, "set_method": "aps", "max_risk": 0.1},
        "min-risk-entropy": {"samples": 20, "seed": 24, "max_risk": "MIN_RISK", "abstain_score": "entropy"},
        "risk-mi-delta": {"samples": 12, "seed": 25, "max_risk": 0.2, "delta": 0.2,
                          "abstain_score": "mutual_information"},
        "auto-aps": {"samples": "auto", "seed": 26, "set_level": 0.95, "set_method": "aps"},
        "auto-tolerance-draws": {"samples": "auto", "seed": 27, "tolerance": 0.05, "return_samples": True,
                                 "max_risk": 0.1, "set_level": 0.85},
        "draws": {"samples": 8, "seed": 28, "return_samples": True, "set_level": 0.7},
    },
}

# (parameters, the field at fault); "BELOW_MIN_RISK": just under the model's calibration.min_max_risk.
BAD: dict[str, dict[str, tuple[dict[str, Any], str]]] = {
    "both": {
        "interval-1.5": ({"samples": 10, "interval": 1.5}, "interval"),
        "samples-1": ({"samples": 1}, "samples"),
        "seed-negative": ({"samples": 10, "seed": -1}, "seed"),
        "tolerance-2": ({"samples": "auto", "tolerance": 2}, "tolerance"),
        "tolerance-integer-samples": ({"samples": 10, "tolerance": 0.1}, "tolerance"),
        "set_method-xyz": ({"samples": 10, "set_method": "xyz"}, "set_method"),
        "unknown-parameter": ({"samples": 10, "temperature": 2.0}, "temperature"),
        "return_samples-text": ({"samples": 10, "return_samples": "yes"}, "return_samples"),
    },
    "regression": {
        "set_level-of-a-regressor": ({"samples": 10, "set_level": 0.9}, "set_level"),
        "max_risk-of-a-regressor": ({"samples": 10, "max_risk": 0.2}, "max_risk"),
        "interval-above-conformal": ({"samples": 10, "interval": 0.999}, "interval"),
        "max_std-zero": ({"samples": 10, "max_std": 0}, "max_std"),
        "interval_method-xyz": ({"samples": 10, "interval_method": "bayes"}, "interval_method"),
        "set_method-of-a-regressor": ({"samples": 10, "set_method": "aps"}, "set_method"),
        "abstain_score-of-a-regressor": ({"samples": 10, "abstain_score": "entropy"}, "abstain_score"),
    },
    "classification": {
        "max_risk-below-min": ({"samples": 10, "max_risk": "BELOW_MIN_RISK"}, "max_risk"),
        "max_std-of-a-classifier": ({"samples": 10, "max_std": 1.0}, "max_std"),
        "set_level-above-calibration": ({"samples": 10, "set_level": 0.999}, "set_level"),
        "conformal-interval-of-a-classifier": ({"samples": 10, "interval_method": "conformal"}, "interval_method"),
        "delta-without-max_risk": ({"samples": 10, "delta": 0.2}, "delta"),
        "gaussian-interval-of-a-classifier": ({"samples": 10, "interval_method": "gaussian"}, "interval_method"),
        "set_method-without-set_level": ({"samples": 10, "set_method": "aps"}, "set_method"),
        "abstain_score-without-max_risk": ({"samples": 10, "abstain_score": "entropy"}, "abstain_score"),
    },
}
CLIENT_ARGUMENTS = {"samples", "seed", "interval", "tolerance", "return_samples", *OPTION_NAMES}  # Client.predict's

# One `mcdropout score` option set per model (integer samples: the CLI has no 'auto' nor tolerance).
SCORE = {
    "diabetes": ["--samples", "20", "--seed", "31", "--interval", "0.9", "--interval-method", "gaussian",
                 "--max-std", "55"],
    "heteroscedastic-1d": ["--samples", "30", "--seed", "32", "--interval", "0.8"],
    "sequence": ["--samples", "16", "--seed", "33", "--interval-method", "conformal"],
    "digits": ["--samples", "20", "--seed", "34", "--set-level", "0.9", "--set-method", "aps", "--max-risk", "0.05"],
    "breast-cancer": ["--samples", "24", "--seed", "35", "--set-level", "0.85", "--max-risk", "MIN_RISK",
                      "--delta", "0.2", "--abstain-score", "entropy"],
}
SCORE_DEFAULT = {"regression": ["--samples", "20", "--seed", "36", "--interval", "0.9"],
                 "classification": ["--samples", "20", "--seed", "37", "--set-level", "0.9", "--max-risk", "0.2"]}

GRID_CASES = [(name, case) for name, task in TASKS.items() for case in GRID[task]]
BAD_CASES = [(name, case) for name, task in TASKS.items() for case in (*BAD["both"], *BAD[task])]

GRPC_CLIENT = r"""
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

asked = json.load(sys.stdin)
client = grpcclient.InferenceServerClient(asked["address"])

def value(parameter):
    return getattr(parameter, parameter.WhichOneof("parameter_choice"))

def infer(model, rows, parameters):
    x = np.asarray(rows, dtype=np.float32)
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    try:
        result = client.infer(model, [tensor], parameters=parameters)
    except InferenceServerException as error:
        return {"status": error.status(), "message": error.message()}
    response = result.get_response()
    outputs = {}
    for output in response.outputs:
        array = result.as_numpy(output.name)
        outputs[output.name] = {"datatype": output.datatype, "shape": list(output.shape), "dtype": str(array.dtype),
                                "data": array.reshape(-1).tolist()}
    return {"outputs": outputs, "parameters": {k: value(v) for k, v in response.parameters.items()},
            "model_name": response.model_name}

answers = {key: infer(*request) for key, request in asked["infer"].items()}
metadata = {}
for name in asked["metadata"]:
    got = client.get_model_metadata(name)
    tensors = lambda given: [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in given]
    metadata[name] = {"name": got.name, "versions": list(got.versions), "platform": got.platform,
                      "inputs": tensors(got.inputs), "outputs": tensors(got.outputs)}
print(json.dumps({"infer": answers, "metadata": metadata}))
"""

SCORE_RUNS = r"""
import json, sys
from mcdropout.cli import main

codes = [main(argv) for argv in json.load(sys.stdin)]
print(json.dumps(codes))
"""


# --- the server and what every surface answers ------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    with run_server(tmp_path_factory.mktemp("conformance"), grpc_port=str(port), reload="false") as server:
        server.grpc_address = f"127.0.0.1:{port}"
        yield server


@pytest.fixture(scope="module")
def infos(http) -> dict[str, dict]:
    """GET /v1/models/{name} of every shipped model."""
    answers = {name: http.get(f"/v1/models/{name}") for name in TASKS}
    for name, answer in answers.items():
        assert answer.status_code == 200, (name, answer.text)
    return {name: answer.json() for name, answer in answers.items()}


@pytest.fixture(scope="module")
def bundles():
    from mcdropout.bundle import load_bundle

    return {name: load_bundle(MODELS / name, device="cpu") for name in TASKS}


@pytest.fixture(scope="module")
def rows(bundles) -> dict[str, np.ndarray]:
    """ROWS float32 rows per model: two test rows of its data set with different targets, their midpoint, and
    the mean of those two and a third (a third class where there is one): rows a classifier is less sure of,
    for sets of other sizes and abstention.
    A model without a known data set gets rows around its training inputs (mean + std * N(0, 1))."""
    from mcdropout.training import datasets

    made = {}
    for index, (name, bundle) in enumerate(bundles.items()):
        shape = (ROWS, *bundle.manifest.input_shape)
        if name in datasets.LOADERS:
            split = datasets.load(name, 0)
            x, y = split.x_test.astype(np.float32), np.asarray(split.y_test).reshape(len(split.x_test), -1)
            other = int(np.flatnonzero((y != y[0]).any(axis=1))[0])
            unlike = np.flatnonzero((y != y[0]).any(axis=1) & (y != y[other]).any(axis=1))  # none for 2 classes
            third = int(unlike[0]) if len(unlike) else other + 1
            made[name] = np.stack([x[0], x[other], (x[0] + x[other]) / 2, (x[0] + x[other] + x[third]) / 3]
                                  ).astype(np.float32).reshape(shape)
            continue
        noise = np.random.default_rng(100 + index).normal(size=(ROWS, int(np.prod(shape[1:]))))
        standard = bundle.manifest.input_standardisation
        if standard is not None:
            noise = noise * np.asarray(standard.std).reshape(1, -1) + np.asarray(standard.mean).reshape(1, -1)
        made[name] = noise.astype(np.float32).reshape(shape)
    return made


def library(bundle, x: np.ndarray, parameters: dict[str, Any], max_samples: int):
    """``Bundle.answer`` for a request's parameters, as the server runs it (its T cap for 'auto')."""
    return bundle.answer(x, samples=parameters.get("samples"), seed=parameters.get("seed"),
                         level=parameters.get("interval", 0.95),
                         options={k: v for k, v in parameters.items() if k in OPTION_NAMES},
                         tolerance=parameters.get("tolerance"), return_samples=parameters.get("return_samples", False),
                         max_samples=max_samples if parameters.get("samples") == "auto" else None)


def _midpoint(values: np.ndarray) -> float:
    """A threshold strictly between the smallest and the largest per-row value (never on one of them)."""
    ordered = np.unique(values)
    assert len(ordered) > 1, f"rows too alike to split: {values}"
    return float((ordered[0] + ordered[1]) / 2)


def resolve(template: dict[str, Any], info: dict, bundle, x: np.ndarray) -> dict[str, Any]:
    parameters = dict(template)
    if parameters.get("max_risk") == "MIN_RISK":
        parameters["max_risk"] = info["calibration"]["min_max_risk"]
    if parameters.get("max_risk") == "BELOW_MIN_RISK":
        parameters["max_risk"] = round(info["calibration"]["min_max_risk"] - 1e-4, 4)
    if "MID" in parameters.values():
        plain = library(bundle, x, {k: v for k, v in parameters.items() if v != "MID"}, info["max_samples"])
        per_row = {"max_std": plain.std.max(axis=1), "max_interval_width": (plain.upper - plain.lower).max(axis=1)}
        parameters.update({k: _midpoint(per_row[k]) for k, v in parameters.items() if v == "MID"})
    return parameters


@pytest.fixture(scope="module")
def grid(infos, bundles, rows) -> dict[tuple[str, str], tuple[dict[str, Any], Any]]:
    """Each grid case's parameters and the library's answer to it."""
    cases = {}
    for name, case in GRID_CASES:
        info = infos[name]
        parameters = resolve(GRID[TASKS[name]][case], info, bundles[name], rows[name])
        cases[name, case] = parameters, library(bundles[name], rows[name], parameters, info["max_samples"])
    return cases


@pytest.fixture(scope="module")
def bad(infos) -> dict[tuple[str, str], tuple[dict[str, Any], str]]:
    cases = {}
    for name, case in BAD_CASES:
        template, field = {**BAD["both"], **BAD[TASKS[name]]}[case]
        cases[name, case] = resolve(template, infos[name], None, None), field
    return cases


@pytest.fixture(scope="module")
def grpc_answers(server, grid, bad, rows) -> dict:
    """Every grid and bad case, and every model's metadata, asked through tritonclient.grpc (one process)."""
    asked = {"address": server.grpc_address, "metadata": list(TASKS), "infer": {}}
    for (name, case), (parameters, _) in grid.items():
        asked["infer"][f"{name}/{case}"] = [name, rows[name].tolist(), oip(parameters)]
    for (name, case), (parameters, _) in bad.items():
        asked["infer"][f"{name}/bad/{case}"] = [name, rows[name].tolist(), parameters]
    for name in TASKS:
        asked["infer"][f"{name}/bad-tensor"] = [name, too_wide(rows[name]).tolist(), {"samples": 10}]
    done = subprocess.run([sys.executable, "-c", GRPC_CLIENT], input=json.dumps(asked), cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def triton_http(server):
    client = triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60)
    yield client
    client.close()


@pytest.fixture(scope="module")
def client(server):
    with Client(server.url, retries=0) as made:
        yield made


# --- decoding each surface's answer into {statistic: array} ------------------------------------------------

V2_DTYPES = {"FP64": np.float64, "INT64": np.int64, "BOOL": np.bool_}


def from_library(result, task: str, tensors_only: bool = False) -> dict[str, Any]:
    """The statistics a result holds (None ones left out); ``tensors_only``: those v2 carries."""
    held = {}
    for stat in statistics(task):
        value = getattr(result, stat.name)
        if value is None or (tensors_only and not stat.tensor):
            continue
        held[stat.name] = list(value) if stat.kind == "str" else np.asarray(value)
    return held


def from_v1(body: dict[str, Any], task: str) -> dict[str, Any]:
    """A v1 body's statistics, read by the field layout v1 documents (not through the client's parser)."""
    held = {}
    for stat in statistics(task):
        container = body[stat.within] if stat.within else body
        if stat.name not in container:
            continue
        value = container[stat.name]
        if stat.shape == "set":
            mask = np.zeros((len(value), len(body["classes"])), dtype=bool)
            for row, members in enumerate(value):
                mask[row, members] = True
            assert body[f"{stat.name}_names"] == [[body["classes"][i] for i in members] for members in value]
            held[stat.name] = mask
        elif stat.kind == "str":
            held[stat.name] = list(value)
        else:
            held[stat.name] = np.asarray(value, dtype={"int": np.int64, "bool": np.bool_}.get(stat.kind, np.float64))
    return held


def from_v2_json(body: dict[str, Any]) -> dict[str, np.ndarray]:
    held = {}
    for output in body["outputs"]:
        assert "data" in output, output  # JSON asked, JSON answered
        held[output["name"]] = np.asarray(output["data"], dtype=V2_DTYPES[output["datatype"]]).reshape(output["shape"])
    return held


def from_grpc(answer: dict[str, Any]) -> dict[str, np.ndarray]:
    held = {}
    for name, output in answer["outputs"].items():
        assert np.dtype(output["dtype"]) == V2_DTYPES[output["datatype"]], output  # tritonclient's as_numpy
        held[name] = np.asarray(output["data"], dtype=output["dtype"]).reshape(output["shape"])
    return held


def assert_same(expected: dict[str, Any], got: dict[str, Any], where: str) -> None:
    """The same statistics, shapes, dtypes kinds and values (floats to RTOL, the rest exactly)."""
    assert sorted(got) == sorted(expected), f"{where}: outputs {sorted(got)}, expected {sorted(expected)}"
    for name, reference in expected.items():
        value = got[name]
        if isinstance(reference, list):
            assert value == reference, f"{where}: {name} {value} != {reference}"
            continue
        assert value.shape == reference.shape, f"{where}: {name} shape {value.shape} != {reference.shape}"
        if reference.dtype.kind == "f":
            assert value.dtype.kind == "f", f"{where}: {name} dtype {value.dtype}, expected floats"
            np.testing.assert_allclose(value, reference, rtol=RTOL, atol=0, err_msg=f"{where}: {name}")
        else:
            assert value.dtype == reference.dtype, f"{where}: {name} dtype {value.dtype} != {reference.dtype}"
            assert np.array_equal(value, reference), f"{where}: {name} {value.tolist()} != {reference.tolist()}"


def assert_same_draws(expected, got, where: str) -> None:
    """Each row's draws (T, outputs or classes); with samples='auto' the rows may hold different T."""
    assert got is not None, f"{where}: no draws"
    assert len(got) == len(expected), where
    for row, (reference, value) in enumerate(zip(expected, got)):
        reference = np.asarray(reference)
        value = np.asarray(value, dtype=reference.dtype)  # float32 draws travel as float32's shortest decimals
        assert value.shape == reference.shape, f"{where}: draws row {row} shape {value.shape}"
        np.testing.assert_allclose(value, reference, rtol=RTOL, atol=0, err_msg=f"{where}: draws row {row}")


def oip(parameters: dict[str, Any]) -> dict[str, Any]:
    """A grid case's parameters as the Open Inference Protocol takes them: without return_samples (v1's; the
    OIP answers carry no draws, and a request for them is refused)."""
    return {name: value for name, value in parameters.items() if name != "return_samples"}


def too_wide(x: np.ndarray) -> np.ndarray:
    """The rows flat with one value too many: a tensor shape the model does not take."""
    return np.concatenate([x.reshape(len(x), -1), np.zeros((len(x), 1), dtype=x.dtype)], axis=1)


def v2_body(x: np.ndarray, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.reshape(-1).tolist()}], "parameters": parameters}


def triton_infer(client: triton.InferenceServerClient, name: str, x: np.ndarray, parameters: dict[str, Any]):
    """tritonclient.http's default: binary tensor data both ways."""
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    return client.infer(name, [tensor], parameters=parameters)


def expected_echo(task: str, parameters: dict[str, Any], result) -> dict[str, Any]:
    """v2's response parameters: what answered (T, seed, level, tolerance) and how (interval method, set level)."""
    echo = {"samples": parameters["samples"], "seed": parameters["seed"], "interval": parameters.get("interval", 0.95)}
    if "tolerance" in parameters:
        echo["tolerance"] = parameters["tolerance"]
    if task == "regression":
        echo["interval_method"] = result.interval_method
    elif result.set_level is not None:
        echo["set_level"] = result.set_level
    return echo


# --- the tests ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "case"), GRID_CASES, ids=[f"{n}-{c}" for n, c in GRID_CASES])
def test_every_surface_gives_the_librarys_numbers(name, case, grid, rows, http, triton_http, grpc_answers, client):
    task = TASKS[name]
    parameters, result = grid[name, case]
    x = rows[name]
    everything = from_library(result, task)
    tensors = from_library(result, task, tensors_only=True)
    # the grid asks what it means to: the optional outputs are there when asked
    assert ("abstain" in everything) == any(k in parameters for k in ("max_risk", "max_std", "max_interval_width"))
    assert ("prediction_set" in everything) == ("set_level" in parameters)
    assert (result.draws is not None) == bool(parameters.get("return_samples"))

    # v1
    answer = http.post(f"/v1/models/{name}/predict", json={"inputs": x.tolist(), **parameters})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert_same(everything, from_v1(body, task), f"v1 {name} {case}")
    assert (body["samples"], body["seed"], body.get("tolerance")) == \
        (parameters["samples"], parameters["seed"], parameters.get("tolerance"))
    if task == "regression":
        assert body["interval"]["level"] == result.level and body["interval"]["method"] == result.interval_method
    else:
        assert body.get("set_level") == result.set_level and body["classes"] == result.classes
    if result.draws is None:
        assert "draws" not in body
    else:
        assert_same_draws(result.draws, body["draws"], f"v1 {name} {case}")

    # v2 over HTTP, JSON both ways
    answer = http.post(f"/v2/models/{name}/infer", json=v2_body(x, oip(parameters)))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    v2_json = answer.json()
    assert_same(tensors, from_v2_json(v2_json), f"v2 JSON {name} {case}")
    echo = expected_echo(task, parameters, result)
    assert without_id(v2_json["parameters"]) == echo and v2_json["parameters"]["id"] == v2_json["id"], \
        f"v2 JSON {name} {case}"

    # v2 over HTTP, binary tensor data both ways (tritonclient.http)
    binary = triton_infer(triton_http, name, x, oip(parameters))
    response = binary.get_response()
    assert all("binary_data_size" in output["parameters"] for output in response["outputs"])
    outputs = {output["name"]: binary.as_numpy(output["name"]) for output in response["outputs"]}
    assert_same(tensors, outputs, f"v2 binary {name} {case}")
    assert without_id(response["parameters"]) == echo, f"v2 binary {name} {case}"

    # v2 over gRPC (tritonclient.grpc)
    over_grpc = grpc_answers["infer"][f"{name}/{case}"]
    assert "outputs" in over_grpc, f"gRPC {name} {case}: {over_grpc}"
    assert_same(tensors, from_grpc(over_grpc), f"gRPC {name} {case}")
    assert without_id(over_grpc["parameters"]) == echo, f"gRPC {name} {case}"
    assert [o["name"] for o in v2_json["outputs"]] == list(over_grpc["outputs"]) == list(outputs), \
        "the outputs come in the same order on every v2 transport"

    # the Python client
    if set(parameters) <= CLIENT_ARGUMENTS:
        through_client = client.predict(name, x, **parameters)
        assert_same(everything, from_library(through_client, task), f"client {name} {case}")
        if parameters.get("return_samples"):
            assert_same_draws(result.draws, through_client.draws, f"client {name} {case}")
        else:
            assert through_client.draws is None
        assert through_client.seed == result.seed
        if task == "regression":
            assert (through_client.level, through_client.interval_method) == (result.level, result.interval_method)
        else:
            assert (through_client.set_level, through_client.classes) == (result.set_level, result.classes)


@pytest.mark.parametrize(("name", "case"), BAD_CASES, ids=[f"{n}-{c}" for n, c in BAD_CASES])
def test_a_bad_value_is_the_same_error_everywhere(name, case, bad, rows, http, triton_http, grpc_answers, client):
    parameters, field = bad[name, case]
    x = rows[name]
    prefixed = f"parameters.{field}"

    answer = http.post(f"/v1/models/{name}/predict", json={"inputs": x.tolist(), **parameters})
    assert answer.status_code == 422, answer.text
    assert set(answer.json()) == {"error", "field"} and answer.json()["field"] == field, answer.text
    assert answer.json()["error"].startswith(f"{field}: "), answer.text

    answer = http.post(f"/v2/models/{name}/infer", json=v2_body(x, parameters))
    assert answer.status_code == 422, answer.text
    assert set(answer.json()) == {"error"}, answer.text
    message = answer.json()["error"]
    assert message.startswith(f"{prefixed}: "), message

    with pytest.raises(triton.InferenceServerException) as raised:
        triton_infer(triton_http, name, x, parameters)
    assert (raised.value.status(), raised.value.message()) == ("422", message)

    over_grpc = grpc_answers["infer"][f"{name}/bad/{case}"]
    assert over_grpc == {"status": "StatusCode.INVALID_ARGUMENT", "message": message}

    if set(parameters) <= CLIENT_ARGUMENTS:
        with pytest.raises(InvalidInput) as raised:
            client.predict(name, x, **parameters)
        assert (raised.value.status, raised.value.field) == (422, field), raised.value


@pytest.mark.parametrize("name", list(TASKS))
def test_a_bad_tensor_is_400_on_v2_and_invalid_argument_over_grpc(name, rows, http, triton_http, grpc_answers):
    x = too_wide(rows[name])
    answer = http.post(f"/v2/models/{name}/infer", json=v2_body(x, {"samples": 10}))
    assert answer.status_code == 400 and set(answer.json()) == {"error"}, answer.text
    message = answer.json()["error"]
    assert "does not match" in message, message
    with pytest.raises(triton.InferenceServerException) as raised:
        triton_infer(triton_http, name, x, {"samples": 10})
    assert (raised.value.status(), raised.value.message()) == ("400", message)
    assert grpc_answers["infer"][f"{name}/bad-tensor"] == {"status": "StatusCode.INVALID_ARGUMENT", "message": message}
    answer = http.post(f"/v1/models/{name}/predict", json={"inputs": x.tolist(), "samples": 10})
    assert answer.status_code == 422 and answer.json()["field"].startswith("inputs"), answer.text


@pytest.mark.parametrize("name", list(TASKS))
def test_metadata_lists_the_same_outputs_over_http_and_grpc(name, http, grpc_answers, grid):
    answer = http.get(f"/v2/models/{name}")
    assert answer.status_code == 200, answer.text
    over_http = answer.json()
    over_grpc = grpc_answers["metadata"][name]
    for key in ("name", "versions", "platform", "inputs", "outputs"):
        assert over_grpc[key] == over_http[key], key
    # every output an answer carried is listed, with its datatype and shape (-1: rows)
    listed = {spec["name"]: spec for spec in over_http["outputs"]}
    carried: dict[str, dict] = {}
    for (model, case), _ in grid.items():
        if model == name:
            carried.update(grpc_answers["infer"][f"{name}/{case}"]["outputs"])
    assert sorted(carried) == sorted(listed), "the grid asks for every optional output the model lists"
    for output, got in carried.items():
        spec = listed[output]
        assert got["datatype"] == spec["datatype"], output
        assert len(got["shape"]) == len(spec["shape"]) and got["shape"][0] == ROWS, output
        assert all(want in (-1, have) for want, have in zip(spec["shape"][1:], got["shape"][1:])), output


@pytest.fixture(scope="module")
def scored(server, infos, rows, tmp_path_factory) -> dict[str, dict[str, pd.DataFrame]]:
    """`mcdropout score` of every model's rows, local and remote (one process for all runs)."""
    folder = tmp_path_factory.mktemp("score")
    runs, outputs = [], {}
    for name in TASKS:
        source = folder / f"{name}.npy"
        np.save(source, rows[name].reshape(ROWS, -1).astype(np.float64))
        options = score_options(name, infos[name])
        for engine, model in (("local", str(MODELS / name)), ("remote", name)):
            output = folder / f"{name}-{engine}.parquet"
            extra = ["--url", server.url] if engine == "remote" else []
            runs.append(["score", model, str(source), str(output), *options, "--engine", engine, *extra, "--quiet"])
            outputs.setdefault(name, {})[engine] = output
    done = subprocess.run([sys.executable, "-c", SCORE_RUNS], input=json.dumps(runs), cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and json.loads(done.stdout.splitlines()[-1]) == [0] * len(runs), \
        done.stdout + done.stderr
    return {name: {engine: pd.read_parquet(path) for engine, path in paths.items()}
            for name, paths in outputs.items()}


def without_id(parameters: dict[str, Any]) -> dict[str, Any]:
    """An answer's echoed parameters but its id (a fresh one per answer), which must be there."""
    assert isinstance(parameters.get("id"), str) and parameters["id"], parameters
    return {key: value for key, value in parameters.items() if key != "id"}


def score_options(name: str, info: dict) -> list[str]:
    options = SCORE.get(name, SCORE_DEFAULT[TASKS[name]])
    return [str(info["calibration"]["min_max_risk"]) if value == "MIN_RISK" else value for value in options]


def parameters_of_score(options: list[str]) -> dict[str, Any]:
    """The CLI's flags as request parameters."""
    given = dict(zip(options[::2], options[1::2]))
    parameters: dict[str, Any] = {"samples": int(given["--samples"]), "seed": int(given["--seed"])}
    for flag, value in given.items():
        key = flag.removeprefix("--").replace("-", "_")
        if key in ("samples", "seed"):
            continue
        parameters[key] = value if key in ("interval_method", "set_method", "abstain_score") else float(value)
    return parameters


@pytest.mark.parametrize("name", list(TASKS))
def test_score_local_and_remote_give_the_librarys_columns(name, scored, infos, bundles, rows, client):
    parameters = parameters_of_score(score_options(name, infos[name]))
    result = library(bundles[name], rows[name], parameters, infos[name]["max_samples"])
    expected = pd.DataFrame({"row": np.arange(ROWS, dtype=np.int64), **result.columns()})
    answers = ["answer_id", "answer_row"]  # the server's answer ids (remote), empty (local): not the library's
    through_client = client.predict(name, rows[name], **parameters)  # what the remote engine runs on
    assert_same(from_library(result, TASKS[name]), from_library(through_client, TASKS[name]), f"client {name}")
    for engine, table in scored[name].items():
        assert list(table.columns) == list(expected.columns) + answers, engine
        assert table.answer_id.notna().all() if engine == "remote" else table.answer_id.isna().all(), engine
        for column in expected.columns:
            reference, value = expected[column].to_numpy(), table[column].to_numpy()
            where = f"score --engine {engine} {name}: {column}"
            if reference.dtype.kind == "f":
                np.testing.assert_allclose(value, reference, rtol=RTOL, atol=0, err_msg=where)
            else:
                assert value.dtype == reference.dtype and value.tolist() == reference.tolist(), where


def test_return_samples_is_refused_over_the_open_inference_protocol(rows, http, triton_http):
    """v2 answers carry no draws: asking for them is a 422 naming the parameter, not a silent omission."""
    x = rows["diabetes"]
    answer = http.post("/v2/models/diabetes/infer", json=v2_body(x, {"samples": 10, "return_samples": True}))
    assert answer.status_code == 422 and answer.json()["error"].startswith("parameters.return_samples: applies to"), \
        answer.text
    with pytest.raises(triton.InferenceServerException) as raised:
        triton_infer(triton_http, "diabetes", x, {"samples": 10, "return_samples": True})
    assert raised.value.status() == "422"
