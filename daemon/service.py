"""The daemon: wires capture -> segmenter -> streaming transcriber -> publisher, and keeps it healthy.

Every component is built here from its config section and handed what it needs; none of
them knows about the others. Events flow one way into ``Service.emit``, which counts them
for health and hands them to the publisher (the one outbound dispatcher).

Start-up order follows what systemd's READY=1 promises: the broker link starts first (its
outbox takes events even while the broker is away), then the model is loaded, then audio
is opened, and only then READY. Shutdown runs the other way so nothing captured is lost:
capture stops, each stream's open utterance is flushed, queued finals are decoded, and
the publisher writes them to the outbox before it closes.
"""

from __future__ import annotations

import collections
import json
import logging
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from edgescribe.daemon.config import Config
from edgescribe.daemon.events import Event, TranscriptEvent
from edgescribe.daemon.health import HealthReporter, HealthSources, InferenceHealth, ServiceInfo, StreamHealth, package_version
from edgescribe.daemon.notify import Notifier, Progress
from edgescribe.daemon.pipeline import StreamPipeline
from edgescribe.daemon.publisher import Publisher
from edgescribe.daemon.scheduler import EngineManager, InferenceScheduler

log = logging.getLogger(__name__)

LATENCY_WINDOW = 200  # finals kept for the latency percentiles in health


@dataclass
class _Counts:
    """What the service saw go out, per stream, for health."""

    partials: collections.Counter = field(default_factory=collections.Counter)
    finals: collections.Counter = field(default_factory=collections.Counter)
    latencies: collections.deque = field(default_factory=lambda: collections.deque(maxlen=LATENCY_WINDOW))
    audio_s: float = 0.0  # audio covered by finals (for the real-time factor)


