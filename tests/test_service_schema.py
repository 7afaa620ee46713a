"""Property-based fuzz of the HTTP API: no 5xx, and every answer matches the app's own OpenAPI schema.

Two layers, each a bounded number of Hypothesis examples (derandomized) against one real server:

- protocol-aware strategies send v1 ``predict`` rows and instances of each model's shape, and v2
  ``infer`` tensors of every numeric datatype, as JSON (flat or nested) or binary tensor data. Each body
  is well formed but for the one fault its test names: a value beyond the dtype's or float32's range or
  large enough to overflow the network, a string, boolean, null or nested junk for a number, a wrong
  shape, count, name or datatype, junk parameters, options, outputs or header lengths. A 200 must hold
  one finite answer per row (never ``null``), match the schema, and is the only answer a body without a
  fault may get; an error must be a short 4xx of a status the operation documents.
- schemathesis then walks every operation of ``/openapi.json`` with data drawn from the schema (its
  pytest plugin does not run under pytest 9, so the test runs each operation's strategy itself). The
  schema says little about what a row is, so its bodies seldom get past the first check.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from mcdropout.answer import STATISTICS
from service.codecs import v2
from service.schemas import V2InferResponse

from .conftest import MODELS, Server, run_server

EXAMPLES = 6  # per schema operation
PROTOCOL_EXAMPLES = 10  # per protocol and fault
MAX_SAMPLES = 200  # the server's MCD_MAX_SAMPLES: bounds the work of samples="auto"
FUZZ = settings(max_examples=PROTOCOL_EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

INT_RANGES = {name: (int(np.iinfo(name.lower()).min), int(np.iinfo(name.lower()).max))
              for name in ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")}
FLOAT_TYPES = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
# Values that sit on an edge: past float32 (3.4e38), past float64 (10**400), past int64, large enough that
# the network overflows in float32 (1e37), subnormal, and the non-JSON NaN and infinity (an invalid body).
EDGES = [10**400, 1e37, 3.5e38, -1e37, 3.4e38, 1e39, 1e308, -(10**400), 2**63, -(2**63) - 1, 2**64, 5e-324,
         65504.0, 70000.0, float("nan"), float("inf")]
JUNK = st.one_of(st.booleans(), st.none(), st.text(max_size=4), st.just("1.5"),
                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.lists(st.integers(), max_size=2))
OPTIONAL = {stat.name for stat in STATISTICS if stat.optional}  # outputs only answers that ask for them hold
OPTION_VALUES = {
    "interval_method": ["conformal", "gaussian", "other"], "set_level": [0.9, 0.0, 2.0], "set_method": ["lac", "aps", "x"],
    "max_risk": [0.1, 0.0, 1.5], "delta": [0.1, -1.0], "abstain_score": ["entropy", "mutual_information", "nope"],
    "max_std": [0.5, 0.0, -1.0, 1e308], "max_interval_width": [1.0, 0.0, "wide"],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    with run_server(tmp_path_factory.mktemp("fuzz"), max_samples=MAX_SAMPLES, reload="false") as running:
        yield running


@pytest.fixture(scope="module")
def schema(server):
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


@pytest.fixture(scope="module")
def models(server) -> dict[str, dict]:
    """Every shipped model, loaded (a run of the schema walk alone before may have unloaded some)."""
    for path in sorted(MODELS.iterdir()):
        if (path / "manifest.json").exists():
            assert httpx.post(f"{server.url}/v2/repository/models/{path.name}/load", timeout=60).status_code == 200
    listed = {m["name"]: m for m in httpx.get(f"{server.url}/v1/models").json()["models"]}
    assert all(m["status"] == "ready" for m in listed.values()) and len(listed) >= 5, listed
    # rows of numbers are generated from each model's input shape; a text model's strings are fuzzed by
    # tests/test_text_service.py
    return {name: m for name, m in listed.items() if m.get("text") is None}


def _operation(schema, method: str, path: str):
    return next(result.ok() for result in schema.get_all_operations()
                if result.ok().method.upper() == method and result.ok().path == path)


# -- protocol-aware bodies ------------------------------------------------------------------------
# Each body is built well formed, then given the one fault the test asks for (or none), so that the
# answers and every refusal on the way to them are reached: Hypothesis left to pick the fault itself
# visits some of them rarely or never within a small budget.

NUMBER = st.one_of(st.floats(-3.0, 3.0), st.integers(-3, 3))  # values in the data's range
WRONG = st.one_of(st.sampled_from(EDGES), JUNK)  # ... and what a careless or hostile client sends instead


def _spoil(draw, values: list, element: st.SearchStrategy, wrong: st.SearchStrategy) -> list:
    """``values`` with one replaced by ``wrong``, or one too many or too few."""
    values = list(values)
    kind = draw(st.sampled_from(["replace", "replace", "longer", "shorter"]))
    if kind == "replace" and values:
        values[draw(st.integers(0, len(values) - 1))] = draw(wrong)
    elif kind == "longer":
        values.append(draw(element))
    elif values:
        values.pop()
    return values


def _nested(values: list, shape: list[int]) -> list:
    """A flat list as nested lists of ``shape`` (in Python: the values stay the objects they are)."""
    if len(shape) == 1:
        return list(values)
    step = math.prod(shape[1:])
    return [_nested(values[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def _options(draw, body: dict, junk: bool, names: tuple[str, ...]) -> None:
    """Valid values for some of ``names`` (samples, seed, interval, ...); with ``junk``, one of them is junk."""
    # interval: a conformal interval goes up to n/(n+1) of the calibration rows (diabetes' 66: 0.985)
    valid = {"samples": st.integers(2, 40), "seed": st.integers(0, 2**63 - 1), "interval": st.floats(0.01, 0.98),
             "return_samples": st.booleans(), "binary_data_output": st.booleans()}
    for name in names:
        if draw(st.booleans()):
            body[name] = draw(valid[name])
    if junk and draw(st.booleans()):
        name = draw(st.sampled_from(names))
        body[name] = draw(st.sampled_from({
            "samples": [0, 1, -1, 10**6, True, "10", 2.5], "seed": [-1, 2**63, 2**64, True, "3", 1.5],
            "interval": [0, 1, -0.5, 1.5, "0.9", True, 5e-324], "return_samples": ["yes", 1],
            "binary_data_output": ["yes", 1]}[name]))
    elif junk:  # a calibration option: valid or not, for this model or not (the shipped ones are uncalibrated)
        option = draw(st.sampled_from(sorted(OPTION_VALUES)))
        body[option] = draw(st.sampled_from(OPTION_VALUES[option]))


V1_FAULTS = ["none", "value", "rows", "option", "key", "version", "both", "feature"]
V2_FAULTS = ["none", "value", "datatype", "shape", "name", "inputs", "option", "parameters", "outputs", "header"]


@st.composite
def _v1_request(draw, models: dict[str, dict], fault: str) -> tuple[str, dict, bytes, int]:
    """(model name, query, raw body, rows sent)."""
    name = draw(st.sampled_from(sorted(m for m in models if fault != "feature" or models[m].get("feature_names"))))
    info = models[name]
    shape, features = info["input_shape"], info.get("feature_names")
    width = math.prod(shape)
    count = draw(st.integers(1, 3))
    rows = [draw(st.lists(NUMBER, min_size=width, max_size=width)) for _ in range(count)]
    if fault == "value":
        spoilt = draw(st.integers(0, count - 1))
        rows[spoilt] = _spoil(draw, rows[spoilt], NUMBER, WRONG)
    body: dict[str, Any] = {}
    if features and (fault == "feature" or draw(st.booleans())):
        body["instances"] = [dict(zip(features, row)) for row in rows]
        if fault == "feature":
            spoilt = body["instances"][draw(st.integers(0, count - 1))]
            change = draw(st.sampled_from(["missing", "unknown", "junk"]))
            if change == "missing":
                del spoilt[features[0]]
            else:
                spoilt["not a feature" if change == "unknown" else features[-1]] = draw(WRONG)
    else:
        if len(shape) > 1 and draw(st.booleans()):  # the model's own shape, or flat
            rows = [_nested(row, shape) if len(row) == width else row for row in rows]
        body["inputs"] = draw(st.sampled_from([[], [rows], rows[0], {"rows": rows}, rows * 1001])) \
            if fault == "rows" else rows
    if fault == "both":
        body.update(draw(st.sampled_from([{"inputs": rows, "instances": [{}]}, {"inputs": None, "instances": None}])))
    _options(draw, body, fault == "option", ("samples", "seed", "interval", "return_samples"))
    if fault == "key":
        body[draw(st.sampled_from(["unknown", "", "Inputs"]))] = draw(JUNK)
    query = {"version": draw(st.sampled_from(["0", "x", "2", "-1", "1" * 30]))} if fault == "version" else {}
    return name, query, json.dumps(body).encode(), count


@st.composite
def _v2_request(draw, models: dict[str, dict], outputs: dict[str, list[str]],
                fault: str) -> tuple[str, bytes, dict, int]:
    """(model name, raw body, headers, rows asked for)."""
    name = draw(st.sampled_from(sorted(models)))
    shape = models[name]["input_shape"]
    width = math.prod(shape)
    rows = draw(st.integers(1, 3))
    datatype = draw(st.sampled_from(["BYTES", "FP8", "fp32", "", "BOOL"] if fault == "datatype" else
                                    [*INT_RANGES, *FLOAT_TYPES]))
    tensor_shape = [rows, *shape] if len(shape) == 1 or draw(st.booleans()) else [rows, width]  # image rows: flat
    if fault == "shape":
        tensor_shape = draw(st.sampled_from([[], [0, *shape], [-1, *shape], [rows], [rows, width + 1], [2**40, *shape],
                                             [rows, 2**40], [rows, *shape, 1]]))
    tensor: dict[str, Any] = {"name": draw(st.sampled_from(["INPUT", "", "inputs"])) if fault == "name" else "input",
                              "shape": tensor_shape, "datatype": datatype}
    if datatype in INT_RANGES:
        low, high = INT_RANGES[datatype]
        element = st.integers(max(low, -3), min(high, 3))
        wrong = st.sampled_from([low - 1, high + 1, 1.5, *EDGES, "1", True, None, [1]])
    else:
        element, wrong = NUMBER, WRONG
    count = rows * width
    values = draw(st.lists(element, min_size=count, max_size=count))
    headers = {"content-type": "application/json"}
    binary = b""
    if datatype not in INT_RANGES and datatype not in FLOAT_TYPES:
        tensor["data"] = values
    elif draw(st.integers(0, 3)) == 0:  # binary tensor data
        dtype = np.dtype(FLOAT_TYPES.get(datatype) or datatype.lower())
        binary = np.array(values, dtype=dtype).tobytes()
        if fault == "value":  # any bit pattern: NaN, infinity and float32 overflow included
            binary = draw(st.binary(min_size=len(binary), max_size=len(binary)))
        tensor["parameters"] = {"binary_data_size": len(binary)}
        if fault == "header":
            tensor["parameters"]["binary_data_size"] = draw(st.sampled_from([len(binary) + 1, -1, "8", None, 2**70]))
    else:
        if fault == "value":
            values = _spoil(draw, values, element, wrong)
        tensor["data"] = _nested(values, [rows, width]) if len(values) == count and draw(st.booleans()) else values
    body: dict[str, Any] = {"inputs": [tensor]}
    if fault == "inputs":
        body["inputs"] = draw(st.sampled_from([[], [tensor, tensor], tensor, [[tensor]], None]))
    parameters: dict[str, Any] = {}
    _options(draw, parameters, fault == "option", ("samples", "seed", "interval", "binary_data_output"))
    if parameters or fault == "parameters":
        body["parameters"] = draw(st.sampled_from([[], "x", [parameters]])) if fault == "parameters" else parameters
    if fault == "outputs" or draw(st.integers(0, 3)) == 0:
        asked = draw(st.sampled_from(["nope", "", "MEAN", "abstain"] if fault == "outputs" else outputs[name]))
        binary_data = draw(st.sampled_from(["x", 1] if fault == "outputs" else [True, False]))
        body["outputs"] = [{"name": asked, "parameters": {"binary_data": binary_data}}]
    header = json.dumps(body).encode()
    if binary or fault == "header":
        length = str(len(header))
        if fault == "header" and not binary:
            length = draw(st.sampled_from(["0", "-1", "x", str(len(header) + 1), "1" * 30]))
        headers.update({"inference-header-content-length": length, "content-type": "application/octet-stream"})
    return name, header + binary, headers, rows


def _finite_everywhere(value: Any, where: str = "answer") -> None:
    """No null and no non-finite number anywhere in an answer (an uncertainty answered as null is a lie)."""
    if isinstance(value, dict):
        for key, item in value.items():
            _finite_everywhere(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _finite_everywhere(item, f"{where}[{index}]")
    else:
        assert value is not None, f"{where} is null"
        assert not isinstance(value, float) or math.isfinite(value), f"{where} is {value}"


def _fuzz(operation, strategy: st.SearchStrategy, send, answered, fault: str) -> None:
    """Send each drawn request: every answer is a 200 that passes ``answered`` or a short 4xx error of a
    status the operation documents; a request without a fault is answered."""
    documented = operation.definition.raw["responses"]

    @given(request=strategy)
    @FUZZ
    def check(request):
        response = send(request)
        if response.status_code == 200:
            answered(request, response)
            return
        assert 400 <= response.status_code < 500 and fault != "none", (response.status_code, response.text[:500])
        assert str(response.status_code) in documented, \
            (response.status_code, response.text[:300], sorted(documented))
        error = response.json()["error"]
        assert isinstance(error, str) and len(error) <= 1100, error[:200]

    check()


@pytest.mark.parametrize("fault", V1_FAULTS)
def test_v1_predict_bodies(server, schema, models, fault):
    operation = _operation(schema, "POST", "/v1/models/{name}/predict")

    def answered(request, response):
        answer = response.json()
        _finite_everywhere(answer)
        assert len(answer["samples_used"]) == request[3]
        operation.validate_response(response)

    with httpx.Client(base_url=server.url, timeout=30) as http:
        def send(request):
            name, query, raw, _ = request
            response = http.post(f"/v1/models/{name}/predict", params=query, content=raw,
                                 headers={"content-type": "application/json"})
            if response.status_code != 200:
                operation.validate_response(response)
            return response

        _fuzz(operation, _v1_request(models, fault), send, answered, fault)
    assert "Traceback" not in server.output()


@pytest.mark.parametrize("fault", V2_FAULTS)
def test_v2_infer_tensors(server, schema, models, fault):
    operation = _operation(schema, "POST", "/v2/models/{name}/infer")
    outputs = {name: [o["name"] for o in httpx.get(f"{server.url}/v2/models/{name}").json()["outputs"]
                      if o["name"] not in OPTIONAL] for name in models}

    def answered(request, response):
        name, _, _, rows = request
        length = response.headers.get("inference-header-content-length")
        answer = V2InferResponse.model_validate_json(response.content[:int(length)] if length else response.content)
        assert answer.model_name == name
        for output in answer.outputs:
            assert output.shape[0] == rows, output
            if output.data is not None:
                _finite_everywhere(output.data, output.name)
        if not length:  # the schema describes JSON answers; a binary one's JSON header is checked above
            operation.validate_response(response)

    with httpx.Client(base_url=server.url, timeout=30) as http:
        def send(request):
            name, raw, headers, _ = request
            response = http.post(f"/v2/models/{name}/infer", content=raw, headers=headers)
            if response.status_code != 200:
                operation.validate_response(response)
            return response

        _fuzz(operation, _v2_request(models, outputs, fault), send, answered, fault)
    assert "Traceback" not in server.output()


def test_v2_an_optional_output_names_the_parameters_that_ask_for_it(server, models):
    """The metadata lists ``abstain`` (optional); asking for it without max_std says how to get it."""
    assert set(v2._ASKED_BY) == OPTIONAL
    body = {"inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP32", "data": [0.01] * 10}],
            "outputs": [{"name": "abstain"}]}
    response = httpx.post(f"{server.url}/v2/models/diabetes/infer", json=body)
    assert response.status_code == 400 and "comes only with the parameters that ask for it: max_risk" in response.text
    body["parameters"] = {"max_std": 1e-9}
    answer = httpx.post(f"{server.url}/v2/models/diabetes/infer", json=body).json()
    assert answer["outputs"] == [{"name": "abstain", "datatype": "BOOL", "shape": [1], "data": [True]}]


@pytest.mark.parametrize("field", ["name", "datatype"])
def test_v2_error_texts_are_capped(server, models, field):
    """A megabyte echoed back in an error (an input's name or datatype) is cut: v1's cap holds for v2."""
    tensor = {"name": "input", "shape": [1, 10], "datatype": "FP32", "data": [0.0] * 10, field: "x" * 1_000_000}
    response = httpx.post(f"{server.url}/v2/models/diabetes/infer", json={"inputs": [tensor]})
    assert response.status_code == 400 and len(response.content) < 1200, response.text[:200]
    assert response.json()["error"].endswith("characters)")


@pytest.mark.parametrize("path, good, bad", [
    ("/v1/models/{name}/predict", {"inputs": [[0.5, -1], [[1.5]]]}, {"inputs": [["1"]]}),
    ("/v1/models/{name}/predict", {"inputs": [[0.5]]}, {"inputs": [[True]]}),
    ("/v1/models/{name}/predict", {"instances": [{"age": 0.5}]}, {"instances": [{"age": "0.5"}]}),
    ("/v2/models/{name}/infer", {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [[1, 2]]}]},
     {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, False]}]}),
])
def test_the_schema_says_rows_hold_numbers(server, path, good, bad):
    """Strict types in the JSON Schema too: numbers, not booleans or numeric strings."""
    document = httpx.get(f"{server.url}/openapi.json").json()
    body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    validator = jsonschema.Draft202012Validator({**body, "components": document["components"]})
    assert validator.is_valid(good) and not validator.is_valid(bad)


def test_no_server_errors_and_answers_match_the_schema(server, schema):
    """Last in this file: its repository calls unload models."""
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck),
                  database=None)
        def check(case):
            case.call_and_validate(checks=[not_a_server_error, response_schema_conformance], timeout=30)

        check()
