"""Batch scoring benchmark: rows/s and peak memory of `mcdropout score`, local and Ray engines.

    .venv/bin/python bench/scoring.py [--rows 1000000] [--small 100000] [--samples 100]

Writes Parquet files of `--small` and `--rows` generated rows with the
`diabetes` features, scores each with `mcdropout score models/diabetes ...` at
T=`--samples` with the local engine and with Ray Data on 2 workers (a local
Ray with 2 CPUs), and samples the resident memory of the scoring processes
(proportional set size, so pages shared between processes count once: the
command and, for Ray, every process of its Ray session) every 50 ms.
Baselines measured in the same run: the library's own throughput on rows
already in memory (one `Bundle.predict` per 10,000 rows, no I/O), and the
peak memory at `--small` rows, so that the table shows rows/s as a share of
the library's and peak memory at `--rows` against `--small`; and within each
run, the peak of its second half over its first (1.0: memory does not grow as
rows go by; the target is memory independent of the number of rows).
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import torch

from mcdropout import load_bundle
from mcdropout.training import datasets

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "models" / "diabetes"
CHUNK = 10_000


def make_input(path: Path, rows: int) -> Path:
    features = datasets.diabetes(0).feature_names
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(0, 0.05, size=(rows, len(features))), columns=features)
    frame.insert(0, "id", np.arange(rows))
    frame.to_parquet(path, row_group_size=100_000)
    return path


class PeakMemory:
    """Largest total PSS seen of a process, its descendants and (Ray) every process of the Ray session."""

    def __init__(self, root: psutil.Process, include_ray: bool) -> None:
        self.root, self.include_ray = root, include_ray
        self.trace: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _processes(self) -> list[psutil.Process]:
        found = [self.root, *self.root.children(recursive=True)]
        if self.include_ray:
            seen = {p.pid for p in found}
            for process in psutil.process_iter(["cmdline"]):
                line = " ".join(process.info["cmdline"] or [])
                if process.pid not in seen and ("ray::" in line or "ray/_private/workers" in line):
                    found.append(process)
        return found

    def _poll(self) -> None:
        while not self._stop.is_set():
            total = 0
            for process in self._processes():
                try:
                    total += process.memory_full_info().pss  # shared pages counted once across processes
                except psutil.Error:
                    pass
            self.trace.append(total)
            time.sleep(0.05)

    def stop(self) -> tuple[int, float]:
        """Peak, and the peak of the run's second half over that of its first (1.0: no growth with rows)."""
        self._stop.set()
        self._thread.join()
        half = len(self.trace) // 2
        return max(self.trace), max(self.trace[half:]) / max(self.trace[:half])


def run_score(source: Path, output: Path, engine: str, samples: int) -> dict:
    command = [sys.executable, "-m", "mcdropout.cli", "score", str(BUNDLE), str(source), str(output), "--samples",
               str(samples), "--chunk-rows", str(CHUNK), "--id-column", "id", "--engine", engine, "--quiet"]
    if engine == "ray":
        command += ["--workers", "2"]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    memory = PeakMemory(psutil.Process(process.pid), include_ray=engine == "ray")
    out, err = process.communicate()
    seconds = time.perf_counter() - started
    peak, growth = memory.stop()
    if process.returncode != 0:
        raise RuntimeError(f"score failed ({process.returncode}):\n{err}")
    rows = pd.read_parquet(output, columns=["id"]).shape[0]
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "peak_mb": peak / 2**20, "growth": growth}


def library_rate(samples: int, rows: int = 100_000) -> float:
    bundle = load_bundle(BUNDLE, device="cpu")
    x = np.random.default_rng(1).normal(0, 0.05, size=(rows, 10))
    bundle.predict(x[:CHUNK], samples=samples, seed=0)
    started = time.perf_counter()
    for start in range(0, rows, CHUNK):
        bundle.predict(x[start:start + CHUNK], samples=samples, seed=0)
    return rows / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--engines", default="local,ray")
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {psutil.cpu_count()} CPUs, torch {torch.__version__},"
          f" T={args.samples}, chunks of {CHUNK} rows")
    baseline = library_rate(args.samples)
    print(f"library baseline (Bundle.predict on rows in memory): {baseline:,.0f} rows/s")
    with tempfile.TemporaryDirectory() as folder:
        inputs = {n: make_input(Path(folder) / f"in-{n}.parquet", n) for n in (args.small, args.rows)}
        results = {}
        for engine in args.engines.split(","):
            for rows, source in inputs.items():
                results[engine, rows] = run_score(source, Path(folder) / f"out-{engine}-{rows}.parquet", engine,
                                                  args.samples)
                r = results[engine, rows]
                print(f"  {engine} {rows:,} rows: {r['seconds']:.1f} s, {r['rows_per_s']:,.0f} rows/s,"
                      f" peak {r['peak_mb']:.0f} MB", flush=True)
    print()
    print("| engine | rows | time s | rows/s | share of library rows/s | peak MB | peak vs small input |"
          " peak 2nd half / 1st half |")
    print("|---|---|---|---|---|---|---|---|")
    for (engine, rows), r in results.items():
        small = results[engine, args.small]["peak_mb"]
        print(f"| {engine} | {rows:,} | {r['seconds']:.1f} | {r['rows_per_s']:,.0f} |"
              f" {r['rows_per_s'] / baseline:.2f} | {r['peak_mb']:.0f} | {r['peak_mb'] / small:.2f}x |"
              f" {r['growth']:.2f} |")


if __name__ == "__main__":
    main()
