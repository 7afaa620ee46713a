"""The live quality alert rules (monitoring/prometheus/rules.yml): valid for Prometheus, fired by a shifted
stream and quiet within the binomial margin of the window's size (promtool's rule unit tests), and written
over the gauges the server exports."""

from __future__ import annotations

import re
import shutil
import subprocess

import yaml

from tests.conftest import ROOT

PROMETHEUS = ROOT / "monitoring" / "prometheus"


def _promtool(*args: str) -> subprocess.CompletedProcess:
    promtool = shutil.which("promtool")
    assert promtool, "the alert rules' tests need Debian's promtool, package prometheus (make test installs it)"
    return subprocess.run([promtool, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60)


def test_the_rules_are_valid_and_loaded_by_the_scrape_config():
    checked = _promtool("check", "rules", "rules.yml")
    assert checked.returncode == 0 and "SUCCESS: 2 rules found" in checked.stdout, checked.stdout + checked.stderr
    assert "rules.yml" in yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["rule_files"]


def test_a_shifted_stream_fires_and_an_honest_one_does_not():
    tested = _promtool("test", "rules", "rules.test.yml")
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_the_rules_query_only_gauges_the_server_exports():
    from prometheus_client import CollectorRegistry

    from service.live.gauges import QualityGauges

    registry = CollectorRegistry()
    QualityGauges(registry)
    exported = {metric.name for metric in registry.collect()}
    rules = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"][0]["rules"]
    used = {name for rule in rules for name in re.findall(r"\b(mcdropout_[a-z_]+)\b", rule["expr"])}
    assert used and used <= exported, used - exported
