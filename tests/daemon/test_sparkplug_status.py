"""Sparkplug node figures come from the real health snapshot (one source for both trees)."""

from __future__ import annotations

from pathlib import Path

from edgescribe.daemon.config.mqtt import HealthConfig
from edgescribe.daemon.health import HealthReporter, HealthSources, InferenceHealth, ServiceInfo
from edgescribe.daemon.sparkplug.status import status_from_health

ORIN = Path(__file__).resolve().parents[1] / "data" / "orin-sysfs"


def test_status_from_an_orin_health_snapshot(tmp_path):
    sources = HealthSources(
        service=lambda: ServiceInfo("0.1.0", model="tiny.en", backend="tensorrt"),
        inference=lambda: InferenceHealth(0.12, 0.4, 0.7, 0),
    )
    snapshot = HealthReporter(HealthConfig(sysfs_root=str(ORIN)), "orin-1", tmp_path, print, sources).snapshot()
    status, levels = status_from_health(snapshot, outbox_depth=4)
    assert (status.model, status.backend, status.real_time_factor, status.latency_p95_s, status.outbox_depth) == \
        ("tiny.en", "tensorrt", 0.12, 0.7, 4)
    assert status.temperatures_c and all(20 < c < 100 for c in status.temperatures_c.values())
    assert levels == {}


def test_levels_per_stream():
    snapshot = {"uptime_s": 3.0, "streams": {"mic1": {"state": "up", "level_dbfs": -38.5},
                                             "mic2": {"state": "down", "level_dbfs": None}}}
    assert status_from_health(snapshot, 0)[1] == {"mic1": -38.5, "mic2": None}


def test_status_when_sections_are_missing():
    status, levels = status_from_health({"uptime_s": 3.0, "service": None, "inference": None, "jetson": None}, 0)
    assert status.model is None and status.uptime_s == 3.0 and status.temperatures_c == {} and levels == {}
