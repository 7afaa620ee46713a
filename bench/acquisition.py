"""Acquisition benchmark: BatchBALD's picks, speed and memory against baal, pools baal cannot take.

    .venv/bin/python bench/acquisition.py [--baal-rows 100 200] [--million 1000000] [--skip-million]

Sections, each printed as a table (times in seconds, memory as the peak resident set of a fresh child
process over its own baseline once its inputs are in memory, the input probabilities not counted):

1. exact picks: greedy BatchBALD with an unlimited ``joint_budget`` (exact throughout) against a
   brute-force greedy reference written here in 30 lines (the chosen rows' joint enumerated per sample,
   no chain rule), k = 5 from 2,000 rows, T = 50, C = 10; and the default settings (exact up to C^3, then
   1,000 sampled configurations) against the same reference.
2. baal: k = 10 from N = 1,000 random probabilities (Dirichlet(1) per sample), C = 10, T = 100, ours
   against baal 2.1's ``BatchBALD`` (500 sampled configurations, its default) and ``BALD`` on the same
   probabilities; prediction is not part of either. baal's BatchBALD holds an (N, 500 T, C) float64 array,
   12 GB at N = 1,000 (272 s and a 12.3 GB peak on this machine when quiet), so by default it runs on
   ``--baal-rows`` rows and its time and memory are extrapolated linearly in N (its work and its big array
   are both linear in N; the two sizes show how linear).
3. digits: k = 10 from 20,000 digits-sized rows at T = 100 (the shipped ``digits`` bundle over the 1,797
   digits images and shifted, noisy copies of them), within a 64 MB budget: prediction time, acquisition
   time and peak memory; then the BALD prefilter (``candidates``) on the same probabilities: picks shared
   with the unfiltered run, and time.
4. a million rows: BALD and power in one pass over a generated 1,000,000-row pool (T = 20 by default,
   ``--million-samples``; C = 10; chunks of 2,000 rows made as they are read) and BatchBALD with
   ``candidates=10000``, beside the same at 100,000 rows: time and peak memory (flat: the 1,000,000-row peak over the 100,000-row one).
   ``--engine ray`` runs the same pool through an engine named ``mcdropout.acquisition.acquire_ray``
   where the library has one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mcdropout as mcd  # noqa: E402
from mcdropout.acquisition import Chunk, acquire_probabilities  # noqa: E402

BUDGET = 256_000_000


def peak_resident_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> None:
    """Start VmHWM afresh from the current resident set (Linux: write 5 to clear_refs)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def dirichlet_probs(rows: int, samples: int, classes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(classes), size=(rows, samples)).astype(np.float32)


def model_like_probs(rows: int, samples: int, classes: int, seed: int) -> np.ndarray:
    """Probabilities shaped like a network's: a row's logits plus a row-specific spread between samples."""
    rng = np.random.default_rng(seed)
    spread = rng.uniform(0.1, 2.5, size=(rows, 1, 1)).astype(np.float32)
    logits = 2 * rng.standard_normal((rows, 1, classes), dtype=np.float32) \
        + spread * rng.standard_normal((rows, samples, classes), dtype=np.float32)
    logits -= logits.max(axis=-1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=-1, keepdims=True)
    return logits


def reference_batchbald(probs: np.ndarray, k: int) -> list[int]:
    """Greedy BatchBALD by brute force: p(y_A = c | t) for every configuration c of the chosen rows."""
    rows, samples, classes = probs.shape
    probs = probs.astype(np.float64)
    expected = -(probs * np.log(probs)).sum(-1).mean(1)
    chosen: list[int] = []
    joint = np.ones((samples, 1))  # (T, C^n)
    for _ in range(k):
        best, best_row = -np.inf, -1
        for start in range(0, rows, 50):
            block = probs[start:start + 50]  # (b, T, C)
            # p(y_A = c, y = j) = mean_t p(y_A = c | t) p_t(j): (b, C, C^n)
            together = block.transpose(0, 2, 1) @ joint / samples
            scores = -(together * np.log(together)).sum((1, 2)) - expected[chosen].sum() - expected[start:start + 50]
            scores[[r - start for r in chosen if start <= r < start + 50]] = -np.inf
            if scores.max() > best:
                best, best_row = scores.max(), start + int(scores.argmax())
        chosen.append(best_row)
        joint = (joint[:, :, None] * probs[best_row][:, None, :]).reshape(samples, -1)
    return chosen


