"""`mcdropout --help`, every sub-command's `--help` and `--version` answer without importing torch."""

from __future__ import annotations

import json
import subprocess
import sys

import mcdropout
from mcdropout.cli import _parser
from mcdropout.training._recipe_names import RECIPE_NAMES

HEAVY = ("torch", "fastapi", "uvicorn", "sklearn", "scipy", "pandas", "pyarrow", "matplotlib", "ray")

# One process runs every --help (each exits through argparse) and reports what it imported.
_PROBE = """
import contextlib, io, json, sys
from mcdropout.cli import _parser, main
commands = list(_parser()._subparsers._group_actions[0].choices)
for argv in [["--help"], ["--version"], *([c, "--help"] for c in commands)]:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit:
            pass
print(json.dumps({"commands": commands, "modules": sorted(m for m in sys.modules if "." not in m)}))
"""


def _subcommands() -> list[str]:
    return list(_parser()._subparsers._group_actions[0].choices)


def test_help_of_every_command_imports_no_heavy_package():
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=60)
    report = json.loads(done.stdout)
    assert report["commands"] == _subcommands() and "train" in report["commands"]
    assert [m for m in HEAVY if m in report["modules"]] == []


def test_version_prints_the_package_version():
    done = subprocess.run([sys.executable, "-m", "mcdropout.cli", "--version"], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == f"mcdropout {mcdropout.__version__}"


def test_train_help_lists_every_recipe():
    from mcdropout.training._recipes import RECIPES

    assert RECIPE_NAMES == tuple(RECIPES)
    done = subprocess.run([sys.executable, "-m", "mcdropout.cli", "train", "--help"], capture_output=True,
                          text=True, check=True, timeout=60)
    assert all(name in " ".join(done.stdout.split()) for name in RECIPE_NAMES)
