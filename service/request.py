"""The protocol-neutral request and answer that every codec decodes to and encodes from
(service/dataplane.py checks and answers them)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mcdropout.answer import Options, Result
from mcdropout.bundle import Bundle, Manifest


@dataclass(frozen=True)
class InferRequest:
    """What any protocol asks of a model: rows in the model's input shape, and checked parameters."""

    bundle: Bundle  # the version that answers, looked up before the rows were decoded
    rows: np.ndarray
    samples: int | str  # T, or "auto"
    seed: int
    level: float  # of the central interval (regression)
    options: Options | None
    tolerance: float | None = None  # for samples="auto"; None: the engine's default (0.01)
    return_samples: bool = False
    deadline: float | None = None  # time.monotonic() past which nobody waits for the answer (gRPC's deadline)
    id: str = ""  # the answer's id (the client's, or a fresh one): outcomes name it (service/live/)


@dataclass(frozen=True)
class InferAnswer:
    """The calibrated answer to an :class:`InferRequest`, with what the codecs echo back."""

    request: InferRequest
    result: Result  # the request's rows; with return_samples, ``result.draws``
    model_version: int  # the repository version that answered

    @property
    def manifest(self) -> Manifest:
        return self.request.bundle.manifest
