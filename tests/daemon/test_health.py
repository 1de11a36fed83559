"""Health snapshots: real host figures here, Jetson figures from the Orin tree, schema-valid, published."""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from edgescribe.daemon.config.mqtt import HealthConfig, MqttConfig
from edgescribe.daemon.health import HealthReporter, HealthSources, InferenceHealth, ServiceInfo, StreamHealth
from edgescribe.daemon.publisher import Publisher
from edgescribe.daemon.streaming import DropCounts, SpeculationCounts
from tests.fixtures.mosquitto import Subscriber, mosquitto, validate_payload  # noqa: F401 (fixture)

ORIN = Path(__file__).resolve().parents[1] / "data" / "orin-sysfs"


def sources(publisher=None) -> HealthSources:
    return HealthSources(
        service=lambda: ServiceInfo("0.1.0", model="tiny.en", backend="onnxruntime", engine_key=None),
        streams=lambda: {"line1": StreamHealth("up", -31.5, 0, 0.0, 17, 4, SpeculationCounts(started=6, reused=3, discarded=2),
                                               snr_db=14.2, dropped=DropCounts(1, 0, 3, 1), discarded_bursts=2,
                                               length_cuts=1),
                         "line2": StreamHealth("down", None, 2, 1.28, 0, 0, SpeculationCounts(0, 0, 0), snr_db=None,
                                               dropped=DropCounts(0, 0, 0, 0), discarded_bursts=0, length_cuts=0)},
        inference=lambda: InferenceHealth(real_time_factor=0.18, latency_p50_s=0.42, latency_p95_s=0.97, queue_depth=1),
        outbox=publisher.outbox.stats if publisher else (lambda: None),
        mqtt=publisher.link.stats if publisher else (lambda: None),
        messages=publisher.stats if publisher else (lambda: None),
    )


def test_host_figures_are_this_machine(tmp_path):
    reporter = HealthReporter(HealthConfig(sysfs_root=str(tmp_path)), "dev1", tmp_path, print, sources())
    snapshot = reporter.snapshot()
    validate_payload(snapshot, "health")
    host = snapshot["host"]
    meminfo_total_kb = int(Path("/proc/meminfo").read_text().split()[1])
    assert abs(host["memory_total_mb"] - meminfo_total_kb / 1024) < 1
    free = os.statvfs(tmp_path)
    assert abs(host["disk_free_mb"] - free.f_bavail * free.f_frsize / 2**20) < 64
    assert host["state_dir"] == str(tmp_path)
    assert snapshot["jetson"] is None  # no Jetson sysfs under this root
    assert snapshot["streams"]["line2"]["xruns"] == 2
    assert snapshot["inference"]["latency_p95_s"] == 0.97


def test_cpu_percent_reflects_load(tmp_path):
    reporter = HealthReporter(HealthConfig(sysfs_root=str(tmp_path)), "dev1", tmp_path, print)
    end = psutil.cpu_times().user + 0.3
    while psutil.cpu_times().user < end:  # burn a little CPU so the figure is not an idle 0.0
        sum(range(10_000))
    assert reporter.snapshot()["host"]["cpu_percent"] > 0


def test_jetson_figures_from_the_orin_tree(tmp_path):
    reporter = HealthReporter(HealthConfig(sysfs_root=str(ORIN)), "orin-1", tmp_path, print, sources())
    snapshot = reporter.snapshot()
    validate_payload(snapshot, "health")
    jetson = snapshot["jetson"]
    assert jetson["gpu_load_percent"] == 43.7 and jetson["gpu_freq_mhz"] == 624.75
    assert jetson["temperatures_c"]["gpu-thermal"] == 46.28
    assert jetson["power_rails"][0] == {"name": "VDD_IN", "voltage_v": 5.072, "current_ma": 1427.0, "power_mw": 7237.7}
    assert jetson["gpu_shared_memory_mb"] == 964.3


def test_a_failing_provider_costs_only_its_section(tmp_path, caplog):
    def broken():
        raise RuntimeError("scheduler not started")

    reporter = HealthReporter(HealthConfig(sysfs_root=str(tmp_path)), "dev1", tmp_path, print,
                              HealthSources(inference=broken))
    snapshot = reporter.snapshot()
    validate_payload(snapshot, "health")
    assert snapshot["inference"] is None and snapshot["host"] is not None
    assert "scheduler not started" in caplog.text


def test_reporter_publishes_retained_snapshots_over_mqtt(mosquitto, tmp_path):
    publisher = Publisher.from_config(MqttConfig(host="127.0.0.1", port=mosquitto.port), "orin-1", tmp_path)
    reporter = HealthReporter(HealthConfig(interval_s=1, sysfs_root=str(ORIN)), "orin-1", tmp_path,
                              publisher.publish_health, sources(publisher))
    subscriber = Subscriber(mosquitto.port, ["edgescribe/orin-1/health"]).connect()
    publisher.start()
    assert publisher.link.wait_connected(10)
    reporter.start()
    try:
        messages = subscriber.wait_for(lambda m: len(m) >= 2, 10)
    finally:
        reporter.stop()
        publisher.stop()
        subscriber.disconnect()
    assert len(messages) >= 2
    payload = messages[-1].json()
    validate_payload(payload, "health")
    assert payload["mqtt"]["state"] == "connected" and payload["outbox"]["depth"] == 0
    assert payload["messages"]["health_sent"] >= 1
    late = Subscriber(mosquitto.port, ["edgescribe/orin-1/health"]).connect()
    retained = late.wait_for(lambda m: m, 5)
    late.disconnect()
    assert retained and retained[0].retain  # a dashboard that connects later sees the last snapshot at once
