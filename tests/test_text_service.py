"""Text models served: v1 strings, v2 BYTES tensors (JSON and binary, tritonclient.http) and gRPC
(tritonclient.grpc, in a process of its own) give the library's numbers; ``mcdropout score`` reads a text
column; bad text answers 4xx naming the row. The server holds the shipped ``reviews`` bundle and a bundle made
from a Hugging Face save_pretrained folder (``tiny-bert``)."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from mcdropout.bundle import create_pretrained, load_bundle
from mcdropout.errors import TableError
from tests.conftest import MODELS, ROOT, free_port, run_server
from tests.test_text_bundles import TEXTS as BERT_TEXTS
from tests.test_text_bundles import _save_pretrained

pytest.importorskip("transformers")
MODEL = "reviews"
TEXTS = ["the acting was really superb", "i thought the plot was not clever", "quarterly earnings beat forecasts"]
T, SEED = 12, 7
MAX_TOKENS, MAX_ROWS = 12, 8  # the server's MCD_MAX_TOKENS (below the model's 16) and MCD_MAX_ROWS

GRPC_CLIENT = r"""
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

address, texts, samples, seed = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
client = grpcclient.InferenceServerClient(address)

def infer(values):
    tensor = grpcclient.InferInput("input", [len(values)], "BYTES")
    tensor.set_data_from_numpy(np.array([v.encode() for v in values], dtype=object))
    return client.infer("reviews", [tensor], parameters={"samples": samples, "seed": seed})

def message(values):
    try:
        infer(values)
    except InferenceServerException as error:
        return error.message()
    return None

metadata = client.get_model_metadata("reviews", as_json=True)
print(json.dumps({"probs": infer(texts).as_numpy("probs").tolist(), "input": metadata["inputs"][0],
                  "empty": message(["good", " "]), "long": message(["good " * 30])}))
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The server (reviews only) with its gRPC port."""
    folder = tmp_path_factory.mktemp("text-models")
    (folder / MODEL).symlink_to(MODELS / MODEL)
    create_pretrained(_save_pretrained(tmp_path_factory.mktemp("hf") / "pretrained"), folder / "tiny-bert",
                      max_length=12)
    port = free_port()
    with run_server(folder, models_dir=str(folder), grpc_port=str(port), reload="false",
                    max_tokens=str(MAX_TOKENS), max_rows=str(MAX_ROWS)) as server:
        server.models = folder
        yield server, port


@pytest.fixture(scope="module")
def library():
    """The library's answer to TEXTS: what every protocol must give."""
    return load_bundle(MODELS / MODEL).answer(TEXTS, samples=T, seed=SEED)


def _v1(server, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/models/{MODEL}/predict", json=body, timeout=120)


def test_v1_takes_strings_and_gives_the_librarys_answer(served, library):
    server, _ = served
    answer = _v1(server, {"inputs": TEXTS, "samples": T, "seed": SEED})
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["probs"], library.probs, rtol=1e-6)
    info = httpx.get(f"{server.url}/v1/models/{MODEL}").json()
    assert info["text"] == {"max_tokens": MAX_TOKENS}
    alone = _v1(server, {"inputs": TEXTS[1:2], "samples": T, "seed": SEED}).json()  # its answer is its own
    np.testing.assert_allclose(alone["probs"][0], library.probs[1], rtol=1e-6)


def test_a_hugging_face_bundle_is_served_with_text_in(served):
    server, _ = served
    answer = httpx.post(f"{server.url}/v1/models/tiny-bert/predict", json={"inputs": BERT_TEXTS, "samples": T,
                                                                           "seed": SEED}, timeout=120)
    assert answer.status_code == 200, answer.text
    expected = load_bundle(server.models / "tiny-bert").answer(BERT_TEXTS, samples=T, seed=SEED)
    np.testing.assert_allclose(answer.json()["probs"], expected.probs, rtol=1e-6)


def test_v2_bytes_tensors_in_json_and_binary(served, library):
    import tritonclient.http as httpclient

    server, _ = served
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    assert client.get_model_metadata(MODEL)["inputs"] == [{"name": "input", "datatype": "BYTES", "shape": [-1]}]
    values = np.array([text.encode() for text in TEXTS], dtype=object)
    for binary, shape in ((True, [3]), (False, [3]), (True, [3, 1])):
        tensor = httpclient.InferInput("input", shape, "BYTES")
        tensor.set_data_from_numpy(values.reshape(shape), binary_data=binary)
        result = client.infer(MODEL, [tensor], parameters={"samples": T, "seed": SEED})
        np.testing.assert_allclose(result.as_numpy("probs"), library.probs, rtol=1e-6, err_msg=f"binary={binary}")


