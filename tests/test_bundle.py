"""Bundles on disk: round trips, user units, and broken bundles that say what is wrong."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import mcdropout as mcd
from mcdropout.bundle import architectures
from mcdropout.bundle import MANIFEST, WEIGHTS, BundleError, Manifest, Standardisation, load_bundle, save_bundle
from mcdropout.errors import InputError


def _manifest(**changes) -> Manifest:
    base = Manifest(
        name="toy",
        task="regression",
        architecture="mlp",
        config={"in_features": 3, "out_features": 1, "hidden": [8], "dropout": 0.2},
        input_shape=[3],
        feature_names=["a", "b", "c"],
        output_names=["y"],
        input_standardisation=Standardisation([1.0, 2.0, 3.0], [2.0, 2.0, 2.0]),
        target_standardisation=Standardisation([10.0], [5.0]),
        samples=50,
        tau=4.0,
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture
def saved(tmp_path: Path):
    torch.manual_seed(0)
    manifest = _manifest()
    model = architectures.build(manifest.architecture, manifest.config)
    path = save_bundle(model, tmp_path / "toy", manifest)
    return path, model, manifest


def test_round_trip_predicts_in_user_units(saved):
    path, model, manifest = saved
    bundle = mcd.load_bundle(path, device="cpu")
    assert bundle.manifest == manifest
    x = np.array([[1.0, 2.0, 3.0], [3.0, 0.0, -1.0]])
    pred = bundle.predict(x, seed=3)
    # by hand: standardise, run the engine in model units, undo the target scaling
    standard = (torch.tensor(x, dtype=torch.float32) - torch.tensor([1.0, 2.0, 3.0])) / 2.0
    raw = mcd.predict(model, standard, samples=50, seed=3, tau=4.0)
    assert torch.allclose(pred.mean, raw.mean * 5.0 + 10.0)
    assert torch.allclose(pred.epistemic, raw.epistemic * 25.0)
    assert torch.allclose(pred.aleatoric, torch.full_like(pred.aleatoric, 25.0 / 4.0))
    assert (path / MANIFEST).is_file() and (path / WEIGHTS).is_file()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_saving_over_a_bundle_replaces_it(saved, tmp_path):
    path, model, manifest = saved
    save_bundle(model, path, dataclasses.replace(manifest, version="2.0.0"))
    assert load_bundle(path).manifest.version == "2.0.0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]


def test_manifest_json_round_trip():
    manifest = _manifest(metrics={"mc": {"rmse": 1.5}}, training={"seed": 3})
    assert Manifest.from_dict(json.loads(json.dumps(manifest.to_dict()))) == manifest


def _write(path: Path, data) -> None:
    (path / MANIFEST).write_text(json.dumps(data) if not isinstance(data, str) else data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("task"), "field 'task' is missing"),
        (lambda d: d.update(task="ranking"), "field 'task': expected 'regression' or 'classification'"),
        (lambda d: d.update(schema_version=9), "field 'schema_version': this mcdropout reads version 1"),
        (lambda d: d["input"].update(shape=[0]), "field 'input.shape'"),
        (lambda d: d["input"].update(feature_names=["a"]), "field 'input.feature_names': 1 names"),
        (lambda d: d["inference"].update(samples="many"), "field 'inference.samples': expected int"),
        (lambda d: d["preprocessing"]["target"].update(std=[0.0]), "standard deviations must be positive"),
        (lambda d: d["architecture"].update(name="transformer-xxl"), "unknown architecture 'transformer-xxl'"),
        (lambda d: d["architecture"]["config"].update(depth=3), "does not take config"),
        (lambda d: d["architecture"]["config"].update(hidden=[9]), r"0.weight has shape \(8, 3\) in the file but \(9, 3\) in the architecture"),
    ],
)
def test_broken_manifest_is_named(saved, change, message):
    path, _, manifest = saved
    data = manifest.to_dict()
    change(data)
    _write(path, data)
    with pytest.raises(BundleError, match=message) as info:
        load_bundle(path)
    assert "manifest.json" in str(info.value) or "weights.safetensors" in str(info.value)


def test_bad_json_names_line_and_column(saved):
    path, _, _ = saved
    _write(path, '{"task": "regression",\n  oops}')
    with pytest.raises(BundleError, match=r"manifest.json: invalid JSON at line 2, column 3"):
        load_bundle(path)


def test_missing_files(saved, tmp_path):
    path, _, _ = saved
    with pytest.raises(BundleError, match="no such bundle folder"):
        load_bundle(tmp_path / "nothing")
    (path / WEIGHTS).unlink()
    with pytest.raises(BundleError, match="weights.safetensors: missing"):
        load_bundle(path)
    (path / MANIFEST).unlink()
    with pytest.raises(BundleError, match="manifest.json: missing"):
        load_bundle(path)


def test_truncated_weights(saved):
    path, _, _ = saved
    data = (path / WEIGHTS).read_bytes()
    (path / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="weights.safetensors: cannot read safetensors"):
        load_bundle(path)


def test_tensor_names_that_do_not_match(saved):
    from safetensors.torch import load_file, save_file

    path, _, _ = saved
    tensors = load_file(path / WEIGHTS)
    tensors["extra.weight"] = tensors.pop("0.weight")
    save_file(tensors, path / WEIGHTS)
    with pytest.raises(BundleError, match=r"missing tensors: 0.weight; unexpected tensors: extra.weight"):
        load_bundle(path)


def test_classifier_manifest_needs_classes():
    with pytest.raises(BundleError, match="needs its class names"):
        _manifest(task="classification", target_standardisation=None, tau=None).check()


def test_entry_point_architectures_are_found(monkeypatch):
    class FakeEntry:
        name = "from-a-plugin"

        @staticmethod
        def load():
            return lambda width: torch.nn.Sequential(torch.nn.Linear(width, 1), torch.nn.Dropout(0.1))

    def fake_entry_points(group):
        assert group == architectures.ENTRY_POINT_GROUP
        return [FakeEntry()]

    monkeypatch.setattr(architectures, "entry_points", fake_entry_points)
    monkeypatch.delitem(architectures._REGISTRY, "from-a-plugin", raising=False)
    assert "from-a-plugin" in architectures.available()
    assert isinstance(architectures.build("from-a-plugin", {"width": 4}), torch.nn.Sequential)
    monkeypatch.delitem(architectures._REGISTRY, "from-a-plugin")  # a name not registered yet: build scans for it
    assert isinstance(architectures.build("from-a-plugin", {"width": 4}), torch.nn.Sequential)


def test_subnormal_weights_are_stored_and_loaded_as_zero(saved, tmp_path):
    """Weight decay leaves subnormal floats behind, and every CPU multiply that meets one is slow."""
    path, model, manifest = saved
    tiny = torch.finfo(torch.float32).tiny
    with torch.no_grad():
        model[0].weight[0, :2] = torch.tensor([tiny / 8, -tiny / 1024])
    file_path = save_bundle(model, tmp_path / "written", manifest)
    weights = load_bundle(file_path, device="cpu").model[0].weight
    assert weights[0, 0] == 0 and weights[0, 1] == 0
    assert torch.equal(weights[1:], model[0].weight[1:])
    # A file written by other tools with subnormals in it loads without them too (its manifest records
    # no weights hash, as a bundle from before weights_blake2b: loaded with a warning).
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path / WEIGHTS)
    recorded = json.loads((path / MANIFEST).read_text())
    recorded.pop("weights_blake2b", None)
    (path / MANIFEST).write_text(json.dumps(recorded))
    loaded = load_bundle(path, device="cpu").model[0].weight
    assert loaded[0, 0] == 0 and loaded[0, 1] == 0 and torch.equal(loaded[0, 2:], model[0].weight[0, 2:])


def test_answer_refuses_what_every_protocol_refuses():
    """Bundle.answer checks its options as the service does: tolerance only with 'auto', max_risk at least
    what the calibration rows certify; each refusal names the option."""
    from mcdropout.answer import OptionError, min_max_risk

    bundle = load_bundle(Path(__file__).resolve().parent.parent / "models" / "digits", device="cpu")
    x = np.zeros((2, 1, 8, 8))
    with pytest.raises(InputError, match="tolerance applies with samples='auto'"):
        bundle.answer(x, samples=10, tolerance=0.1)
    selective = bundle.manifest.calibration.selective
    smallest = min_max_risk(selective.n, selective.delta)
    with pytest.raises(OptionError, match=f"max_risk must be >= {smallest}") as refused:
        bundle.answer(x, samples=10, options={"max_risk": smallest / 2})
    assert refused.value.field == "max_risk"
    answered = bundle.answer(x, samples=10, seed=1, options={"max_risk": smallest, "set_level": 0.9})
    assert answered.abstain.shape == (2,) and answered.set_size.shape == (2,)


def test_rows_whose_standardisation_overflows_are_named():
    bundle = load_bundle(Path(__file__).resolve().parent.parent / "models" / "diabetes", device="cpu")
    x = np.zeros((3, 10))
    x[1] = 3e38  # within float32, but (x - mean) / std is not
    with pytest.raises(InputError, match=r"row\(s\) 1 \(numbered from 0\) hold values so far out that standardising"):
        bundle.answer(x, samples=4)
