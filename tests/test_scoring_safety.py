"""`mcdropout score` never overwrites or mixes data: the input is never the output, an existing output
needs --overwrite, a resume checks the input's content and every part, a cut CSV is refused, value errors
name the file and the absolute row, and I/O failures are one line, exit 2, with nothing left behind."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from .conftest import ROOT
from .test_scoring import BUNDLE, FEATURES, _frame, _write

ROWS, CHUNK = 300, 50
FAST = ["--chunk-rows", CHUNK, "--samples", 10, "--quiet"]


def _score(*args, file_limit: int | None = None) -> subprocess.CompletedProcess:
    """A real `mcdropout score` process; ``file_limit`` caps the bytes of any file it writes (a full disk)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return subprocess.run([sys.executable, "-m", "mcdropout.cli", "score", *map(str, args)], cwd=ROOT,
                          check=False, capture_output=True, text=True, timeout=120, preexec_fn=limit if file_limit else None)


def _refused(done: subprocess.CompletedProcess, message: str) -> None:
    """Exit 2, one line on stderr holding ``message``, no traceback."""
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr, done.stderr


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".partial", ".tmp")))


@pytest.fixture
def source(tmp_path) -> Path:
    return _write(_frame(ROWS), tmp_path / "in.csv")


def test_the_input_is_never_the_output(tmp_path, source):
    before = source.read_bytes()
    os.link(source, tmp_path / "hard.csv")
    (tmp_path / "soft.csv").symlink_to(source)
    for output in (source, tmp_path / "hard.csv", tmp_path / "soft.csv", tmp_path / "." / "in.csv"):
        _refused(_score(BUNDLE, source, output, *FAST, "--overwrite"), "is the input file")
    assert source.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_an_existing_output_needs_overwrite(tmp_path, source):
    output = tmp_path / "out.csv"
    output.write_text("keep me\n")
    _refused(_score(BUNDLE, source, output, *FAST), "exists; pass --overwrite to replace it")
    assert output.read_text() == "keep me\n"
    done = _score(BUNDLE, source, output, *FAST, "--overwrite")
    assert done.returncode == 0, done.stderr
    assert len(pd.read_csv(output)) == ROWS


@pytest.fixture
def interrupted(tmp_path, source) -> Path:
    """A run whose parts are all written but whose joined output hit a full disk: resumable."""
    output = tmp_path / "out.csv"
    # parts are ~8 KB each, the joined CSV ~36 KB: the disk fills while the parts are joined
    done = _score(BUNDLE, source, output, *FAST, file_limit=20_000)
    _refused(done, "File too large")
    partial = tmp_path / "out.csv.partial"
    assert not output.exists() and partial.is_dir() and _leftovers(tmp_path) == ["out.csv.partial"]
    progress = json.loads((partial / "progress.json").read_text())
    assert progress["rows"] == ROWS and [p["first_row"] for p in progress["parts"]] == list(range(0, ROWS, CHUNK))
    return output


def test_a_full_disk_keeps_the_parts_and_resume_finishes(interrupted, source):
    done = _score(BUNDLE, source, interrupted, *FAST, "--resume")
    assert done.returncode == 0, done.stderr
    assert pd.read_csv(interrupted)["row"].tolist() == list(range(ROWS))
    assert _leftovers(interrupted.parent) == []


def test_resume_checks_the_inputs_content_not_its_size_and_mtime(interrupted, source):
    stat = source.stat()
    text = source.read_text()
    edited = text.replace("p17,", "p71,", 1)
    assert edited != text and len(edited) == len(text)
    source.write_text(edited)
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    _refused(_score(BUNDLE, source, interrupted, *FAST, "--resume"), "different the input's content")


def test_resume_refuses_a_replaced_part_or_an_edited_record(interrupted, source):
    partial = Path(f"{interrupted}.partial")
    saved = {p.name: p.read_bytes() for p in partial.iterdir()}
    shutil.copy(partial / "part-000000.parquet", partial / "part-000002.parquet")
    _refused(_score(BUNDLE, source, interrupted, *FAST, "--resume"), "part-000002.parquet: cannot resume, the part")

    def restore() -> None:
        for name, data in saved.items():
            (partial / name).write_bytes(data)

    restore()
    progress = json.loads((partial / "progress.json").read_text())
    progress["parts"].append({**progress["parts"][-1], "first_row": ROWS})  # 50 rows twice
    (partial / "progress.json").write_text(json.dumps(progress))
    _refused(_score(BUNDLE, source, interrupted, *FAST, "--resume"), "entry 6 is not part-000006.parquet")
    (partial / "progress.json").write_text("{not json")
    _refused(_score(BUNDLE, source, interrupted, *FAST, "--resume"), "its record is unreadable")
    (partial / "progress.json").write_text("[1, 2]")
    _refused(_score(BUNDLE, source, interrupted, *FAST, "--resume"), "no list of parts")
    restore()
    assert _score(BUNDLE, source, interrupted, *FAST, "--resume").returncode == 0  # untouched, it resumes


def test_a_csv_cut_mid_line_is_refused(tmp_path, source):
    for cut in (3, 40):  # mid-value (the field count still matches), and a short last row
        data = source.read_bytes()[:-cut]
        cut_file = tmp_path / f"cut{cut}.csv"
        cut_file.write_bytes(data)
        _refused(_score(BUNDLE, cut_file, tmp_path / "out.parquet", *FAST), "does not end in a newline")
    assert _leftovers(tmp_path) == []


