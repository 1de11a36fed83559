"""The whole configuration: one YAML file, one dataclass per section.

``Config`` below is the one place that lists the sections. To add one, declare its
dataclass in ``daemon/config/<section>.py`` (see ``schema.py``), add one field here, and
regenerate the reference: ``python -m edgescribe.daemon.config.reference --write``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

from edgescribe.daemon.config.audio import CaptureOptions, SegmenterOptions, StreamConfig, VadOptions
from edgescribe.daemon.config.engine import EngineConfig
from edgescribe.daemon.config.loader import InvalidConfig, load_file
from edgescribe.daemon.config.models import ModelsConfig
from edgescribe.daemon.config.mqtt import HealthConfig, HomeAssistantConfig, MqttConfig, PrometheusConfig
from edgescribe.daemon.config.schema import setting
from edgescribe.daemon.config.service import DEVICE_ID_PATTERN, DEVICE_ID_TEXT, LoggingConfig, ServiceConfig
from edgescribe.daemon.config.transcription import TranscriptionConfig

DEFAULT_PATH = "/etc/edgescribe/config.yaml"


def _default_streams() -> list[StreamConfig]:
    return [StreamConfig(name="mic1", device="default")]


@dataclass(frozen=True)
class Config:
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
    vad: VadOptions = setting(default_factory=VadOptions, help="Voice activity detection: what counts as speech.")
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

    # Keys a technician's older file may still use -> the one key that holds the setting now
    # (one knob per concept). A file using one fails with a line naming the new key.
    moved_keys: ClassVar[dict[str, str]] = {
        "engine.package_dir": "models.serving",
        # the segmenter's gate was always the one that decided; the transcriber's rarely saw a short utterance
        "transcription.min_speech_s": "segmenter.min_speech_s",
        # the segmenter's update pace and the partial pace were one setting in two places
        "segmenter.update_interval_s": "transcription.partial_interval_s",
    }

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if not self.streams:
            found.append(("streams", "needs at least one stream (a device or a file)"))
        # Stream names are MQTT topic levels: two streams with one name would publish as one.
        first_index: dict[str, int] = {}
        for index, stream in enumerate(self.streams):
            if stream.name in first_index:
                earlier = f"streams[{first_index[stream.name]}]"
                found.append((f"streams[{index}].name", f"{stream.name!r} is already the name of {earlier}; names must be unique"))
            first_index.setdefault(stream.name, index)
        return found


def load_config(path: str | os.PathLike = DEFAULT_PATH) -> Config:
    """The validated configuration in ``path``; raises ``InvalidConfig`` (exit status 2) listing every problem."""
    return load_file(path, Config)


__all__ = ["Config", "DEFAULT_PATH", "InvalidConfig", "load_config"]
