"""The Sparkplug B edge node: its own MQTT connection, births and deaths, store and forward.

Why its own connection: Sparkplug ties the node's life to one MQTT session whose will is
the NDEATH carrying that session's ``bdSeq``, and whose bdSeq goes up with every CONNECT;
the JSON tree's connection already has a will (``availability`` = ``offline``) and an
MQTT session holds one will. Two connections also let either tree be switched off without
touching the other, and a Sparkplug host that cannot keep up never slows the JSON finals.

One thread owns the connection and makes every paho call (as in mqtt_link.py). Producers
call ``submit`` (the dispatcher thread) and ``update_status`` (the health thread); both
only queue. Finals are written to this node's outbox (the same durable ``Outbox`` as the
JSON tree, in its own file) before anything is sent, and leave it only when the broker has
received them. Sparkplug sends DDATA at QoS 0, so there is no PUBACK to wait for; instead
the link re-subscribes to its NCMD topic after a batch and takes the SUBACK as proof: a
broker handles one connection's packets in order, so the SUBACK comes after it took every
DDATA sent before it. Finals still in the outbox when a session starts (the broker was
away, or the primary host was offline) are sent after the births as historical metrics
(``is_historical``), oldest first.

With a primary host configured, the node births only after that host's
``spBv1.0/STATE/<host_id>`` says ``online``, and when it says ``offline`` (and is not
older than the last ``online``) the node publishes NDEATH and disconnects, and waits for
the host again on a new connection (Sparkplug 3.0, tck-id-operational-behavior-edge-node-
birth-sequence-wait and -termination-host-offline).
"""

from __future__ import annotations

import json
import logging
import os
import random
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from edgescribe.daemon.config.mqtt import MqttConfig
from edgescribe.daemon.config.sparkplug import SparkplugConfig
from edgescribe.daemon.config.secrets import read_password
from edgescribe.daemon.events import Event, ModelEvent, StreamStateEvent, TranscriptEvent
from edgescribe.daemon.mqtt_link import Message, describe_connect_failure, new_client, private_client_id
from edgescribe.daemon.outbox import Outbox, OutboxLimits
from edgescribe.daemon.sparkplug.session import (NAMESPACE, PARTIAL_TEXT, EdgeSession, Final, NodeStatus,
                                                rebirth_requested)
from edgescribe.daemon.sparkplug.status import status_from_health

log = logging.getLogger(__name__)

_BATCH = 50  # finals sent per pump turn; the rest follow on the next turns
_EPHEMERAL_QUEUE = 256  # partials and levels waiting for the link thread; oldest dropped beyond


@dataclass(frozen=True)
class NodeIdentity:
    group_id: str
    edge_node_id: str
    primary_host_id: str = ""
    wait_for_primary_host: bool = False  # birth only while that host's STATE says online


@dataclass(frozen=True)
class EdgeNodeStats:
    state: str  # "connected" | "waiting_for_host" | "born" | "disconnected" | "stopped"
    bd_seq: int
    sessions: int  # NBIRTHs published on new connections
    rebirths: int  # NBIRTHs published on request
    finals_sent: int
    historical_sent: int
    outbox_depth: int


