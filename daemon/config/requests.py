"""Configuration section: requests (remote operations over MQTT, daemon/requests.py).

Off by default: a request can change the configuration, switch the model or restart the
daemon, so it is accepted only from a broker that knows who is talking (``auth_problem``:
the daemon must log in with a password or a client certificate, and the broker's ACL must
let only the fleet operator publish to ``<prefix>/+/request/#``; docs/mqtt.md).
"""

from __future__ import annotations

from typing import Optional

from edgescribe.daemon.config.mqtt import MqttConfig
from edgescribe.daemon.config.schema import Section, setting


class RequestsConfig(Section):
    enabled: bool = setting(
        False,
        "Answer requests on <prefix>/<device_id>/request/<operation> (health_check, info, config/get, config/set, "
        "model/switch, stream/pause, stream/resume, log_level, restart). Needs an authenticated broker connection.",
    )
    max_payload_bytes: int = setting(16_384, "Larger request payloads are refused with an error response.",
                                     min=64, max=1_048_576, unit="bytes")
    rate_per_s: float = setting(2.0, "Requests accepted per second on average (token bucket); the rest are refused.",
                                min=0.01, max=1000, unit="/s")
    burst: int = setting(10, "Requests accepted at once before the rate applies (the bucket's size).", min=1, max=10_000)
    rollback_after_s: float = setting(
        120.0,
        "After a config/set, the daemon must be healthy (every stream up, model loaded, broker connected) within "
        "this long, counted from the change (a restart included), or it restores the previous configuration. "
        "Raise it where a restart builds TensorRT engines.",
        min=1, max=86_400, unit="s",
    )

    def auth_problem(self, mqtt: MqttConfig) -> Optional[str]:
        """Why requests may not be enabled with this broker connection, or None."""
        if not self.enabled or (mqtt.username and (mqtt.password_file or mqtt.password_credential)) or (
                mqtt.tls and mqtt.tls_cert_file):
            return None
        return ("requests can change this device, so they need an authenticated broker connection: set "
                "mqtt.username with mqtt.password_file (or mqtt.password_credential), or mqtt.tls with "
                "mqtt.tls_cert_file")
