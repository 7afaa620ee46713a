"""Bundles are untrusted input (issue 28): no code runs, no file outside the bundle is read, no unsound
calibration or mismatched weights are served, and no bundle ends the server, without the operator's say."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mcdropout.bundle import MANIFEST, WEIGHTS, BundleError, load_bundle, save_bundle
from tests.conftest import MODELS, edit_manifest, run_server

ROWS = [[0.01, -0.04, 0.06, 0.02, -0.04, -0.03, 0.0, -0.02, 0.02, -0.01]]


def _copy(name: str, tmp_path: Path, as_name: str | None = None) -> Path:
    target = tmp_path / (as_name or name)
    shutil.copytree(MODELS / name, target)
    return target


def _architecture(name: str, config: dict | None = None):
    def change(manifest: dict) -> None:
        manifest["architecture"] = {"name": name, "config": config if config is not None else {}}
    return change


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path with modules whose import leaves a mark (a file) or raises SystemExit."""
    root = tmp_path / "site"
    root.mkdir()
    marker = tmp_path / "imported"
    (root / "markmod.py").write_text(f"open({str(marker)!r}, 'w').close()\nfrom torch.nn import Linear as Net\n")
    (root / "exitmod.py").write_text("import sys\nsys.exit(3)\n")
    monkeypatch.syspath_prepend(str(root))
    yield root, marker
    for name in ("markmod", "exitmod"):
        sys.modules.pop(name, None)


# -- 1. import paths are code ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["this:X", "venv.__main__:X", "markmod:Net", "tests.conftest:Server"])
def test_an_import_path_is_not_imported_without_trust_or_an_allowed_module(name, site, tmp_path, capfd,
                                                                           monkeypatch):
    monkeypatch.delenv("MCD_ALLOWED_ARCHITECTURE_MODULES", raising=False)
    _, marker = site
    folder = edit_manifest(_copy("diabetes", tmp_path), _architecture(name, {"in_features": 10, "out_features": 1}))
    module = name.partition(":")[0]
    already = module in sys.modules
    with pytest.raises(BundleError, match="MCD_ALLOWED_ARCHITECTURE_MODULES") as refused:
        load_bundle(folder, device="cpu")
    assert "MCD_TRUST_BUNDLE_CODE" in str(refused.value)
    assert not marker.exists() and (already or module not in sys.modules)  # nothing was imported
    assert "Beautiful is better than ugly" not in capfd.readouterr().out
    assert not (Path.cwd() / "X").exists()


def test_an_allowed_module_is_imported_and_one_that_exits_is_the_bundles_failure(site, tmp_path):
    _, marker = site
    folder = edit_manifest(_copy("diabetes", tmp_path), _architecture("markmod:Net", {"in_features": 10,
                                                                              "out_features": 1}))
    with pytest.raises(BundleError, match="does not match the manifest's architecture"):  # imported, then built
        load_bundle(folder, device="cpu", allowed_modules=["markmod"])
    assert marker.exists()
    edit_manifest(folder, _architecture("exitmod:Net"))
    with pytest.raises(BundleError, match="importing module 'exitmod' failed: SystemExit: 3"):
        load_bundle(folder, device="cpu", allowed_modules="exitmod")
    with pytest.raises(BundleError, match="SystemExit"):  # trusted code too: never an exit of the process
        load_bundle(folder, device="cpu", trust_code=True)


def test_the_allowlist_comes_from_the_environment_by_default(site, tmp_path, monkeypatch):
    _, marker = site
    folder = edit_manifest(_copy("diabetes", tmp_path), _architecture("markmod:Net", {"in_features": 10,
                                                                              "out_features": 1}))
    monkeypatch.setenv("MCD_ALLOWED_ARCHITECTURE_MODULES", "other, markmod")
    with pytest.raises(BundleError, match="does not match"):
        load_bundle(folder, device="cpu")
    assert marker.exists()
    with pytest.raises(BundleError, match="MCD_ALLOWED_ARCHITECTURE_MODULES"):  # an explicit list wins
        load_bundle(folder, device="cpu", allowed_modules=[])


def test_the_cli_flag_allows_a_module(site, tmp_path, monkeypatch):
    from mcdropout.cli import main

    monkeypatch.setenv("MCD_ALLOWED_ARCHITECTURE_MODULES", "")  # recorded, so the flag's setting is undone after
    _, marker = site
    folder = edit_manifest(_copy("diabetes", tmp_path), _architecture("markmod:Net", {"in_features": 10,
                                                                              "out_features": 1}))
    assert main(["evaluate", str(folder)]) == 2 and not marker.exists()
    main(["evaluate", str(folder), "--allow-architecture-module", "markmod"])
    assert marker.exists()


# -- 3. the bundle's files are its own ------------------------------------------------------------------


