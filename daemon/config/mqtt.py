"""Configuration sections: mqtt, health, homeassistant, prometheus. See schema.py.

The broker password is deliberately not a key: it is read from ``password_file`` or
from a systemd credential (``LoadCredential=``), so the YAML a technician copies
around never carries a secret (secrets.py reads it).
"""

from __future__ import annotations

from typing import Literal

from edgescribe.daemon.config.host import Host, readable_by_everyone, unreadable_file
from edgescribe.daemon.config.schema import Section, setting
from edgescribe.daemon.config.secrets import CREDENTIAL_PATTERN, CREDENTIAL_TEXT, password_source, read_first_line
from edgescribe.daemon.config.topics import host_problem, is_loopback, topic_prefix_problem


class MqttConfig(Section):
    host: str = setting("localhost", "Broker host name or IP address.", example="broker.factory.lan")
    port: int = setting(1883, "Broker TCP port (usually 1883, or 8883 with TLS).", min=1, max=65535)
    protocol: Literal["3.1.1", "5"] = setting(
        "5", "MQTT protocol version; 5 saves bandwidth (topic aliases), 3.1.1 suits old brokers.")
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
        "", "Name of a systemd credential (LoadCredential=) holding the password; read from $CREDENTIALS_DIRECTORY. "
        "A plain name, never a path.",
        example="mqtt-password",
        pattern=f"|{CREDENTIAL_PATTERN}",
        pattern_text=CREDENTIAL_TEXT,
    )
    tls: bool = setting(False, "Connect with TLS (verifies the broker certificate against tls_ca_file).")
    tls_ca_file: str = setting("", "CA certificate (PEM) the broker certificate must chain to; empty uses the system CAs.")
    tls_cert_file: str = setting("", "Client certificate (PEM) for brokers requiring certificate authentication.")
    tls_key_file: str = setting("", "Private key (PEM) of tls_cert_file.")
    reconnect_min_s: float = setting(1.0, "First delay before reconnecting after a failure.", min=0.05, max=600, unit="s")
    reconnect_max_s: float = setting(60.0, "Longest delay between reconnect attempts (doubling from the minimum).",
                                     min=0.1, max=3600, unit="s")
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
        for key, problem in (("host", host_problem(self.host)), ("topic_prefix", topic_prefix_problem(self.topic_prefix))):
            if problem:
                found.append((key, problem))
        return found

    def host_problems(self, host: Host) -> list[tuple[str, str]]:
        found = []
        for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
            problem = unreadable_file(getattr(self, key)) if getattr(self, key) else None
            if problem:
                found.append((key, problem))
        # without $CREDENTIALS_DIRECTORY (check-config in a shell) a credential cannot be looked at
        if not (self.password_credential and not host.environ.get("CREDENTIALS_DIRECTORY")):
            source = password_source(self, host.environ)
            try:
                if source is not None:
                    read_first_line(source[1])
            except ValueError as error:
                found.append((source[0].removeprefix("mqtt."), str(error)))
        if self.password_file and host.under_systemd and readable_by_everyone(self.password_file):
            found.append(("password_file", self._world_readable()))
        return found

    def _world_readable(self) -> str:
        return (f"{self.password_file} can be read by every user of this machine; make it readable by root and "
                f"the service only: chown root:edgescribe {self.password_file} && chmod 640 {self.password_file}")

    def warnings(self, host: Host) -> list[tuple[str, str]]:
        found = []
        if self.password_file and not host.under_systemd and readable_by_everyone(self.password_file):
            found.append(("password_file", self._world_readable() + " (the service refuses it when systemd runs it)"))
        if self.password_credential and not host.environ.get("CREDENTIALS_DIRECTORY"):
            found.append(("password_credential", "not checked: $CREDENTIALS_DIRECTORY is set only when systemd "
                                                 "runs the service with LoadCredential=, so only the service can read it"))
        if (self.password_file or self.password_credential) and not self.tls and not is_loopback(self.host):
            found.append(("tls", f"is false, so the password goes to {self.host} unencrypted; set tls: true "
                                  "(port 8883), or use a broker on this machine"))
        return found


class HealthConfig(Section):
    interval_s: float = setting(30.0, "Seconds between health snapshots on <prefix>/<device_id>/health.", min=1,
                                max=86_400, unit="s")
    retain: bool = setting(True, "Retain the latest health snapshot so a new dashboard sees it at once.")
    sysfs_root: str = setting("/", "Root under which sys/ and proc/ are read for Jetson figures (tests point it at a copy).")


class HomeAssistantConfig(Section):
    enabled: bool = setting(False, "Publish Home Assistant MQTT discovery for the health figures.")
    discovery_prefix: str = setting("homeassistant", "Home Assistant's discovery topic prefix.")

    def problems(self) -> list[tuple[str, str]]:
        problem = topic_prefix_problem(self.discovery_prefix)
        return [("discovery_prefix", problem)] if problem else []


class PrometheusConfig(Section):
    enabled: bool = setting(False, "Serve the health figures as Prometheus metrics over HTTP.")
    address: str = setting("127.0.0.1", "Address the metrics endpoint listens on (0.0.0.0 for every interface).")
    port: int = setting(9108, "TCP port of the metrics endpoint (/metrics).", min=1, max=65535)
