"""What calibration adds to a served request: p50 latency, calibrated answers against raw ones.

    .venv/bin/python bench/calibrated_serving.py [--requests 1000]

Copies `digits` and `diabetes` to a temporary models folder twice: with their calibration removed
(`<name>-raw`) and calibrated again on their split's calibration rows (`<name>`), serves all four from
one uvicorn on 127.0.0.1, and sends one-row requests at T=100 from one keep-alive client, alternating
request by request between the raw model and the calibrated one (asking prediction sets and abstention
of digits, the default conformal interval and an abstention limit of diabetes), so that drift hits
both alike. Prints p50
per mode and the overhead of the calibrated request over the raw one.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _serving import free_port, wait_ready  # noqa: E402
from mcdropout._calibrate import calibrate  # noqa: E402
from mcdropout.bundle import load_bundle, read_manifest  # noqa: E402
from mcdropout.training import datasets, split_of  # noqa: E402

SAMPLES = 100


def _models(folder: Path) -> None:
    for name in ("digits", "diabetes"):
        shutil.copytree(ROOT / "models" / name, folder / name)
        raw = folder / f"{name}-raw"
        shutil.copytree(ROOT / "models" / name, raw)
        manifest = json.loads((raw / "manifest.json").read_text())
        manifest["name"] = f"{name}-raw"
        manifest["calibration"] = None  # the raw MC numbers: no temperature, Gaussian intervals
        (raw / "manifest.json").write_text(json.dumps(manifest))
    split = split_of(load_bundle(folder / "diabetes", device="cpu"))  # its calibration rows, never trained on
    names = read_manifest(folder / "diabetes").feature_names
    table = pa.table({**{n: split.x_calibration[:, i] for i, n in enumerate(names)},
                      "disease_progression": split.y_calibration[:, 0]})
    pa_csv.write_csv(table, folder / "diabetes.csv")
    calibrate(folder / "diabetes", folder / "diabetes.csv", "disease_progression", quiet=True)
    digits = split_of(load_bundle(folder / "digits", device="cpu"))
    np.save(folder / "x.npy", digits.x_calibration.reshape(len(digits.x_calibration), -1))
    np.save(folder / "y.npy", digits.y_calibration)
    calibrate(folder / "digits", folder / "x.npy", labels=folder / "y.npy", quiet=True)
    for extra in ("diabetes.csv", "x.npy", "y.npy"):
        (folder / extra).unlink()


def _time(client: httpx.Client, path: str, body: dict, count: int) -> list[float]:
    seconds = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.post(path, json=body)
        seconds.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise RuntimeError(response.text)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per mode and model")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="mcd-calibrated-"))
    models = folder / "models"
    models.mkdir()
    _models(models)
    port = free_port()
    env = {"MCD_MODELS_DIR": str(models), "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen([sys.executable, "-m", "uvicorn", "service.app:app", "--host", "127.0.0.1", "--port",
                                str(port), "--log-level", "warning", "--no-access-log"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        cases = {
            "digits": ({"inputs": datasets.digits(0).x_test[:1].tolist(), "samples": SAMPLES, "seed": 1},
                       {"set_level": 0.9, "max_risk": 0.02}),
            "diabetes": ({"inputs": datasets.diabetes(0).x_test[:1].tolist(), "samples": SAMPLES, "seed": 1},
                         {"max_interval_width": 200.0}),
        }
        print(f"# {platform.node()} {platform.processor() or platform.machine()}, {SAMPLES} samples, one-row"
              f" requests, 1 client, {args.requests} requests per mode, alternating")
        print("| model | raw p50 ms | calibrated p50 ms | overhead |")
        print("|---|---|---|---|")
        with httpx.Client(base_url=url, timeout=30) as client:
            for name, (body, options) in cases.items():
                _time(client, f"/v1/models/{name}-raw/predict", body, 150)  # warm both
                _time(client, f"/v1/models/{name}/predict", {**body, **options}, 150)
                raw, calibrated = [], []
                for _ in range(args.requests):  # one of each in turn: both modes see the same drift and load
                    raw += _time(client, f"/v1/models/{name}-raw/predict", body, 1)
                    calibrated += _time(client, f"/v1/models/{name}/predict", {**body, **options}, 1)
                a, b = statistics.median(raw) * 1e3, statistics.median(calibrated) * 1e3
                print(f"| {name} ({', '.join(options)}) | {a:.3f} | {b:.3f} | {100 * (b / a - 1):+.1f}% |")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
