"""The engines that answer a chunk of rows: the bundle in this process, or a model served over HTTP."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mcdropout.answer import Result, from_prediction, parse_options
from mcdropout.errors import ScoringError


class LocalEngine:
    """The bundle loaded in this process (CUDA when present); its own ``model.py`` runs only with ``trust_code``."""

    def __init__(self, bundle: str | Path, *, samples: int | None, seed: int, interval: float,
                 device: str = "auto", options: dict | None = None, trust_code: bool = False) -> None:
        from mcdropout.bundle import load_bundle

        self.bundle = load_bundle(bundle, device=device, trust_code=trust_code)
        self.feature_names = self.bundle.manifest.feature_names
        self.input_shape = self.bundle.manifest.input_shape
        self.samples, self.seed, self.interval = samples, seed, interval
        self.options = parse_options(options or {}, self.bundle.manifest, interval)  # refused before any row

    def predict(self, x: np.ndarray) -> Result:
        prediction = self.bundle.predict(x.reshape(len(x), *self.input_shape), samples=self.samples, seed=self.seed)
        return from_prediction(self.bundle.manifest, prediction, self.interval, self.options)

class RemoteEngine:
    """A model served by ``mcdropout serve`` at ``url``."""

    def __init__(self, name: str, url: str, *, samples: int | None, seed: int, interval: float,
                 api_key: str | None = None, options: dict | None = None) -> None:
        from mcdropout.client import Client, ServiceError

        self.client = Client(url, api_key=api_key)
        try:
            info = self.client.model(name)
        except ServiceError as error:
            raise ScoringError(f"model {name!r} at {url}: {error}") from None
        self.feature_names, self.input_shape = info.feature_names, info.input_shape or []
        self.name, self.samples, self.seed, self.interval = name, samples, seed, interval
        self.options = options or {}

    def predict(self, x: np.ndarray) -> Result:
        from mcdropout.client import ServiceError

        try:
            return self.client.predict(self.name, x.reshape(len(x), *self.input_shape), samples=self.samples,
                                       seed=self.seed, interval=self.interval, **self.options)
        except ServiceError as error:
            raise ScoringError(f"{self.client.base_url}: {error}; the chunks done so far are kept: run again with"
                               " --resume") from None
