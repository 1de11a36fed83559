"""Home Assistant discovery: retained sensor configs whose templates read real health payloads."""

from __future__ import annotations

import json
import time
from pathlib import Path

from edgescribe.daemon.config.mqtt import HealthConfig, HomeAssistantConfig, MqttConfig
from edgescribe.daemon.health import HealthReporter
from edgescribe.daemon.homeassistant import SENSORS, discovery_messages, enable
from edgescribe.daemon.publisher import Publisher, Topics
from tests.fixtures.mosquitto import Subscriber, mosquitto  # noqa: F401 (fixture)

ORIN = Path(__file__).resolve().parents[1] / "data" / "orin-sysfs"


def lookup(payload: dict, path: str):
    for part in path.split("."):
        payload = (payload or {}).get(part)
    return payload


def test_every_sensor_points_at_a_real_health_figure(tmp_path):
    reporter = HealthReporter(HealthConfig(sysfs_root=str(ORIN)), "orin-1", tmp_path, print)
    snapshot = reporter.snapshot()
    for sensor in SENSORS:
        section = sensor.path.split(".")[0]
        assert section in snapshot, sensor
        if snapshot[section] is not None and section in ("host", "jetson"):
            assert lookup(snapshot, sensor.path) is not None, sensor.path


def test_discovery_configs_name_topics_and_availability():
    messages = dict(discovery_messages(HomeAssistantConfig(enabled=True), Topics("edgescribe", "orin-1"), "0.1.0"))
    config = json.loads(messages["homeassistant/sensor/edgescribe_orin_1_gpu_load/config"])
    assert config["state_topic"] == "edgescribe/orin-1/health"
    assert config["availability"][0]["topic"] == "edgescribe/orin-1/availability"
    assert config["unit_of_measurement"] == "%" and "gpu_load_percent" in config["value_template"]
    assert len(messages) == len(SENSORS)


def test_announced_retained_after_connect(mosquitto, tmp_path):
    publisher = Publisher.from_config(MqttConfig(host="127.0.0.1", port=mosquitto.port), "orin-1", tmp_path)
    enable(HomeAssistantConfig(enabled=True), publisher, "0.1.0")
    publisher.start()
    assert publisher.link.wait_connected(10)
    try:
        watcher = Subscriber(mosquitto.port, ["homeassistant/#"]).connect()
        watcher.wait_for(lambda m: len(m) >= len(SENSORS), 10)
        watcher.disconnect()
        late = Subscriber(mosquitto.port, ["homeassistant/#"]).connect()  # as Home Assistant after its restart
        messages = late.wait_for(lambda m: len(m) >= len(SENSORS), 10)
        late.disconnect()
    finally:
        publisher.stop()
    assert len(messages) == len(SENSORS) and all(m.retain for m in messages)


def test_announced_on_the_first_connect_even_when_enabled_late_and_on_ha_birth(mosquitto, tmp_path):
    publisher = Publisher.from_config(MqttConfig(host="127.0.0.1", port=mosquitto.port), "orin-2", tmp_path)
    watcher = Subscriber(mosquitto.port, ["homeassistant/sensor/#"]).connect()
    publisher.start()
    try:
        assert publisher.link.wait_connected(10)
        time.sleep(0.3)  # the link has connected before discovery is enabled
        enable(HomeAssistantConfig(enabled=True), publisher, "0.1.0")
        first = watcher.wait_for(lambda m: len(m) >= len(SENSORS), 10)
        assert len(first) == len(SENSORS), "discovery was not announced on the connection already up"
        ha = Subscriber(mosquitto.port, ["nothing/#"]).connect()  # Home Assistant restarting: its birth message
        ha._client.publish("homeassistant/status", b"online", qos=1)
        again = watcher.wait_for(lambda m: len(m) >= 2 * len(SENSORS), 10)
        ha.disconnect()
    finally:
        publisher.stop()
        watcher.disconnect()
    assert len(again) == 2 * len(SENSORS), "discovery was not re-announced on Home Assistant's birth message"
