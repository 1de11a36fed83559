"""Periodic health snapshot: what a fleet dashboard needs to tell a healthy device from a sick one.

The reporter owns no pipeline state: the service plugs in one callable per section
(streams, inference, outbox, MQTT link, publisher counters) and the reporter adds host
figures (CPU, memory, free disk of the state directory) and, on a Jetson, GPU load and
clock, temperatures, power rails and shared GPU memory (daemon/sysfs.py). A section
whose provider fails is reported as null with one log line, never a missing snapshot.
The payload layout is docs/schemas/health.json.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Optional

import psutil

from edgescribe.daemon.config.mqtt import HealthConfig
from edgescribe.daemon.mqtt_link import LinkStats
from edgescribe.daemon.outbox import OutboxStats
from edgescribe.daemon.publisher import iso_utc
from edgescribe.daemon.streaming import DropCounts, SpeculationCounts
from edgescribe.daemon.sysfs import read_jetson

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ServiceInfo:
    version: str
    model: Optional[str] = None
    backend: Optional[str] = None
    engine_key: Optional[str] = None  # TensorRT engine build key (None with ONNX Runtime)


@dataclass(frozen=True)
class StreamHealth:
    state: str  # "up" | "down" | "starting"
    level_dbfs: Optional[float]  # input level over the last interval; None before any audio
    xruns: int
    dropped_audio_s: float
    partials: int
    finals: int
    # final decodes started at a pause, and what became of them
    speculative_finals: SpeculationCounts
    snr_db: Optional[float]  # speech over floor, as the segmenter estimates it; None until both were heard
    dropped: DropCounts  # what the transcriber's gates kept out of finals
    discarded_bursts: int  # sounds shorter than segmenter.min_speech_s, never transcribed
    length_cuts: int  # utterances cut at segmenter.max_utterance_s


@dataclass(frozen=True)
class InferenceHealth:
    real_time_factor: Optional[float]  # compute seconds per audio second over the last interval
    latency_p50_s: Optional[float]
    latency_p95_s: Optional[float]
    queue_depth: int


@dataclass
class HealthSources:
    """One callable per section; each is called once per snapshot from the reporter thread."""

    service: Callable[[], ServiceInfo] = field(default_factory=lambda: (lambda: ServiceInfo(package_version())))
    streams: Callable[[], dict[str, StreamHealth]] = dict
    inference: Callable[[], Optional[InferenceHealth]] = lambda: None
    outbox: Callable[[], Optional[OutboxStats]] = lambda: None
    mqtt: Callable[[], Optional[LinkStats]] = lambda: None
    messages: Callable[[], Any] = lambda: None  # daemon.publisher.PublisherStats
    alerts: Callable[[], dict[str, Any]] = dict  # alert name -> daemon.alerts.AlertCounts


def package_version() -> str:
    try:
        return metadata.version("edgescribe")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _iso(posix: Optional[float]) -> Optional[str]:
    return None if posix is None else iso_utc(posix)


def host_figures(state_dir: Path) -> dict:
    memory = psutil.virtual_memory()
    try:
        disk = shutil.disk_usage(state_dir)
        disk_free, disk_total = round(disk.free / 2**20, 1), round(disk.total / 2**20, 1)
    except OSError:
        disk_free = disk_total = None
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),  # since the previous snapshot
        "load_1m": round(os.getloadavg()[0], 2),
        "memory_total_mb": round(memory.total / 2**20, 1),
        "memory_available_mb": round(memory.available / 2**20, 1),
        "memory_used_percent": memory.percent,
        "state_dir": str(state_dir),
        "disk_free_mb": disk_free,
        "disk_total_mb": disk_total,
    }


class HealthReporter:
    def __init__(self, config: HealthConfig, device_id: str, state_dir: Path, publish: Callable[[dict], None],
                 sources: HealthSources = HealthSources(), clock: Callable[[], float] = time.time):
        self.config = config
        self.device_id = device_id
        self.state_dir = Path(state_dir)
        self.publish = publish
        self.sources = sources
        self._clock = clock
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._latest: Optional[dict] = None
        self._lock = threading.Lock()
        psutil.cpu_percent(interval=None)  # prime: the first real reading covers the first interval

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)

    @property
    def latest(self) -> Optional[dict]:
        """The last snapshot taken (for the Prometheus endpoint)."""
        with self._lock:
            return self._latest

    def _run(self) -> None:
        while not self._stop.wait(self.config.interval_s):
            snapshot = self.snapshot()
            try:
                self.publish(snapshot)
            except Exception:
                log.exception("publishing the health snapshot failed")

    def snapshot(self) -> dict:
        snapshot = {
            "schema": SCHEMA_VERSION,
            "device": self.device_id,
            "time": _iso(self._clock()),
            "uptime_s": round(time.monotonic() - self._started, 1),
            "service": self._section("service", lambda: asdict(self.sources.service())),
            "streams": self._section("streams", lambda: {name: asdict(stats)
                                                         for name, stats in self.sources.streams().items()}) or {},
            "inference": self._section("inference", lambda: _asdict_or_none(self.sources.inference())),
            "outbox": self._section("outbox", lambda: _outbox(self.sources.outbox())),
            "mqtt": self._section("mqtt", lambda: _mqtt(self.sources.mqtt())),
            "messages": self._section("messages", lambda: _asdict_or_none(self.sources.messages())),
            "alerts": self._section("alerts", lambda: {name: asdict(counts)
                                                       for name, counts in self.sources.alerts().items()}) or {},
            "host": self._section("host", lambda: host_figures(self.state_dir)),
            "jetson": self._section("jetson", lambda: _asdict_or_none(read_jetson(Path(self.config.sysfs_root)))),
        }
        with self._lock:
            self._latest = snapshot
        return snapshot

    def _section(self, name: str, read: Callable[[], Any]) -> Any:
        try:
            return read()
        except Exception as error:  # one bad provider must not cost the whole snapshot
            log.warning("health section %s unavailable: %s", name, error)
            return None


def _asdict_or_none(value) -> Optional[dict]:
    return None if value is None else asdict(value)


def _outbox(stats: Optional[OutboxStats]) -> Optional[dict]:
    if stats is None:
        return None
    return {
        "depth": stats.depth,
        "bytes": stats.bytes,
        "oldest_age_s": None if stats.oldest_age_s is None else round(stats.oldest_age_s, 1),
        "dropped_size_total": stats.dropped_size_total,
        "dropped_age_total": stats.dropped_age_total,
        "write_errors": stats.write_errors,
        "last_error": stats.last_error,
        "next_seq": stats.next_seq,
    }


def _mqtt(stats: Optional[LinkStats]) -> Optional[dict]:
    if stats is None:
        return None
    return {
        "state": stats.state,
        "broker": stats.broker,
        "connected_since": _iso(stats.connected_since),
        "reconnects": stats.reconnects,
        "failed_attempts": stats.failed_attempts,
        "last_error": stats.last_error,
        "last_error_time": _iso(stats.last_error_time),
    }
