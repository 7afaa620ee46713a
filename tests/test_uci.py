"""The UCI protocol on bostonHousing, shortened (2 splits, 200 epochs): numbers in a sane band.

Reads ../shared/data/uci when it is there; skipped otherwise. The full protocol
(20 splits, 4000 epochs, T = 10,000) and its results are in BENCHMARKS.md.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mcdropout.training import _uci as uci

from .conftest import ROOT

BOSTON = ROOT.parent / "shared" / "data" / "uci" / "bostonHousing"
pytestmark = pytest.mark.skipif(not BOSTON.is_dir(), reason="../shared/data/uci is not beside the project")


def test_layout_is_read_as_the_protocol_says():
    protocol = uci.load(BOSTON)
    assert protocol.x.shape == (506, 13) and protocol.y.shape == (506, 1)
    assert len(protocol.train_indices) == 20 and protocol.epochs == 4000 and protocol.hidden == 50
    assert protocol.dropouts == [0.005, 0.01, 0.05, 0.1] and protocol.taus == [0.1, 0.15, 0.2]
    for train, test in zip(protocol.train_indices, protocol.test_indices):
        assert not set(train) & set(test) and len(train) + len(test) == 506


def test_short_protocol_on_boston_lands_in_a_sane_band(tmp_path):
    out = tmp_path / "boston.json"
    done = subprocess.run([sys.executable, "-m", "mcdropout.cli", "uci", str(BOSTON), "--splits", "2", "--epochs",
                           "200", "--samples", "1000", "--validation-samples", "200", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| bostonHousing | 2 |" in done.stdout and "2.90 ± 0.18" in done.stdout
    result = json.loads(out.read_text())[0]
    assert len(result["splits"]) == 2
    for split in result["splits"]:
        assert split["dropout"] in (0.005, 0.01, 0.05, 0.1) and split["tau"] in (0.1, 0.15, 0.2)
        # Published means are 2.9 RMSE and -2.4 LL; a short run on two splits lands near them.
        assert 2.0 < split["rmse"] < 4.5
        assert -3.3 < split["log_likelihood"] < -2.1


def test_missing_files_are_named(tmp_path):
    (tmp_path / "data.txt").write_text("1 2\n3 4\n")
    with pytest.raises(FileNotFoundError, match="index_features.txt"):
        uci.load(tmp_path)
