"""Configuration sections: mqtt, health, homeassistant, prometheus. See schema.py.

The broker password is deliberately not a key: it is read from ``password_file`` or
from a systemd credential (``LoadCredential=``), so the YAML a technician copies
around never carries a secret.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgescribe.daemon.config.schema import setting


@dataclass
class MqttConfig:
    host: str = setting("localhost", "Broker host name or IP address.", example="broker.factory.lan")
    port: int = setting(1883, "Broker TCP port (usually 1883, or 8883 with TLS).", min=1, max=65535)
    protocol: str = setting("5", "MQTT protocol version; 5 saves bandwidth (topic aliases), 3.1.1 suits old brokers.",
                            choices=("3.1.1", "5"))
    client_id: str = setting("", "MQTT client id; empty means 'edgescribe-<device_id>'.")
    keepalive_s: int = setting(
        30,
        "Keepalive interval; the broker publishes 'offline' about 1.5x this long after the device dies.",
        min=2,
        max=3600,
        unit="s",
    )
    topic_prefix: str = setting("edgescribe", "First topic level; topics are <prefix>/<device_id>/...")
    username: str = setting("", "Broker user name; empty connects anonymously.")
    password_file: str = setting(
        "", "File holding the broker password (first line). Never put the password in this YAML.",
        example="/etc/edgescribe/mqtt-password",
    )
    password_credential: str = setting(
        "", "Name of a systemd credential (LoadCredential=) holding the password; read from $CREDENTIALS_DIRECTORY.",
        example="mqtt-password",
    )
    tls: bool = setting(False, "Connect with TLS (verifies the broker certificate against tls_ca_file).")
    tls_ca_file: str = setting("", "CA certificate (PEM) the broker certificate must chain to; empty uses the system CAs.")
    tls_cert_file: str = setting("", "Client certificate (PEM) for brokers requiring certificate authentication.")
    tls_key_file: str = setting("", "Private key (PEM) of tls_cert_file.")
    reconnect_min_s: float = setting(1.0, "First delay before reconnecting after a failure.", min=0.05, max=600, unit="s")
    reconnect_max_s: float = setting(60.0, "Longest delay between reconnect attempts (doubling from the minimum).",
                                     min=0.1, max=3600, unit="s")
    publish_partials: bool = setting(True, "Publish partial (unstable) transcripts, QoS 0, never stored.")
    outbox_max_entries: int = setting(100_000, "Most messages kept while the broker is unreachable; oldest dropped first.",
                                      min=10, max=10_000_000)
    outbox_max_mb: float = setting(64.0, "Most payload bytes kept while the broker is unreachable.", min=0.01, max=100_000,
                                   unit="MiB")
    outbox_max_age_h: float = setting(168.0, "Stored messages older than this are dropped (and reported).", min=0.01,
                                      max=87_600, unit="h")
    drain_rate: float = setting(50.0, "Most stored messages sent per second when catching up after an outage.",
                                min=1, max=100_000, unit="msg/s")
    inflight_window: int = setting(20, "Most QoS 1 messages sent but not yet acknowledged by the broker.", min=1, max=1000)

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if self.reconnect_max_s < self.reconnect_min_s:
            found.append(("reconnect_max_s", "must not be smaller than reconnect_min_s"))
        if self.password_file and self.password_credential:
            found.append(("password_credential", "set either password_file or password_credential, not both"))
        if (self.password_file or self.password_credential) and not self.username:
            found.append(("username", "is required when a password is configured"))
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            found.append(("tls_key_file", "tls_cert_file and tls_key_file go together"))
        if (self.tls_ca_file or self.tls_cert_file) and not self.tls:
            found.append(("tls", "is false but TLS files are configured; set tls: true"))
        if any(c in self.topic_prefix for c in "+#") or not self.topic_prefix.strip("/"):
            found.append(("topic_prefix", "must be non-empty and must not contain '+' or '#'"))
        return found


@dataclass
class HealthConfig:
    interval_s: float = setting(30.0, "Seconds between health snapshots on <prefix>/<device_id>/health.", min=1,
                                max=86_400, unit="s")
    retain: bool = setting(True, "Retain the latest health snapshot so a new dashboard sees it at once.")
    sysfs_root: str = setting("/", "Root under which sys/ and proc/ are read for Jetson figures (tests point it at a copy).")


@dataclass
class HomeAssistantConfig:
    enabled: bool = setting(False, "Publish Home Assistant MQTT discovery for the health figures.")
    discovery_prefix: str = setting("homeassistant", "Home Assistant's discovery topic prefix.")


@dataclass
class PrometheusConfig:
    enabled: bool = setting(False, "Serve the health figures as Prometheus metrics over HTTP.")
    address: str = setting("127.0.0.1", "Address the metrics endpoint listens on (0.0.0.0 for every interface).")
    port: int = setting(9108, "TCP port of the metrics endpoint (/metrics).", min=1, max=65535)
