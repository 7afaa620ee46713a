"""The model repository: which bundle folders MCD_MODELS_DIR holds, by model name and version.

Layout (Triton's and KServe's): ``models/<name>/<version>/`` holds one bundle per version, a version
folder being named by a positive integer; a flat ``models/<name>/`` that holds a bundle itself
(``manifest.json``) is version 1. Hidden folders are skipped. A model is named by its folder, not
by its manifest. Each version carries a stamp of its files (names, sizes, modification times), so a
bundle replaced in place is seen as changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST = "manifest.json"
_VERSION = re.compile(r"[1-9][0-9]*")


@dataclass(frozen=True)
class Version:
    """One bundle folder of the repository."""

    name: str
    version: int
    path: Path
    stamp: tuple[tuple[str, int, int], ...] = ()


@dataclass(frozen=True)
class Listing:
    """What one scan found: the bundle folders, and the model folders that hold none, with why."""

    versions: dict[tuple[str, int], Version] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)

    def names(self) -> set[str]:
        return {name for name, _ in self.versions} | set(self.problems)


def parse_version(value: str | int | None, field_name: str = "version") -> int | None:
    """A version as a request gives it ("2", 2 or None for the default) -> int, or ValueError saying why."""
    if value is None or isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, str) and _VERSION.fullmatch(value.strip()):
        return int(value)
    raise ValueError(f"{field_name}: a model version is a positive integer (1, 2, ...), got {value!r}")


def scan(folder: Path, only: str | None = None) -> Listing:
    """The repository's bundle folders (all models, or the one named ``only``)."""
    listing = Listing()
    if not folder.is_dir():
        return listing
    for model in sorted(_subfolders(folder)):
        if only is not None and model.name != only:
            continue
        if (model / MANIFEST).is_file():
            listing.versions[(model.name, 1)] = Version(model.name, 1, model, stamp(model))
            continue
        found = [sub for sub in _subfolders(model) if _VERSION.fullmatch(sub.name)]
        for sub in found:
            listing.versions[(model.name, int(sub.name))] = Version(model.name, int(sub.name), sub, stamp(sub))
        if not found:
            listing.problems[model.name] = (
                f"{model}: neither a bundle ({MANIFEST}) nor version folders named 1, 2, ... holding one"
            )
    return listing


def model_names(folder: Path) -> list[str]:
    """The model folders' names (for the OpenAPI schema), without reading the bundles."""
    return sorted(path.name for path in _subfolders(folder)) if folder.is_dir() else []


def stamp(path: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and modification times of a bundle folder's files (one level; hidden files skipped)."""
    entries = []
    try:
        for item in sorted(path.iterdir()):
            if item.name.startswith(".") or not item.is_file():
                continue
            info = item.stat()
            entries.append((item.name, info.st_size, info.st_mtime_ns))
    except OSError:  # removed while being read: the next scan sees it gone
        return ()
    return tuple(entries)


def _subfolders(folder: Path) -> list[Path]:
    try:
        return [path for path in folder.iterdir() if path.is_dir() and not path.name.startswith(".")]
    except OSError:
        return []
