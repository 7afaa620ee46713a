"""Only sound bundles load: finite float weights of the architecture's dtype, standardisations that fit,
an architecture under the size limit (counted before it is built), a finite probe prediction; and a
prediction that comes out non-finite is an error naming the model and the rows, never ``null``."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mcdropout.bundle import (
    MANIFEST,
    WEIGHTS,
    BundleError,
    Standardisation,
    architectures,
    load_bundle,
    save_bundle,
)
from mcdropout.errors import InputError

from .conftest import MODELS, edit_manifest, run_server
from .test_bundle import _manifest
from .test_scoring_safety import _refused, _score


def _saved(folder: Path, **changes) -> Path:
    torch.manual_seed(0)
    manifest = _manifest(**changes)
    return save_bundle(architectures.build(manifest.architecture, manifest.config), folder, manifest)


def _edit_weights(path: Path, change) -> Path:
    tensors = load_file(path / WEIGHTS)
    save_file({key: change(key, value) for key, value in tensors.items()}, path / WEIGHTS)
    return path


def _first_weight(value_or_fn):
    def change(key: str, tensor: torch.Tensor) -> torch.Tensor:
        if key != "0.weight":
            return tensor
        return value_or_fn(tensor) if callable(value_or_fn) else tensor.clone().fill_(value_or_fn)
    return change


@pytest.mark.parametrize("change, message", [
    (_first_weight(float("nan")), "0.weight holds 24 NaN or infinite value(s)"),
    (_first_weight(float("inf")), "0.weight holds 24 NaN or infinite value(s)"),
    (_first_weight(3e38), "probe prediction at load gave NaN or infinite statistics"),
    (_first_weight(lambda t: t > 0), "0.weight has dtype bool in the file but float32 in the architecture"),
    (_first_weight(lambda t: t.to(torch.int8)), "0.weight has dtype int8 in the file but float32"),
    (_first_weight(lambda t: t.double()), "0.weight has dtype float64 in the file but float32"),
])
def test_unsound_weights_are_refused_naming_the_file(tmp_path, change, message):
    path = _edit_weights(_saved(tmp_path / "toy"), change)
    with pytest.raises(BundleError) as caught:
        load_bundle(path, device="cpu")
    assert str(path / WEIGHTS) in str(caught.value) and message in str(caught.value), caught.value


def test_score_refuses_an_unsound_bundle_in_one_line(tmp_path):
    """`score` with NaN weights wrote NaN statistics and exited 0: now exit 2, the weights file named."""
    path = _edit_weights(_saved(tmp_path / "toy"), _first_weight(float("nan")))
    source = tmp_path / "in.csv"
    source.write_text("a,b,c\n" + "0.1,0.2,0.3\n" * 5)
    _refused(_score(path, source, tmp_path / "out.parquet", "--samples", 10), f"{path / WEIGHTS}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "toy"]


@pytest.mark.parametrize("changes, message", [
    ({"input_standardisation": Standardisation([0.0, 0.0], [1.0, 1.0])},
     "'preprocessing.input.mean': 2 values for input shape [3]; expected 1 or 3"),
    ({"target_standardisation": Standardisation([0.0, 1.0, 2.0], [1.0])},
     "'preprocessing.target.mean': 3 values for a network with 1 output(s)"),
    ({"output_names": ["y", "z"]}, "'outputs.names': 2 names for a network with 1 output(s)"),
])
def test_standardisations_and_names_must_fit_the_shapes(tmp_path, changes, message):
    path = _saved(tmp_path / "toy", **changes)
    with pytest.raises(BundleError) as caught:
        load_bundle(path, device="cpu")
    assert str(path / MANIFEST) in str(caught.value) and message in str(caught.value), caught.value


def test_a_huge_architecture_is_refused_before_it_is_allocated(tmp_path):
    path = _saved(tmp_path / "toy")
    # 5e7 hidden units: 2.7 GB if it were built; counted on the meta device it costs nothing
    edit_manifest(path, lambda data: data["architecture"]["config"].update(hidden=[50_000_000]))
    with pytest.raises(BundleError, match=r"250,000,001 parameters, over the limit of 50,000,000"):
        load_bundle(path, device="cpu")
    with pytest.raises(BundleError, match=r"has 41 parameters, over the limit of 10"):
        load_bundle(_saved(tmp_path / "small"), device="cpu", max_params=10)
    assert load_bundle(_saved(tmp_path / "fits"), device="cpu", max_params=41).name == "toy"


def test_overflowing_inputs_are_an_error_naming_the_model_and_rows(tmp_path):
    bundle = load_bundle(MODELS / "diabetes", device="cpu")
    rows = np.array([[0.0] * 10, [1e37] * 10, [0.01] * 10, [1e37] * 10])  # float32 values, too large to use
    with pytest.raises(InputError, match=r"model 'diabetes': non-finite statistics .* 2 row\(s\), rows numbered"
                                         r" from 0: 1, 3"):
        bundle.predict(rows, samples=10, seed=0)
    assert torch.isfinite(bundle.predict(rows[[0, 2]], samples=10, seed=0).mean).all()


def test_the_service_lists_unsound_bundles_as_failed_with_their_reason(tmp_path):
    models = tmp_path / "models"
    shutil.copytree(MODELS / "diabetes", models / "diabetes")
    _edit_weights(_saved(models / "nan", name="nan"), _first_weight(float("nan")))
    edit_manifest(_saved(models / "huge", name="huge"),
                   lambda data: data["architecture"]["config"].update(hidden=[5000]))
    with run_server(tmp_path, models_dir=str(models), max_model_params=10_000) as server:
        listed = {m["name"]: m for m in httpx.get(f"{server.url}/v1/models").json()["models"]}
        assert listed["diabetes"]["status"] == "ready"
        assert listed["nan"]["status"] == "failed" and "NaN or infinite" in listed["nan"]["error"]
        assert listed["huge"]["status"] == "failed" and "over the limit of 10,000" in listed["huge"]["error"]
        # a finite float32 input that makes the network overflow: a 422 naming model and row, not null
        rows = [[0.0] * 10, [1e37] * 10]
        answer = httpx.post(f"{server.url}/v1/models/diabetes/predict", json={"inputs": rows, "samples": 10})
        assert answer.status_code == 422, answer.text
        assert "model 'diabetes': non-finite statistics" in answer.text and "from 0: 1" in answer.text
        v2 = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 10], "data": [1e37] * 20 + [0.0] * 10}],
              "parameters": {"samples": 10}}
        answer = httpx.post(f"{server.url}/v2/models/diabetes/infer", json=v2)
        assert answer.status_code == 422 and "from 0: 0, 1" in answer.text, answer.text
        # each refused answer is counted in /metrics, with its rows
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'mcdropout_nonfinite_answers_total{model="diabetes"} 2.0' in metrics, metrics
        assert 'mcdropout_nonfinite_rows_total{model="diabetes"} 3.0' in metrics


def test_a_request_that_overflows_fails_alone_in_a_merged_batch(tmp_path):
    """Concurrent requests merged into one run: only the request with the overflowing row fails, with its own
    row numbers; the others are answered."""
    import asyncio

    good = [[0.01 * i] * 10 for i in range(3)]
    bad = [[0.0] * 10, [1e37] * 10]

    async def fire(url):
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            bodies = [{"inputs": bad if i == 3 else good, "samples": 500, "seed": 1} for i in range(8)]
            return await asyncio.gather(*(client.post("/v1/models/diabetes/predict", json=b) for b in bodies))

    with run_server(tmp_path, max_delay_ms="50") as server:
        answers = asyncio.run(fire(server.url))
    assert [a.status_code for a in answers] == [200, 200, 200, 422, 200, 200, 200, 200]
    assert "from 0: 1" in answers[3].text
