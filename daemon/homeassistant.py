"""Home Assistant MQTT discovery: the health figures appear as sensors of one HA device, and
each phrase alert as an event entity of it (reading the alert topic).

Each sensor reads the retained health topic with a ``value_template``, so no extra
messages are sent per interval; discovery configs are retained and re-announced after
every connect and whenever Home Assistant announces itself (its birth message, ``online``
on ``<discovery_prefix>/status``, sent when it starts). Availability follows
``<prefix>/<device_id>/availability``: ``online`` is available, ``offline`` (will) and
``stopped`` (clean stop) are not.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Optional, Sequence

from edgescribe.daemon.config.mqtt import HomeAssistantConfig
from edgescribe.daemon.publisher import Publisher, Topics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sensor:
    key: str  # unique per device, becomes part of the object id
    name: str
    path: str  # dotted path into the health payload
    unit: Optional[str] = None
    device_class: Optional[str] = None
    state_class: Optional[str] = "measurement"


SENSORS = (
    Sensor("mqtt_state", "Broker connection", "mqtt.state", state_class=None),
    Sensor("mqtt_reconnects", "Broker reconnects", "mqtt.reconnects", state_class="total_increasing"),
    Sensor("outbox_depth", "Outbox depth", "outbox.depth", "messages"),
    Sensor("outbox_oldest", "Outbox oldest message age", "outbox.oldest_age_s", "s", "duration"),
    Sensor("outbox_dropped", "Outbox messages dropped", "outbox.dropped_size_total", state_class="total_increasing"),
    Sensor("cpu", "CPU", "host.cpu_percent", "%"),
    Sensor("memory_available", "Memory available", "host.memory_available_mb", "MB", "data_size"),
    Sensor("disk_free", "State disk free", "host.disk_free_mb", "MB", "data_size"),
    Sensor("rtf", "Real-time factor", "inference.real_time_factor"),
    Sensor("latency_p95", "Transcript latency p95", "inference.latency_p95_s", "s", "duration"),
    Sensor("gpu_load", "GPU load", "jetson.gpu_load_percent", "%"),
    Sensor("gpu_freq", "GPU clock", "jetson.gpu_freq_mhz", "MHz", "frequency"),
)


def _template(path: str) -> str:
    # Missing sections (e.g. jetson on a non-Jetson host) render as unknown, not an error.
    expression = "value_json"
    for part in path.split("."):
        expression = f"({expression} or {{}}).get('{part}')"
    return "{{ " + expression + " }}"


def _alert_template(name: str) -> str:
    # Every alert shares one topic; an event entity takes only its own alert's messages (HA
    # ignores a message whose template renders empty).
    return ("{% if value_json.alert == '" + name + "' %}{{ {'event_type': value_json.state, "
            "'matched_text': value_json.matched_text, 'stream': value_json.stream} | tojson }}{% endif %}")


def discovery_messages(config: HomeAssistantConfig, topics: Topics, version: str,
                       alerts: Sequence[str] = ()) -> list[tuple[str, bytes]]:
    device = {
        "identifiers": [f"edgescribe_{topics.device_id}"],
        "name": f"edgescribe {topics.device_id}",
        "manufacturer": "edgescribe",
        "model": "speech-to-text appliance",
        "sw_version": version,
    }
    availability = [{
        "topic": topics.availability,
        "value_template": "{{ 'online' if value == 'online' else 'offline' }}",
        "payload_available": "online",
        "payload_not_available": "offline",
    }]
    messages = []
    for sensor in SENSORS:
        object_id = f"edgescribe_{topics.device_id}_{sensor.key}".replace(".", "_").replace("-", "_")
        payload = {
            "name": sensor.name,
            "unique_id": object_id,
            "object_id": object_id,
            "state_topic": topics.health,
            "value_template": _template(sensor.path),
            "availability": availability,
            "device": device,
        }
        for key, value in (("unit_of_measurement", sensor.unit), ("device_class", sensor.device_class),
                           ("state_class", sensor.state_class)):
            if value:
                payload[key] = value
        messages.append((f"{config.discovery_prefix}/sensor/{object_id}/config",
                         json.dumps(payload, separators=(",", ":")).encode()))
    for name in alerts:  # one event entity per phrase alert (docs/mqtt.md, Alerts)
        object_id = f"edgescribe_{topics.device_id}_alert_{name}".replace(".", "_").replace("-", "_")
        payload = {
            "name": f"Alert {name}",
            "unique_id": object_id,
            "object_id": object_id,
            "state_topic": topics.alert,
            "event_types": ["early", "confirmed", "retracted"],
            "value_template": _alert_template(name),
            "availability": availability,
            "device": device,
        }
        messages.append((f"{config.discovery_prefix}/event/{object_id}/config",
                         json.dumps(payload, separators=(",", ":")).encode()))
    return messages


def enable(config: HomeAssistantConfig, publisher: Publisher, version: str, alerts: Sequence[str] = ()) -> None:
    """Announce the sensors (and an event entity per phrase alert) after every connect and on
    Home Assistant's birth message (retained, so HA also finds them after restarts that send no birth)."""
    messages = discovery_messages(config, publisher.topics, version, alerts)

    def announce() -> None:
        for topic, payload in messages:
            publisher.publish_raw(topic, payload, retain=True)
        log.info("home assistant discovery: announced %d entities under %s/", len(messages), config.discovery_prefix)

    def on_status(payload: bytes) -> None:
        if payload.strip() == b"online":
            announce()

    publisher.add_connect_hook(announce)
    publisher.subscribe(f"{config.discovery_prefix}/status", on_status)
