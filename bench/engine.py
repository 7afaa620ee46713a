"""Engine benchmark: mcdropout against a naive loop, baal, torch-uncertainty and the deterministic floor.

    make bench                      # or: .venv/bin/python bench/engine.py [--repeats 31] [--skip-memory]

Every contender runs once per repetition, each repetition in a fresh random
order (seeded), so machine noise hits all of them alike and none always runs
after the same neighbour; the table reports medians and ratios measured in
this run. The floor is a deterministic forward (dropout off) over the same
T x batch rows, in one pass or, when there are more than 1,024 replicas, in
1,024-row chunks (2 MiB activations, the engine's own chunking on this model),
whichever is faster. Statistics (mean and variance over samples) are included
for every contender.

Run once each in turn, a small call starts with caches that the other
contenders (a naive loop of T forwards, baal) have just filled with their own
code and data; that costs a call of many small steps (the engine's masks,
statistics and checks) far more than one of a few big matrix products (the
floor). A second table therefore times batch 1 in steady state, as a server or
a scoring loop calls it: each contender runs blocks of consecutive calls, the
blocks in random order, every call timed.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import itertools
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import mcdropout as mcd

FLOOR_CHUNK = 1024
DEVICE = torch.device("cpu")  # --device


def mlp(inputs: int = 64, hidden: int = 512, outputs: int = 10, p: float = 0.5) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(inputs, hidden), nn.ReLU(), nn.Dropout(p),
        nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(p),
        nn.Linear(hidden, outputs),
    ).eval().to(DEVICE)


def moments(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance over the sample axis (dim 0), as every contender must produce."""
    return samples.mean(0), samples.var(0, unbiased=False)


# -- contenders: each is (model, x, T) -> callable returning (mean, variance) ---------------


def naive_loop(model, x, samples):
    def run():
        with torch.inference_mode(), mcd.mc_dropout(model):
            return moments(torch.stack([model(x) for _ in range(samples)]))

    return run


def floors(model, x, samples) -> dict[str, Callable]:
    """The deterministic forward in one pass and, when the replicas exceed a chunk, in chunks."""
    replicas = x.repeat(samples, *([1] * (x.dim() - 1)))

    def whole():
        with torch.inference_mode():
            return moments(model(replicas).reshape(samples, len(x), -1))

    def chunked():
        with torch.inference_mode():
            out = torch.cat([model(chunk) for chunk in replicas.split(FLOOR_CHUNK)])
            return moments(out.reshape(samples, len(x), -1))

    # One chunk would be the same computation twice, and the faster of two timings of one thing is
    # biased low.
    return {"floor (one pass)": whole, **({"floor (chunked)": chunked} if len(replicas) > FLOOR_CHUNK else {})}


def best_floor(ms: dict[str, float]) -> float:
    return min(value for name, value in ms.items() if name.startswith("floor"))


def engine(model, x, samples):
    predictor = mcd.MCPredictor(model, samples=samples)  # on the model's device
    seeds = itertools.count()
    return lambda: predictor.predict(x, seed=next(seeds))  # a fresh seed each call: no mask reuse


def baal_wrapper(model, x, samples, replicate: bool):
    if DEVICE.type != "cpu":
        raise ImportError("the baal wrapper is timed on the CPU only")
    from baal.bayesian.dropout import MCDropoutModule
    from baal.modelwrapper import ModelWrapper, TrainingArgs

    wrapped = MCDropoutModule(copy.deepcopy(model)).eval()
    wrapper = ModelWrapper(wrapped, TrainingArgs(use_cuda=False, replicate_in_memory=replicate))

    def run():
        out = wrapper.predict_on_batch(x, iterations=samples)  # (batch, outputs, T)
        return moments(out.permute(2, 0, 1))

    return run


def torch_uncertainty_wrapper(model, x, samples, on_batch: bool):
    module = _torch_uncertainty_mc_dropout()
    wrapped = module.mc_dropout(copy.deepcopy(model), num_estimators=samples, on_batch=on_batch,
                                task="regression", probabilistic=False).eval()

    def run():
        with torch.inference_mode():
            return moments(wrapped(x).reshape(samples, len(x), -1))

    return run