class Service:
    def __init__(self, config: Config, *, once: bool = False, print_events: bool = False):
        self.config = config
        self.once = once  # stop when every (file) source has ended: demos and tests
        self.print_events = print_events
        self.state_dir = Path(config.service.state_dir)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._counts = _Counts()
        self._started = time.monotonic()
        self.publisher = Publisher.from_config(
            config.mqtt, config.device_id, self.state_dir, health_retain=config.health.retain
        )
        self.engines = EngineManager.from_config(config.models, config.engine, emit=self.emit)
        self.scheduler = InferenceScheduler(
            max_batch=config.engine.max_batch, max_pending_finals=config.transcription.max_pending_finals
        )
        self.streams: dict[str, StreamPipeline] = {}
        self.notifier = Notifier(
            self.progress,
            stall_timeout_s=config.service.stall_timeout_s,
            status_interval_s=config.service.status_interval_s,
        )
        self.health = HealthReporter(
            config.health,
            config.device_id,
            self.state_dir,
            self.publisher.publish_health,
            HealthSources(
                service=self._service_info,
                streams=self._stream_health,
                inference=self._inference_health,
                outbox=self.publisher.outbox.stats,
                mqtt=self.publisher.link.stats,
                messages=self.publisher.stats,
            ),
        )

    # -- the one inbound path for everything that goes out ------------------------------------

    def emit(self, event: Event) -> None:
        if isinstance(event, TranscriptEvent):
            with self._lock:
                if event.kind == "final":
                    self._counts.finals[event.stream] += 1
                    self._counts.latencies.append(event.latency_s)
                    self._counts.audio_s += event.audio_end - event.audio_start
                else:
                    self._counts.partials[event.stream] += 1
        if self.print_events:
            print(json.dumps({"type": type(event).__name__, **asdict(event)}, ensure_ascii=False), flush=True)
        self.publisher.publish(event)

    # -- life cycle ---------------------------------------------------------------------------

    def run(self) -> int:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.publisher.start()
        try:
            self.notifier.status("loading model")
            self.engines.start()
            self.scheduler.start()
            self.notifier.status("opening audio")
            for stream_config in self.config.streams:
                self._start_stream(stream_config)
            self._start_optional_endpoints()
            self.health.start()
            summary = self._summary()
            log.info("ready: %s", summary)
            self.notifier.ready(summary)
            self._wait()
        finally:
            self._shutdown()
        return 0

    def stop(self) -> None:
        self._stop.set()

    def _start_stream(self, stream_config) -> None:
        c = self.config
        pipeline = StreamPipeline.build(
            stream_config, c.capture, c.vad, c.segmenter, c.transcription, self.scheduler, self.engines, self.emit
        )
        pipeline.start()
        self.streams[pipeline.name] = pipeline

    def _start_optional_endpoints(self) -> None:
        if self.config.homeassistant.enabled:
            from edgescribe.daemon import homeassistant

            homeassistant.enable(self.config.homeassistant, self.publisher, package_version())
        if self.config.prometheus.enabled:
            from edgescribe.daemon import prometheus

            prometheus.serve(self.config.prometheus, self.health)

    def _wait(self) -> None:
        while not self._stop.wait(0.2):
            if self.once and not any(s.running for s in self.streams.values()):
                log.info("every source has ended; stopping")
                return

    def _shutdown(self) -> None:
        self.notifier.stopping()
        # Audio first: each consumer then drains what is buffered and flushes its open utterance.
        for stream in self.streams.values():
            stream.stop_capture()
        for stream in self.streams.values():
            if not stream.join(timeout=10):
                log.warning("stream %s: pipeline did not finish within 10 s; aborting it", stream.name)
                stream.abort()
        self.scheduler.stop(drain=True)
        for stream in self.streams.values():
            stream.transcriber.close()
        self.engines.stop()
        self.health.stop()
        self.publisher.stop()  # clean stop: availability "stopped"; finals already in the outbox

    # -- what health and the watchdog see ----------------------------------------------------

    def progress(self) -> Progress:
        stats = [s.capture.stats() for s in self.streams.values()]
        finals, partials = self.scheduler.pending()
        return Progress(
            # Reopen attempts count as motion: a missing microphone is a stream reported down,
            # not a hang that a restart would cure.
            audio=sum(s.blocks + s.reopens for s in stats),
            inference_done=self.scheduler.batches,
            inference_waiting=finals + partials,
            summary=self._summary(),
        )

    def _summary(self) -> str:
        up = sum(1 for s in self.streams.values() if s.capture.stats().state == "up")
        model = self.engines.current
        backend = getattr(model.runner, "name", "?") if model is not None else "?"
        name = getattr(model, "name", "?") if model is not None else "?"
        return f"{up}/{len(self.streams)} streams up, {name} on {backend}"

    def _service_info(self) -> ServiceInfo:
        model = self.engines.current
        runner = getattr(model, "runner", None)
        return ServiceInfo(
            version=package_version(),
            model=getattr(model, "name", None),
            backend=getattr(runner, "name", None),
            engine_key=getattr(runner, "engine_key", None),
        )

    def _stream_health(self) -> dict[str, StreamHealth]:
        with self._lock:
            finals, partials = dict(self._counts.finals), dict(self._counts.partials)
        health = {}
        for name, stream in self.streams.items():
            stats = stream.capture.stats()
            health[name] = StreamHealth(
                state=stats.state,
                level_dbfs=stats.level_dbfs if stats.blocks else None,
                xruns=stats.xruns,
                dropped_audio_s=round(stats.dropped_s, 3),
                utterances=finals.get(name, 0),
                partials=partials.get(name, 0),
                finals=finals.get(name, 0),
                speculative_finals=stream.transcriber.speculation_counts(),
            )
        return health

    def _inference_health(self) -> InferenceHealth:
        with self._lock:
            latencies = sorted(self._counts.latencies)
            audio_s = self._counts.audio_s
        finals, partials = self.scheduler.pending()
        busy_s = self.scheduler.busy_seconds
        return InferenceHealth(
            real_time_factor=round(busy_s / audio_s, 4) if audio_s > 0 else None,
            latency_p50_s=_percentile(latencies, 0.50),
            latency_p95_s=_percentile(latencies, 0.95),
            queue_depth=finals + partials,
        )


def _percentile(sorted_values: list[float], q: float) -> Optional[float]:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, int(round(q * (len(sorted_values) - 1))))
    return round(sorted_values[index], 3)


def install_signal_handlers(service: Service) -> None:
    """SIGTERM (systemctl stop) and SIGINT (Ctrl-C) both mean: stop cleanly, lose nothing."""

    def handle(signum, _frame):
        log.info("received %s; stopping", signal.Signals(signum).name)
        service.stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
