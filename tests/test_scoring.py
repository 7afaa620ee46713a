"""`mcdropout score`: every input format, resume after kill -9 and Ctrl-C, engines agree, bad files."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mcdropout import load_bundle
from mcdropout.training import datasets

from .conftest import MODELS, ROOT

BUNDLE = MODELS / "diabetes"
SPLIT = datasets.diabetes(0)
FEATURES = SPLIT.feature_names


def _frame(rows: int, seed: int = 0) -> pd.DataFrame:
    x = np.random.default_rng(seed).normal(0, 0.05, size=(rows, len(FEATURES)))
    frame = pd.DataFrame(x, columns=FEATURES)
    frame.insert(0, "pid", [f"p{i}" for i in range(rows)])
    return frame


def _score(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mcdropout.cli", "score", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _write(frame: pd.DataFrame, path: Path) -> Path:
    kind = path.suffix
    if kind == ".csv":
        frame.to_csv(path, index=False)
    elif kind == ".parquet":
        frame.to_parquet(path)
    elif kind == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif kind == ".npy":
        np.save(path, frame[FEATURES].to_numpy())
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl", ".npy"])
def test_each_input_format_gives_the_librarys_numbers(tmp_path, suffix):
    frame = _frame(257)
    source = _write(frame, tmp_path / f"in{suffix}")
    output = tmp_path / ("out.csv" if suffix == ".npy" else "out.parquet")
    id_args = [] if suffix == ".npy" else ["--id-column", "pid"]
    gaussian = suffix == ".csv"  # one format asks for the raw Gaussian interval; the others get the conformal one
    method_args = ["--interval-method", "gaussian"] if gaussian else []
    done = _score(BUNDLE, source, output, "--samples", 40, "--seed", 2, "--interval", 0.9, "--chunk-rows", 100,
                  *id_args, *method_args)
    assert done.returncode == 0, done.stderr
    assert "257 rows" in done.stdout
    result = pd.read_csv(output) if output.suffix == ".csv" else pd.read_parquet(output)
    bundle = load_bundle(BUNDLE, device="cpu")
    expected = bundle.predict(frame[FEATURES].to_numpy(), samples=40, seed=2)
    if gaussian:
        lower, upper = expected.interval(0.9)
    else:
        half = bundle.manifest.calibration.conformal.quantiles(0.9) * expected.std.numpy()  # calibrated
        lower, upper = expected.mean - half, expected.mean + half
    assert list(result.columns[:5]) == [("row" if suffix == ".npy" else "pid"), "mean", "std", "lower", "upper"]
    ids = result.iloc[:, 0].tolist()
    assert ids == (list(range(257)) if suffix == ".npy" else frame.pid.tolist())
    # Chunks of 100 rows may run dense where 257 rows run thinned (the cost model): the same masks, float32
    # rounding apart, on targets of about 1e2.
    close = {"rtol": 1e-6, "atol": 1e-4}
    np.testing.assert_allclose(result["mean"], expected.mean[:, 0].numpy(), **close)
    np.testing.assert_allclose(result["std"], expected.std[:, 0].numpy(), **close)
    np.testing.assert_allclose(result["lower"], lower[:, 0].numpy(), **close)
    np.testing.assert_allclose(result["upper"], upper[:, 0].numpy(), **close)
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".*.tmp"))


def test_classifier_output_has_probabilities_and_uncertainty(tmp_path):
    split = datasets.digits(0)
    flat = split.x_test[:50].reshape(50, -1)
    source = tmp_path / "digits.npy"
    np.save(source, flat)
    done = _score(MODELS / "digits", source, tmp_path / "out.parquet", "--samples", 20)
    assert done.returncode == 0, done.stderr
    result = pd.read_parquet(tmp_path / "out.parquet")
    assert {"label", "class_name", "prob_0", "prob_9", "entropy", "mutual_information"} <= set(result.columns)
    probs = result[[f"prob_{i}" for i in range(10)]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-6)
    assert (result["label"] == probs.argmax(1)).all()


def _wait_for_chunks(partial: Path, chunks: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads((partial / "progress.json").read_text())["chunks"] >= chunks:
                return
        except (OSError, ValueError):
            pass
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.02)
    raise AssertionError(f"{chunks} chunks not done within {timeout} s")


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT])
def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path, how):
    source = _write(_frame(3000, seed=1), tmp_path / "in.csv")
    whole = tmp_path / "whole.parquet"
    # T=2000 makes each 100-row chunk take tens of ms, so the run is caught mid-way
    assert _score(BUNDLE, source, whole, "--samples", 2000, "--chunk-rows", 100, "--id-column", "pid",
                  "--quiet").returncode == 0
    output = tmp_path / "out.parquet"
    args = [BUNDLE, source, output, "--samples", 2000, "--chunk-rows", 100, "--id-column", "pid"]
    # A run started in the background (nohup, CI) inherits SIGINT ignored; Ctrl-C is what is tested here.
    process = subprocess.Popen([sys.executable, "-m", "mcdropout.cli", "score", *map(str, args)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for_chunks(tmp_path / "out.parquet.partial", 3, process)
    assert process.poll() is None, "the run finished before it could be interrupted"
    process.send_signal(how)
    code = process.wait(timeout=60)
    assert code == (-9 if how == signal.SIGKILL else 130)
    assert not output.exists()  # nothing half-written where the output goes
    again = _score(*args)
    assert again.returncode == 2 and "--resume" in again.stderr  # refuses to start over silently
    resumed = _score(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed after" in resumed.stdout
    got, expected = pd.read_parquet(output), pd.read_parquet(whole)
    assert got.pid.tolist() == expected.pid.tolist()  # no row missing or twice, in order
    pd.testing.assert_frame_equal(got, expected)
    assert not (tmp_path / "out.parquet.partial").exists()


def test_resume_refuses_a_different_job(tmp_path):
    source = _write(_frame(3000), tmp_path / "in.parquet")
    output = tmp_path / "out.parquet"
    args = [BUNDLE, source, output, "--samples", 2000, "--chunk-rows", 100]
    process = subprocess.Popen([sys.executable, "-m", "mcdropout.cli", "score", *map(str, args)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_chunks(tmp_path / "out.parquet.partial", 2, process)
    process.kill()
    process.wait()
    changed = _score(BUNDLE, source, output, "--samples", 2000, "--chunk-rows", 100, "--seed", 5, "--resume")
    assert changed.returncode == 2 and "different seed" in changed.stderr


@pytest.fixture(scope="module")
def engines_input(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    folder = tmp_path_factory.mktemp("engines")
    frame = _frame(300, seed=4)
    source = _write(frame, folder / "in.parquet")
    output = folder / "local.parquet"
    done = _score(BUNDLE, source, output, "--samples", 30, "--seed", 9, "--chunk-rows", 64, "--id-column", "pid")
    assert done.returncode == 0, done.stderr
    return source, pd.read_parquet(output)


def test_remote_engine_agrees_with_local(server, engines_input, tmp_path):
    source, local = engines_input
    output = tmp_path / "remote.parquet"
    done = _score("diabetes", source, output, "--engine", "remote", "--url", server.url, "--samples", 30, "--seed",
                  9, "--chunk-rows", 64, "--id-column", "pid")
    assert done.returncode == 0, done.stderr
    remote = pd.read_parquet(output)
    assert remote.pid.tolist() == local.pid.tolist()
    for column in ("mean", "std", "lower", "upper"):
        np.testing.assert_allclose(remote[column], local[column], rtol=1e-6)


def test_remote_value_errors_name_the_file_and_the_absolute_rows(server, tmp_path):
    """The server numbers the rows of its request (a chunk); the error names the file and the rows in it."""
    frame = _frame(300)
    frame.loc[[193, 195], FEATURES] = 1e37  # float32 values on which the network overflows: rows 43, 45 of chunk 3
    source = _write(frame, tmp_path / "in.csv")
    done = _score("diabetes", source, tmp_path / "out.parquet", "--engine", "remote", "--url", server.url,
                  "--chunk-rows", 50, "--samples", 10, "--quiet")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert (f"{source}: {server.url}: model 'diabetes': non-finite statistics (the network overflowed) for 2 row(s),"
            " rows numbered from 0: 193, 195") in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_ray_engine_on_a_local_two_cpu_ray_agrees_with_local(engines_input, tmp_path):
    source, local = engines_input
    output = tmp_path / "ray.parquet"
    done = _score(BUNDLE, source, output, "--engine", "ray", "--workers", 2, "--samples", 30, "--seed", 9,
                  "--chunk-rows", 64, "--id-column", "pid", timeout=400)
    assert done.returncode == 0, done.stderr
    result = pd.read_parquet(output)
    assert result.pid.tolist() == local.pid.tolist()
    for column in ("mean", "std", "lower", "upper"):
        np.testing.assert_allclose(result[column], local[column], rtol=1e-6)


def test_bad_files_give_one_line_exit_2_and_no_output(tmp_path):
    frame = _frame(500)
    cases = {
        "missing.csv": (frame.drop(columns=["bmi"]), "missing feature column(s) 'bmi'"),
        "text.csv": (frame.assign(bmi=["x"] * 500), "bmi"),
        "nan.parquet": (frame.assign(bmi=[np.nan if i in (3, 417) else 0.0 for i in range(500)]),
                        "among rows 0-99 with missing, NaN or infinite feature values (rows numbered from 0: 3)"),
    }
    for name, (bad, message) in cases.items():
        source = _write(bad, tmp_path / name)
        output = tmp_path / f"{name}.out.parquet"
        done = _score(BUNDLE, source, output, "--chunk-rows", 100)
        assert done.returncode == 2, (name, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr, done.stderr
        assert not output.exists() and not Path(f"{output}.partial").exists()
    unknown = _score(BUNDLE, tmp_path / "in.xlsx", tmp_path / "out.parquet")
    assert unknown.returncode == 2 and "unknown file type" in unknown.stderr
    wrong_out = _score(BUNDLE, _write(frame, tmp_path / "ok.csv"), tmp_path / "out.json")
    assert wrong_out.returncode == 2 and ".parquet or .csv" in wrong_out.stderr


def test_inputs_are_read_in_chunks_and_resumes_skip_rows(tmp_path):
    """Parquet input read 1,000 rows at a time: no batch holds more than a chunk (memory: bench/scoring.py)."""
    from mcdropout import tables

    path = _write(_frame(20_000), tmp_path / "big.parquet")
    sizes = [batch.num_rows for batch in tables.iter_chunks(path, 1000)]
    assert sizes == [1000] * 20
    assert pq.ParquetFile(path).metadata.num_rows == 20_000
    tail = [batch.num_rows for batch in tables.iter_chunks(path, 1500, skip_rows=19_000)]
    assert tail == [1000]


def test_score_samples_auto_with_a_tolerance_gives_the_librarys_numbers(tmp_path):
    """--samples auto --tolerance: each row sampled until its MC error is small, as Bundle.answer does."""
    from mcdropout.cli import main

    bundle = load_bundle(BUNDLE, device="cpu")
    x = np.random.default_rng(4).normal(0.0, 0.05, size=(6, 10))
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "auto.parquet"
    assert main(["score", str(BUNDLE), str(tmp_path / "x.npy"), str(out), "--samples", "auto",
                 "--tolerance", "0.05", "--seed", "5", "--quiet"]) == 0
    table = pd.read_parquet(out)
    expected = bundle.answer(x, samples="auto", tolerance=0.05, seed=5)
    assert table["samples_used"].tolist() == expected.samples_used.tolist()
    np.testing.assert_allclose(table["mean"], expected.mean[:, 0], rtol=1e-9)
    np.testing.assert_allclose(table["upper"], expected.upper[:, 0], rtol=1e-9)
    assert main(["score", str(BUNDLE), str(tmp_path / "x.npy"), str(tmp_path / "t.parquet"),
                 "--samples", "10", "--tolerance", "0.05", "--quiet"]) == 2
