"""deploy/kserve, deploy/ray and the Dockerfile agree with the app: KServe's own models read the manifests back
unchanged, and the image's command, ports, environment and probes are the service's settings and routes.

This module imports kserve, whose generated protos clash with tritonclient.grpc's in one process: it imports
neither tritonclient.grpc nor service.routes.grpc (the app is built with gRPC off).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

import mcdropout
from mcdropout.cli import _parser
from service.app import create_app
from service.settings import Settings

kserve = pytest.importorskip("kserve")
kubernetes = pytest.importorskip("kubernetes")

ROOT = Path(__file__).resolve().parent.parent
KSERVE = ROOT / "deploy" / "kserve"


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _typed(data, kind: str):
    """``data`` as the SDK's model ``kind`` (kserve's own, or the Kubernetes ones it embeds), refusing a key the
    model does not have: a misspelt or misplaced field fails here, as the API server would refuse it."""
    # the SDKs write containers as list[X] and dict(str, X), or List[X] and Dict[str, X]
    if listed := re.fullmatch(r"[Ll]ist\[(.*)\]", kind):
        return [_typed(item, listed.group(1)) for item in data]
    if mapped := re.fullmatch(r"dict\(([^,]*), (.*)\)|Dict\[([^,]*), (.*)\]", kind):
        inner = mapped.group(2) or mapped.group(4)
        return {key: _typed(value, inner) for key, value in data.items()}
    if kind in ("str", "int", "float", "bool", "object", "datetime"):
        return data
    model = getattr(kserve.models, kind, None) or getattr(kubernetes.client.models, kind)
    unknown = set(data) - set(model.attribute_map.values())
    assert not unknown, f"{kind} has no field {sorted(unknown)}"
    return model(**{attribute: _typed(data[key], model.openapi_types[attribute])
                    for attribute, key in model.attribute_map.items() if key in data})


def _round_trip(document: dict, model: str):
    typed = _typed(document, model)
    assert type(typed).__name__ == model
    back = _unfilled(kserve.ApiClient().sanitize_for_serialization(typed))
    assert back == document, f"{model} changed a field"
    return typed


def _unfilled(value):
    """``value`` without the empty strings that the SDK's models fill in (V1beta1ModelSpec's container name)."""
    if isinstance(value, dict):
        return {key: _unfilled(item) for key, item in value.items() if item != ""}
    if isinstance(value, list):
        return [_unfilled(item) for item in value]
    return value


def _runtime_container() -> dict:
    return _yaml(KSERVE / "servingruntime.yaml")["spec"]["containers"][0]


def _dockerfile() -> tuple[list[str], dict[str, str], set[int]]:
    """The Dockerfile's CMD, ENV and EXPOSE."""
    text = (ROOT / "Dockerfile").read_text()
    command = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(re.findall(r"^ENV (.*)$", text, re.M))))
    exposed = {int(port) for line in re.findall(r"^EXPOSE (.*)$", text, re.M) for port in line.split()}
    return command, env, exposed


def _routes() -> set[str]:
    return {route.path for route in create_app(Settings(models_dir=ROOT / "models", grpc_port=None)).routes}


def test_the_inference_service_reads_back_unchanged_through_kserves_model():
    document = _yaml(KSERVE / "inferenceservice.yaml")
    service = _round_trip(document, "V1beta1InferenceService")
    model = service.spec.predictor.model
    runtime = _yaml(KSERVE / "servingruntime.yaml")
    assert model.runtime == runtime["metadata"]["name"]
    assert {"name": model.model_format.name, "version": model.model_format.version, "autoSelect": True} in \
        runtime["spec"]["supportedModelFormats"]
    assert model.protocol_version in runtime["spec"]["protocolVersions"]
    # models from the claim of models-pvc.yaml (or a bucket: see the file's comment)
    claim = _yaml(KSERVE / "models-pvc.yaml")
    assert model.storage_uri == f"pvc://{claim['metadata']['name']}/"


def test_the_serving_runtime_reads_back_unchanged_and_runs_the_image_as_the_settings_say():
    runtime = _round_trip(_yaml(KSERVE / "servingruntime.yaml"), "V1alpha1ServingRuntime")
    assert set(runtime.spec.protocol_versions) == {"v2", "grpc-v2"}  # OIP over HTTP and gRPC
    container = _runtime_container()
    command, _, _ = _dockerfile()
    assert container["command"] == command  # the image's own command
    env = {item["name"]: item["value"] for item in container["env"]}
    for variable in env:
        assert variable.removeprefix("MCD_").lower() in Settings.model_fields, variable
    settings = Settings(**{key.removeprefix("MCD_").lower(): value for key, value in env.items()})
    assert str(settings.models_dir) == "/mnt/models"  # where KServe mounts or downloads the storageUri
    assert settings.host == "0.0.0.0"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": settings.port, "grpc": settings.grpc_port} == {"http": 8080, "grpc": 8081}
    routes = _routes()
    for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        assert container[probe]["httpGet"] == {"path": path, "port": settings.port} and path in routes


def test_the_dockerfile_command_ports_and_env_are_the_services_settings():
    command, env, exposed = _dockerfile()
    assert _parser().parse_args(command[1:]).command == "serve" and command[0] == "mcdropout"
    for variable in env:
        assert variable.removeprefix("MCD_").lower() in Settings.model_fields, variable
    settings = Settings(**{key.removeprefix("MCD_").lower(): value for key, value in env.items()})
    assert exposed == {settings.port, settings.grpc_port}
    assert settings.host == "0.0.0.0"
    # the tag the KServe runtime names is this version of the image
    assert _runtime_container()["image"] == f"mcdropout:{mcdropout.__version__}"


def test_the_ray_serve_config_is_one_that_serve_deploy_takes_and_names_the_deployment():
    pytest.importorskip("ray.serve")
    from ray.serve.schema import ServeDeploySchema

    from service import ray_serve

    config = ServeDeploySchema.model_validate(_yaml(ROOT / "deploy" / "ray" / "serve.yaml"))
    (app,) = config.applications
    module, name = app.import_path.split(":")
    assert module == "service.ray_serve" and getattr(ray_serve, name) is ray_serve.application
    (deployment,) = app.deployments
    assert deployment.name == ray_serve.DEPLOYMENT
    assert deployment.max_ongoing_requests == Settings.model_fields["max_queue"].default  # not Serve's 5
    for variable in app.runtime_env["env_vars"]:
        assert variable.removeprefix("MCD_").lower() in Settings.model_fields, variable
    assert app.runtime_env["env_vars"]["MCD_TORCH_THREADS"] == str(int(deployment.ray_actor_options.num_cpus))
