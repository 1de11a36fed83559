"""The Prometheus alerting rules and the Grafana dashboard shipped for fleets.

promtool (Debian package prometheus) checks the rules and runs their unit tests; a
broken rule makes those unit tests fail. Every metric the rules and the dashboard query is
one daemon/prometheus.py exports for a real-shaped health snapshot.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from edgescribe.daemon.prometheus import HealthCollector
from tests.daemon.test_fleet_view import health

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "config" / "prometheus" / "edgescribe-rules.yml"
RULE_TESTS = REPO / "config" / "prometheus" / "edgescribe-rules.test.yml"
DASHBOARD = REPO / "config" / "grafana" / "edgescribe-dashboard.json"
PROMQL_WORDS = {"up", "sum", "count", "rate", "increase", "deriv", "vector", "or", "and", "job", "instance", "state",
                "stream", "severity"}


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is not installed (scripts/setup.sh --dev installs the prometheus package)")
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_rules_are_valid_and_their_unit_tests_pass():
    checked = promtool("check", "rules", RULES.name, cwd=RULES.parent)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 7 rules found" in checked.stdout
    tested = promtool("test", "rules", RULE_TESTS.name, cwd=RULES.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr


@pytest.mark.parametrize("change", [
    ("expr: up{job=\"edgescribe\"} == 0\n        for: 2m", "expr: up{job=\"edgescribe\"} == 0\n        for: 0m"),
    ("expr: edgescribe_stream_up == 0", "expr: edgescribe_stream_up == 1"),
    ("increase(edgescribe_stream_dropped_audio_s[10m]) > 1", "delta(edgescribe_stream_dropped_audio_s[10m]) > 5"),
])
def test_the_unit_tests_catch_a_broken_rule(tmp_path, change):
    old, new = change
    text = RULES.read_text()
    assert old in text
    (tmp_path / RULES.name).write_text(text.replace(old, new))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    assert promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path).returncode != 0


class Latest:
    """What HealthCollector reads from the reporter: its latest snapshot."""

    def __init__(self, snapshot: dict):
        self.latest = snapshot


def exported_metrics() -> set[str]:
    registry = CollectorRegistry()
    registry.register(HealthCollector(Latest(health("press-7"))))
    text = generate_latest(registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'\{[^}]*\}', "", re.sub(r"\[[^]]*\]", "", expr))
    return {word for word in re.findall(r"[a-zA-Z_][a-zA-Z0-9_]*", expr)
            if word not in PROMQL_WORDS and not word.isdigit()}


def test_every_queried_metric_is_exported():
    exported = exported_metrics() | {"up"}
    rules = re.findall(r"expr: (.+)", RULES.read_text())
    panels = [target["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"] for target in panel["targets"]]
    assert len(rules) == 7 and len(panels) >= 10
    for expr in rules + panels:
        assert metric_names(expr) <= exported, (expr, metric_names(expr) - exported)
    assert "edgescribe_stream_up" in exported
