"""Start-up time of `mcdropout --help`, `--version` and every sub-command's `--help`.

    .venv/bin/python bench/cli_startup.py [--runs 5]

Each command runs `--runs` times as a fresh `python -m mcdropout.cli ...` process; the table gives
the median and the slowest wall time. Baselines measured in the same run: a bare interpreter
(`python -c pass`) and `python -c "import torch"`, which every `--help` paid before the recipe
names moved to a torch-free module. Target: every `--help` under 1 s.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time

from mcdropout.cli import _parser


def _time(argv: list[str], runs: int) -> list[float]:
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, *argv], stdout=subprocess.DEVNULL, check=True)
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--runs", type=int, default=5)
    runs = options.parse_args().runs
    commands = list(_parser()._subparsers._group_actions[0].choices)
    cases = [("python -c pass (baseline)", ["-c", "pass"]),
             ("python -c 'import torch' (baseline)", ["-c", "import torch"]),
             ("mcdropout --help", ["-m", "mcdropout.cli", "--help"]),
             ("mcdropout --version", ["-m", "mcdropout.cli", "--version"]),
             *((f"mcdropout {c} --help", ["-m", "mcdropout.cli", c, "--help"]) for c in commands)]
    print(f"{platform.node()}: {platform.processor() or platform.machine()}, python {platform.python_version()},"
          f" {runs} runs each")
    print("| command | median s | slowest s |")
    print("|---|---|---|")
    for label, argv in cases:
        seconds = _time(argv, runs)
        print(f"| `{label}` | {statistics.median(seconds):.3f} | {max(seconds):.3f} |", flush=True)


if __name__ == "__main__":
    main()
