"""Prometheus endpoint serving the same figures as the health snapshot.

A custom collector renders the reporter's latest snapshot at scrape time, so the
endpoint costs nothing between scrapes and never disagrees with the MQTT health topic.
"""

from __future__ import annotations

import logging
from typing import Iterator, Optional

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from edgescribe.daemon.config.mqtt import PrometheusConfig
from edgescribe.daemon.health import HealthReporter
from edgescribe.engines.errors import ConfigError

log = logging.getLogger(__name__)

_MQTT_STATES = ("connected", "connecting", "disconnected", "stopped")


def _gauge(name: str, doc: str, value, labels: Optional[dict] = None) -> Optional[Metric]:
    if value is None:
        return None
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), float(value))
    return family


class HealthCollector:
    def __init__(self, reporter: HealthReporter):
        self.reporter = reporter

    def collect(self) -> Iterator[Metric]:
        snapshot = self.reporter.latest or self.reporter.snapshot()
        yield from (m for m in self._metrics(snapshot) if m is not None)

    def _metrics(self, s: dict) -> Iterator[Optional[Metric]]:
        yield _gauge("edgescribe_uptime_seconds", "Seconds since the daemon started", s["uptime_s"])
        mqtt = s.get("mqtt") or {}
        if mqtt:
            state = GaugeMetricFamily("edgescribe_mqtt_state", "1 for the broker connection's current state",
                                      labels=["state"])
            for name in _MQTT_STATES:
                state.add_metric([name], 1.0 if mqtt["state"] == name else 0.0)
            yield state
            yield CounterMetricFamily("edgescribe_mqtt_reconnects", "Reconnections to the broker", mqtt["reconnects"])
            yield CounterMetricFamily("edgescribe_mqtt_failed_attempts", "Failed connection attempts",
                                      mqtt["failed_attempts"])
        outbox = s.get("outbox") or {}
        if outbox:
            yield _gauge("edgescribe_outbox_depth", "Messages waiting in the outbox", outbox["depth"])
            yield _gauge("edgescribe_outbox_oldest_age_seconds", "Age of the oldest waiting message",
                         outbox["oldest_age_s"])
            dropped = CounterMetricFamily("edgescribe_outbox_dropped", "Messages dropped at the outbox bounds",
                                          labels=["reason"])
            dropped.add_metric(["size"], outbox["dropped_size_total"])
            dropped.add_metric(["age"], outbox["dropped_age_total"])
            yield dropped
            yield CounterMetricFamily("edgescribe_outbox_write_errors", "Failed outbox writes (disk full...)",
                                      outbox["write_errors"])
        streams = s.get("streams") or {}
        for key, doc in (("level_dbfs", "Input level (dBFS)"), ("xruns", "Capture overruns"),
                         ("dropped_audio_s", "Audio lost before inference (s)"),
                         ("partials", "Partial transcripts"), ("finals", "Final transcripts"),
                         ("snr_db", "Speech over the floor, as the segmenter estimates it (dB)")):
            family = GaugeMetricFamily(f"edgescribe_stream_{key}", doc, labels=["stream"])
            for name, stream in streams.items():
                if stream.get(key) is not None:
                    family.add_metric([name], float(stream[key]))
            yield family
        up = GaugeMetricFamily("edgescribe_stream_up", "1 while the stream captures audio, else 0", labels=["stream"])
        for name, stream in streams.items():
            up.add_metric([name], 1.0 if stream.get("state") == "up" else 0.0)
        yield up
        speculative = CounterMetricFamily(
            "edgescribe_stream_speculative_finals",
            "Final decodes started at a pause (started), used as the final (reused), thrown away (discarded)",
            labels=["stream", "outcome"],
        )
        for name, stream in streams.items():
            for outcome, count in (stream.get("speculative_finals") or {}).items():
                speculative.add_metric([name, outcome], count)
        yield speculative
        dropped = CounterMetricFamily(
            "edgescribe_stream_dropped",
            "What the live path kept out of finals, by rule: no_speech and compression_ratio (windows), "
            "repeated_words (words), empty_finals and min_speech (utterances); length_cuts counts cuts",
            labels=["stream", "rule"],
        )
        rescued = CounterMetricFamily(
            "edgescribe_stream_rescued",
            "Windows of several seconds of detected speech that a gate rejected at first and a retry kept, "
            "by retry: hotter (a higher temperature) or beam (beam search after every temperature failed)",
            labels=["stream", "retry"],
        )
        for name, stream in streams.items():
            rules = dict(stream.get("dropped") or {})
            for retry in ("hotter", "beam"):
                rescued.add_metric([name, retry], rules.pop(f"rescued_{retry}", 0))
            rules.update(min_speech=stream.get("discarded_bursts", 0), length_cuts=stream.get("length_cuts", 0))
            for rule, count in rules.items():
                dropped.add_metric([name, rule], count)
        yield dropped
        yield rescued
        alerts = CounterMetricFamily("edgescribe_alerts", "Phrase alerts by name and state (early, confirmed, "
                                     "retracted)", labels=["alert", "state"])
        for name, counts in (s.get("alerts") or {}).items():
            for state, count in counts.items():
                alerts.add_metric([name, state], count)
        yield alerts
        inference = s.get("inference") or {}
        for key, doc in (("real_time_factor", "Compute seconds per audio second"),
                         ("latency_p50_s", "Transcript latency p50 (s)"), ("latency_p95_s", "Transcript latency p95 (s)"),
                         ("queue_depth", "Windows waiting for inference")):
            yield _gauge(f"edgescribe_inference_{key}", doc, inference.get(key))
        host = s.get("host") or {}
        for key, doc in (("cpu_percent", "Host CPU use (%)"), ("memory_available_mb", "Available memory (MB)"),
                         ("disk_free_mb", "Free disk of the state directory (MB)")):
            yield _gauge(f"edgescribe_host_{key}", doc, host.get(key))
        jetson = s.get("jetson") or {}
        if jetson:
            yield _gauge("edgescribe_gpu_load_percent", "GPU load (%)", jetson["gpu_load_percent"])
            yield _gauge("edgescribe_gpu_freq_mhz", "GPU clock (MHz)", jetson["gpu_freq_mhz"])
            yield _gauge("edgescribe_gpu_shared_memory_mb", "Memory mapped by the GPU driver (MB)",
                         jetson["gpu_shared_memory_mb"])
            temperature = GaugeMetricFamily("edgescribe_temperature_celsius", "Thermal zone temperature",
                                            labels=["zone"])
            for zone, value in jetson["temperatures_c"].items():
                temperature.add_metric([zone], value)
            yield temperature
            power = GaugeMetricFamily("edgescribe_rail_power_milliwatts", "Power rail", labels=["rail"])
            for rail in jetson["power_rails"]:
                power.add_metric([rail["name"]], rail["power_mw"])
            yield power


def serve(config: PrometheusConfig, reporter: HealthReporter):
    """Start the /metrics endpoint in a daemon thread; returns (server, thread) for shutdown."""
    registry = CollectorRegistry()
    registry.register(HealthCollector(reporter))
    try:
        server, thread = start_http_server(config.port, addr=config.address, registry=registry)
    except OSError as error:
        raise ConfigError(f"prometheus.port: cannot listen on {config.address}:{config.port}: "
                          f"{error.strerror or error}") from None
    log.info("prometheus metrics on http://%s:%d/metrics", config.address, config.port)
    return server, thread
