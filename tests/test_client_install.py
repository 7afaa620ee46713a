"""The client installs and imports without torch: clients/python resolves to httpx and numpy only.

Offline either way. Where pip's configuration names a local package index (file:// URLs, as on this
project's machines and CI), a real `pip install --dry-run --report` into a fresh venv resolves against it.
Without one, the same sets are checked on the closure of the client's declared requirements over the
metadata of the installed distributions (the versions this environment would give it). The wheel is built
with the installed hatchling and no build environment, so it needs no index at all.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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


def _resolve(tmp_path: Path, extras: tuple[str, ...] = ()) -> set[str]:
    indexes = _local_indexes()
    if not indexes:
        return _installed_closure(extras)
    requirement = f"{CLIENT}[{','.join(extras)}]" if extras else str(CLIENT)
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    report = tmp_path / "report.json"
    index_options = ["--index-url", indexes[0], *(o for url in indexes[1:] for o in ("--extra-index-url", url))]
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--dry-run",
                    "--quiet", "--no-cache-dir", "--report", str(report), *index_options, requirement],
                   check=True, capture_output=True, timeout=120)
    return {canonicalize_name(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}


def _installed_closure(extras: tuple[str, ...]) -> set[str]:
    """The client and every distribution its requirements reach, through the installed ones' metadata
    (environment markers evaluated here; a requirement's own extras followed)."""
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    names = {canonicalize_name(project["name"])}
    todo = [(Requirement(r), "") for r in project["dependencies"]]
    todo += [(Requirement(r), extra) for extra in extras for r in project["optional-dependencies"][extra]]
    followed: set[tuple[str, str]] = set()
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        distribution = metadata.distribution(name)  # PackageNotFoundError: the environment lacks it
        assert requirement.specifier.contains(distribution.version, prereleases=True), (requirement, distribution)
        names.add(name)
        for wanted in ("", *requirement.extras):
            if (name, wanted) not in followed:
                followed.add((name, wanted))
                todo += [(Requirement(r), wanted) for r in distribution.requires or []]
    return names


def test_client_resolves_to_httpx_and_numpy_only(tmp_path):
    names = _resolve(tmp_path)
    assert {"mcdropout-client", "httpx", "numpy"} <= names <= EXPECTED, names
    assert not any(name.startswith(("torch", "nvidia", "fastapi", "scipy")) for name in names)


def test_pandas_only_when_asked(tmp_path):
    names = _resolve(tmp_path, ("pandas",))
    assert "pandas" in names and names <= EXPECTED | PANDAS, names


def test_the_closure_without_an_index_gives_the_same_sets():
    """The fallback itself, so that it is known to work where pip names no local index."""
    assert {"mcdropout-client", "httpx", "numpy"} <= _installed_closure(()) <= EXPECTED
    assert "pandas" in _installed_closure(("pandas",)) <= EXPECTED | PANDAS


def test_client_wheel_imports_without_torch_or_fastapi(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-cache-dir", "--no-index",
                    "--no-build-isolation", "-w", str(tmp_path), str(CLIENT)], check=True, capture_output=True,
                   timeout=120)
    wheel = next(tmp_path.glob("mcdropout_client-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        modules = sorted(n for n in archive.namelist() if n.endswith(".py"))
        archive.extractall(tmp_path / "site")
    assert modules == ["mcdropout/__init__.py", "mcdropout/answer.py", "mcdropout/client/__init__.py",
                       "mcdropout/client/_acquire.py", "mcdropout/client/_client.py", "mcdropout/errors.py",
                       "mcdropout/vocabulary.py"]
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
