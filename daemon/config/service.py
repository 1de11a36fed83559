"""Configuration of the daemon itself: where it keeps state, how it reports liveness, logging.

Files edgescribe can make again (TensorRT engines) live in ``engine.engine_dir``.
"""

from __future__ import annotations

from typing import Literal

from edgescribe.daemon.config.schema import Section, setting


class ServiceConfig(Section):
    state_dir: str = setting(
        "/var/lib/edgescribe",
        "Where the durable MQTT outbox (undelivered transcripts) is kept. systemd's StateDirectory= "
        "creates it; it survives restarts, upgrades and uninstall.",
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


class LoggingConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = setting(
        "info",
        "Least severe message logged. debug shows every segment and inference batch.",
    )
    target: Literal["auto", "journald", "stderr"] = setting(
        "auto",
        "auto: the systemd journal with structured fields (STREAM=, UTTERANCE_ID=) when run by "
        "systemd, stderr otherwise. Read with `journalctl -u edgescribe`.",
    )
