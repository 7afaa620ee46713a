"""The Grafana dashboard, its provisioning and the compose monitoring profile agree with the live /metrics."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import run_server

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "mcdropout.json"
# A PromQL selector's metric name: an identifier not followed by "(" (functions) and not a label or keyword.
_NAME = re.compile(r"\b(mcdropout_[a-zA-Z0-9_]+)\b")
_LABELS = re.compile(r"\{([^}]*)\}")
_BY = re.compile(r"\bby \(([^)]*)\)")


def _queries(dashboard: dict) -> list[str]:
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    queries += [variable["query"]["query"] for variable in dashboard["templating"]["list"]]
    return queries


@pytest.fixture(scope="module")
def http(tmp_path_factory, calibrated_models) -> Iterator[httpx.Client]:
    """A server whose digits is calibrated, so that abstentions and prediction sets can be served."""
    with run_server(tmp_path_factory.mktemp("dashboard"), models_dir=str(calibrated_models)) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def _live_metrics(http: httpx.Client) -> tuple[set[str], set[str]]:
    # The smallest risk 270 calibration rows could certify, were none of them wrong: with a few wrong, no
    # threshold certifies it, so the row abstains, and its set is counted.
    smallest = http.get("/v1/models/digits").json()["calibration"]["min_max_risk"]
    answer = http.post("/v1/models/digits/predict", json={"inputs": [[[[0.0] * 8] * 8]], "samples": 4,
                                                          "set_level": 0.9, "max_risk": smallest})
    assert answer.status_code == 200 and answer.json()["abstain"] == [True], answer.text
    assert http.post("/v1/models/diabetes/predict", json={"inputs": [[0.0] * 10], "samples": 4}).status_code == 200
    _report_outcomes(http)
    text = http.get("/metrics").text
    names, labels = set(), set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.add(sample.name)
            labels.update(sample.labels)
    return names, labels


def _report_outcomes(http: httpx.Client) -> None:
    """Outcomes for a regression and a classifier answer (with sets and abstention at a risk that accepts),
    so that every live quality gauge is exported."""
    regression = http.post("/v1/models/diabetes/predict", json={"inputs": [[0.0] * 10], "samples": 4}).json()
    digits = http.post("/v1/models/digits/predict", json={"inputs": [[[[0.0] * 8] * 8]], "samples": 4,
                                                          "set_level": 0.9, "max_risk": 0.99}).json()
    assert digits["abstain"] == [False], digits
    for model, answer, y in (("diabetes", regression, 150.0), ("digits", digits, 0)):
        sent = http.post(f"/v1/models/{model}/outcomes", json=[{"id": answer["id"], "row": 0, "y": y}])
        assert sent.status_code == 200, sent.text


def test_every_metric_and_label_the_dashboard_queries_exists_in_a_live_metrics_page(http):
    names, labels = _live_metrics(http)
    queries = _queries(json.loads(DASHBOARD.read_text()))
    used = {name for query in queries for name in _NAME.findall(query)}
    assert {"mcdropout_requests_total", "mcdropout_served_uncertainty_bucket", "mcdropout_queue_depth",
            "mcdropout_abstentions_total", "mcdropout_prediction_set_size_bucket"} <= used
    assert used - names == set(), f"queried but not exported: {sorted(used - names)}"
    used_labels = {part.split("=")[0].strip().rstrip("!~") for query in queries
                   for selector in _LABELS.findall(query) for part in selector.split(",") if part.strip()}
    used_labels |= {label.strip() for query in queries for group in _BY.findall(query) for label in group.split(",")}
    assert used_labels - labels == set(), f"labels not exported: {sorted(used_labels - labels)}"


def test_the_dashboard_has_an_uncertainty_heatmap_per_model_and_one_datasource():
    dashboard = json.loads(DASHBOARD.read_text())
    heatmaps = [panel for panel in dashboard["panels"] if panel["type"] == "heatmap"]
    assert heatmaps and all(panel.get("repeat") == "model" for panel in heatmaps)
    assert all("mcdropout_served_uncertainty_bucket" in panel["targets"][0]["expr"]
               and panel["targets"][0]["format"] == "heatmap" for panel in heatmaps)
    source = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uids = {panel["datasource"]["uid"] for panel in dashboard["panels"]}
    assert uids == {source["datasources"][0]["uid"]}
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_the_monitoring_profile_scrapes_the_service_and_provisions_the_dashboard():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["profiles"] == grafana["profiles"] == ["monitoring"]
    scrape = yaml.safe_load((MONITORING / "prometheus/prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["metrics_path"] == "/metrics"
    assert scrape["static_configs"][0]["targets"] == [f"mcdropout:{services['mcdropout']['environment']['MCD_PORT']}"]
    mounts = {volume.split(":")[0]: volume.split(":")[1] for volume in prometheus["volumes"] + grafana["volumes"]}
    for local, inside in mounts.items():
        assert (ROOT / local).exists(), local
    provider = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/mcdropout.yml").read_text())["providers"][0]
    assert mounts["./monitoring/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./monitoring/grafana/provisioning"] == "/etc/grafana/provisioning"
    source = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090" and "9090:9090" in prometheus["ports"]
