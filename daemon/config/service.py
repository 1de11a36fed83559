"""Configuration of the daemon itself: where it keeps state, how it reports liveness, logging."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edgescribe.daemon.config.schema import setting

# One MQTT topic level and one Home Assistant object id: no "/", "+", "#", spaces or dots.
DEVICE_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
DEVICE_ID_TEXT = "1-64 letters, digits, '-' or '_', starting with a letter or digit"


@dataclass(frozen=True)
class ServiceConfig:
    state_dir: str = setting(
        "/var/lib/edgescribe",
        "Where the durable MQTT outbox (undelivered transcripts) is kept. systemd's StateDirectory= "
        "creates it; it survives restarts, upgrades and uninstall.",
    )
    cache_dir: str = setting(
        "/var/cache/edgescribe",
        "Where files edgescribe can make again are kept; safe to delete while the service is stopped. "
        "systemd's CacheDirectory= creates it.",
    )
    stall_timeout_s: float = setting(
        60.0,
        "If captured audio stops advancing, or inference has work waiting but finishes nothing, for "
        "this long, the daemon stops its watchdog pings so systemd restarts it (WatchdogSec= later). "
        "An unplugged microphone is not a stall: capture keeps retrying and reports the stream down.",
        min=5,
        max=3600,
        unit="s",
    )
    status_interval_s: float = setting(
        5.0,
        "How often the one-line status shown by `systemctl status edgescribe` is refreshed.",
        min=1,
        max=300,
        unit="s",
    )


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = setting(
        "info",
        "Least severe message logged. debug shows every segment and inference batch.",
    )
    target: Literal["auto", "journald", "stderr"] = setting(
        "auto",
        "auto: the systemd journal with structured fields (STREAM=, UTTERANCE_ID=) when run by "
        "systemd, stderr otherwise. Read with `journalctl -u edgescribe`.",
    )
