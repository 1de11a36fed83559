"""The one dispatcher of outbound messages: topics, JSON payloads, sequence numbers.

Finals and events are written to the durable outbox (which assigns the device-wide
``seq``) before paho ever sees them and leave it only on the broker's acknowledgement;
while the disk refuses writes they are held in memory and sent all the same. Partials
and health snapshots are ephemeral: QoS 0, kept in a small in-memory queue and dropped
while the broker is unreachable. ``publish`` writes the outbox, so the daemon calls it
from its one dispatcher thread (daemon/dispatcher.py), never from capture or inference;
it never waits on the network: all paho calls happen in the link thread (``_pump``).

Delivery is at-least-once: a message whose PUBACK was lost is sent again (by paho after
a reconnect, or from the outbox after a restart), so consumers de-duplicate by ``seq``.
Every payload layout is documented in docs/mqtt.md and docs/schemas/.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from edgescribe.daemon.config.mqtt import MqttConfig
from edgescribe.daemon.events import (
    AlertEvent, ConfigChangeEvent, Event, GapEvent, ModelEvent, OutboxDamagedEvent, OutboxDropEvent, RequestEvent,
    StreamStateEvent, TranscriptEvent,
)
from edgescribe.daemon.mqtt_link import Message, MqttLink, private_client_id
from edgescribe.daemon.outbox import Outbox, OutboxEntry, OutboxLimits

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_TOPIC_UNSAFE = re.compile(r"[/+#\x00]")
_DROP_REPORT_INTERVAL_S = 5.0  # at most one OutboxDropEvent per this many seconds
_OPEN_UTTERANCES = 256  # partial state kept for this many utterances at most
_EPHEMERAL_QUEUE = 256  # partials/health waiting for the link thread; oldest dropped beyond


def iso_utc(posix_seconds: float) -> str:
    """UTC ISO 8601 with milliseconds and a 'Z', e.g. 2026-11-23T22:41:07.123Z."""
    text = datetime.fromtimestamp(posix_seconds, timezone.utc).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


@dataclass(frozen=True)
class Topics:
    """Topic names under ``<prefix>/<device_id>/`` (both as the validated config has them)."""

    prefix: str
    device_id: str

    @property
    def base(self) -> str:
        return f"{self.prefix.strip('/')}/{self.device_id}"

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def event(self) -> str:
        return f"{self.base}/event"

    @property
    def health(self) -> str:
        return f"{self.base}/health"

    @property
    def alert(self) -> str:
        return f"{self.base}/alert"

    def transcript(self, stream: str, kind: str) -> str:
        # Stream names come from the config; a '/' or wildcard would change the topic tree.
        return f"{self.base}/transcript/{_TOPIC_UNSAFE.sub('_', stream)}/{kind}"


@dataclass
class _ConnectHook:
    run: Callable[[], None]
    connection: int = 0  # the link's connection count it last ran for


@dataclass(frozen=True)
class PublisherStats:
    finals: int
    events: int
    alerts: int
    partials_sent: int
    partials_dropped: int
    health_sent: int
    in_flight: int
    acked: int
    rejected: int


def final_payload(event: TranscriptEvent, device_id: str, seq: int, now: float) -> dict:
    """Everything a consumer of record needs; sent once per utterance, so completeness wins."""
    payload = {
        "schema": SCHEMA_VERSION,
        "seq": seq,
        "device": device_id,
        "stream": event.stream,
        "utterance_id": event.utterance_id,
        "sequence": event.sequence,
        "text": event.text,
        "language": event.language,
        "start": iso_utc(event.wall_start),
        "end": iso_utc(event.wall_end),
        "audio_start": round(event.audio_start, 3),
        "audio_end": round(event.audio_end, 3),
        "emitted": iso_utc(now),
        "latency_s": round(event.latency_s, 3),
        "model": event.model,
        "backend": event.backend,
        "confidence": {key: round(value, 4) for key, value in asdict(event.confidence).items()},
    }
    if event.words is not None:  # only with transcription.word_timestamps: payloads stay small without
        payload["words"] = [
            {"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3),
             "probability": None if w.probability is None else round(w.probability, 4)}
            for w in event.words
        ]
    return payload


def partial_payload(event: TranscriptEvent, stable_offset: int) -> dict:
    """Only what a live display needs: partials go out every second, so every byte counts.

    The stable text only grows within an utterance, so a partial carries just what was
    added since the previous one (``stable_append``, starting at character
    ``stable_offset``); resending it whole would make an utterance cost quadratic bytes.
    Device and stream are in the topic; audio_start, model, confidence and wall times come
    with the final.
    """
    return {
        "schema": SCHEMA_VERSION,
        "utterance_id": event.utterance_id,
        "sequence": event.sequence,
        "stable_offset": stable_offset,
        "stable_append": event.stable_text[stable_offset:],
        "unstable_text": event.unstable_text,
        "audio_end": round(event.audio_end, 2),
    }


def alert_payload(event: AlertEvent, device_id: str, seq: int, now: float) -> dict:
    """A phrase alert (docs/schemas/alert.json); QoS 1 and stored like a final."""
    return {
        "schema": SCHEMA_VERSION,
        "seq": seq,
        "device": device_id,
        "alert": event.alert,
        "state": event.state,
        "stream": event.stream,
        "utterance_id": event.utterance_id,
        "phrase": event.phrase,
        "matched_text": event.matched_text,
        "distance": event.distance,
        "start": iso_utc(event.wall_start),
        "end": iso_utc(event.wall_end),
        "audio_start": round(event.audio_start, 3),
        "audio_end": round(event.audio_end, 3),
        "audio_time": event.audio_time,
        "transcript_sequence": event.transcript_sequence,
        "emitted": iso_utc(now),
    }


_EVENT_TYPES = {GapEvent: "gap", StreamStateEvent: "stream_state", ModelEvent: "model", OutboxDropEvent: "outbox_drop",
                OutboxDamagedEvent: "outbox_damaged", RequestEvent: "request", ConfigChangeEvent: "config_change"}


def event_payload(event: Event, device_id: str, seq: int) -> dict:
    fields = asdict(event)
    wall_time = fields.pop("wall_time")
    payload = {"schema": SCHEMA_VERSION, "seq": seq, "device": device_id, "type": _EVENT_TYPES[type(event)],
               "time": iso_utc(wall_time)}
    payload.update(fields)
    return payload


def encode(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class Publisher:
    def __init__(self, topics: Topics, outbox: Outbox, link: MqttLink, *, drain_rate: float = 50.0,
                 inflight_window: int = 20, health_retain: bool = True, clock: Callable[[], float] = time.time):
        self.topics = topics
        self.outbox = outbox
        self.link = link
        self.drain_rate = drain_rate
        self.inflight_window = inflight_window
        self.health_retain = health_retain
        self._clock = clock
        self._lock = threading.Lock()
        self._ephemeral: deque[Message] = deque()
        self._stable_sent: dict[str, str] = {}  # utterance_id -> stable text already sent in partials
        self._acks: queue.SimpleQueue[tuple[int, bool]] = queue.SimpleQueue()
        # Link-thread state: mid -> outbox row id of messages paho holds; the last row handed.
        self._in_flight: dict[int, int] = {}
        self._last_handed_id = 0
        self._tokens = 1.0
        self._tokens_at = time.monotonic()
        self._housekeeping_at = 0.0
        self._drops_reported_at = float("-inf")
        self._counts = dict(finals=0, events=0, alerts=0, partials_sent=0, partials_dropped=0, health_sent=0, acked=0,
                            rejected=0)
        self._on_connect_hooks: list[_ConnectHook] = []
        link.pump = self._pump
        link.on_acknowledged = lambda mid, ok: self._acks.put((mid, ok))

    @classmethod
    def from_config(cls, mqtt_config: MqttConfig, device_id: str, state_dir: Path, health_retain: bool = True,
                    environ: Optional[dict[str, str]] = None) -> "Publisher":
        """Outbox at ``<state_dir>/outbox.sqlite3`` + link + publisher, as the service wires them."""
        topics = Topics(mqtt_config.topic_prefix, device_id)
        outbox = Outbox(Path(state_dir) / "outbox.sqlite3", OutboxLimits.from_config(mqtt_config))
        client_id = mqtt_config.client_id or private_client_id(Path(state_dir), device_id)
        link = MqttLink(mqtt_config, topics.availability, client_id, environ)
        return cls(topics, outbox, link, drain_rate=mqtt_config.drain_rate, inflight_window=mqtt_config.inflight_window,
                   health_retain=health_retain)

    def start(self) -> None:
        damage = self.outbox.damage
        if damage is not None:
            self.publish(OutboxDamagedEvent(str(damage.moved_to), damage.recovered, damage.detail, self._clock()))
        self._report_drops(force=True)  # including messages a previous stop could not keep
        self.link.start()

    def stop(self, timeout: float = 3.0) -> None:
        """Report pending drops, deliver what the disk refused (while the broker is up), publish
        ``stopped``, disconnect; stored unsent messages stay in the outbox, and what could be
        neither stored nor delivered is logged and reported at the next start."""
        self._report_drops(force=True)
        deadline = time.monotonic() + timeout
        while self.outbox.held() and self.link.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        self.link.stop(timeout)
        self._settle_acks()
        self.outbox.close()

    # -- the API the pipeline calls ---------------------------------------------------------

    def publish(self, event: Event) -> None:
        """Queue one event for the broker; finals and events are durable when this returns."""
        now = self._clock()
        if isinstance(event, TranscriptEvent) and event.kind == "partial":
            with self._lock:
                sent = self._stable_sent.get(event.utterance_id, "")
            # A stable text that did not grow from the last one (never expected) is resent whole.
            offset = len(sent) if event.stable_text.startswith(sent) else 0
            message = Message(self.topics.transcript(event.stream, "partial"), encode(partial_payload(event, offset)),
                              qos=0, retain=False)
            if self._queue_ephemeral(message):
                with self._lock:
                    self._stable_sent[event.utterance_id] = event.stable_text
                    while len(self._stable_sent) > _OPEN_UTTERANCES:  # utterances whose final never came
                        del self._stable_sent[next(iter(self._stable_sent))]
            return
        if isinstance(event, TranscriptEvent):
            with self._lock:
                self._stable_sent.pop(event.utterance_id, None)
            topic = self.topics.transcript(event.stream, "final")
            build = lambda seq: encode(final_payload(event, self.topics.device_id, seq, now))  # noqa: E731
            counter = "finals"
        elif isinstance(event, AlertEvent):
            topic = self.topics.alert
            build = lambda seq: encode(alert_payload(event, self.topics.device_id, seq, now))  # noqa: E731
            counter = "alerts"
        else:
            topic = self.topics.event
            build = lambda seq: encode(event_payload(event, self.topics.device_id, seq))  # noqa: E731
            counter = "events"
        self.outbox.put(topic, build, qos=1, retain=False)
        with self._lock:
            self._counts[counter] += 1
        if not isinstance(event, OutboxDropEvent):
            self._report_drops()

    def publish_health(self, payload: dict) -> None:
        """Queue a health snapshot (QoS 0; retained if configured)."""
        self._queue_ephemeral(Message(self.topics.health, encode(payload), qos=0, retain=self.health_retain))

    def publish_raw(self, topic: str, payload: bytes, retain: bool) -> None:
        """QoS 0 message outside the device tree (Home Assistant discovery)."""
        self._queue_ephemeral(Message(topic, payload, qos=0, retain=retain))

    def publish_response(self, topic: str, payload: bytes, correlation_data: Optional[bytes]) -> None:
        """QoS 0 answer to a request (daemon/requests.py); dropped while the broker is away."""
        self._queue_ephemeral(Message(topic, payload, qos=0, retain=False, correlation_data=correlation_data))

    def add_connect_hook(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` (in the link thread) after every connect, e.g. to re-announce discovery;
        added while connected, it runs at once for the current connection."""
        with self._lock:
            self._on_connect_hooks.append(_ConnectHook(hook))

    def subscribe(self, topic: str, handler: Callable[[bytes], None]) -> None:
        """Call ``handler(payload)`` (in the link thread) for every message on ``topic`` (QoS 0)."""
        self.link.subscribe(topic, handler)

    def maintain(self) -> None:
        """Retry deletes and writes a disk failure left undone, expire old entries, report drops.

        The link thread calls it while connected; the daemon's dispatcher also calls it
        every second, so held messages reach the disk even while the broker is away."""
        self.outbox.retry()
        self.outbox.expire()
        self._report_drops()

    def stats(self) -> PublisherStats:
        with self._lock:
            return PublisherStats(in_flight=len(self._in_flight), **self._counts)

    # -- internals ---------------------------------------------------------------------------

    def _queue_ephemeral(self, message: Message) -> bool:
        with self._lock:
            if not self.link.connected:
                # Stale partials are worthless after an outage; the outbox carries what matters.
                self._counts["partials_dropped"] += message.topic.endswith("/partial")
                return False
            if len(self._ephemeral) >= _EPHEMERAL_QUEUE:
                dropped = self._ephemeral.popleft()
                self._counts["partials_dropped"] += dropped.topic.endswith("/partial")
            self._ephemeral.append(message)
            return True

    def _report_drops(self, force: bool = False) -> None:
        """Turn dropped outbox entries into OutboxDropEvents, at most once every few seconds."""
        with self._lock:
            if not force and time.monotonic() - self._drops_reported_at < _DROP_REPORT_INTERVAL_S:
                return
            drops = self.outbox.take_unreported()
            if not drops:
                return
            self._drops_reported_at = time.monotonic()
        now = self._clock()
        if drops.size or drops.age:
            log.warning("outbox full: dropped %d oldest message(s) (size bound) and %d (age bound)", drops.size,
                        drops.age)
        for reason, count in (("size", drops.size), ("age", drops.age), ("unstored", drops.unstored)):
            if count:
                # Its own insertion may drop one more entry: the outbox keeps that for the next report.
                self.publish(OutboxDropEvent(dropped=count, reason=reason, wall_time=now))

    def _settle_acks(self) -> None:
        while True:
            try:
                mid, ok = self._acks.get_nowait()
            except queue.Empty:
                return
            row = self._in_flight.pop(mid, None)
            if row is None:
                continue  # a QoS 0 message or the availability birth
            self.outbox.ack(row)
            with self._lock:
                self._counts["acked" if ok else "rejected"] += 1

    def _pump(self) -> None:
        """Link thread, while connected: settle acks, send ephemeral messages, drain the outbox."""
        self._settle_acks()
        connections = self.link.connections
        with self._lock:
            due = [hook for hook in self._on_connect_hooks if hook.connection != connections]
            for hook in due:
                hook.connection = connections
        for hook in due:
            hook.run()
        while True:
            with self._lock:
                if not self._ephemeral:
                    break
                message = self._ephemeral.popleft()
            if self.link.publish(message) is not None:
                with self._lock:
                    if message.topic.endswith("/partial"):
                        self._counts["partials_sent"] += 1
                    elif message.topic == self.topics.health:
                        self._counts["health_sent"] += 1
        self._housekeeping()
        now = time.monotonic()
        self._tokens = min(max(1.0, self.drain_rate), self._tokens + (now - self._tokens_at) * self.drain_rate)
        self._tokens_at = now
        room = min(self.inflight_window - len(self._in_flight), int(self._tokens))
        if room <= 0:
            return
        stored = self.outbox.pending(self._last_handed_id, room)
        for entry in stored:
            self._hand(entry)
        if room > len(stored):
            for entry in self.outbox.take_held(room - len(stored)):
                self._hand(entry)

    def _hand(self, entry: OutboxEntry) -> None:
        mid = self.link.publish(Message(entry.topic, entry.payload, entry.qos, entry.retain))
        if entry.id > 0:
            self._last_handed_id = entry.id
        self._tokens -= 1
        if mid is None:
            # paho refused it (e.g. payload too large): nothing will ever ack it.
            log.error("mqtt client refused outbox message seq %d on %s; dropping it", entry.seq, entry.topic)
            self.outbox.ack(entry.id)
            return
        with self._lock:
            self._in_flight[mid] = entry.id

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._housekeeping_at < 1.0:
            return
        self._housekeeping_at = now
        self.maintain()