def child(kind: str, options: dict) -> dict:
    """Run in a fresh process; the result as a dict (seconds, peak_bytes over the baseline, picks)."""
    out = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(options)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_child(kind: str, options: dict) -> dict:
    if kind == "ours":
        probs = dirichlet_probs(options["rows"], 100, 10, seed=0)
        acquire_probabilities(probs[:50], 2, seed=0)  # load what the first call loads before the baseline
        reset_peak()
        baseline = resident_bytes()
        start = time.perf_counter()
        result = acquire_probabilities(probs, 10, options.get("method", "batchbald"), seed=0,
                                       memory_budget=options.get("budget", BUDGET))
        return {"seconds": time.perf_counter() - start, "peak_bytes": peak_resident_bytes() - baseline,
                "picks": result.indices.tolist()}
    if kind in ("baal", "baal-bald"):
        from baal.active.heuristics import BALD, BatchBALD

        probs = dirichlet_probs(options["rows"], 100, 10, seed=0).transpose(0, 2, 1)  # baal: (N, C, T)
        heuristic = BatchBALD(num_samples=10) if kind == "baal" else BALD()
        heuristic(probs[:20].copy())
        probs = np.ascontiguousarray(probs, dtype=np.float64)
        reset_peak()
        baseline = resident_bytes()
        start = time.perf_counter()
        ranks = heuristic(probs)
        return {"seconds": time.perf_counter() - start, "peak_bytes": peak_resident_bytes() - baseline,
                "picks": np.asarray(ranks)[:10].tolist()}
    if kind == "digits-generate":  # probabilities shaped like a network's, in place of the digits model's
        start = time.perf_counter()
        probs = np.lib.format.open_memmap(options["file"], mode="w+", dtype=np.float32, shape=(options["rows"], 100, 10))
        for first in range(0, options["rows"], 2000):
            probs[first:first + 2000] = model_like_probs(min(2000, options["rows"] - first), 100, 10, seed=first)
        probs.flush()
        return {"seconds": time.perf_counter() - start}
    if kind == "digits-predict":
        bundle = mcd.load_bundle(ROOT / "models" / "digits", device="cpu")
        pool = digits_pool(options["rows"])
        start = time.perf_counter()
        probs = np.lib.format.open_memmap(options["file"], mode="w+", dtype=np.float32,
                                          shape=(len(pool), 100, len(bundle.manifest.class_names)))
        for first in range(0, len(pool), 2000):
            probs[first:first + 2000] = bundle.predict(pool[first:first + 2000], samples=100, seed=0,
                                                       return_samples=True).samples.numpy()
        probs.flush()
        return {"seconds": time.perf_counter() - start}
    if kind == "digits-acquire":
        probs = np.load(options["file"], mmap_mode="r")

        def chunks():  # read by plain reads, 2,000 rows at a time, so the file is not held resident
            offset = probs.offset  # where the .npy header ends
            row_bytes = probs.shape[1] * probs.shape[2] * 4
            for first in range(0, len(probs), 2000):
                count = min(2000, len(probs) - first)
                data = os.pread(fd, count * row_bytes, offset + first * row_bytes)
                yield Chunk(first, np.frombuffer(data, dtype=np.float32).reshape(count, *probs.shape[1:]))

        fd = os.open(options["file"], os.O_RDONLY)
        acquire_probabilities(dirichlet_probs(50, 100, 10, 0), 2, seed=0)
        reset_peak()
        baseline = resident_bytes()
        start = time.perf_counter()
        result = acquire_probabilities(chunks, 10, seed=0, memory_budget=options["budget"],
                                       candidates=options.get("candidates"), spill_dir=options["spill"])
        seconds = time.perf_counter() - start
        os.close(fd)
        return {"seconds": seconds, "peak_bytes": peak_resident_bytes() - baseline, "picks": result.indices.tolist(),
                "exact_steps": result.exact_steps}
    if kind == "million":
        rows, chunk = options["rows"], 2000

        def chunks():
            for first in range(0, rows, chunk):
                yield Chunk(first, model_like_probs(min(chunk, rows - first), samples, 10, seed=first))

        samples = options["samples"]
        acquire_probabilities(model_like_probs(50, samples, 10, 0), 2, options["method"], seed=0,
                              candidates=None if options["method"] != "batchbald" else 10)
        reset_peak()
        baseline = resident_bytes()
        start = time.perf_counter()
        if options.get("engine", "local") == "ray":
            engine = getattr(__import__("mcdropout.acquisition", fromlist=["acquire_ray"]), "acquire_ray", None)
            if engine is None:
                raise SystemExit("this library has no Ray acquisition engine (mcdropout.acquisition.acquire_ray)")
            result = engine(chunks, 10, options["method"], seed=0, candidates=options.get("candidates"))
        else:
            result = acquire_probabilities(chunks, 10, options["method"], seed=0, memory_budget=BUDGET,
                                           candidates=options.get("candidates"))
        return {"seconds": time.perf_counter() - start, "peak_bytes": peak_resident_bytes() - baseline,
                "picks": result.indices.tolist()}
    raise ValueError(kind)


