"""The daemon: wires capture -> segmenter -> streaming transcriber -> publisher, and keeps it healthy.

Every component is built here from its config section and handed what it needs; none of
them knows about the others. Events flow one way into ``Service.emit``, which only queues
them for the one dispatcher thread (daemon/dispatcher.py): capture and inference threads
never touch a disk or a socket. The dispatcher thread counts them for health and hands
them to the publisher, which writes finals and events to the outbox and queues them for
MQTT.

Start-up order follows what systemd's READY=1 promises: the broker link starts first (its
outbox takes events even while the broker is away), then the model is loaded, then audio
is opened, and READY is sent once every stream is up or reported down with its reason.
Shutdown runs the other way so nothing captured is lost: capture stops, each stream's
open utterance is flushed, queued finals are decoded, the dispatcher hands everything to
the publisher, and the publisher delivers or stores it before it closes.

SIGHUP re-reads the configuration file. An invalid file is rejected with the same lines
``check-config`` prints and the daemon runs on unchanged. Of a valid file, the keys in
``LIVE_KEYS`` take effect at once; every other changed key is named in one log line
saying a restart is needed.
"""

from __future__ import annotations

import collections
import json
import logging
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

from edgescribe.daemon import chinese_script, homeassistant
from edgescribe.daemon.alerts import AlertTracker
from edgescribe.daemon.config import LIVE_KEYS, Config, load_config
from edgescribe.daemon.config.overlay import PendingChange, changed_keys
from edgescribe.daemon.dispatcher import Dispatcher
from edgescribe.daemon.events import Event, StreamStateEvent, TranscriptEvent
from edgescribe.daemon.health import HealthReporter, HealthSources, InferenceHealth, ServiceInfo, StreamHealth, package_version
from edgescribe.daemon.notify import Notifier, Progress
from edgescribe.daemon.pipeline import StreamPipeline
from edgescribe.daemon.publisher import Publisher, PublisherStats
from edgescribe.daemon.requests import RequestHandler
from edgescribe.daemon.scheduler import EngineManager, InferenceScheduler
from edgescribe.daemon.sparkplug.edge_node import SparkplugEdgeNode
from edgescribe.engines.errors import EdgescribeError

log = logging.getLogger(__name__)

LATENCY_WINDOW = 200  # finals kept for the latency percentiles in health
STREAM_OPEN_TIMEOUT_S = 15.0  # READY waits at most this long for every stream to be up or down
# EX_TEMPFAIL: the unit's Restart=on-failure starts the daemon again (restart request, config/set)
RESTART_EXIT_STATUS = 75


@dataclass
class _Counts:
    """What the service saw go out, per stream, for health."""

    partials: collections.Counter = field(default_factory=collections.Counter)
    finals: collections.Counter = field(default_factory=collections.Counter)
    latencies: collections.deque = field(default_factory=lambda: collections.deque(maxlen=LATENCY_WINDOW))
    audio_s: float = 0.0  # audio covered by finals (for the real-time factor)


