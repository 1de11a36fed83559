"""The whole configuration: one YAML file, one frozen pydantic model per section.

``Config`` below is the one place that lists the sections. To add one, declare its model
in ``daemon/config/<section>.py`` (see ``schema.py``), add one field here, and regenerate
the reference: ``python -m edgescribe.daemon.config.reference --write``.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Callable, ClassVar

from edgescribe.daemon.config.alerts import AlertsConfig
from edgescribe.daemon.config.audio import CaptureOptions, SegmenterOptions, StreamConfig, VadOptions
from edgescribe.daemon.config.engine import EngineConfig
from edgescribe.daemon.config.errors import InvalidConfig
from edgescribe.daemon.config.host import Host
from edgescribe.daemon.config.models import ALIGNER, ModelsConfig
from edgescribe.daemon.config.mqtt import HealthConfig, HomeAssistantConfig, MqttConfig, PrometheusConfig
from edgescribe.daemon.config.overlay import load_with_overlay
from edgescribe.daemon.config.requests import RequestsConfig
from edgescribe.daemon.config.schema import Section, setting
from edgescribe.daemon.config.service import LoggingConfig, ServiceConfig
from edgescribe.daemon.config.sparkplug import SparkplugConfig
from edgescribe.daemon.config.topics import DEVICE_ID_PATTERN, DEVICE_ID_TEXT
from edgescribe.daemon.config.transcription import TranscriptionConfig

DEFAULT_PATH = "/etc/edgescribe/config.yaml"
# Keys a running daemon applies when its file is reloaded (SIGHUP, `systemctl reload`); a
# change to any other key takes a restart, and the reload names it in one log line.
LIVE_KEYS = ("logging.level",)

log = logging.getLogger(__name__)


def _default_streams() -> list[StreamConfig]:
    return [StreamConfig(name="mic1", device="default")]


def _same_pcm(device: str) -> str:
    """One spelling per ALSA device: plughw:1,0 opens the same hardware as hw:1,0."""
    return re.sub(r"^plughw:", "hw:", device.replace(" ", ""))


class Config(Section):
    device_id: str = setting(
        help="Names this device in every MQTT topic and in Home Assistant; unique per site. "
        "The installer sets it from the host name.",
        pattern=DEVICE_ID_PATTERN,
        pattern_text=DEVICE_ID_TEXT,
        example="line3-press",
    )
    service: ServiceConfig = setting(default_factory=ServiceConfig, help="The daemon itself.")
    logging: LoggingConfig = setting(default_factory=LoggingConfig, help="Log level and destination.")
    streams: list[StreamConfig] = setting(
        default_factory=_default_streams,
        help="One entry per microphone (or WAV file). All streams are transcribed together in one batch.",
    )
    capture: CaptureOptions = setting(default_factory=CaptureOptions, help="How audio is read from devices.")
    vad: VadOptions = setting(
        default_factory=VadOptions, help="Voice activity detection: the detector, and which of its scores count as speech."
    )
    segmenter: SegmenterOptions = setting(
        default_factory=SegmenterOptions, help="How speech is cut into utterances for the transcriber."
    )
    transcription: TranscriptionConfig = setting(
        default_factory=TranscriptionConfig, help="What Whisper is asked for and which results are kept."
    )
    models: ModelsConfig = setting(
        default_factory=ModelsConfig, help="Which model package serves from start-up, and which larger one replaces it."
    )
    engine: EngineConfig = setting(
        default_factory=EngineConfig, help="How the models run: inference backend and TensorRT engines."
    )
    mqtt: MqttConfig = setting(default_factory=MqttConfig, help="The broker transcripts and health are published to.")
    health: HealthConfig = setting(default_factory=HealthConfig, help="Periodic health reports.")
    homeassistant: HomeAssistantConfig = setting(
        default_factory=HomeAssistantConfig, help="Home Assistant MQTT discovery."
    )
    prometheus: PrometheusConfig = setting(default_factory=PrometheusConfig, help="Prometheus metrics endpoint.")
    sparkplug: SparkplugConfig = setting(
        default_factory=SparkplugConfig, help="Sparkplug B edge node for SCADA (docs/sparkplug.md)."
    )
    alerts: AlertsConfig = setting(default_factory=AlertsConfig, help="Phrase alerts (not a safety function).")
    requests: RequestsConfig = setting(
        default_factory=RequestsConfig, help="Remote requests over MQTT (off by default; docs/mqtt.md#requests)."
    )

    # Keys a technician's older file may still use -> the one key that holds the setting now
    # (one knob per concept). A file using one fails with a line naming the new key.
    moved_keys: ClassVar[dict[str, str]] = {
        "engine.package_dir": "models.serving",
        # the segmenter's gate was always the one that decided; the transcriber's rarely saw a short utterance
        "transcription.min_speech_s": "segmenter.min_speech_s",
        # the segmenter's update pace and the partial pace were one setting in two places
        "segmenter.update_interval_s": "transcription.partial_interval_s",
        # partials were switched in two places; off now means not even decoded
        "mqtt.publish_partials": "transcription.partials",
        # the thresholds interpret the detector's scores, so they sit with the detector
        "segmenter.threshold": "vad.threshold",
        "segmenter.off_threshold": "vad.off_threshold",
        # read by nothing; the engines are the only files edgescribe keeps as cache
        "service.cache_dir": "engine.engine_dir",
    }

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if not self.streams:
            found.append(("streams", "needs at least one stream (a device or a file)"))
        # Stream names are MQTT topic levels: two streams with one name would publish as one.
        # A capture device opens once: the second stream on it would fail as busy.
        for key, value_of in (("name", lambda s: s.name), ("device", lambda s: _same_pcm(s.device) if s.device else None)):
            first_index: dict[str, int] = {}
            for index, stream in enumerate(self.streams):
                value = value_of(stream)
                if value is None:
                    continue
                if value in first_index:
                    earlier = f"streams[{first_index[value]}]"
                    found.append((f"streams[{index}].{key}",
                                  f"{getattr(stream, key)!r} is already the {key} of {earlier}; each stream needs its own"))
                first_index.setdefault(value, index)
        found += [(f"alerts.{key}", message) for key, message in self.alerts.unknown_streams([s.name for s in self.streams])]
        auth_problem = self.requests.auth_problem(self.mqtt)
        if auth_problem:
            found.append(("requests.enabled", auth_problem))
        return found

    def host_problems(self, host: Host) -> list[tuple[str, str]]:
        # Refused up front: otherwise every final would go out without the words this key asks for.
        if not self.transcription.word_timestamps:
            return []
        return [("transcription.word_timestamps",
                 f"is true but model package {package} has no word timing ({ALIGNER}); re-export it with: "
                 f"edgescribe export --source <model> --out {package} (or set word_timestamps: false)")
                for package in self.models.without_aligner()]


def load_config(
    path: str | os.PathLike = DEFAULT_PATH,
    *,
    check_host: bool = True,
    warn: Callable[[str], None] = log.warning,
) -> Config:
    """The validated configuration in ``path``; raises ``InvalidConfig`` (exit status 2) listing
    every problem. check-config and run load it this way, so they agree. ``check_host``
    also checks the files it names on this machine (tools that only read a value, before
    those files exist, turn it off). Warnings (one line each) go to ``warn``. Remote changes
    (config/set) kept in the state directory are merged over the file (overlay.py)."""
    return load_with_overlay(path, Config, host=Host() if check_host else None, warn=warn)


__all__ = ["Config", "DEFAULT_PATH", "Host", "InvalidConfig", "LIVE_KEYS", "Section", "load_config"]
