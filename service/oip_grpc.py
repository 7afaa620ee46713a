"""The Open Inference Protocol over gRPC (KServe v2 / Triton's ``inference.GRPCInferenceService``).

A thin decode/encode layer: each call becomes the REST path's request (service/v2.py's parsing,
parameters and output selection) and runs through the same ServiceState, so batching, limits and
errors are those of REST; an ApiError's status becomes the matching gRPC status code. The stubs are
the ones tritonclient ships (``tritonclient[grpc]``), so ``tritonclient.grpc`` works unchanged; the
server runs on the app's event loop (grpc.aio) and is started by the app's lifespan.
"""

from __future__ import annotations

import functools
import hmac
import logging
import math
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

import mcdropout
from service import v2
from service.inputs import ApiError
from service.schemas import V2InferRequest
from service.state import ServiceState

log = logging.getLogger("mcdropout.service")

CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
         404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
         422: grpc.StatusCode.INVALID_ARGUMENT, 503: grpc.StatusCode.UNAVAILABLE,
         504: grpc.StatusCode.DEADLINE_EXCEEDED}
# Where a tensor's values sit in InferTensorContents, by datatype (FP16 only travels as raw bytes).
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
            "FP64": "fp64_contents"}


def _answering(guarded: bool):
    """Turn ApiError into the gRPC status; check the API key first on the model calls."""

    def wrap(method):
        @functools.wraps(method)
        async def call(self: InferenceServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                if guarded:
                    self.check_key(context)
                return await method(self, request, context)
            except ApiError as error:
                await context.abort(CODES.get(error.status, grpc.StatusCode.INTERNAL), error.message)
            except ValueError as error:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))

        return call

    return wrap


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, state: ServiceState) -> None:
        self.state = state

    def check_key(self, context: grpc.aio.ServicerContext) -> None:
        keys = self.state.settings.api_keys
        if not keys:
            return
        header = dict(context.invocation_metadata() or ()).get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not (scheme.lower() == "bearer" and any(hmac.compare_digest(token.encode(), k.encode()) for k in keys)):
            raise ApiError(401, "missing or invalid API key: send the metadata 'authorization: Bearer <key>'")

    @_answering(guarded=False)
    async def ServerLive(self, request: pb.ServerLiveRequest, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @_answering(guarded=False)
    async def ServerReady(self, request: pb.ServerReadyRequest, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=bool(self.state.batchers))

    @_answering(guarded=False)
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="mcdropout", version=mcdropout.__version__,
                                         extensions=["model_repository"])

    @_answering(guarded=True)
    async def ModelReady(self, request: pb.ModelReadyRequest, context) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.state.is_ready(request.name, request.version or None))

    @_answering(guarded=True)
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context) -> pb.ModelMetadataResponse:
        bundle = self.state.bundle(request.name, request.version or None)
        meta = v2.model_metadata(bundle.manifest, [str(n) for n in sorted(self.state.served.get(request.name, {}))])

        def tensors(specs: list[dict]) -> list:
            return [pb.ModelMetadataResponse.TensorMetadata(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                    for t in specs]

        return pb.ModelMetadataResponse(name=request.name, versions=meta["versions"], platform=meta["platform"],
                                        inputs=tensors(meta["inputs"]), outputs=tensors(meta["outputs"]))

    @_answering(guarded=True)
    async def ModelInfer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        state, settings = self.state, self.state.settings
        bundle = state.bundle(request.model_name, request.model_version or None)
        infer_request, binary = _decode(request, settings.max_rows * math.prod(bundle.manifest.input_shape))
        rows = v2.input_array(infer_request, binary, bundle.manifest, settings.max_rows)
        params = v2.parameters(infer_request, bundle.manifest, settings.default_seed, settings.max_samples)
        answer = await state.predict(bundle, rows, params["samples"], params["seed"], params["interval"], False)
        response = pb.ModelInferResponse(model_name=request.model_name, model_version=str(state.version_of(bundle)),
                                         id=request.id)
        for name, value in (("samples", params["samples"]), ("seed", params["seed"]),
                            ("interval", params["interval"])):
            response.parameters[name].CopyFrom(_parameter(value))
        for name, array, _ in v2.selected_outputs(infer_request, bundle.manifest, answer.result):
            datatype = "INT64" if array.dtype == np.int64 else "FP64"
            response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
            response.raw_output_contents.append(np.ascontiguousarray(array, dtype=v2.DATATYPES[datatype]).tobytes())
        return response

    @_answering(guarded=True)
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context) -> pb.RepositoryIndexResponse:
        entries = [entry for entry in self.state.index() if not request.ready or entry["state"] == "READY"]
        return pb.RepositoryIndexResponse(models=[
            pb.RepositoryIndexResponse.ModelIndex(name=e["name"], version=e.get("version") or "", state=e["state"],
                                                  reason=e["reason"]) for e in entries])

    @_answering(guarded=True)
    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context
                                  ) -> pb.RepositoryModelLoadResponse:
        await self.state.reload(request.model_name)
        if request.model_name in self.state.failures:
            raise ApiError(400, f"model {request.model_name!r} failed to load: {self.state.failures[request.model_name]}")
        return pb.RepositoryModelLoadResponse()

    @_answering(guarded=True)
    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest, context
                                    ) -> pb.RepositoryModelUnloadResponse:
        await self.state.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()


def _decode(request: pb.ModelInferRequest, limit: int) -> tuple[V2InferRequest, bytes]:
    """The REST form of a gRPC infer request: its JSON-like body and its raw tensor bytes. Typed contents of
    more than ``limit`` values are refused before they become Python numbers (on the event loop)."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise v2.error(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} input(s)")
    inputs = []
    for i, tensor in enumerate(request.inputs):
        entry: dict[str, Any] = {"name": tensor.name, "shape": list(tensor.shape), "datatype": tensor.datatype,
                                 "parameters": _parameters(tensor.parameters)}
        if raw:
            entry["parameters"]["binary_data_size"] = len(raw[i])
        elif tensor.datatype in CONTENTS:
            values = getattr(tensor.contents, CONTENTS[tensor.datatype])
            if len(values) > limit:
                raise v2.error(f"input {tensor.name!r}: {len(values)} values in contents is over the limit of {limit}"
                               " (MCD_MAX_ROWS rows of the model's input shape)")
            entry["data"] = list(values)
        inputs.append(entry)
    body = {"id": request.id or None, "parameters": _parameters(request.parameters), "inputs": inputs,
            "outputs": [{"name": o.name, "parameters": _parameters(o.parameters)} for o in request.outputs] or None}
    try:
        return V2InferRequest.model_validate(body), b"".join(raw)
    except ValueError as problem:
        raise v2.error(f"invalid inference request: {problem}") from None


def _parameters(given: Any) -> dict[str, Any]:
    return {name: getattr(value, value.WhichOneof("parameter_choice")) for name, value in given.items()
            if value.WhichOneof("parameter_choice") is not None}


def _parameter(value: Any) -> pb.InferParameter:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    return pb.InferParameter(string_param=str(value))


async def start(state: ServiceState) -> grpc.aio.Server:
    """The gRPC server on MCD_HOST:MCD_GRPC_PORT, on the running event loop."""
    settings = state.settings
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", settings.max_body_bytes),
                                      ("grpc.max_send_message_length", -1)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(state), server)
    address = f"{settings.host}:{settings.grpc_port}"
    if server.add_insecure_port(address) == 0:
        raise RuntimeError(f"cannot bind the gRPC port {address} (MCD_GRPC_PORT)")
    await server.start()
    log.info("gRPC Open Inference Protocol on %s", address)
    return server