class Service:
    def __init__(self, config: Config, *, config_path: Optional[str] = None, once: bool = False,
                 print_events: bool = False):
        self.config = config
        self.config_path = config_path  # re-read on SIGHUP
        self.once = once  # stop when every (file) source has ended: demos and tests
        self.print_events = print_events
        self.state_dir = Path(config.service.state_dir)
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._lock = threading.Lock()
        self._counts = _Counts()
        self._stream_details: dict[str, str] = {}  # the last up/down detail of each stream (for READY)
        self._started = time.monotonic()
        self.exit_status = 0
        self.paused: set[str] = set()  # streams stopped by a stream/pause request
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # transcripts: private
        self.publisher = Publisher.from_config(
            config.mqtt, config.device_id, self.state_dir, health_retain=config.health.retain
        )
        self.dispatcher = Dispatcher(self._dispatch, idle=self.publisher.maintain)
        # Sparkplug B: one more consumer of the dispatcher's events, on its own connection (docs/sparkplug.md)
        self.sparkplug: Optional[SparkplugEdgeNode] = None
        if config.sparkplug.enabled:
            self.sparkplug = SparkplugEdgeNode.from_config(config.sparkplug, config.mqtt, config.device_id,
                                                           [s.name for s in config.streams], self.state_dir)
        # phrase alerts match on the dispatcher thread, right behind the transcript event that raised them
        self.alerts = AlertTracker(config.alerts.rules, chinese_script.converter(config.transcription.chinese_script))
        self.engines = EngineManager.from_config(config.models, config.engine, emit=self.emit)
        self.scheduler = InferenceScheduler(
            max_batch=config.engine.max_batch, max_pending_finals=config.transcription.max_pending_finals,
            encoder_window=config.engine.encoder_window,
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
            self._publish_health,
            HealthSources(
                service=self.service_info,
                streams=self._stream_health,
                inference=self._inference_health,
                outbox=self.publisher.outbox.stats,
                mqtt=self.publisher.link.stats,
                messages=self._message_stats,
                alerts=self.alerts.counts,
            ),
        )
        self.requests = RequestHandler(config.requests, self.publisher.topics, self.publisher, self.emit, self)

    # -- the one inbound path for everything that goes out ------------------------------------

    def emit(self, event: Event) -> None:
        """Called on capture, inference and engine threads: queue the event and return at once."""
        if isinstance(event, StreamStateEvent):
            with self._lock:
                self._stream_details[event.stream] = event.detail
        self.dispatcher.submit(event)

    def _dispatch(self, event: Event) -> None:
        """The dispatcher thread: count for health, print if asked, publish (outbox write)."""
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
        if self.sparkplug is not None:
            self.sparkplug.submit(event)
        if isinstance(event, TranscriptEvent):
            for alert in self.alerts.observe(event):
                log.info("alert %s %s on %s: %r", alert.alert, alert.state, alert.stream, alert.matched_text)
                self._dispatch(alert)

    def _publish_health(self, snapshot: dict) -> None:
        self.publisher.publish_health(snapshot)
        if self.sparkplug is not None:
            self.sparkplug.on_health(snapshot)

    # -- life cycle ---------------------------------------------------------------------------

    def run(self) -> int:
        if self.config.homeassistant.enabled:
            # before the link starts, so the first connect already announces discovery
            homeassistant.enable(self.config.homeassistant, self.publisher, package_version(), self.alerts.names)
        self.dispatcher.start()
        self.publisher.start()
        if self.sparkplug is not None:
            self.sparkplug.start()
        if self.config.requests.enabled:
            self.requests.start()
        pending = PendingChange.load(self.state_dir)
        if pending is not None:  # a config/set restarted the daemon: prove it healthy or roll it back
            self.requests.watch(pending)
        try:
            self.notifier.status("loading model")
            self.engines.start()
            self.scheduler.start()
            self.notifier.status("opening audio")
            for stream_config in self.config.streams:
                self._start_stream(stream_config)
            self._await_streams()
            if self.config.prometheus.enabled:
                # only here: prometheus_client is an optional extra (edgescribe[prometheus])
                from edgescribe.daemon import prometheus

                prometheus.serve(self.config.prometheus, self.health)
            self.health.start()
            summary = self._summary()
            log.info("ready: %s", summary)
            self.notifier.ready(summary)
            self._wait()
        finally:
            self._shutdown()
        return self.exit_status

    def stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        """Re-read the configuration soon (from the main loop, not the signal handler)."""
        self._reload.set()

    def _start_stream(self, stream_config) -> None:
        c = self.config
        pipeline = StreamPipeline.build(
            stream_config, c.capture, c.vad, c.segmenter, _with_alert_hotwords(c, stream_config.name), self.scheduler,
            self.engines, self.emit, alert_phrases=_alert_phrases(c, stream_config.name)
        )
        pipeline.start()
        self.streams[pipeline.name] = pipeline

    def _await_streams(self) -> None:
        """Until every stream is up, or down with its reason known (a missing microphone is
        reported, not waited for), or has already ended."""
        deadline = time.monotonic() + STREAM_OPEN_TIMEOUT_S
        while time.monotonic() < deadline:
            with self._lock:
                reported = set(self._stream_details)
            states = {name: s.capture.stats().state for name, s in self.streams.items()}
            if all(state != "starting" and (state != "down" or name in reported) for name, state in states.items()):
                return
            time.sleep(0.02)
        log.warning("streams still opening after %.0f s: %s", STREAM_OPEN_TIMEOUT_S,
                    ", ".join(n for n, s in self.streams.items() if s.capture.stats().state == "starting"))

    def _wait(self) -> None:
        while not self._stop.wait(0.2):
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            if self.once and not any(s.running for s in self.streams.values()):
                log.info("every source has ended; stopping")
                return

    def reload(self) -> None:
        """SIGHUP: re-read the file; apply ``LIVE_KEYS``, name the keys that need a restart."""
        if not self.config_path:
            log.warning("reload: no configuration file to re-read; nothing changed")
            return
        try:
            new = load_config(self.config_path)
        except EdgescribeError as error:
            log.error("reload: %s rejected; the running configuration stays:\n%s", self.config_path, error)
            return
        live, later = self.apply(new)
        log.info("reload: %s re-read; %s", self.config_path,
                 f"applied {', '.join(live)}" if live else "nothing to apply without a restart")
        if later:
            log.warning("reload: %s changed; restart the service to apply (systemctl restart edgescribe)",
                        ", ".join(later))

    def restart(self, reason: str) -> None:
        """Stop cleanly and exit with RESTART_EXIT_STATUS, so systemd starts the daemon again."""
        log.warning("restarting: %s", reason)
        self.exit_status = RESTART_EXIT_STATUS
        self.stop()

    def health_verdict(self) -> tuple[bool, str]:
        """Healthy: every stream not paused is up, the model is loaded, the broker is connected."""
        problems = [f"stream {name} is {stream.capture.stats().state}" for name, stream in list(self.streams.items())
                    if name not in self.paused and stream.capture.stats().state != "up"]
        if len(self.streams) < len(self.config.streams):
            problems.append("streams still opening")
        if self.engines.current is None:
            problems.append("model not loaded")
        if not self.publisher.link.connected:
            problems.append("broker not connected")
        return not problems, "; ".join(problems) or "streams up, model loaded, broker connected"

    def switch_model(self, package_dir: Path) -> None:
        self.engines.switch(package_dir)

    def pause_stream(self, name: str) -> None:
        """Stop capturing ``name``; its open utterance is finished and published first."""
        if name in self.paused:
            raise ValueError(f"stream {name} is already paused")
        self.paused.add(name)
        stream = self.streams[name]
        stream.stop_capture()
        if not stream.join(timeout=10):
            stream.abort()
        stream.transcriber.close()

    def resume_stream(self, name: str) -> None:
        if name not in self.paused:
            raise ValueError(f"stream {name} is not paused")
        self._start_stream(next(s for s in self.config.streams if s.name == name))
        self.paused.discard(name)

    def apply(self, new: Config) -> tuple[list[str], list[str]]:
        """Apply the ``LIVE_KEYS`` of ``new`` at once; returns (applied keys, keys needing a restart)."""
        changed = changed_keys(self.config, new)
        live = [key for key in changed if key in LIVE_KEYS]
        later = [key for key in changed if key not in LIVE_KEYS]
        if "logging.level" in live:
            logging.getLogger().setLevel(getattr(logging, new.logging.level.upper()))
            logging_config = self.config.logging.model_copy(update={"level": new.logging.level})
            self.config = self.config.model_copy(update={"logging": logging_config})
        return live, later

    def _shutdown(self) -> None:
        self.requests.stop()
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
        self.dispatcher.stop()  # every queued final and event reaches the publisher
        self.health.stop()
        self.publisher.stop()  # clean stop: deliver or store what is held; availability "stopped"
        if self.sparkplug is not None:
            self.sparkplug.stop()  # sends what it can, then NDEATH; the rest stays in its outbox

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
        states = {name: s.capture.stats().state for name, s in self.streams.items()}
        with self._lock:
            details = dict(self._stream_details)
        up = sum(1 for state in states.values() if state == "up")
        down = [f"{name} down: {details.get(name, 'opening')}" for name, state in states.items() if state != "up"]
        model = self.engines.current
        backend = getattr(model.runner, "name", "?") if model is not None else "?"
        name = getattr(model, "name", "?") if model is not None else "?"
        streams = f"{up}/{len(self.streams)} streams up" + (f" ({'; '.join(down)})" if down else "")
        return f"{streams}, {name} on {backend}"

    def _message_stats(self) -> PublisherStats:
        # partials the dispatcher dropped (queue full) count with those the publisher dropped
        stats = self.publisher.stats()
        return replace(stats, partials_dropped=stats.partials_dropped + self.dispatcher.stats().partials_dropped)

    def service_info(self) -> ServiceInfo:
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
                partials=partials.get(name, 0),
                finals=finals.get(name, 0),
                speculative_finals=stream.transcriber.speculation_counts(),
                snr_db=None if stream.segmenter.snr_db is None else round(stream.segmenter.snr_db, 1),
                dropped=stream.transcriber.drop_counts(),
                discarded_bursts=stream.segmenter.discarded_bursts,
                length_cuts=stream.segmenter.length_cuts,
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


