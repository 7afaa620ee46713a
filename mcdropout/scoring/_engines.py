"""The engines that answer a chunk of rows: the bundle in this process, or a model served over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mcdropout.answer import Result, parse_options
from mcdropout.errors import InputError, ScoringError

if TYPE_CHECKING:
    from mcdropout.client import InvalidInput


class LocalEngine:
    """The bundle loaded in this process (CUDA when present); its own ``model.py`` runs only with ``trust_code``."""

    def __init__(self, bundle: str | Path, *, samples: int | None, seed: int, interval: float,
                 device: str = "auto", options: dict | None = None, trust_code: bool = False) -> None:
        from mcdropout.bundle import load_bundle

        self.bundle = load_bundle(bundle, device=device, trust_code=trust_code)
        self.feature_names = self.bundle.manifest.feature_names
        self.input_shape = self.bundle.manifest.input_shape
        self.text = self.bundle.manifest.text is not None
        self.samples, self.seed, self.interval = samples, seed, interval
        options = dict(options or {})
        self.tolerance = options.pop("tolerance", None)
        self.options = parse_options(options, self.bundle.manifest, interval)  # refused before any row

    def predict(self, x: np.ndarray) -> Result:
        """The bundle's calibrated answer (:meth:`Bundle.answer`): the numbers the service gives."""
        rows = x if self.text else x.reshape(len(x), *self.input_shape)
        return self.bundle.answer(rows, samples=self.samples, seed=self.seed, level=self.interval,
                                  options=self.options, tolerance=self.tolerance)

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
        self.text = info.text is not None
        self.name, self.samples, self.seed, self.interval = name, samples, seed, interval
        self.options = options or {}

    def predict(self, x: np.ndarray) -> Result:
        from mcdropout.client import InvalidInput, ServiceError

        try:
            rows = x if self.text else x.reshape(len(x), *self.input_shape)
            return self.client.predict(self.name, rows, samples=self.samples,
                                       seed=self.seed, interval=self.interval, **self.options)
        except InvalidInput as error:
            if (error.field or "").startswith("inputs"):
                raise RemoteInputError(self.client.base_url, error) from None
            raise ScoringError(f"{self.client.base_url}: {error}") from None
        except ServiceError as error:
            raise ScoringError(f"{self.client.base_url}: {error}; the chunks done so far are kept: run again with"
                               " --resume") from None


class RemoteInputError(InputError):
    """The server refused a chunk's rows; :meth:`counted_from` names them as rows of the whole table."""

    def __init__(self, url: str, error: InvalidInput) -> None:
        self.url, self.error = url, error
        super().__init__(f"{url}: {error}")

    def counted_from(self, first: int) -> str:
        """The message with the rows numbered from 0 in the table, for a chunk that starts at row ``first``."""
        return f"{self.url}: {self.error.shifted(first)}"