def digits_pool(rows: int) -> np.ndarray:
    """``rows`` digits-sized images: the 1,797 digits, then copies shifted by a pixel and with noise."""
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32)
    rng = np.random.default_rng(0)
    parts = [images]
    while sum(len(p) for p in parts) < rows:
        shifted = np.roll(images, shift=(int(rng.integers(-1, 2)), int(rng.integers(-1, 2))), axis=(1, 2))
        parts.append(np.clip(shifted + rng.normal(0, 1.0, size=shifted.shape), 0, 16).astype(np.float32))
    return np.concatenate(parts)[:rows, None]  # (rows, 1, 8, 8)


def table(header: list[str], rows: list[list]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    print()


def exact_section() -> None:
    probs = model_like_probs(2000, 50, 10, seed=1)
    start = time.perf_counter()
    reference = reference_batchbald(probs, 5)
    reference_seconds = time.perf_counter() - start
    start = time.perf_counter()
    exact = acquire_probabilities(probs, 5, seed=0, joint_budget=10**12)
    exact_seconds = time.perf_counter() - start
    start = time.perf_counter()
    default = acquire_probabilities(probs, 5, seed=0)
    default_seconds = time.perf_counter() - start
    start = time.perf_counter()
    more = acquire_probabilities(probs, 5, seed=0, configurations=10_000)
    more_seconds = time.perf_counter() - start
    print("\n## 1. exact picks: k = 5 from 2,000 rows, T = 50, C = 10\n")
    table(["run", "picks", "same as reference", "seconds", "vs reference"], [
        ["reference (brute force)", reference, "-", f"{reference_seconds:.2f}", "1.00x"],
        ["ours, exact throughout", exact.indices.tolist(), exact.indices.tolist() == reference,
         f"{exact_seconds:.2f}", f"{reference_seconds / exact_seconds:.1f}x faster"],
        [f"ours, default (exact {default.exact_steps} steps, then 1,000 draws)", default.indices.tolist(),
         f"{len(set(default.indices.tolist()) & set(reference))}/5 rows, "
         f"{'same order' if default.indices.tolist() == reference else 'order differs'}",
         f"{default_seconds:.2f}", f"{reference_seconds / default_seconds:.1f}x faster"],
        [f"ours, configurations=10,000 (exact {more.exact_steps} steps)", more.indices.tolist(),
         f"{len(set(more.indices.tolist()) & set(reference))}/5 rows, "
         f"{'same order' if more.indices.tolist() == reference else 'order differs'}",
         f"{more_seconds:.2f}", f"{reference_seconds / more_seconds:.1f}x faster"],
    ])


def baal_section(baal_rows: list[int]) -> None:
    ours = child("ours", {"rows": 1000})
    ours_bald = child("ours", {"rows": 1000, "method": "bald"})
    baal = [child("baal", {"rows": rows}) | {"rows": rows} for rows in baal_rows]
    baal_bald = child("baal-bald", {"rows": 1000})
    # linear in N: from the largest baal run
    last = baal[-1]
    scale = 1000 / last["rows"]
    baal_seconds, baal_peak = last["seconds"] * scale, last["peak_bytes"] * scale
    print("\n## 2. against baal 2.1: k = 10 from N = 1,000, C = 10, T = 100 (prediction not counted)\n")
    rows = [["ours BatchBALD (exact to C^3, then M = 1,000)", 1000, f"{ours['seconds']:.2f}",
             f"{ours['peak_bytes'] / 1e6:.0f}", "1.00x"]]
    for run in baal:
        rows.append([f"baal BatchBALD (M = 500), measured", run["rows"], f"{run['seconds']:.2f}",
                     f"{run['peak_bytes'] / 1e6:.0f}", f"{run['seconds'] * 1000 / run['rows'] / ours['seconds']:.0f}x"
                     " ours (per row)"])
    rows.append([f"baal BatchBALD, x{scale:g} from {last['rows']} rows", 1000, f"{baal_seconds:.0f}",
                 f"{baal_peak / 1e6:.0f}", f"{baal_seconds / ours['seconds']:.0f}x ours"])
    rows.append(["ours BALD", 1000, f"{ours_bald['seconds']:.3f}", f"{ours_bald['peak_bytes'] / 1e6:.0f}", "-"])
    rows.append(["baal BALD", 1000, f"{baal_bald['seconds']:.3f}", f"{baal_bald['peak_bytes'] / 1e6:.0f}",
                 f"{baal_bald['seconds'] / ours_bald['seconds']:.1f}x ours BALD"])
    table(["run", "N", "seconds", "peak MB", "time vs ours"], rows)
    print(f"ours: peak {ours['peak_bytes'] / 1e6:.0f} MB within the {BUDGET / 1e6:.0f} MB budget:"
          f" {ours['peak_bytes'] <= BUDGET}; speed-up over baal (extrapolated) {baal_seconds / ours['seconds']:.0f}x"
          " (target >= 50x)")


def digits_section(rows: int, budget: int, work: Path, generated: bool) -> None:
    """Rows are printed as they finish (the unfiltered run first), since each takes minutes on a busy machine."""
    file = work / "digits-probs.npy"
    predicted = child("digits-generate" if generated else "digits-predict", {"rows": rows, "file": str(file)})
    source = "generated probabilities shaped like a network's" if generated else "the digits bundle's probabilities"
    print(f"\n## 3. k = 10 from {rows:,} rows, T = 100, C = 10, {source}, memory budget {budget / 1e6:.0f} MB\n")
    print(f"{'generating' if generated else 'prediction'}: {predicted['seconds']:.1f} s\n")
    header = ["pool searched", "acquire s", "peak MB", "within budget", "exact steps", "picks shared", "vs every row"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header), flush=True)
    full = child("digits-acquire", {"file": str(file), "budget": budget, "spill": str(work)})
    print(f"| every row | {full['seconds']:.1f} | {full['peak_bytes'] / 1e6:.0f} | {full['peak_bytes'] <= budget} |"
          f" {full['exact_steps']} | 10/10 | 1.00x |", flush=True)
    for candidates in (1000, 200, 5000):
        run = child("digits-acquire", {"file": str(file), "budget": budget, "spill": str(work),
                                       "candidates": candidates})
        shared = len(set(run["picks"]) & set(full["picks"]))
        print(f"| candidates={candidates} | {run['seconds']:.1f} | {run['peak_bytes'] / 1e6:.0f} |"
              f" {run['peak_bytes'] <= budget} | {run['exact_steps']} | {shared}/10"
              + (" same order" if run["picks"] == full["picks"] else "")
              + f" | {full['seconds'] / run['seconds']:.1f}x faster |", flush=True)
    file.unlink()