class BdSeqCounter:
    """The birth/death sequence number: one more on every CONNECT (255 wraps to 0), kept in the
    state directory so a restarted daemon does not reuse the previous run's number."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._last = int(path.read_text().strip()) % 256
        except (OSError, ValueError):
            self._last = 255  # so the first connection of a fresh node uses 0
        self.current = self._last

    def next(self) -> int:
        self.current = (self._last + 1) % 256
        self._last = self.current
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # beside private files
            with os.fdopen(descriptor, "w", encoding="ascii") as file:
                file.write(f"{self.current}\n")
        except OSError as error:
            log.warning("sparkplug: cannot keep bdSeq in %s (%s); a restart may repeat %d", self.path,
                        error.strerror or error, self.current)
        return self.current


class SparkplugEdgeNode:
    def __init__(self, identity: NodeIdentity, mqtt_config: MqttConfig, streams: list[str], outbox: Outbox,
                 state_dir: Path, client_id: str, environ: Optional[dict[str, str]] = None,
                 clock: Callable[[], float] = time.time):
        self.identity = identity
        self.config = mqtt_config
        self.outbox = outbox
        self._clock = clock
        self._owns_outbox = False  # from_config makes it, and then stop closes it
        self.session = EdgeSession(identity.group_id, identity.edge_node_id, streams)
        self._bd_seq = BdSeqCounter(Path(state_dir) / "sparkplug-bdseq")
        self._password = read_password(mqtt_config, environ)
        self._client = self._make_client(client_id)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        # Shared with producers (under _lock):
        self._events: deque[Event] = deque()
        self._status = NodeStatus()
        self._levels: dict[str, Optional[float]] = {}
        self._stream_up: dict[str, bool] = {stream: True for stream in streams}
        self._finals_waiting = threading.Event()
        # Link thread only:
        self._connected = False
        # Births wait for the primary host only when asked to; its STATE is ignored otherwise.
        self._gated = bool(identity.primary_host_id) and identity.wait_for_primary_host
        self._host_online = not self._gated
        self._host_timestamp = 0
        self._host_went_offline = False
        self._rebirth_due = False
        self._born_at = 0.0  # wall time of this session's NBIRTH: finals stored before it are historical
        self._sent_up_to = 0  # outbox id of the last final sent in this session
        self._unconfirmed: list[int] = []  # sent, awaiting the next barrier
        self._barriers: dict[int, list[int]] = {}  # SUBSCRIBE mid -> outbox ids it confirms
        self._confirmed: deque[int] = deque()  # barrier mids acknowledged (from paho's callback)
        self._state = "disconnected"
        self._sessions = 0
        self._rebirths = 0
        self._finals_sent = 0
        self._historical_sent = 0

    @classmethod
    def from_config(cls, config: SparkplugConfig, mqtt_config: MqttConfig, device_id: str, streams: list[str],
                    state_dir: Path, environ: Optional[dict[str, str]] = None) -> "SparkplugEdgeNode":
        """The node as the service runs it: outbox ``<state_dir>/sparkplug-outbox.sqlite3`` within the
        ``mqtt.outbox_*`` limits, client id ``<the JSON link's client id>-spb``."""
        identity = NodeIdentity(config.group_id, config.edge_node_id or device_id, config.primary_host_id,
                                config.wait_for_primary_host)
        outbox = Outbox(Path(state_dir) / "sparkplug-outbox.sqlite3", OutboxLimits.from_config(mqtt_config))
        client_id = (mqtt_config.client_id or private_client_id(Path(state_dir), device_id)) + "-spb"
        node = cls(identity, mqtt_config, streams, outbox, state_dir, client_id, environ)
        node._owns_outbox = True
        return node

    # -- setup -------------------------------------------------------------------------------------

    def _make_client(self, client_id: str) -> mqtt.Client:
        client = new_client(self.config, client_id, self._password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    # -- producers' side ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sparkplug", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        """Send what can still be sent, publish NDEATH, disconnect cleanly (so no will), join."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout + 4.0)
        with self._lock:
            self._state = "stopped"
        if self._owns_outbox:
            self.outbox.close()

    def submit(self, event: Event) -> None:
        """Take one outbound event (dispatcher thread). A final is stored durably first."""
        if isinstance(event, TranscriptEvent) and event.kind == "final":
            final = Final.from_event(event)
            self.outbox.put(self.session.device_topic("DDATA", final.stream), lambda seq: final.to_bytes())
            self._finals_waiting.set()
            return
        if isinstance(event, ModelEvent):
            with self._lock:
                self._status = replace(self._status, model=event.model, backend=event.backend)
            return
        if isinstance(event, (TranscriptEvent, StreamStateEvent)):
            with self._lock:
                if isinstance(event, StreamStateEvent):
                    self._stream_up[event.stream] = event.state == "up"  # the next birth follows it
                self._events.append(event)
                if len(self._events) > _EPHEMERAL_QUEUE:
                    self._drop_oldest_partial()

    def update_status(self, status: NodeStatus, levels: dict[str, Optional[float]]) -> None:
        """The latest node figures and stream levels (health thread); sent as NDATA/DDATA on change."""
        with self._lock:
            self._status = status
            self._levels = dict(levels)

    def on_health(self, snapshot: dict) -> None:
        """Take the node and stream figures from a health snapshot (health thread)."""
        self.update_status(*status_from_health(snapshot, self.outbox.stats().depth))

    def stats(self) -> EdgeNodeStats:
        with self._lock:
            return EdgeNodeStats(self._state, self._bd_seq.current, self._sessions, self._rebirths,
                                 self._finals_sent, self._historical_sent, self.outbox.stats().depth)

    def _drop_oldest_partial(self) -> None:
        for index, event in enumerate(self._events):
            if isinstance(event, TranscriptEvent):
                del self._events[index]
                return

    # -- the connection thread ------------------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        with self._lock:
            self._state = state

    def _run(self) -> None:
        delay = self.config.reconnect_min_s
        while not self._stop.is_set():
            bd_seq = self._bd_seq.next()
            will = self.session.death(bd_seq)
            self._client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
            started = time.monotonic()
            try:
                if self.config.protocol == "5":
                    self._client.connect(self.config.host, self.config.port, keepalive=self.config.keepalive_s,
                                         clean_start=True)
                else:
                    self._client.connect(self.config.host, self.config.port, keepalive=self.config.keepalive_s)
            except (OSError, ssl.SSLError, ValueError) as error:
                log.debug("sparkplug: broker %s:%s: %s", self.config.host, self.config.port,
                          describe_connect_failure(error))
            else:
                self._loop_until_disconnected()
            self._end_session()
            if self._stop.is_set():
                break
            if self._host_went_offline:
                self._host_went_offline = False
                delay = self.config.reconnect_min_s  # reconnect at once to wait for the host again
            elif time.monotonic() - started > 60:
                delay = self.config.reconnect_min_s
            if self._stop.wait(delay * random.uniform(0.8, 1.2)):
                break
            delay = min(self.config.reconnect_max_s, delay * 2)
        self._set_state("stopped")

    def _loop_until_disconnected(self) -> None:
        while not self._stop.is_set():
            if self._client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            if self._connected:
                try:
                    self._pump()
                except Exception:  # a bug in the pump must not take the connection down with it
                    log.exception("sparkplug: sending failed")
                if self._host_went_offline:
                    self._say_death()
                    return
        if self._connected:
            self._pump()
            self._settle_barriers()
            self._say_death()

    def _end_session(self) -> None:
        self._connected = False
        self.session.end()
        self._host_online = not self._gated
        self._sent_up_to = 0  # unconfirmed finals are still in the outbox: sent again, as historical
        self._unconfirmed.clear()
        self._barriers.clear()
        self._confirmed.clear()
        self._set_state("disconnected")

    def _settle_barriers(self, timeout: float = 2.0) -> None:
        """Before a clean stop: wait for the broker to confirm the finals just sent, so the next
        start does not send them again."""
        deadline = time.monotonic() + timeout
        while self._barriers and len(self._confirmed) < len(self._barriers) and time.monotonic() < deadline:
            if self._client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
        self._ack_confirmed()

    def _ack_confirmed(self) -> None:
        while self._confirmed:
            for entry_id in self._barriers.pop(self._confirmed.popleft(), []):
                self.outbox.ack(entry_id)

    def _say_death(self, timeout: float = 2.0) -> None:
        """A clean end of session: NDEATH at QoS 1, wait for its PUBACK, then DISCONNECT."""
        death = self.session.death(self._bd_seq.current)
        info = self._client.publish(death.topic, death.payload, qos=death.qos, retain=death.retain)
        deadline = time.monotonic() + timeout
        while not info.is_published() and time.monotonic() < deadline:
            if self._client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
        self._client.disconnect()
        self._client.loop(timeout=0.05)

    def _publish(self, message: Message) -> None:
        self._client.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)

    def _pump(self) -> None:
        self._ack_confirmed()
        if not self._host_online:
            return
        now = self._clock()
        with self._lock:
            status, levels, stream_up = self._status, dict(self._levels), dict(self._stream_up)
            events = list(self._events)
            self._events.clear()
        if self.session.node_born and not self.session.declares(status):
            self._rebirth_due = True
        if not self.session.node_born or self._rebirth_due:
            self._birth(status, levels, stream_up, now)
            events = []  # stale partials; the births already show every stream's state
        self._send_finals(now)
        for event in events:
            self._send_event(event, levels, now)
        message = self.session.node_data(status, now)
        if message:
            self._publish(message)
        for stream in sorted(self.session.born_devices):
            message = self.session.device_data(stream, {"Level (dBFS)": levels.get(stream)}, now)
            if message:
                self._publish(message)

    def _birth(self, status: NodeStatus, levels: dict[str, Optional[float]], stream_up: dict[str, bool],
               now: float) -> None:
        rebirth = self.session.node_born
        self._rebirth_due = False
        self._publish(self.session.node_birth(self._bd_seq.current, status, now))
        for stream in self.session.streams:
            if stream_up.get(stream, True):
                self._publish(self.session.device_birth(stream, levels.get(stream), now))
        if not rebirth:
            self._born_at = now
        with self._lock:
            self._state = "born"
            if rebirth:
                self._rebirths += 1
            else:
                self._sessions += 1

    def _send_finals(self, now: float) -> None:
        if not self._finals_waiting.is_set():
            return
        self._finals_waiting.clear()
        entries = self.outbox.pending(self._sent_up_to, _BATCH)
        if len(entries) == _BATCH:
            self._finals_waiting.set()  # more on the next turn
        historical_sent = 0
        for entry in entries:
            try:
                final = Final.from_bytes(entry.payload)
            except (ValueError, TypeError) as error:  # salvaged from a damaged outbox, say
                log.error("sparkplug: dropping unreadable stored final %d (%s)", entry.seq, error)
                self.outbox.ack(entry.id)
                continue
            if final.stream not in self.session.streams:
                self.outbox.ack(entry.id)  # a stream removed from the config since: nobody to send it as
                continue
            unborn = not self.session.device_born(final.stream)
            if unborn:  # its microphone is down, but its finals still go out under its name
                self._publish(self.session.device_birth(final.stream, None, now))
            historical = entry.created < self._born_at
            self._publish(self.session.final(final, historical, now))
            if unborn:
                self._publish(self.session.device_death(final.stream, now))
            historical_sent += historical
            self._sent_up_to = entry.id
            self._unconfirmed.append(entry.id)
        if self._unconfirmed:
            _, mid = self._client.subscribe(self.session.node_topic("NCMD"), qos=0)
            self._barriers[mid] = self._unconfirmed
            self._unconfirmed = []
        if entries:
            with self._lock:
                self._finals_sent += len(entries)
                self._historical_sent += historical_sent

    def _send_event(self, event: Event, levels: dict[str, Optional[float]], now: float) -> None:
        if isinstance(event, StreamStateEvent):
            up = event.state == "up"
            if event.stream not in self.session.streams:
                return
            if up and not self.session.device_born(event.stream):
                self._publish(self.session.device_birth(event.stream, levels.get(event.stream), now))
            elif not up and self.session.device_born(event.stream):
                self._publish(self.session.device_death(event.stream, now))
        elif isinstance(event, TranscriptEvent) and self.session.device_born(event.stream):
            message = self.session.device_data(event.stream, {PARTIAL_TEXT: event.text}, now)
            if message:
                self._publish(message)

    # -- paho callbacks (connection thread) ---------------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("sparkplug: broker %s:%s refused the connection: %s", self.config.host, self.config.port,
                      reason_code)
            return
        topics = [(self.session.node_topic("NCMD"), 0), (self.session.device_topic("DCMD", "+"), 0)]
        if self._gated:
            topics.append((f"{NAMESPACE}/STATE/{self.identity.primary_host_id}", 1))
        client.subscribe(topics)
        self._connected = True
        self._set_state("waiting_for_host" if not self._host_online else "connected")
        self._finals_waiting.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected = False

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if mid in self._barriers:
            self._confirmed.append(mid)

    def _on_message(self, client, userdata, message) -> None:
        if message.topic == self.session.node_topic("NCMD"):
            if rebirth_requested(message.payload) and self.session.node_born:
                log.info("sparkplug: rebirth requested")
                self._rebirth_due = True
        elif self._gated and message.topic == f"{NAMESPACE}/STATE/{self.identity.primary_host_id}":
            self._on_host_state(message.payload)

    def _on_host_state(self, payload: bytes) -> None:
        try:
            state = json.loads(payload)
            online, stamp = bool(state["online"]), int(state.get("timestamp", 0))
        except (ValueError, TypeError, KeyError):
            log.warning("sparkplug: ignoring a STATE message that is not Sparkplug 3.0 JSON: %r", payload[:80])
            return
        if stamp < self._host_timestamp:
            return  # older than what we acted on: stale
        self._host_timestamp = stamp
        if online and not self._host_online:
            log.info("sparkplug: primary host %s is online", self.identity.primary_host_id)
            self._host_online = True
        elif not online and self._host_online:
            log.info("sparkplug: primary host %s went offline; ending the session until it is back",
                     self.identity.primary_host_id)
            self._host_online = False
            if self.session.node_born:
                self._host_went_offline = True
            self._set_state("waiting_for_host")