@pytest.mark.parametrize("file", [MANIFEST, WEIGHTS])
def test_a_symlinked_bundle_file_is_refused_without_its_content(file, tmp_path):
    folder = _copy("diabetes", tmp_path)
    outside = tmp_path / "secret.json"
    outside.write_text(json.dumps({"schema_version": "SECRET-VALUE-42", "name": "SECRET-VALUE-42"}))
    if file == WEIGHTS:
        shutil.copy(folder / WEIGHTS, outside)  # weights that would load: the link alone is refused
    (folder / file).unlink()
    (folder / file).symlink_to(outside)
    with pytest.raises(BundleError, match="symbolic link") as refused:
        load_bundle(folder, device="cpu")
    assert "SECRET" not in str(refused.value) and str(folder / file) in str(refused.value)


def test_a_symlinked_model_py_is_refused_even_when_trusted(tmp_path):
    folder = edit_manifest(_copy("diabetes", tmp_path), _architecture("model.py:Net"))
    outside = tmp_path / "elsewhere.py"
    outside.write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    (folder / "model.py").symlink_to(outside)
    with pytest.raises(BundleError, match="symbolic link"):
        load_bundle(folder, device="cpu", trust_code=True)
    assert not (tmp_path / "ran").exists()


def test_a_bundle_file_that_is_a_folder_is_refused(tmp_path):
    folder = _copy("diabetes", tmp_path)
    (folder / WEIGHTS).unlink()
    (folder / WEIGHTS).mkdir()
    with pytest.raises(BundleError, match="not a regular file"):
        load_bundle(folder, device="cpu")


# -- 7. calibration is checked at load ------------------------------------------------------------------


def _conformal(change):
    def edit(manifest):
        change(manifest["calibration"]["conformal"]["scores"][0])
    return edit


def _set(path: str, value):
    def edit(manifest):
        *parents, last = path.split(".")
        node = manifest
        for part in parents:
            node = node[part]
        node[last] = value
    return edit


REGRESSION_TAMPERING = [
    (_set("calibration.sigma_scale", [0]), "calibration.sigma_scale"),
    (_set("calibration.sigma_scale", [-1.5]), "calibration.sigma_scale"),
    (_set("calibration.sigma_scale", [float("nan")]), "calibration.sigma_scale"),
    (_conformal(lambda s: s.update(values=[-v for v in s["values"]])), "calibration.conformal.scores[0].values"),
    (_conformal(lambda s: s.update(values=s["values"][::-1])), "calibration.conformal.scores[0].values"),
    (_conformal(lambda s: s.update(n=100000)), "calibration.conformal.scores[0]"),
    (_conformal(lambda s: s.update(values=s["values"][:-1])), "calibration.conformal.scores[0].values"),
    (_conformal(lambda s: s["values"].__setitem__(3, float("inf"))), "calibration.conformal.scores[0].values"),
    (_set("calibration.conformal.scores", []), "calibration.conformal.scores"),
]
CLASSIFIER_TAMPERING = [
    (_set("calibration.selective.delta", 2), "calibration.selective.delta"),
    (_set("calibration.selective.delta", 0), "calibration.selective.delta"),
    (_set("calibration.temperature", 0), "calibration.temperature"),
    (_set("calibration.temperature", float("inf")), "calibration.temperature"),
    (lambda m: m["calibration"]["sets"]["lac"].update(n=10 ** 6), "calibration.sets.lac"),
    (lambda m: m["calibration"]["selective"]["errors"].__setitem__(0, 7), "calibration.selective.errors"),
    (lambda m: m["calibration"]["selective"]["scores"]["entropy"].pop(), "calibration.selective.scores.entropy"),
]


@pytest.mark.parametrize(("model", "change", "field"), [("diabetes", *case) for case in REGRESSION_TAMPERING]
                         + [("digits", *case) for case in CLASSIFIER_TAMPERING])
def test_tampered_calibration_fails_the_bundle_naming_the_field(model, change, field, tmp_path):
    folder = edit_manifest(_copy(model, tmp_path), change)
    with pytest.raises(BundleError) as refused:
        load_bundle(folder, device="cpu")
    assert f"field '{field}" in str(refused.value), refused.value


def test_shipped_calibration_is_sound():
    for folder in sorted(MODELS.iterdir()):
        assert load_bundle(folder, device="cpu").manifest.calibration is not None


# -- 8. weights bound to their manifest -----------------------------------------------------------------


def _other_weights(folder: Path, factor: float = 1.01) -> None:
    tensors = {k: v * factor if v.is_floating_point() else v for k, v in load_file(folder / WEIGHTS).items()}
    save_file(tensors, folder / WEIGHTS)


def test_weights_that_are_not_the_manifests_are_refused(tmp_path):
    folder = _copy("diabetes", tmp_path)
    recorded = json.loads((folder / MANIFEST).read_text())["weights_blake2b"]
    _other_weights(folder)  # sound weights of the right shapes: a half-copied bundle
    with pytest.raises(BundleError, match="not the weights the manifest was written with") as refused:
        load_bundle(folder, device="cpu")
    assert recorded in str(refused.value) and "weights_blake2b" in str(refused.value)