def million_section(rows: int, samples: int, engine: str) -> None:
    small = rows // 10
    print(f"\n## 4. generated pool, T = {samples}, C = 10, chunks of 2,000 rows, engine {engine}\n")
    header = ["method", f"{small:,} rows s", f"{rows:,} rows s", f"{small:,} peak MB", f"{rows:,} peak MB", "peak ratio"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header), flush=True)
    for method, candidates in (("bald", None), ("power", None), ("batchbald", 10_000)):
        runs = [child("million", {"rows": n, "samples": samples, "method": method, "candidates": candidates,
                                  "engine": engine})
                for n in (small, rows)]
        print(f"| {method}" + ("" if candidates is None else f", candidates={candidates:,}")
              + f" | {runs[0]['seconds']:.1f} | {runs[1]['seconds']:.1f} | {runs[0]['peak_bytes'] / 1e6:.0f} |"
              f" {runs[1]['peak_bytes'] / 1e6:.0f} | {runs[1]['peak_bytes'] / max(runs[0]['peak_bytes'], 1):.2f}x |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baal-rows", type=int, nargs="+", default=[100, 200])
    parser.add_argument("--digits-rows", type=int, default=20_000)
    parser.add_argument("--digits-generated", action="store_true",
                        help="section 3 on generated probabilities instead of the digits bundle's predictions")
    parser.add_argument("--million", type=int, default=1_000_000)
    parser.add_argument("--million-samples", type=int, default=20)
    parser.add_argument("--engine", choices=["local", "ray"], default="local")
    parser.add_argument("--skip-million", action="store_true")
    parser.add_argument("--only", choices=["exact", "baal", "digits", "million"])
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child[0], json.loads(args.child[1]))))
        return
    import tempfile

    print(f"# acquisition bench, load {os.getloadavg()[0]:.1f}")
    if args.only in (None, "exact"):
        exact_section()
    if args.only in (None, "baal"):
        baal_section(args.baal_rows)
    if args.only in (None, "digits"):
        with tempfile.TemporaryDirectory(prefix="mcdropout-bench-") as work:
            digits_section(args.digits_rows, 64_000_000, Path(work), args.digits_generated)
    if args.only in (None, "million") and not args.skip_million:
        million_section(args.million, args.million_samples, args.engine)


if __name__ == "__main__":
    main()