def _torch_uncertainty_mc_dropout():
    """Load torch_uncertainty/methods/mc_dropout.py alone: the package's __init__ wants lightning and torchvision."""
    spec = importlib.util.find_spec("torch_uncertainty")
    if spec is None or spec.origin is None:
        raise ImportError("torch-uncertainty is not installed (make bench installs it)")
    path = Path(spec.origin).parent / "methods" / "mc_dropout.py"
    module_spec = importlib.util.spec_from_file_location("tu_mc_dropout", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


# -- timing -----------------------------------------------------------------------------------


def interleaved(contenders: dict[str, Callable], repeats: int, block: int = 1) -> dict[str, float]:
    """Median milliseconds per call of each contender, running blocks of ``block`` calls, every
    repetition in a fresh random order (seeded): each contender follows every other alike, whereas a
    rotated fixed order gives each one the same predecessor every time, whose cache state it inherits."""
    names = list(contenders)
    if DEVICE.type == "cuda":  # time the work, not its launch
        contenders = {name: _synchronised(run) for name, run in contenders.items()}
    for name in names:  # warm-up
        contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    order = random.Random(0)
    for _ in range(repeats):
        for name in order.sample(names, len(names)):
            for _ in range(block):
                start = time.perf_counter()
                contenders[name]()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


def _synchronised(run: Callable) -> Callable:
    def timed():
        result = run()
        torch.cuda.synchronize()
        return result

    return timed


def speed_table(repeats: int) -> list[dict]:
    model = mlp()
    rows = []
    for batch, samples in [(1, 50), (1, 100), (256, 50), (256, 100)]:
        x = torch.randn(batch, 64, device=DEVICE)
        contenders = {"naive loop": naive_loop(model, x, samples), **floors(model, x, samples),
                      "mcdropout": engine(model, x, samples)}
        anchors = {}
        try:
            anchors["baal (replicate)"] = baal_wrapper(model, x, samples, replicate=True)
            anchors["baal (loop)"] = baal_wrapper(model, x, samples, replicate=False)
        except ImportError as error:
            print(f"baal skipped: {error}", file=sys.stderr)
        try:
            anchors["torch-uncertainty (on batch)"] = torch_uncertainty_wrapper(model, x, samples, on_batch=True)
            anchors["torch-uncertainty (loop)"] = torch_uncertainty_wrapper(model, x, samples, on_batch=False)
        except ImportError as error:
            print(f"torch-uncertainty skipped: {error}", file=sys.stderr)
        contenders.update(anchors)
        ms = interleaved(contenders, repeats)
        best_anchor = min((ms[name] for name in anchors), default=float("nan"))
        rows.append({
            "batch": batch, "T": samples, "ms": ms,
            "vs naive": ms["naive loop"] / ms["mcdropout"],
            "vs best anchor": best_anchor / ms["mcdropout"],
            "vs floor": ms["mcdropout"] / best_floor(ms),
        })
    return rows


def steady_table(repeats: int, block: int = 20) -> list[dict]:
    """Batch 1 with every contender called ``block`` times in a row (warm caches), blocks in rotation."""
    model = mlp()
    rows = []
    for samples in (50, 100):
        x = torch.randn(1, 64, device=DEVICE)
        ms = interleaved({"naive loop": naive_loop(model, x, samples), **floors(model, x, samples),
                          "mcdropout": engine(model, x, samples)}, repeats, block)
        rows.append({"batch": 1, "T": samples, "ms": ms, "vs naive": ms["naive loop"] / ms["mcdropout"],
                     "vs floor": ms["mcdropout"] / best_floor(ms)})
    return rows


def cnn(p_channels: float = 0.25, p: float = 0.5) -> nn.Sequential:
    """3x32x32 inputs; conv 32-64-128, each followed by ReLU and channel dropout; a linear head with dropout."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Dropout2d(p_channels), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Dropout2d(p_channels), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.Dropout2d(p_channels), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(128, 128), nn.ReLU(), nn.Dropout(p), nn.Linear(128, 10),
    ).eval().to(DEVICE)


def cnn_table(repeats: int) -> list[dict]:
    """Channel dropout inside the convolutions: batch 64, T = 50, beside baal and torch-uncertainty."""
    model = cnn()
    x = torch.randn(64, 3, 32, 32, device=DEVICE)
    samples = 50
    contenders = {**floors(model, x, samples), "mcdropout": engine(model, x, samples)}
    for name, make in [("baal (loop)", lambda: baal_wrapper(model, x, samples, replicate=False)),
                       ("torch-uncertainty (loop)", lambda: torch_uncertainty_wrapper(model, x, samples, on_batch=False))]:
        try:
            contenders[name] = make()
        except ImportError as error:
            print(f"{name} skipped: {error}", file=sys.stderr)
    ms = interleaved(contenders, repeats)
    return [{"batch": 64, "T": samples, "ms": ms, "vs floor": ms["mcdropout"] / best_floor(ms)}]


class Wrapped(nn.Module):
    """The same layers in a module of its own: not a Sequential, so shared module by module."""

    def __init__(self, model: nn.Sequential) -> None:
        super().__init__()
        self.encoder, self.rest = model[:2], model[2:]

    def forward(self, x):
        return self.rest(self.encoder(x))


def prefix_table(repeats: int) -> list[dict]:
    """A wide first layer (2048 inputs) before the first dropout: the engine runs it once per row, in a
    Sequential and in a model of its own."""
    model = mlp(inputs=2048)
    wrapped = Wrapped(model)
    rows = []
    for batch, samples in [(1, 100), (256, 50)]:
        x = torch.randn(batch, 2048, device=DEVICE)
        ms = interleaved({**floors(model, x, samples), "mcdropout": engine(model, x, samples),
                          "mcdropout (not a Sequential)": engine(wrapped, x, samples)}, repeats)
        rows.append({"batch": batch, "T": samples, "ms": ms, "vs floor": ms["mcdropout"] / best_floor(ms),
                     "module vs floor": ms["mcdropout (not a Sequential)"] / best_floor(ms)})
    return rows


def memory_child(rows: int, samples: int, budget: str) -> None:
    """Run in a subprocess: peak resident memory over the baseline for one big prediction."""
    from mcdropout._malloc import pin_mmap_threshold

    pin_mmap_threshold()  # as `mcdropout serve` and `mcdropout score` do at start-up
    model = mlp()
    x = torch.randn(rows, 64, device=DEVICE)
    predictor = mcd.MCPredictor(model, samples=samples, memory_budget=budget)
    predictor.predict(x[:2], samples=2, seed=0)  # load kernels and allocator before the baseline
    with open("/proc/self/statm") as statm:
        baseline = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    start = time.perf_counter()
    predictor.predict(x, seed=1)
    seconds = time.perf_counter() - start
    peak = peak_resident_bytes()
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"rows": rows, "T": samples, "budget": mcd.engine.parse_bytes(budget),
                      "peak_over_baseline": peak - baseline, "model_bytes": model_bytes, "seconds": seconds}))


def peak_resident_bytes() -> int:
    """This process's resident high-water mark (VmHWM).

    Not getrusage's ru_maxrss: Linux carries that across execve from the process
    that forked, so a child of this bench (whose own resident set is hundreds of
    MB by then) reported the parent's size as its own peak.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def memory_table(samples: int) -> list[dict]:
    results = []
    for budget in ("64MB", "256MB"):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", "1000", str(samples), budget],
            check=True, capture_output=True, text=True,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--memory-samples", type=int, default=10_000)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where the models and inputs live")
    parser.add_argument("--tables", default="speed,steady,cnn,prefix,memory",
                        help="comma-separated subset of speed, steady, cnn, prefix, memory")
    parser.add_argument("--memory-child", nargs=3, metavar=("ROWS", "T", "BUDGET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        rows, samples, budget = args.memory_child
        memory_child(int(rows), int(samples), budget)
        return

    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    tables = set(args.tables.split(","))
    gpu = f", {torch.cuda.get_device_name(DEVICE)}" if DEVICE.type == "cuda" else ""
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores{gpu}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, python {platform.python_version()}")
    if "speed" in tables:
        _speed(args.repeats)
    if "steady" in tables:
        _steady(args.repeats)
    if "cnn" in tables:
        print(f"\n# CNN 3x32x32, conv 32-64-128 each with ReLU and Dropout2d(0.25), head with Dropout(0.5), {DEVICE}")
        rows = cnn_table(args.repeats)
        names = contender_names(rows)
        print_table(["batch", "T", *names, "/ floor"],
                    [[row["batch"], row["T"], *times(row, names), f"{row['vs floor']:.2f}"] for row in rows])
    if "prefix" in tables:
        _prefix(args.repeats)
    if "memory" in tables and not args.skip_memory and DEVICE.type == "cpu":
        _memory(args.memory_samples)


def _speed(repeats: int) -> None:
    print(f"# MLP 64-512-512-10, p=0.5 after each hidden layer, {DEVICE}, median of {repeats} interleaved runs (ms)")
    speed = speed_table(repeats)
    names = contender_names(speed)
    print_table(["batch", "T", *names, "x naive", "x best anchor", "/ floor"], [
        [row["batch"], row["T"], *times(row, names), f"{row['vs naive']:.1f}x",
         f"{row['vs best anchor']:.1f}x", f"{row['vs floor']:.2f}"] for row in speed])



def _steady(repeats: int) -> None:
    print("\n# steady state, batch 1: blocks of 20 consecutive calls per contender, blocks in random order")
    steady = steady_table(repeats)
    names = contender_names(steady)
    print_table(["batch", "T", *names, "x naive", "/ floor"], [
        [row["batch"], row["T"], *times(row, names), f"{row['vs naive']:.1f}x",
         f"{row['vs floor']:.2f}"] for row in steady])



def _prefix(repeats: int) -> None:
    print("\n# prefix sharing: MLP 2048-512-512-10 (first dropout after the 2048-wide layer), as a Sequential"
          " and wrapped in a module of its own")
    prefix = prefix_table(repeats)
    names = contender_names(prefix)
    print_table(["batch", "T", *names, "/ floor", "not a Sequential / floor"], [
        [row["batch"], row["T"], *times(row, names), f"{row['vs floor']:.2f}", f"{row['module vs floor']:.2f}"]
        for row in prefix])



def _memory(memory_samples: int) -> None:
    print(f"\n# peak memory: 1000 rows, T={memory_samples}, MLP 64-512-512-10, return_samples=False")
    print_table(["memory_budget", "peak over baseline", "model", "within budget + model", "seconds"], [
        [f"{row['budget'] / 1e6:.0f} MB", f"{row['peak_over_baseline'] / 1e6:.1f} MB",
         f"{row['model_bytes'] / 1e6:.2f} MB",
         "yes" if row["peak_over_baseline"] <= row["budget"] + row["model_bytes"] else "NO",
         f"{row['seconds']:.1f}"] for row in memory_table(memory_samples)])


def contender_names(rows: list[dict]) -> list[str]:
    """Every contender timed in any row (the chunked floor only where one chunk is not all), in the
    order of the row that timed the most."""
    fullest = max(rows, key=lambda row: len(row["ms"]))
    return list(dict.fromkeys([*fullest["ms"], *(name for row in rows for name in row["ms"])]))


def times(row: dict, names: list[str]) -> list[str]:
    return [f"{row['ms'][name]:.2f}" if name in row["ms"] else "-" for name in names]


def print_table(header: list[str], rows: list[list]) -> None:
    """A Markdown table, as BENCHMARKS.md holds them, after a blank line."""
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")

if __name__ == "__main__":
    main()