def test_a_manifest_without_the_hash_loads_with_a_warning(tmp_path, caplog):
    folder = edit_manifest(_copy("diabetes", tmp_path), lambda m: m.pop("weights_blake2b"))
    with caplog.at_level("WARNING", logger="mcdropout.bundle._bundle"):
        bundle = load_bundle(folder, device="cpu")
    assert bundle.name == "diabetes" and "records no weights_blake2b" in caplog.text
    with pytest.raises(BundleError, match="field 'weights_blake2b'"):
        load_bundle(edit_manifest(folder, _set("weights_blake2b", "not hex")), device="cpu")


def test_save_bundle_and_calibrate_record_the_hash(tmp_path):
    from mcdropout._calibrate import write_manifest
    from mcdropout.tables import file_blake2b

    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 1))
    path = save_bundle(model, tmp_path / "toy", task="regression", input_shape=[3], architecture="mlp",
                       config={"in_features": 3, "out_features": 1, "hidden": [8], "dropout": 0.1})
    assert json.loads((path / MANIFEST).read_text())["weights_blake2b"] == file_blake2b(path / WEIGHTS)
    bundle = load_bundle(path, device="cpu")
    with torch.no_grad():
        model[0].weight.mul_(2)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path / WEIGHTS)
    write_manifest(path, bundle.manifest)  # the manifest written again beside new weights records them
    assert json.loads((path / MANIFEST).read_text())["weights_blake2b"] == file_blake2b(path / WEIGHTS)
    assert load_bundle(path, device="cpu").name == "toy"


def test_shipped_bundles_record_their_weights():
    from mcdropout.tables import file_blake2b

    for folder in sorted(MODELS.iterdir()):
        assert json.loads((folder / MANIFEST).read_text())["weights_blake2b"] == file_blake2b(folder / WEIGHTS)


# -- 11. the parameter count never allocates -------------------------------------------------------------


@pytest.mark.parametrize(("config", "field"), [
    ({"in_features": 30000, "out_features": 30000, "device": "cpu"}, "architecture.config.device"),
    ({"in_features": 30000, "out_features": 30000, "dtype": "float64"}, "architecture.config.dtype"),
])
def test_a_config_may_not_place_the_network(config, field, tmp_path):
    folder = edit_manifest(_copy("diabetes", tmp_path), _architecture("torch.nn:Linear", config))
    started = time.perf_counter()
    with pytest.raises(BundleError, match=f"field '{field}'"):
        load_bundle(folder, device="cpu", allowed_modules=["torch.nn"], max_params=10 ** 12)
    assert time.perf_counter() - started < 2  # refused before 3.6 GB were allocated


def test_a_nested_device_key_is_refused(tmp_path):
    folder = edit_manifest(_copy("diabetes", tmp_path), lambda m: m["architecture"]["config"].update(
        extra=[{"device": "cpu"}]))
    with pytest.raises(BundleError, match=r"field 'architecture.config.extra\[0\].device'"):
        load_bundle(folder, device="cpu")


# -- the service: no bundle ends it, failures are listed, the old version stays served -------------------


def test_the_server_survives_hostile_bundles_and_keeps_the_old_version(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    site = tmp_path / "site"
    site.mkdir()
    marker = tmp_path / "imported"
    (site / "markmod.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    # raised at import by an allowed module: a BaseException that is neither Exception nor SystemExit
    (site / "exitmod.py").write_text("class Stop(BaseException):\n    pass\nraise Stop('stop the server')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    served = _copy("diabetes", models)
    edit_manifest(_copy("diabetes", models, "marked"), _architecture("markmod:Net"))
    edit_manifest(_copy("diabetes", models, "exits"), _architecture("exitmod:Net"))
    edit_manifest(_copy("diabetes", models, "scaled"), _set("calibration.sigma_scale", [0]))
    with run_server(tmp_path, models_dir=str(models), allowed_architecture_modules="exitmod",
                    reload_interval_s="0.2") as server:
        listed = {m["name"]: m for m in httpx.get(f"{server.url}/v1/models", timeout=30).json()["models"]}
        assert listed["diabetes"]["status"] == "ready"
        assert listed["marked"]["status"] == "failed" and "MCD_ALLOWED_ARCHITECTURE_MODULES" in listed["marked"]["error"]
        assert listed["exits"]["status"] == "failed" and "Stop" in listed["exits"]["error"]
        assert listed["scaled"]["status"] == "failed" and "calibration.sigma_scale" in listed["scaled"]["error"]
        assert not marker.exists()

        def answer() -> list:
            reply = httpx.post(f"{server.url}/v1/models/diabetes/predict", json={"inputs": ROWS, "seed": 1}, timeout=30)
            assert reply.status_code == 200, reply.text
            return reply.json()["mean"]

        before = answer()
        _other_weights(served, 3.0)  # the new weights arrive without their manifest
        deadline = time.monotonic() + 20
        while "not the weights the manifest was written with" not in server.output():
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.2)
        assert answer() == before  # the previous version stays served
        assert server.process.poll() is None
    assert np.isfinite(before).all()
