"""docker-compose.yml and the Dockerfile agree with the app: command, port, healthcheck, GPU profile."""

from pathlib import Path

import yaml

from mcdropout.cli import _parser
from service.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_run_the_app_on_its_port_with_a_real_healthcheck():
    routes = {route.path for route in create_app(Settings(models_dir=ROOT / "models")).routes}
    for name, service in _compose()["services"].items():
        if "build" not in service:  # the monitoring profile's Prometheus and Grafana images
            continue
        environment = service["environment"]
        assert service["command"] == ["mcdropout", "serve"], name
        assert "serve" in _parser().parse_args(service["command"][1:]).command
        port = environment["MCD_PORT"]
        assert f"8000:{port}" in service["ports"], name
        assert environment["MCD_HOST"] == "0.0.0.0"  # reachable from outside the container
        assert "./models:/models:ro" in service["volumes"] and environment["MCD_MODELS_DIR"] == "/models"
        probe = " ".join(service["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/v2/health/ready" in probe and "/v2/health/ready" in routes
        for variable in environment:  # every MCD_ variable is a real setting
            assert variable.removeprefix("MCD_").lower() in Settings.model_fields, variable


def test_gpu_profile_reserves_an_nvidia_device():
    gpu = _compose()["services"]["mcdropout-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["environment"]["MCD_DEVICE"] == "cuda"
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_dockerfile_serves_what_compose_expects():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'CMD ["mcdropout", "serve"]' in dockerfile
    assert "EXPOSE 8000" in dockerfile and "MCD_MODELS_DIR=/models" in dockerfile
    assert '".[serve]"' in dockerfile


def test_every_setting_is_documented_in_the_settings_page():
    page = (ROOT / "docs" / "service" / "settings.md").read_text()
    missing = [f"MCD_{name.upper()}" for name in Settings.model_fields if f"`MCD_{name.upper()}`" not in page]
    assert not missing, f"settings without a row in docs/service/settings.md: {missing}"
