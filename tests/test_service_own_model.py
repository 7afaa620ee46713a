"""The server serves networks of the user's own: a bundle's model.py (with MCD_TRUST_BUNDLE_CODE) and import paths."""

from __future__ import annotations

import os
import runpy
import sys
import textwrap

import httpx
import numpy as np
import pytest
import torch

import mcdropout as mcd

from .conftest import run_server

CODE = textwrap.dedent('''
    import torch
    from torch import nn

    class Gated(nn.Module):
        def __init__(self, in_features, width=12, p=0.3):
            super().__init__()
            self.value = nn.Linear(in_features, width)
            self.gate = nn.Linear(in_features, width)
            self.drop = nn.Dropout(p)
            self.head = nn.Linear(width, 1)

        def forward(self, x):
            return self.head(self.drop(torch.tanh(self.value(x)) * torch.sigmoid(self.gate(x))))
''')

ROWS = [[0.5, -1.0, 2.0, 0.0], [1.5, 0.25, -0.5, 3.0], [-2.0, 0.0, 1.0, -1.0]]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """models/ with 'gated' (model.py) and 'imported' (an import path from a package on PYTHONPATH)."""
    root = tmp_path_factory.mktemp("own")
    (root / "site" / "ownserved").mkdir(parents=True)
    (root / "site" / "ownserved" / "__init__.py").write_text(CODE)
    (root / "gated.py").write_text(CODE)
    torch.manual_seed(3)
    model = runpy.run_path(str(root / "gated.py"))["Gated"](4)
    config = {"in_features": 4}
    mcd.save_bundle(model, root / "models" / "gated", task="regression", input_shape=[4], config=config,
                    code=root / "gated.py", feature_names=["a", "b", "c", "d"])
    sys.path.insert(0, str(root / "site"))  # save_bundle rebuilds the architecture from its import path
    try:
        mcd.save_bundle(model, root / "models" / "imported", task="regression", input_shape=[4], config=config,
                        architecture="ownserved:Gated")
    finally:
        sys.path.remove(str(root / "site"))
        sys.modules.pop("ownserved", None)
    return root, model


def _post(url: str, name: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/{name}/predict", json={"inputs": ROWS, "samples": 50, "seed": 11}, timeout=60)


def test_served_with_trust_and_equal_to_predict(models, tmp_path, monkeypatch):
    root, model = models
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root / "site"), os.environ.get("PYTHONPATH", "")]))
    want = mcd.predict(model, torch.tensor(ROWS), samples=50, seed=11, task="regression")
    with run_server(tmp_path, models_dir=str(root / "models"), trust_bundle_code="1") as server:
        for name in ("gated", "imported"):
            answer = _post(server.url, name)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert np.allclose(body["mean"], want.mean.numpy(), rtol=0, atol=1e-6)
            assert np.allclose(body["epistemic_variance"], want.epistemic.numpy(), rtol=1e-5, atol=1e-12)
            assert min(np.ravel(body["epistemic_variance"])) > 0


def test_model_py_refused_without_trust_and_the_rest_served(models, tmp_path, monkeypatch):
    """Without trust, model.py is refused; an import path is served when the operator allows its module."""
    root, _ = models
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root / "site"), os.environ.get("PYTHONPATH", "")]))
    with run_server(tmp_path, models_dir=str(root / "models"), allowed_architecture_modules="ownserved") as server:
        listed = {m["name"]: m for m in httpx.get(f"{server.url}/v1/models").json()["models"]}
        assert listed["imported"]["status"] == "ready"
        assert listed["gated"]["status"] == "failed" and "MCD_TRUST_BUNDLE_CODE=1" in listed["gated"]["error"]
        refused = _post(server.url, "gated")
        assert refused.status_code == 503 and "MCD_TRUST_BUNDLE_CODE" in refused.json()["error"]
        assert _post(server.url, "imported").status_code == 200
