"""service.scales without a server (tests/test_ui_browser.py checks the served percentiles over HTTP)."""

from __future__ import annotations

import json
import shutil

import numpy as np

from mcdropout.bundle import load_bundle
from mcdropout.training import datasets
from service.scales import held_out_percentiles
from tests.conftest import MODELS


def test_a_bundle_whose_rows_cannot_be_remade_says_why(tmp_path):
    shutil.copytree(MODELS / "heteroscedastic-1d", tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    manifest["training"]["data"] = {"name": "someone-elses-table"}
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(manifest))
    scales = held_out_percentiles(load_bundle(tmp_path / "m", device="cpu"), seed=0)
    assert scales == {"available": False, "reason": "its held-out rows cannot be re-made here: bundle 'heteroscedastic-1d'"
                      " was trained on someone-elses-table, which mcdropout cannot re-make; known data sets: "
                      + ", ".join(datasets.LOADERS)}


def test_a_large_test_part_is_cut_to_its_first_rows():
    bundle = load_bundle(MODELS / "heteroscedastic-1d", device="cpu")
    scales = held_out_percentiles(bundle, seed=0, max_rows=50)
    first = datasets.load("heteroscedastic-1d", seed=0).x_test[:50]
    served = bundle.answer(first, samples=bundle.manifest.samples, seed=0)
    assert scales["rows"] == 50 and scales["source"] == "the first 50 of the 200 test rows of its training split"
    np.testing.assert_allclose(scales["statistics"]["std"][0], np.percentile(served.std[:, 0], range(101)))


def _table_bundle(tmp_path, table):
    """heteroscedastic-1d, its manifest saying it was trained on ``table``."""
    shutil.copytree(MODELS / "heteroscedastic-1d", tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    manifest["training"]["data"] = {"path": str(table), "target": "y", "rows": 3, "split_seed": 0,
                                    "test_fraction": 0.5}
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(manifest))
    return load_bundle(tmp_path / "m", device="cpu")


def _secret_table(path):
    path.write_text("x,y\nSECRET-alice@example.com,1\nSECRET-bob@example.com,2\nSECRET-carol@example.com,3\n")
    return path


def test_a_table_outside_the_bundle_is_not_read_nor_echoed(tmp_path):
    outside = _secret_table(tmp_path / "outside.csv")
    for named in (outside, "/proc/self/environ", "/etc/passwd"):
        scales = held_out_percentiles(_table_bundle(tmp_path, named), seed=0)
        assert scales["available"] is False and "outside its own folder" in scales["reason"], scales
        assert "SECRET" not in scales["reason"] and "root:" not in scales["reason"]
        shutil.rmtree(tmp_path / "m")


def test_a_symlink_inside_the_bundle_is_not_followed_out(tmp_path):
    outside = _secret_table(tmp_path / "outside.csv")
    bundle = _table_bundle(tmp_path, tmp_path / "m" / "data.csv")
    (tmp_path / "m" / "data.csv").symlink_to(outside)
    scales = held_out_percentiles(bundle, seed=0)
    assert scales["available"] is False and "outside its own folder" in scales["reason"], scales
    assert "SECRET" not in scales["reason"]


def test_an_allowed_folder_is_read_and_a_tables_error_does_not_quote_it(tmp_path, caplog):
    allowed = tmp_path / "data"
    allowed.mkdir()
    table = _secret_table(allowed / "table.csv")
    bundle = _table_bundle(tmp_path, table)
    refused = held_out_percentiles(bundle, seed=0)
    assert "outside its own folder" in refused["reason"]
    scales = held_out_percentiles(bundle, seed=0, allowed_dirs=[allowed])
    assert scales["available"] is False and "SECRET" not in scales["reason"], scales
    assert "the server log says why" in scales["reason"]
    assert "table.csv" in caplog.text  # the operator's log has the whole error


def test_a_table_inside_the_bundle_is_read(tmp_path):
    shutil.copytree(MODELS / "heteroscedastic-1d", tmp_path / "m")
    x = np.linspace(-4, 4, 40)
    (tmp_path / "m" / "table.csv").write_text("x,y\n" + "".join(f"{v},{v * 2}\n" for v in x))
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    manifest["training"]["data"] = {"path": str(tmp_path / "m" / "table.csv"), "target": "y", "rows": 40,
                                    "split_seed": 0, "test_fraction": 0.5}
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(manifest))
    scales = held_out_percentiles(load_bundle(tmp_path / "m", device="cpu"), seed=0)
    assert scales["available"] is True and scales["rows"] == 20, scales
