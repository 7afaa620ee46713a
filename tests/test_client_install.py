"""The client installs and imports without torch: clients/python resolves to httpx and numpy only.

The dry run resolves against the local package index that pip.conf names (file:// URLs), so that the
test runs offline; without such an index it is skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

CLIENT = ROOT / "clients" / "python"
# httpx's and numpy's own dependencies (typing_extensions comes with anyio on Python < 3.13).
EXPECTED = {"mcdropout-client", "httpx", "httpcore", "h11", "anyio", "idna", "sniffio", "certifi",
            "typing-extensions", "exceptiongroup", "numpy"}
PANDAS = {"pandas", "python-dateutil", "six", "pytz", "tzdata"}


def _local_indexes() -> list[str]:
    done = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                          check=True)
    urls = [url for line in done.stdout.splitlines() if "index-url" in line
            for url in line.partition("=")[2].strip().strip("'\"").split() if url.startswith("file://")]
    return [url for url in urls if Path(url.removeprefix("file://")).is_dir()]


def _resolve(tmp_path: Path, requirement: str) -> set[str]:
    indexes = _local_indexes()
    if not indexes:
        pytest.skip("pip.conf names no local (file://) package index to resolve against offline")
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    report = tmp_path / "report.json"
    index_options = ["--index-url", indexes[0], *(o for url in indexes[1:] for o in ("--extra-index-url", url))]
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--dry-run",
                    "--quiet", "--no-cache-dir", "--report", str(report), *index_options, requirement],
                   check=True, capture_output=True, timeout=120)
    return {item["metadata"]["name"].lower().replace("_", "-") for item in json.loads(report.read_text())["install"]}


def test_client_resolves_to_httpx_and_numpy_only(tmp_path):
    names = _resolve(tmp_path, str(CLIENT))
    assert {"mcdropout-client", "httpx", "numpy"} <= names <= EXPECTED, names
    assert not any(name.startswith(("torch", "nvidia", "fastapi", "scipy")) for name in names)


def test_pandas_only_when_asked(tmp_path):
    names = _resolve(tmp_path, f"{CLIENT}[pandas]")
    assert "pandas" in names and names <= EXPECTED | PANDAS, names


def test_client_wheel_imports_without_torch_or_fastapi(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-cache-dir", "-w",
                    str(tmp_path), str(CLIENT)], check=True, capture_output=True, timeout=120)
    wheel = next(tmp_path.glob("mcdropout_client-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        modules = sorted(n for n in archive.namelist() if n.endswith(".py"))
        archive.extractall(tmp_path / "site")
    assert modules == ["mcdropout/__init__.py", "mcdropout/answer.py", "mcdropout/client/__init__.py",
                       "mcdropout/client/_client.py", "mcdropout/errors.py"]
    # Without site (-S), so no editable install of the repository can answer for `mcdropout`: the path
    # is the extracted wheel, then the site-packages that hold httpx and numpy.
    probe = f"""
import sys
sys.path[:0] = [{str(tmp_path / "site")!r}, {sysconfig.get_paths()["purelib"]!r}]
import mcdropout, mcdropout.client
from mcdropout.client import Client, AsyncClient
assert mcdropout.__file__.startswith({str(tmp_path / "site")!r}), mcdropout.__file__
heavy = [m for m in ("torch", "fastapi", "scipy", "pandas") if m in sys.modules]
try:
    mcdropout.predict
except ModuleNotFoundError as error:
    print(heavy, error)
"""
    done = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True, check=True,
                          cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert done.stdout.startswith("[] mcdropout.predict is part of the library"), done.stdout + done.stderr
    assert "pip install mcdropout" in done.stdout


def test_repository_client_imports_neither_torch_nor_fastapi():
    probe = ("import sys, mcdropout.client; "
             "print([m for m in ('torch', 'fastapi', 'uvicorn', 'scipy') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert done.stdout.strip() == "[]"
