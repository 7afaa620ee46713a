"""What one app serves: the bundles, their batchers, the compute thread and the metrics."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from mcdropout.bundle import Bundle, load_bundle
from service.batcher import Answer, Batcher, DeadlineExceeded, Overloaded
from service.inputs import ApiError
from service.metrics import ServiceMetrics
from service.settings import Settings

log = logging.getLogger("mcdropout.service")


class ServiceState:
    """The models, their batchers, the compute thread and the metrics of one app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.models: dict[str, Bundle] = {}
        self.failures: dict[str, str] = {}
        self.batchers: dict[str, Batcher] = {}
        # Set by the thread that runs the models, when it starts (MCD_TORCH_THREADS; else torch's default).
        threads = () if settings.torch_threads is None else (settings.torch_threads,)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mcdropout-compute",
                                           initializer=torch.set_num_threads if threads else None, initargs=threads)

    def load(self) -> None:
        folder = Path(self.settings.models_dir)
        if not folder.is_dir():
            log.error("models folder %s does not exist: serving no models", folder)
            return
        for path in bundle_folders(folder):
            try:
                bundle = load_bundle(path, device=self.settings.device, memory_budget=self.settings.memory_budget,
                                     max_params=self.settings.max_model_params, trust_code=self.settings.trust_bundle_code)
                if bundle.name != path.name:
                    raise ValueError(f"{path}: the manifest names the model {bundle.name!r}, the folder {path.name!r}")
            except Exception as error:  # a broken bundle is reported, the others are served
                self.failures[path.name] = str(error)
                log.error("model %s failed to load: %s", path.name, error)
                continue
            self.models[bundle.name] = bundle
            log.info("serving %s %s (%s) from %s", bundle.name, bundle.manifest.version, bundle.manifest.task, path)

    def start(self) -> None:
        for name, bundle in self.models.items():
            batcher = Batcher(
                bundle, self.executor, enabled=self.settings.batching, max_batch_rows=self.settings.max_batch_rows,
                max_delay_ms=self.settings.max_delay_ms, max_queue=self.settings.max_queue,
                max_samples=self.settings.max_samples,
                observe=lambda stats, name=name: self.metrics.observe_batch(name, stats),
            )
            batcher.start()
            self.batchers[name] = batcher
            self.metrics.queue_depth.labels(name).set_function(lambda batcher=batcher: batcher.depth)  # read at scrape

    async def close(self) -> None:
        await asyncio.gather(*(batcher.close() for batcher in self.batchers.values()))
        self.executor.shutdown(wait=True)

    def bundle(self, name: str) -> Bundle:
        if name in self.models:
            return self.models[name]
        if name in self.failures:
            raise ApiError(503, f"model {name!r} failed to load: {self.failures[name]}", "name")
        known = ", ".join(sorted(self.models)) or "none"
        raise ApiError(404, f"unknown model {name!r}; available: {known}", "name")

    async def predict(self, bundle: Bundle, inputs: np.ndarray, samples: int | str, seed: int, level: float,
                      return_samples: bool) -> Answer:
        batcher = self.batchers[bundle.name]
        try:
            return await batcher.submit(inputs, samples=samples, seed=seed, level=level,
                                        return_samples=return_samples, timeout=self.settings.request_timeout_s)
        except Overloaded as error:
            raise ApiError(503, f"overloaded: {error}; retry later", None,
                           {"Retry-After": str(self.settings.retry_after_s)}) from None
        except DeadlineExceeded as error:
            raise ApiError(504, f"deadline exceeded: {error} (MCD_REQUEST_TIMEOUT_S)") from None
        except ValueError as error:  # the engine refused these inputs
            raise ApiError(422, str(error), "inputs") from None


def bundle_folders(folder: Path) -> list[Path]:
    """The sub-folders of the models folder that hold a bundle each (hidden ones skipped), by name."""
    return sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))
