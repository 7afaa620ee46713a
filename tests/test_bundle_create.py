"""`mcdropout bundle create`: checkpoints (.safetensors, .pt) of the user's architecture turned into checked bundles."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

import mcdropout as mcd
from mcdropout.bundle import BundleError
from mcdropout.cli import main

NETS = textwrap.dedent('''
    import torch
    from torch import nn

    class Classifier(nn.Module):
        def __init__(self, in_features, classes, width=10, p=0.25):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(in_features, width), nn.ReLU(), nn.Dropout(p))
            self.head = nn.Linear(width, classes)

        def forward(self, x):
            return self.head(self.body(x))

    class Plain(nn.Module):
        """Dropout that runs but changes nothing: its branch is multiplied by zero."""

        def __init__(self):
            super().__init__()
            self.body = nn.Linear(2, 1)
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            return self.body(x) + 0.0 * self.drop(x).sum(-1, keepdim=True)
''')
CONFIG = {"in_features": 2, "classes": 3, "width": 10}
X = torch.tensor([[0.0, 0.0], [1.0, -2.0], [3.0, 0.5]])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A package ``createnets`` on sys.path, a trained-looking model, and its checkpoints in four forms."""
    root = tmp_path_factory.mktemp("create")
    (root / "createnets").mkdir()
    (root / "createnets" / "__init__.py").write_text(NETS)
    (root / "config.json").write_text(json.dumps(CONFIG))
    sys.path.insert(0, str(root))
    try:
        from createnets import Classifier

        torch.manual_seed(5)
        model = Classifier(**CONFIG).eval()
        state = model.state_dict()
        save_file(state, root / "ckpt.safetensors")
        torch.save(state, root / "ckpt.pt")
        torch.save({"epoch": 9, "state_dict": state, "optimizer": {}}, root / "wrapped.pt")
        torch.save(model, root / "object.pt")  # a pickled module: never unpickled
        torch.save({f"module.{k}": v for k, v in state.items()}, root / "parallel.pth")
        yield root, model
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("createnets", None)


def _create(root, out, weights, *extra: str) -> int:
    return main(["bundle", "create", "--architecture", "createnets:Classifier", "--config", str(root / "config.json"),
                 "--weights", str(root / weights), "--task", "classification", "--input-shape", "2",
                 "--classes", "a", "b", "c", "--out", str(out), *extra])


@pytest.mark.parametrize("weights", ["ckpt.safetensors", "ckpt.pt", "wrapped.pt", "parallel.pth"])
def test_checkpoints_become_bundles_equal_to_predict(setup, tmp_path, capsys, weights):
    root, model = setup
    assert _create(root, tmp_path / "models" / "mine", weights) == 0
    shown = capsys.readouterr().out
    assert "wrote" in shown and "63 parameters" in shown and "its dropout is sampled" in shown
    assert "sample prediction for an input of zeros, T=32, seed 0: class" in shown
    if weights == "wrapped.pt":
        assert "note: read the state dict under the checkpoint's 'state_dict' key" in shown
    assert "MCD_ALLOWED_ARCHITECTURE_MODULES=createnets, --allow-architecture-module createnets" in shown
    bundle = mcd.load_bundle(tmp_path / "models" / "mine", device="cpu", allowed_modules=["createnets"])
    assert bundle.name == "mine" and bundle.manifest.architecture == "createnets:Classifier"
    assert bundle.manifest.config == CONFIG and bundle.manifest.class_names == ["a", "b", "c"]
    got, want = bundle.predict(X, samples=40, seed=2), mcd.predict(model, X, samples=40, seed=2, task="classification")
    assert torch.allclose(got.probs, want.probs, atol=1e-6) and float(got.mutual_information.max()) > 0
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["mine"]  # no staging folder left behind


def test_pickled_objects_and_mismatches_are_refused_and_nothing_written(setup, tmp_path, capsys):
    root, _ = setup
    out = tmp_path / "models" / "mine"
    assert _create(root, out, "object.pt") == 2
    error = capsys.readouterr().err
    assert "holds pickled Python objects (a createnets.Classifier), which are never unpickled" in error
    assert "torch.save(model.state_dict(), path)" in error
    (root / "config.json").write_text(json.dumps({**CONFIG, "width": 12}))
    try:
        assert _create(root, out, "ckpt.pt") == 2
    finally:
        (root / "config.json").write_text(json.dumps(CONFIG))
    error = capsys.readouterr().err
    assert "does not match architecture 'createnets:Classifier' built with config" in error
    assert "body.0.weight has shape (10, 2) in the file but (12, 2) in the architecture" in error
    state = torch.load(root / "ckpt.pt", weights_only=True)
    state["extra.weight"] = state.pop("head.bias")
    torch.save(state, root / "renamed.pt")
    assert _create(root, out, "renamed.pt") == 2
    error = capsys.readouterr().err
    assert "missing tensors: head.bias" in error and "unexpected tensors: extra.weight" in error
    assert not (tmp_path / "models").exists() or list((tmp_path / "models").iterdir()) == []


def test_a_network_without_dropout_is_refused(setup, tmp_path):
    del setup  # the package on sys.path
    from createnets import Plain

    save_file(Plain().state_dict(), tmp_path / "plain.safetensors")
    from mcdropout.bundle._create import create

    with pytest.raises(BundleError, match="the stochastic layers have no effect on the output"):
        create(architecture="createnets:Plain", weights=tmp_path / "plain.safetensors", task="regression",
               input_shape=[2], out=tmp_path / "models" / "plain")
    assert list((tmp_path / "models").iterdir()) == []


def test_code_becomes_model_py_and_the_name_follows_out(setup, tmp_path, capsys):
    root, model = setup
    (tmp_path / "nets.py").write_text(NETS)
    out = tmp_path / "served" / "own-1"
    args = ["bundle", "create", "--code", str(tmp_path / "nets.py"), "--architecture", "Classifier", "--config",
            json.dumps(CONFIG), "--weights", str(root / "ckpt.safetensors"), "--task", "classification",
            "--input-shape", "2", "--classes", "a", "b", "c", "--out", str(out)]
    assert main(args) == 0
    assert (out / "model.py").read_text() == NETS
    with pytest.raises(BundleError, match="MCD_TRUST_BUNDLE_CODE"):
        mcd.load_bundle(out, device="cpu")
    bundle = mcd.load_bundle(out, device="cpu", trust_code=True)
    assert bundle.name == "own-1" and bundle.manifest.architecture == "model.py:Classifier"
    want = mcd.predict(model, X, samples=40, seed=2, task="classification")
    assert torch.allclose(bundle.predict(X, samples=40, seed=2).probs, want.probs, atol=1e-6)
    assert main(args) == 2 and "exists; give --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--name", "other"]) == 0
    assert mcd.load_bundle(out, device="cpu", trust_code=True).name == "other"
