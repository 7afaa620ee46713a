"""Python client for the mcdropout service: :class:`Client` and :class:`AsyncClient`.

Importing this package imports neither torch nor fastapi: it needs httpx and numpy.
"""

from mcdropout.client._client import (
    AsyncClient,
    BadAnswer,
    ClassificationResult,
    Client,
    MAX_ANSWER_BYTES,
    InvalidInput,
    ModelInfo,
    NotFound,
    Overloaded,
    RegressionResult,
    Result,
    ServerError,
    ServiceError,
    TimedOut,
    Unauthorized,
    Unreachable,
)
from mcdropout.client._acquire import Picks

__all__ = ["MAX_ANSWER_BYTES", "AsyncClient", "BadAnswer", "ClassificationResult", "Client", "InvalidInput", "ModelInfo", "NotFound",
           "Overloaded", "Picks", "RegressionResult", "Result", "ServerError", "ServiceError", "TimedOut", "Unauthorized",
           "Unreachable"]
