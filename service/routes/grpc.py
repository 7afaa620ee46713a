"""The Open Inference Protocol over gRPC (KServe v2 / Triton's ``inference.GRPCInferenceService``).

Thin handlers: each call is decoded by the gRPC codec (service/codecs/grpc.py) into the v2 request and
rows, checked and answered by the data plane like every other protocol, so batching, limits, calibration
options and errors are those of REST; an ApiError's status becomes the matching gRPC status code. The stubs are
the ones tritonclient ships (``tritonclient[grpc]``), so ``tritonclient.grpc`` works unchanged; the
server runs on the app's event loop (grpc.aio) and is started by the app's lifespan.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import uuid
from typing import Any

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

import mcdropout
from service.codecs import grpc as codec
from service.codecs import v2
from service.dataplane import DataPlane, valid_key
from service.inputs import ApiError

log = logging.getLogger("mcdropout.service")

CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
         404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
         422: grpc.StatusCode.INVALID_ARGUMENT, 503: grpc.StatusCode.UNAVAILABLE,
         504: grpc.StatusCode.DEADLINE_EXCEEDED}


def _answering(guarded: bool):
    """Turn ApiError into the gRPC status; check the API key first on the model calls. Any other exception is
    INTERNAL with a generic message and an id, the server log has it whole (its text may carry a file's or a
    bundle's content). Every call is counted in mcdropout_requests_total, route ``grpc:<Method>``."""

    def wrap(method):
        route = f"grpc:{method.__name__}"

        @functools.wraps(method)
        async def call(self: InferenceServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
            status = "OK"
            try:
                if guarded:
                    self.check_key(context)
                return await method(self, request, context)
            except ApiError as error:
                code = CODES.get(error.status, grpc.StatusCode.INTERNAL)
                status = code.name
                await context.abort(code, error.message)
            except asyncio.CancelledError:
                status = "CANCELLED"
                raise
            except Exception as error:
                if isinstance(error, grpc.aio.AbortError):
                    raise
                status = "INTERNAL"
                reference = uuid.uuid4().hex[:12]
                log.error("unhandled error %s on gRPC %s", reference, method.__name__, exc_info=error)
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error {reference}; the server log has it")
            finally:
                self.count(route, request, status)

        return call

    return wrap


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.state = plane.state

    def check_key(self, context: grpc.aio.ServicerContext) -> None:
        keys = self.state.settings.api_keys
        if not keys:
            return
        given = [value for name, value in context.invocation_metadata() or () if name.lower() == "authorization"]
        if len(given) > 1:
            raise ApiError(401, "more than one 'authorization' metadata entry: send one")
        if not given or not isinstance(given[0], str) or not valid_key(given[0], keys):
            raise ApiError(401, "missing or invalid API key: send the metadata 'authorization: Bearer <key>'")

    def count(self, route: str, request: Any, status: str) -> None:
        name = getattr(request, "model_name", None) or getattr(request, "name", None) or ""
        model = name if name in self.state.models else ""  # unknown names would make labels unbounded
        self.state.metrics.requests.labels(route, model, status).inc()

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
        try:
            return pb.ModelReadyResponse(ready=self.state.is_ready(request.name, request.version or None))
        except ValueError as error:  # parse_version's: a version that is not a number (its text is the caller's)
            raise ApiError(400, str(error)) from None

    @_answering(guarded=True)
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context) -> pb.ModelMetadataResponse:
        bundle = self.plane.bundle(request.name, request.version or None)
        versions = [str(n) for n in sorted(self.state.served.get(request.name, {}))]
        return codec.metadata(request.name, v2.model_metadata(bundle.manifest, versions))

    @_answering(guarded=True)
    async def ModelInfer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        plane, settings = self.plane, self.state.settings
        bundle = plane.bundle(request.model_name, request.model_version or None)
        infer_request, binary = codec.decode(request, settings.max_rows * math.prod(bundle.manifest.input_shape))
        rows = v2.input_array(infer_request, binary, bundle.manifest, settings.max_rows)
        plane.check_outputs(bundle, infer_request, len(rows))
        asked = plane.request(bundle, rows, v2.parameters_of(infer_request), prefix="parameters.", draws=False,
                              seconds_left=context.time_remaining(), rows_field=f"input {v2.INPUT_NAME!r}",
                              answer_id=infer_request.id)
        return codec.encode(infer_request, await plane.infer(asked))

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


async def start(plane: DataPlane) -> grpc.aio.Server:
    """The gRPC server on MCD_HOST:MCD_GRPC_PORT, on the running event loop."""
    settings = plane.settings
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", settings.max_body_bytes),
                                      ("grpc.max_send_message_length", -1)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(plane), server)
    address = f"{settings.host}:{settings.grpc_port}"
    if server.add_insecure_port(address) == 0:
        raise RuntimeError(f"cannot bind the gRPC port {address} (MCD_GRPC_PORT)")
    await server.start()
    log.info("gRPC Open Inference Protocol on %s", address)
    return server