def _alert_phrases(config: Config, stream: str) -> list[str]:
    """The phrases of the alerts that listen to ``stream``, each once."""
    return list(dict.fromkeys(phrase for rule in config.alerts.rules if not rule.streams or stream in rule.streams
                              for phrase in rule.phrases))


def _with_alert_hotwords(config: Config, stream: str):
    """The stream's transcription settings, with its alerts' phrases as hotwords (alerts.hotwords)."""
    transcription = config.transcription
    if not config.alerts.hotwords:
        return transcription
    phrases = [phrase for phrase in _alert_phrases(config, stream) if phrase not in transcription.hotwords]
    return transcription.model_copy(update={"hotwords": [*transcription.hotwords, *phrases]})


def _percentile(sorted_values: list[float], q: float) -> Optional[float]:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, int(round(q * (len(sorted_values) - 1))))
    return round(sorted_values[index], 3)


def install_signal_handlers(service: Service) -> None:
    """SIGTERM (systemctl stop) and SIGINT (Ctrl-C) both mean: stop cleanly, lose nothing.
    SIGHUP (systemctl reload) means: re-read the configuration."""

    def handle(signum, _frame):
        log.info("received %s; stopping", signal.Signals(signum).name)
        service.stop()

    def reload(_signum, _frame):
        log.info("received SIGHUP; re-reading the configuration")
        service.request_reload()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGHUP, reload)
