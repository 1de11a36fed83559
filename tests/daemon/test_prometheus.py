"""Prometheus endpoint: scraped over real HTTP, same figures as the health snapshot."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from edgescribe.daemon.config.mqtt import HealthConfig, PrometheusConfig
from edgescribe.daemon.health import HealthReporter
from edgescribe.daemon.prometheus import serve
from edgescribe.engines.errors import ConfigError
from tests.daemon.test_health import sources
from tests.fixtures.mosquitto import free_port

ORIN = Path(__file__).resolve().parents[1] / "data" / "orin-sysfs"


def test_metrics_match_the_health_snapshot(tmp_path):
    reporter = HealthReporter(HealthConfig(sysfs_root=str(ORIN)), "orin-1", tmp_path, print, sources())
    snapshot = reporter.snapshot()
    port = free_port()
    server, thread = serve(PrometheusConfig(enabled=True, port=port), reporter)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
    assert "edgescribe_gpu_load_percent 43.7" in text
    assert 'edgescribe_rail_power_milliwatts{rail="VDD_IN"} 7237.7' in text
    assert 'edgescribe_temperature_celsius{zone="tj-thermal"} 48.59' in text
    assert 'edgescribe_stream_xruns{stream="line2"} 2.0' in text
    speculative = snapshot["streams"]["line1"]["speculative_finals"]
    for outcome in ("started", "reused", "discarded"):
        line = f'edgescribe_stream_speculative_finals_total{{outcome="{outcome}",stream="line1"}} {float(speculative[outcome])}'
        assert line in text, line
    assert 'edgescribe_stream_speculative_finals_total{outcome="started",stream="line2"} 0.0' in text
    assert 'edgescribe_stream_dropped_total{rule="repeated_words",stream="line1"} 3.0' in text
    assert 'edgescribe_stream_dropped_total{rule="min_speech",stream="line1"} 2.0' in text
    assert 'edgescribe_stream_snr_db{stream="line1"} 14.2' in text
    assert f'edgescribe_host_memory_available_mb {snapshot["host"]["memory_available_mb"]}' in text
    assert "edgescribe_inference_latency_p95_s 0.97" in text


def test_port_in_use_is_a_config_error(tmp_path):
    reporter = HealthReporter(HealthConfig(sysfs_root=str(tmp_path)), "d", tmp_path, print)
    port = free_port()
    server, _ = serve(PrometheusConfig(enabled=True, port=port), reporter)
    try:
        with pytest.raises(ConfigError, match=f"prometheus.port: cannot listen on 127.0.0.1:{port}"):
            serve(PrometheusConfig(enabled=True, port=port), reporter)
    finally:
        server.shutdown()