def _set(row: int, columns, value):
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        if isinstance(value, str):
            frame[columns] = frame[columns].astype(object)
        frame.loc[row, columns] = value
        return frame
    return change


@pytest.mark.parametrize("change, message", [
    (_set(130, "bmi", 1e39), "1 row(s) with values beyond float32's range (+-3.4e38), rows numbered from 0: 130"),
    (_set(170, FEATURES, 1e37), ("model 'diabetes' gives non-finite statistics (values too large for the network)"
                                 " for 1 row(s), rows numbered from 0: 170")),  # float32 values; the network overflows
    (_set(230, "bmi", float("nan")), ("1 row(s) among rows 200-249 with missing, NaN or infinite feature values"
                                      " (rows numbered from 0: 230)")),
    (_set(230, "bmi", "x"), "column 'bmi' is not numeric at row 230 (numbered from 0)"),
], ids=["beyond-float32", "network-overflows", "nan", "text"])
def test_value_errors_name_the_file_and_the_absolute_row(tmp_path, change, message):
    source = _write(change(_frame(ROWS)), tmp_path / "in.csv")
    _refused(_score(BUNDLE, source, tmp_path / "out.parquet", *FAST), f"{source}: {message}")
    assert _leftovers(tmp_path) == []


def test_io_failures_are_one_line_and_leave_nothing(tmp_path, source):
    (tmp_path / "folder.csv").mkdir()
    _refused(_score(BUNDLE, source, tmp_path / "folder.csv", *FAST), "is a folder")
    (tmp_path / "file").write_text("")
    _refused(_score(BUNDLE, source, tmp_path / "file" / "out.csv", *FAST), "Not a directory")
    # the disk fills on the first part: no OUTPUT.partial/ and no .tmp
    _refused(_score(BUNDLE, source, tmp_path / "out.csv", *FAST, file_limit=2_000), "File too large")
    corrupt = _write(_frame(ROWS), tmp_path / "in.parquet")
    data = bytearray(corrupt.read_bytes())
    data[4:len(data) // 2] = b"\xff" * (len(data) // 2 - 4)  # page headers garbled, footer intact
    corrupt.write_bytes(bytes(data))
    _refused(_score(BUNDLE, corrupt, tmp_path / "out.parquet", *FAST), f"{corrupt}: not a readable parquet file")
    assert _leftovers(tmp_path) == [] and not (tmp_path / "out.csv").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_one_line(tmp_path, source):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        _refused(_score(BUNDLE, source, folder / "out.csv", *FAST), "Permission denied")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mcdropout.cli", "score", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _resumable(tmp_path: Path, rows: int) -> tuple[Path, Path]:
    """An input of ``rows`` rows and an output whose run stopped after its first part (as after kill -9)."""
    source = _write(_frame(rows), tmp_path / "big.csv")
    output = tmp_path / "big.csv.out.csv"
    _refused(_score(BUNDLE, source, output, *FAST, file_limit=20_000), "File too large")
    partial = Path(f"{output}.partial")
    progress = json.loads((partial / "progress.json").read_text())
    kept = progress["parts"][:1]
    for part in progress["parts"][1:]:
        (partial / part["file"]).unlink()
    (partial / "progress.json").write_text(json.dumps({"chunks": 1, "rows": kept[0]["rows"], "parts": kept}))
    return source, output


def test_a_second_run_on_the_same_output_is_refused_naming_the_holder(tmp_path):
    """Issue 28 item 12: two --resume runs at once wrote an unreadable output with exit 0 and lost the parts.
    The first run holds the partial folder's lock; it is stopped (SIGSTOP) while holding it, so the second
    surely meets it: exit 2 naming the holder's pid; the first, let go on, writes every row once."""
    rows = 4000
    source, output = _resumable(tmp_path, rows)
    lock = Path(f"{output}.partial") / "lock"
    first = _start(BUNDLE, source, output, *FAST, "--resume")
    try:
        deadline = time.monotonic() + 60
        while not (lock.exists() and lock.read_text().strip() == str(first.pid)):
            assert first.poll() is None and time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.002)
        os.kill(first.pid, signal.SIGSTOP)
        second = _score(BUNDLE, source, output, *FAST, "--resume")
        _refused(second, f"in use by another `mcdropout score` run (pid {first.pid})")
        fresh = _score(BUNDLE, source, output, *FAST)  # without --resume: the same refusal, not "interrupted"
        _refused(fresh, f"(pid {first.pid})")
    finally:
        if first.returncode is None:
            os.kill(first.pid, signal.SIGCONT)
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert pd.read_csv(output)["row"].tolist() == list(range(rows))
    assert _leftovers(tmp_path) == []


def test_two_resumes_started_together_never_both_write(tmp_path):
    """Started at the same moment: at most one succeeds, the other is exit 2, and the output is whole."""
    rows = 2000
    source, output = _resumable(tmp_path, rows)
    runs = [_start(BUNDLE, source, output, *FAST, "--resume") for _ in range(2)]
    done = [(run.pid, *run.communicate(timeout=120), run.returncode) for run in runs]
    codes = sorted(code for *_, code in done)
    assert codes == [0, 2], done
    loser = next(err for _, _, err, code in done if code == 2)
    assert "Traceback" not in loser and ("in use by another" in loser or "exists" in loser
                                         or "finished or removed it" in loser), loser
    assert pd.read_csv(output)["row"].tolist() == list(range(rows))
    assert _leftovers(tmp_path) == []
