"""The Open Inference Protocol's gRPC messages (tritonclient's stubs) to and from the v2 request and answer.

An infer request becomes the v2 HTTP request (service/codecs/v2.py parses its rows and names its
parameters), so both transports share one decoding; the answer is encoded from the same selected outputs,
datatypes and echoed parameters as v2 HTTP's, its tensors as raw bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from service.codecs import v2
from service.request import InferAnswer
from service.schemas import V2InferRequest

# Where a tensor's values sit in InferTensorContents, by datatype (FP16 only travels as raw bytes).
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
            "FP64": "fp64_contents"}


def decode(request: pb.ModelInferRequest, limit: int) -> tuple[V2InferRequest, bytes]:
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


def encode(request: V2InferRequest, answer: InferAnswer) -> pb.ModelInferResponse:
    """The ModelInfer response: every selected output as raw bytes, the answer's parameters echoed."""
    response = pb.ModelInferResponse(model_name=answer.manifest.name, model_version=str(answer.model_version),
                                     id=answer.request.id)
    for name, value in v2.echoed(answer).items():
        response.parameters[name].CopyFrom(_parameter(value))
    for name, array, _ in v2.selected_outputs(request, answer.manifest, answer.result):
        datatype = v2.datatype_of(array)
        response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        response.raw_output_contents.append(np.ascontiguousarray(array, dtype=v2.DATATYPES[datatype]).tobytes())
    return response


def metadata(name: str, described: dict[str, Any]) -> pb.ModelMetadataResponse:
    """v2's model metadata (``v2.model_metadata``) as the gRPC message; the parameters as strings."""

    def tensors(specs: list[dict]) -> list:
        return [pb.ModelMetadataResponse.TensorMetadata(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                for t in specs]

    return pb.ModelMetadataResponse(name=name, versions=described["versions"], platform=described["platform"],
                                    inputs=tensors(described["inputs"]), outputs=tensors(described["outputs"]))
