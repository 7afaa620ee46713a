"""Errors raised on purpose by the metrics, the layers and the own-table code are the library's own
(mcdropout.errors), and still the built-in ValueError / TypeError that callers and the README rely on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import mcdropout as mcd
from mcdropout import tables
from mcdropout.errors import InputError, InputTypeError, MCDropoutError, TableError
from mcdropout.stats import metrics, normal_interval
from mcdropout.training import datasets, train_from_table


@pytest.mark.parametrize("call", [
    lambda: metrics.rmse([], []),
    lambda: metrics.rmse([1.0, 2.0], [1.0]),
    lambda: metrics.gaussian_nll([1.0], [1.0], [0.0]),
    lambda: metrics.mc_log_likelihood([1.0], [[1.0]], tau=0.0),
    lambda: metrics.interval_score([1.0], [0.0], [2.0], level=1.5),
    lambda: metrics.crps_gaussian([1.0], [1.0], [-1.0]),
    lambda: metrics.accuracy([[0.5, 0.5]], [2]),
    lambda: normal_interval(0.0, 1.0, 1.0),
], ids=["empty", "shapes", "variance", "tau", "level", "std", "labels", "interval"])
def test_metrics_raise_input_errors_that_are_value_errors(call):
    with pytest.raises(InputError) as raised:
        call()
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, MCDropoutError)


def test_layers_raise_input_errors_and_a_wrong_layer_is_still_a_type_error():
    with pytest.raises(InputTypeError, match="DropConnect wraps") as raised:
        mcd.DropConnect(nn.ReLU())
    assert isinstance(raised.value, TypeError) and isinstance(raised.value, mcd.InputError)
    with pytest.raises(InputError, match=r"p must be in \[0, 1\)"):
        mcd.LockedDropout(1.0)
    with pytest.raises(InputError, match="expects a 3-D"):
        mcd.LockedDropout(0.5)(torch.zeros(2, 3))


def test_own_table_code_raises_input_and_table_errors(tmp_path):
    source = tmp_path / "t.csv"
    pd.DataFrame({"a": np.arange(30.0), "y": np.arange(30.0) % 7}).to_csv(source, index=False)
    with pytest.raises(InputError, match="--task must be"):
        train_from_table(source, target="y", task="ranking", out=tmp_path / "b")
    with pytest.raises(InputError, match="--features must not include the target"):
        train_from_table(source, target="y", features=["a", "y"], out=tmp_path / "b")
    with pytest.raises(TableError, match="no feature columns besides the target"):
        train_from_table(source, target="y", features=[], out=tmp_path / "b")
    with pytest.raises(InputError, match="training rows after holding out"):
        datasets.check_parts("t.csv", 30, 10, 10, 10, 0.3)
    with pytest.raises(InputError, match="chunk_rows must be >= 1"):
        next(tables.iter_chunks(source, 0))
    assert not (tmp_path / "b").exists()