def test_grpc_bytes_give_the_same_answer_and_name_bad_rows(served, library):
    pytest.importorskip("tritonclient")  # not tritonclient.grpc: its protos may not share this process with kserve
    _, port = served
    done = subprocess.run([sys.executable, "-c", GRPC_CLIENT, f"127.0.0.1:{port}", json.dumps(TEXTS), str(T),
                           str(SEED)], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    grpc = json.loads(done.stdout)
    np.testing.assert_allclose(grpc["probs"], library.probs, rtol=1e-6)
    assert grpc["input"] == {"name": "input", "datatype": "BYTES", "shape": ["-1"]}
    assert grpc["empty"] == "input 'input'[1]: is empty (or only white space); send some text"
    assert grpc["long"] == \
        f"input 'input'[0]: 32 tokens is over the limit of {MAX_TOKENS} (MCD_MAX_TOKENS); shorten it"


@pytest.mark.parametrize("inputs, field, words", [
    (["good", ""], "inputs[1]", "is empty"),
    (["good", "  \n"], "inputs[1]", "is empty"),
    (["good", 3], "inputs[1]", "expected a string (this model takes text), got 3"),
    ([["the", "film"]], "inputs[0]", "expected a string"),
    (["fine", "the film was " + "very " * 20 + "dull"], "inputs[1]",
     f"26 tokens is over the limit of {MAX_TOKENS} (MCD_MAX_TOKENS)"),  # [CLS], 24 words, [SEP]
    (["the film was great"] * (MAX_ROWS + 1), "inputs", f"{MAX_ROWS + 1} rows is over the limit of {MAX_ROWS}"),
    ([], "inputs", "is empty"),
    ("the film was great", "inputs", "valid array"),
])
def test_bad_text_is_refused_naming_the_row(served, inputs, field, words):
    server, _ = served
    answer = _v1(server, {"inputs": inputs})
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field and words in answer.json()["error"]


@pytest.mark.parametrize("tensor, words", [
    ({"shape": [2], "datatype": "BYTES", "data": ["good", 5]}, "input 'input'[1]: expected a string"),
    ({"shape": [2], "datatype": "BYTES", "data": ["good", ""]}, "input 'input'[1]: is empty"),
    ({"shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}, "this model takes text: datatype BYTES"),
    ({"shape": [2, 2], "datatype": "BYTES", "data": ["a", "b", "c", "d"]}, "does not match [rows] or [rows, 1]"),
    ({"shape": [3], "datatype": "BYTES", "data": ["a", "b"]}, "2 strings for shape [3]"),
    ({"shape": [MAX_ROWS + 1], "datatype": "BYTES", "data": ["a"] * (MAX_ROWS + 1)}, "over the limit of"),
])
def test_bad_bytes_tensors_are_refused_naming_the_element(served, tensor, words):
    server, _ = served
    answer = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json={"inputs": [{"name": "input", **tensor}]},
                        timeout=60)
    assert answer.status_code == 400, answer.text
    assert words in answer.json()["error"]


@pytest.mark.parametrize("raw, words", [
    (b"\x04\x00\x00\x00good\x02\x00\x00\x00\xff\xfe", "input 'input'[1]: not UTF-8 text"),
    (b"\x04\x00\x00\x00good\x09\x00\x00\x00bad", "input 'input'[1]: its length 9 runs past the tensor data"),
    (b"\x04\x00\x00\x00good", "the tensor data ends before element 1 of 2"),
])
def test_bad_binary_strings_are_refused(served, raw, words):
    server, _ = served
    header = json.dumps({"inputs": [{"name": "input", "shape": [2], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    answer = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", content=header + raw, timeout=60,
                        headers={"Inference-Header-Content-Length": str(len(header)),
                                 "Content-Type": "application/octet-stream"})
    assert answer.status_code == 400, answer.text
    assert words in answer.json()["error"]


def test_score_reads_a_text_column_locally_and_remotely(served, library, tmp_path):
    from mcdropout.scoring import Job, score

    server, _ = served
    table = tmp_path / "reviews.csv"
    pa_csv.write_csv(pa.table({"id": ["a", "b", "c"], "text": TEXTS}), table)
    for engine in ("local", "remote"):
        output = tmp_path / f"{engine}.parquet"
        job = Job(model=str(MODELS / MODEL) if engine == "local" else MODEL, input=str(table), output=str(output),
                  engine=engine, url=server.url if engine == "remote" else None, samples=T, seed=SEED,
                  id_column="id")
        assert score(job, quiet=True).rows == 3
        scored = pq.read_table(output).to_pydict()
        assert scored["id"] == ["a", "b", "c"]
        np.testing.assert_allclose(scored["mutual_information"], library.mutual_information, rtol=1e-6)
    pa_csv.write_csv(pa.table({"id": ["a", "b"], "text": ["good", None]}), table)
    with pytest.raises(TableError, match="missing or empty text in column 'text' .*rows numbered from 0: 1"):
        score(Job(model=str(MODELS / MODEL), input=str(table), output=str(tmp_path / "bad.parquet"),
                  id_column="id"), quiet=True)
