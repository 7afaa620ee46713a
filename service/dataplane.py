"""One request path for every protocol: a protocol-neutral request, its checks, and ``infer``.

A codec (service/codecs/) decodes a protocol's body into rows and a mapping of named parameters;
:meth:`DataPlane.request` checks those parameters once, against the model, with the same errors
whatever the protocol (422 naming the field; v2 and gRPC name it with their ``parameters.`` prefix);
:meth:`DataPlane.infer` runs the request through the model's batcher and returns the bundle's
calibrated answer (``Bundle.predict``, then :func:`mcdropout.bundle.summarise`), which the codec encodes. No protocol
module calls the batcher or the bundle itself.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from mcdropout.answer import OPTION_NAMES, OptionError, check_level, parse_options
from mcdropout.bundle import Bundle, Manifest
from service.inputs import ApiError, shown
from service.live import check_id, new_id
from service.request import InferAnswer, InferRequest
from service.state import ServiceState
from service.text import token_ids

# The parameters every protocol carries, beside the calibration options (mcdropout.answer.Options).
REQUEST_PARAMETERS = ("samples", "seed", "interval", "tolerance", "return_samples")


def valid_key(header: str, keys: list[str]) -> bool:
    """Whether an ``Authorization`` value is ``Bearer <one of keys>`` (compared in constant time)."""
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and any(hmac.compare_digest(token.encode(), key.encode()) for key in keys)


class DataPlane:
    """The protocol-neutral operations on one app's :class:`~service.state.ServiceState`."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.settings = state.settings
        self.adaptive = state.adaptive

    def bundle(self, name: str, version: str | int | None = None) -> Bundle:
        return self.state.bundle(name, version)

    def request(self, bundle: Bundle, rows: np.ndarray, given: Mapping[str, Any], prefix: str = "",
                draws: bool = True, seconds_left: float | None = None, rows_field: str = "inputs",
                answer_id: str | None = None) -> InferRequest:
        """``given`` (the protocol's named parameters, absent or None: the defaults) checked against
        ``bundle``; an ApiError 422 names the field (with ``prefix``, e.g. ``parameters.``) at fault.
        ``draws``: whether the protocol carries return_samples' draws (v1 does, the OIP does not);
        ``seconds_left``: the time to the caller's own deadline (gRPC's); its work is dropped at nine
        tenths of it (within MCD_REQUEST_TIMEOUT_S); ``answer_id``: the client's id of the answer (else a new
        one). A text model's strings become token ids here (``rows_field`` names the rows in the errors)."""
        manifest = bundle.manifest
        unknown = [name for name in given if name not in REQUEST_PARAMETERS and name not in OPTION_NAMES]
        if unknown:
            raise _bad(prefix + unknown[0], f"unknown parameter; expected one of"
                                            f" {', '.join(REQUEST_PARAMETERS + OPTION_NAMES)}")
        samples = self._samples(given.get("samples"), manifest, prefix)
        seed = given.get("seed")
        if seed is None:
            seed = self.settings.default_seed
        elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise _bad(prefix + "seed", f"must be an integer from 0 to 2^63-1; got {shown(seed)}")
        level = given.get("interval")
        try:
            level = 0.95 if level is None else check_level(level)
            tolerance = given.get("tolerance")
            tolerance = None if tolerance is None else check_level(tolerance, "tolerance")
            asked = {name: given[name] for name in OPTION_NAMES if given.get(name) is not None}
            options = parse_options(asked, manifest, level)
            options = self.adaptive.adapt(manifest, level, options)  # adaptive: the level ACI has reached
        except OptionError as error:
            raise _bad(prefix + error.field, str(error).removeprefix(f"{error.field}: ")) from None
        if tolerance is not None and samples != "auto":
            raise _bad(prefix + "tolerance", "applies with samples 'auto'")
        return_samples = given.get("return_samples")
        if return_samples is not None and not draws:
            raise _bad(prefix + "return_samples", "applies to the v1 API: the Open Inference Protocol answers carry"
                                                  " no draws")
        if not isinstance(return_samples or False, bool):
            raise _bad(prefix + "return_samples", f"must be true or false; got {shown(return_samples)}")
        return_samples = bool(return_samples)
        # a tenth early, so that the caller hears the server's 504 rather than its own time-out
        deadline = None if seconds_left is None else time.monotonic() + 0.9 * seconds_left
        if rows.dtype == object:
            rows = token_ids(bundle, rows, self.settings.max_tokens, rows_field)
        answer_id = new_id() if answer_id is None else check_id(answer_id, "id")
        return InferRequest(bundle, rows, samples, seed, level, options, tolerance, return_samples, deadline,
                            answer_id)

    def _samples(self, samples: Any, manifest: Manifest, prefix: str) -> int | str:
        if samples is None:
            return manifest.samples
        if samples == "auto":
            return samples
        top = min(self.settings.max_samples, manifest.max_samples)
        if isinstance(samples, bool) or not isinstance(samples, int) or not 2 <= samples <= top:
            raise _bad(prefix + "samples", f"must be an integer from 2 to {top}, or 'auto'; got {shown(samples)}")
        return samples

    def output_width(self, bundle: Bundle) -> int:
        """Values per row of ``bundle``'s widest output (classes, or outputs), as measured when it was loaded."""
        served = self.state.served_of(bundle)
        if served is not None:
            return served.width
        return max(len(bundle.manifest.class_names or bundle.manifest.output_names or []), 1)

    def check_outputs(self, bundle: Bundle, request: Any, rows: int) -> None:
        """The Open Inference Protocol's outputs (REST and gRPC): none twice, the answer within
        MCD_MAX_RETURNED_VALUES, before any work."""
        from service.codecs import v2

        v2.check_outputs(request, bundle.manifest, rows, self.output_width(bundle), self.settings.max_returned_values)

    async def infer(self, request: InferRequest, gone: asyncio.Future | None = None) -> InferAnswer:
        """The answer to ``request``; ``gone`` completes when the client went away (its work is dropped)."""
        result = await self.state.predict(request, gone)
        answer = InferAnswer(request, result, self.state.version_of(request.bundle))
        self.state.live.record(answer)  # queued: written to the answer store off the request path
        return answer


def _bad(field: str, message: str) -> ApiError:
    return ApiError(422, f"{field}: {message}", field)
