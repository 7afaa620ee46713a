"""Issue 32's drift study: static conformal intervals against adaptive conformal (ACI) on a drifting stream.

The concrete data set (UCI, from ../shared/data/uci) is sorted by one feature (cement by default). A network
is trained and calibrated (``train_from_table``, into a temporary folder) on a random 80% of the rows below
the feature's median only. Every other row (the remaining 20% below the median, then every row above it) is
the stream, in increasing order of the feature: it starts like the calibration rows and drifts away from them.
Row by row, each row is answered at 90%, its outcome reported after its answer:

- static: the bundle's conformal interval at 0.9, as fitted;
- ACI at each step gamma: the interval at the adapted level 1 - alpha_t, alpha_t updated from each outcome
  (Gibbs & Candès 2021; ``mcdropout.stats.adaptive``).

``--via server`` serves the stream through a real server on 127.0.0.1 (``mcdropout serve``): each row is a
``POST /v1/models/{name}/predict`` with ``adaptive: true`` (the server's controller at the step
``MCD_ADAPTIVE_GAMMA``) and a static one, then ``POST /v1/models/{name}/outcomes`` with its outcome.
``--via library`` (the default) runs the same controller in process on ``Bundle.answer``.

Printed: per method the long-run coverage, the rolling 100-row coverage (lowest, and share of windows below
0.85), the mean width, and ACI's guaranteed bound; ``--plot`` draws the rolling coverage and the adapted level.

    PYTHONPATH=$PWD .venv/bin/python bench/drift.py [--via library|server] [--feature cement]
        [--gammas 0.005 0.02 0.05] [--plot docs/adaptive-drift.png] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mcdropout.stats.adaptive import AdaptiveLevel, aci_bound

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "uci" / "concrete"
COLUMNS = ("cement", "slag", "fly_ash", "water", "superplasticizer", "coarse_aggregate", "fine_aggregate", "age",
           "strength")
TARGET = "strength"
LEVEL = 0.9
WINDOW = 100


def load(folder: Path) -> np.ndarray:
    return np.loadtxt(folder / "data.txt")


def split(data: np.ndarray, feature: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fitting rows, stream rows in increasing order of ``feature``): fitting is 80% of those below the median."""
    order = np.argsort(data[:, feature], kind="stable")
    low = order[: len(order) // 2]
    rng = np.random.default_rng(seed)
    fitting = np.sort(rng.choice(low, size=int(0.8 * len(low)), replace=False))
    stream = np.setdiff1d(order, fitting, assume_unique=True)
    stream = stream[np.argsort(data[stream, feature], kind="stable")]
    return data[fitting], data[stream]


def train(rows: np.ndarray, folder: Path, seed: int, epochs: int | None) -> Path:
    from mcdropout.training import train_from_table

    table = folder / "concrete-low.csv"  # a temporary copy of the fitting rows: never in the repository
    np.savetxt(table, rows, delimiter=",", header=",".join(COLUMNS), comments="")
    path, _ = train_from_table(table, target=TARGET, test_fraction=0.0, calibration_fraction=0.25,
                               name="concrete-drift", out=folder / "models" / "concrete-drift", seed=seed,
                               epochs=epochs, quiet=True)
    return Path(path)


def rolling(values: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """Mean over each run of ``window`` consecutive rows (one value per row from the window-th on)."""
    sums = np.cumsum(np.insert(values.astype(np.float64), 0, 0.0))
    return (sums[window:] - sums[:-window]) / window


def via_library(bundle_path: Path, stream: np.ndarray, gammas: list[float], seed: int) -> dict[str, dict]:
    import mcdropout as mcd

    bundle = mcd.load_bundle(bundle_path)
    x, y = stream[:, :-1], stream[:, -1]
    static = bundle.answer(x, samples=bundle.manifest.samples, seed=seed, level=LEVEL)  # a row's answer is its own
    runs = {"static": {"lower": static.lower[:, 0], "upper": static.upper[:, 0], "levels": np.full(len(y), LEVEL)}}
    for gamma in gammas:
        controller, lower, upper, levels = AdaptiveLevel(LEVEL, gamma), [], [], []
        for i in range(len(y)):
            levels.append(controller.adapted_level)
            answer = bundle.answer(x[i: i + 1], samples=bundle.manifest.samples, seed=seed, level=LEVEL,
                                   options={"adapted_level": controller.adapted_level})
            lower.append(answer.lower[0, 0])
            upper.append(answer.upper[0, 0])
            controller.update(bool(answer.lower[0, 0] <= y[i] <= answer.upper[0, 0]))
        runs[f"aci {gamma:g}"] = {"lower": np.array(lower), "upper": np.array(upper), "levels": np.array(levels),
                                  "gamma": gamma}
    return runs


def via_server(bundle_path: Path, stream: np.ndarray, gamma: float, seed: int) -> dict[str, dict]:
    """Every row twice through a real server (static, adaptive), each outcome reported after its answers."""
    import httpx

    port = _free_port()
    env = {**os.environ, "MCD_MODELS_DIR": str(bundle_path.parent), "MCD_ADAPTIVE_GAMMA": str(gamma),
           "MCD_STORE_PATH": str(bundle_path.parent.parent / "answers.sqlite3"), "MCD_RELOAD": "false",
           "MCD_STORE_FLUSH_S": "0.01", "MCD_GRPC_PORT": "0", "MCD_HOST": "127.0.0.1", "MCD_PORT": str(port)}
    server = subprocess.Popen([sys.executable, "-m", "mcdropout.cli", "serve"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    name = bundle_path.name
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=30.0) as http:
            _wait_ready(http)
            x, y = stream[:, :-1], stream[:, -1]
            runs = {"static": {"lower": [], "upper": [], "levels": []},
                    f"aci {gamma:g}": {"lower": [], "upper": [], "levels": [], "gamma": gamma}}
            for i in range(len(y)):
                for key, extra in (("static", {}), (f"aci {gamma:g}", {"adaptive": True})):
                    body = http.post(f"/v1/models/{name}/predict", json={
                        "inputs": [x[i].tolist()], "seed": seed, "interval": LEVEL, **extra}).raise_for_status().json()
                    interval = body["interval"]
                    lower, upper = interval["lower"][0][0], interval["upper"][0][0]
                    runs[key]["lower"].append(-np.inf if lower is None else lower)
                    runs[key]["upper"].append(np.inf if upper is None else upper)
                    runs[key]["levels"].append(interval.get("adapted_level", LEVEL))
                    http.post(f"/v1/models/{name}/outcomes",
                              json=[{"id": body["id"], "row": 0, "y": float(y[i])}]).raise_for_status()
    finally:
        server.terminate()
        server.wait(30)
    return {key: {k: np.asarray(v) if isinstance(v, list) else v for k, v in run.items()} for key, run in runs.items()}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(http, seconds: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if http.get("/v2/health/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the server did not become ready")


def summary(runs: dict[str, dict], y: np.ndarray) -> list[dict]:
    rows = []
    for name, run in runs.items():
        covered = (run["lower"] <= y) & (y <= run["upper"])
        window = rolling(covered)
        width = run["upper"] - run["lower"]
        finite = np.isfinite(width)
        rows.append({"method": name, "coverage": float(covered.mean()), "rolling_min": float(window.min()),
                     "rolling_below_85": float(np.mean(window < 0.85)),
                     "last_window": float(window[-1]),
                     "mean_width": float(width[finite].mean()), "unbounded": int((~finite).sum()),
                     "bound": aci_bound(1 - LEVEL, run["gamma"], len(y)) if "gamma" in run else None})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| method | coverage | lowest 100-row coverage | windows < 0.85 | last 100 rows | mean width (MPa)"
             " | unbounded rows | ACI bound on \\|miss rate - 0.1\\| |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bound = "" if r["bound"] is None else f"{r['bound']:.3f}"
        lines.append(f"| {r['method']} | {r['coverage']:.3f} | {r['rolling_min']:.2f} | {r['rolling_below_85']:.0%}"
                     f" | {r['last_window']:.2f} | {r['mean_width']:.1f} | {r['unbounded']} | {bound} |")
    return "\n".join(lines)


def plot(runs: dict[str, dict], y: np.ndarray, feature_values: np.ndarray, feature: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=[2, 1])
    positions = np.arange(WINDOW, len(y) + 1)
    for index, (name, run) in enumerate(runs.items()):
        covered = (run["lower"] <= y) & (y <= run["upper"])
        colour = f"C{index}"  # one colour per method in both panels
        top.plot(positions, rolling(covered), label=name, color=colour, lw=1.6 if name == "static" else 1.2)
        if "gamma" in run:
            bottom.plot(np.arange(1, len(y) + 1), np.clip(run["levels"], 0, 1.0), color=colour, lw=1,
                        label=f"{name} (clipped to [0, 1])")
    top.axhline(LEVEL, color="k", ls="--", lw=0.8)
    top.set_ylabel(f"coverage over the last {WINDOW} rows")
    top.set_title(f"concrete sorted by {feature}: trained and calibrated on the lower half")
    top.legend(loc="lower left")
    twin = bottom.twinx()
    twin.plot(np.arange(1, len(y) + 1), feature_values, color="grey", lw=0.8)
    twin.set_ylabel(feature, color="grey")
    bottom.axhline(LEVEL, color="k", ls="--", lw=0.8)
    bottom.set_ylabel("adapted level 1 - alpha_t")
    bottom.set_xlabel("row of the stream")
    bottom.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--feature", default="cement", choices=COLUMNS[:-1])
    parser.add_argument("--via", choices=("library", "server"), default="library")
    parser.add_argument("--gammas", type=float, nargs="+", default=[0.005, 0.02, 0.05])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, help="most training epochs (default: sized to the rows)")
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    feature = COLUMNS.index(args.feature)
    fitting, stream = split(load(args.data), feature, args.seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        bundle_path = train(fitting, Path(folder), args.seed, args.epochs)
        trained = time.perf_counter()
        if args.via == "library":
            runs = via_library(bundle_path, stream, args.gammas, args.seed)
        else:
            runs = via_server(bundle_path, stream, args.gammas[0], args.seed)
    served = time.perf_counter()
    rows = summary(runs, stream[:, -1])
    print(f"# drift study: concrete sorted by {args.feature}; {len(fitting)} rows to train and calibrate (lower"
          f" half), a stream of {len(stream)}; level {LEVEL}, via {args.via}; {platform.machine()},"
          f" {os.cpu_count()} cores; training {trained - started:.0f} s, serving {served - trained:.0f} s")
    print(table(rows))
    if args.plot:
        plot(runs, stream[:, -1], stream[:, feature], args.feature, args.plot)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "feature": args.feature, "via": args.via}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
