"""The rules for names that become MQTT topic levels: one copy, used by every section that has one.

The device id is one topic level and one Home Assistant object id, so no "/", "+", "#",
spaces or dots; the topic prefix and Home Assistant's discovery prefix are one or more
levels, so "/" separates them but the wildcards "+" and "#" (which would turn every
publish into a protocol error) and control characters (NUL ends a string for some
brokers) are refused.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Optional

DEVICE_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
DEVICE_ID_TEXT = "1-64 letters, digits, '-' or '_', starting with a letter or digit"

STREAM_NAME_PATTERN = r"[A-Za-z0-9_-]{1,64}"
STREAM_NAME_TEXT = "1-64 letters, digits, '_' or '-'"

TOPIC_PREFIX_TEXT = "one or more topic levels separated by '/', without '+', '#' or control characters"
_TOPIC_UNSAFE = re.compile(r"[+#\x00-\x1f\x7f]")

HOST_TEXT = "a host name or IP address, without a port (the port is mqtt.port)"
_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9_.])?")


def topic_prefix_problem(prefix: str) -> Optional[str]:
    """``expected ...`` when ``prefix`` cannot begin MQTT topic names, else None."""
    if not prefix.strip("/") or _TOPIC_UNSAFE.search(prefix):
        return f"expected {TOPIC_PREFIX_TEXT}"
    return None


def host_problem(host: str) -> Optional[str]:
    """``expected ...`` when ``host`` is neither a host name nor an IP address (``broker:1883``, ``mqtt://x``)."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    return None if _HOST_NAME.fullmatch(host) else f"expected {HOST_TEXT}"


def is_loopback(host: str) -> bool:
    """True for a broker on this machine (a name that never leaves it, or a loopback address)."""
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
