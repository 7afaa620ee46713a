"""Wall time and fit of `mcdropout train --data houses.csv --target price` on a generated table in dollars.

    .venv/bin/python bench/table_training.py [--baseline REF] [--repeats 1] [--rows 2000]

The table: 2,000 houses, 3 features (size in square metres, rooms, age in years) and a price in dollars
(std about 1.3e5) with Gaussian noise of std 40,000, so a good fit has an RMSE near 40,000 and the
constant predictor about 1.3e5. Each variant runs the command as a fresh process (imports included) with
default settings; `--baseline REF` also runs the code of a git commit (extracted with `git archive`),
alternating with the working tree, so both see the same machine load. The table gives the wall time, the
CPU time of the process (user + system: on a loaded machine the better guide to a quiet machine's wall
time, as training runs on one thread), the one-minute load average before each run (other work on the
machine), the held-out RMSE and R^2, and the epochs trained. Target: at most 15 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
NOISE_STD = 40_000.0


def houses(path: Path, rows: int, seed: int = 0) -> float:
    """Write the table; returns the price's std."""
    rng = np.random.default_rng(seed)
    size = rng.uniform(50, 250, rows)
    rooms = rng.integers(1, 7, rows).astype(float)
    age = rng.uniform(0, 80, rows)
    price = (2_000 * size + 15_000 * rooms - 1_500 * age + 30_000 * np.sin(size / 25)
             + rng.normal(0, NOISE_STD, rows))
    pd.DataFrame({"size": size, "rooms": rooms, "age": age, "price": price}).to_csv(path, index=False)
    return float(price.std())


def checkout(ref: str, folder: Path) -> Path:
    """The files of commit ``ref`` under ``folder``."""
    archive = folder / "tree.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), ref], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder / "tree", filter="data")
    return folder / "tree"


def run(tree: Path, table: Path, out: Path) -> dict:
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mcdropout.cli", "train", "--data", str(table), "--target", "price",
                    "--out", str(out), "--quiet"], cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                   check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    manifest = json.loads((out / "manifest.json").read_text())
    mc = manifest["metrics"]["mc"]
    baseline = manifest["metrics"].get("baseline")
    return {"seconds": seconds, "cpu": cpu, "load": load, "rmse": mc["rmse"], "r2": baseline["r2"] if baseline else None,
            "epochs": manifest["training"]["epochs"]}


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--baseline", metavar="REF", help="also time this git commit (e.g. the one before)")
    options.add_argument("--repeats", type=int, default=1)
    options.add_argument("--rows", type=int, default=2000)
    args = options.parse_args()
    with tempfile.TemporaryDirectory(prefix="mcd-table-bench-") as scratch:
        folder = Path(scratch)
        table = folder / "houses.csv"
        spread = houses(table, args.rows)
        trees = {"this tree": ROOT}
        if args.baseline:
            trees = {f"{args.baseline} (baseline)": checkout(args.baseline, folder), **trees}
        results: dict[str, list[dict]] = {name: [] for name in trees}
        for repeat in range(args.repeats):
            for name, tree in trees.items():
                result = run(tree, table, folder / f"bundle-{len(results[name])}-{abs(hash(name))}")
                results[name].append(result)
                print(f"  {name}, run {repeat + 1}: {result['seconds']:.1f} s, CPU {result['cpu']:.1f} s"
                      f" (load {result['load']:.1f})",
                      file=sys.stderr, flush=True)
    print(f"{args.rows} rows x 3 features, price std {spread:,.0f} $, noise std {NOISE_STD:,.0f} $;"
          f" {platform.machine()}, {os.cpu_count()} cores")
    print("| code | wall s (each run) | CPU s | load avg 1 min before | RMSE $ | R^2 | epochs |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, runs in results.items():
        last = runs[-1]
        # older bundles record no baseline: R^2 from the RMSE and the table's spread (marked ~)
        r2 = f"{last['r2']:.3f}" if last["r2"] is not None else f"~{1 - (last['rmse'] / spread) ** 2:.3f}"
        seconds = ", ".join(f"{r['seconds']:.1f}" for r in runs)
        loads = ", ".join(f"{r['load']:.1f}" for r in runs)
        cpu = ", ".join(f"{r['cpu']:.1f}" for r in runs)
        print(f"| {name} | {seconds} | {cpu} | {loads} | {last['rmse']:,.0f} | {r2} | {last['epochs']} |")

if __name__ == "__main__":
    main()
