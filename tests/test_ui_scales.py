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
