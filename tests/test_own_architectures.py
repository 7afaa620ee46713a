"""Bring your own network: architectures by import path and in a bundle's own model.py."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
from torch import nn

import mcdropout as mcd
from mcdropout.bundle import BundleError

NETS = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        """Not one of the registry's: a skip connection around a dropout MLP."""

        def __init__(self, in_features, width=16, p=0.2):
            super().__init__()
            self.inner = nn.Linear(in_features, width)
            self.drop = nn.Dropout(p)
            self.out = nn.Linear(width, 1)
            self.skip = nn.Linear(in_features, 1)

        def forward(self, x):
            return self.out(self.drop(torch.tanh(self.inner(x)))) + self.skip(x)

    def build(in_features):
        return Net(in_features)
''')

X = torch.linspace(-2, 2, 15).reshape(5, 3)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """A package ``ownnets`` importable from a temporary folder on sys.path."""
    root = tmp_path_factory.mktemp("site")
    (root / "ownnets").mkdir()
    (root / "ownnets" / "__init__.py").write_text("")
    (root / "ownnets" / "nets.py").write_text(NETS)
    sys.path.insert(0, str(root))
    try:
        from ownnets.nets import Net

        yield Net, root
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == "ownnets" or m.startswith("ownnets.")]:
            del sys.modules[name]


def _model(net, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return net(3, width=24)


def _same(bundle: mcd.Bundle, model: nn.Module) -> None:
    got = bundle.predict(X, samples=64, seed=7)
    want = mcd.predict(model, X, samples=64, seed=7, task="regression")
    assert torch.allclose(got.mean, want.mean, rtol=0, atol=1e-6)
    assert torch.allclose(got.epistemic, want.epistemic, rtol=1e-5, atol=1e-9)
    assert float(got.epistemic.min()) > 0  # the network's dropout is sampled


def test_import_path_inferred_from_the_class_and_equal_to_predict(package, tmp_path):
    net, _ = package
    model = _model(net)
    path = mcd.save_bundle(model, tmp_path / "skipnet", task="regression", input_shape=[3],
                           config={"in_features": 3, "width": 24})
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["name"] == "skipnet"
    assert manifest["architecture"] == {"name": "ownnets.nets:Net", "config": {"in_features": 3, "width": 24}}
    assert not (path / "model.py").exists()
    # importing a module runs its code: an import path loads with its module allowed (or with trust)
    _same(mcd.load_bundle(path, device="cpu", allowed_modules=["ownnets"]), model)
    _same(mcd.load_bundle(path, device="cpu", allowed_modules="ownnets.nets"), model)
    _same(mcd.load_bundle(path, device="cpu", trust_code=True), model)
    with pytest.raises(BundleError, match="MCD_ALLOWED_ARCHITECTURE_MODULES=ownnets.nets"):
        mcd.load_bundle(path, device="cpu", allowed_modules=["ownnet", "other"])


def test_model_py_bundle_loads_only_when_trusted(package, tmp_path):
    net, root = package
    model = _model(net, seed=1)
    path = mcd.save_bundle(model, tmp_path / "carried", task="regression", input_shape=[3],
                           config={"in_features": 3, "width": 24}, code=root / "ownnets" / "nets.py")
    assert json.loads((path / "manifest.json").read_text())["architecture"]["name"] == "model.py:Net"
    assert (path / "model.py").read_text() == NETS
    with pytest.raises(BundleError, match="MCD_TRUST_BUNDLE_CODE") as refused:
        mcd.load_bundle(path, device="cpu")
    assert "trust_code=True" in str(refused.value) and "model.py" in str(refused.value)
    bundle = mcd.load_bundle(path, device="cpu", trust_code=True)
    _same(bundle, model)
    # a class loaded from a bundle's model.py is saved again with its file
    again = mcd.save_bundle(bundle.model, tmp_path / "again", task="regression", input_shape=[3],
                            config={"in_features": 3, "width": 24})
    assert (again / "model.py").read_text() == NETS
    _same(mcd.load_bundle(again, device="cpu", trust_code=True), model)


def test_parameter_limit_holds_before_a_user_network_is_built(package, tmp_path):
    net, _ = package
    path = mcd.save_bundle(_model(net), tmp_path / "big", task="regression", input_shape=[3],
                           config={"in_features": 3, "width": 24})
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["architecture"]["config"]["width"] = 10**9  # 5e9 parameters: 20 GB if it were allocated
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"5,000,000,005 parameters, over the limit of 50,000,000"):
        mcd.load_bundle(path, device="cpu", allowed_modules=["ownnets"])


def test_names_that_cannot_be_served_are_refused(package, tmp_path):
    class Local(nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout(0.1)

    with pytest.raises(BundleError, match="defined inside a function"):
        mcd.save_bundle(Local(), tmp_path / "local", task="regression", input_shape=[3])
    main = type("Script", (nn.Module,), {"__module__": "__main__"})
    with pytest.raises(BundleError, match="defined in __main__"):
        mcd.save_bundle(main(), tmp_path / "main", task="regression", input_shape=[3])
    net, _ = package
    with pytest.raises(BundleError, match="pass config="):
        mcd.save_bundle(_model(net), tmp_path / "noconfig", task="regression", input_shape=[3],
                        config={"in_features": 3})  # width 16 rebuilt, 24 in the model
    assert not (tmp_path / "noconfig").exists() and list(tmp_path.iterdir()) == []  # nothing half-written


def test_a_manifest_may_name_only_module_classes(package, tmp_path):
    net, _ = package
    path = mcd.save_bundle(_model(net), tmp_path / "m", task="regression", input_shape=[3],
                           config={"in_features": 3, "width": 24})
    manifest = json.loads((path / "manifest.json").read_text())
    for name, config, message in [
        ("subprocess:run", {"args": ["true"]}, "not a torch.nn.Module subclass"),
        ("ownnets.nets:build", {"in_features": 3}, "not a torch.nn.Module subclass"),
        ("ownnets.missing:Net", {}, "cannot import module 'ownnets.missing'"),
        ("ownnets.nets:Nope", {}, "defines no 'Nope'"),
        ("ownnets.nets:Net", {"in_features": 3, "colour": "red"}, "unexpected keyword argument 'colour'"),
    ]:
        manifest["architecture"] = {"name": name, "config": config}
        (path / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(BundleError, match=message):
            mcd.load_bundle(path, device="cpu", trust_code=True)


def test_broken_model_py_is_reported(tmp_path):
    folder = tmp_path / "broken"
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.1), nn.Linear(4, 1))
    mcd.save_bundle(model, folder, {"schema_version": 1, "name": "broken", "version": "1", "task": "regression",
                                    "architecture": {"name": "mlp", "config": {"in_features": 3, "out_features": 1,
                                                                               "hidden": [4], "dropout": 0.1}},
                                    "input": {"shape": [3]}, "inference": {"samples": 10, "max_samples": 100}})
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["architecture"]["name"] = "model.py:Net"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"model.py: missing"):
        mcd.load_bundle(folder, device="cpu", trust_code=True)
    (folder / "model.py").write_text("raise RuntimeError('no GPU here')\n")
    with pytest.raises(BundleError, match=r"model.py: running it failed: RuntimeError: no GPU here"):
        mcd.load_bundle(folder, device="cpu", trust_code=True)
