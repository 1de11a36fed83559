"""The connection to the MQTT broker: connect, reconnect with backoff, TLS, credentials, will.

One thread owns the connection: it connects, runs paho's network loop and, after a
failure, waits (doubling from ``reconnect_min_s`` to ``reconnect_max_s``) and tries
again, forever, recording the last error in words a technician understands ("not
authorised", "certificate verify failed"). The broker publishes the will ``offline``
on ``availability`` when the device vanishes; after each connect the link publishes the
birth ``online``; a clean stop publishes ``stopped`` before disconnecting.

The link knows nothing about the outbox. The publisher registers ``pump``, which the
link thread calls between network-loop iterations while connected: every paho call
happens on this one thread, because paho (without ``loop_start``) would otherwise write
to the socket from the caller's thread and two writers could interleave packets. paho
calls ``on_publish`` while holding its own lock, so ``on_acknowledged`` must only hand
the mid over (the publisher queues it and deletes the outbox row in ``pump``).
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgescribe.daemon.config.mqtt import MqttConfig
from edgescribe.daemon.config.secrets import read_password
from edgescribe.engines.errors import ConfigError

log = logging.getLogger(__name__)

AVAILABILITY_ONLINE = "online"
AVAILABILITY_OFFLINE = "offline"  # the broker-sent last will: the device vanished
AVAILABILITY_STOPPED = "stopped"  # the daemon stopped on purpose


@dataclass(frozen=True)
class LinkStats:
    state: str  # "connected" | "connecting" | "disconnected" | "stopped"
    broker: str
    connected_since: Optional[float]
    reconnects: int  # successful connections after the first
    failed_attempts: int
    last_error: Optional[str]
    last_error_time: Optional[float]


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    correlation_data: Optional[bytes] = None  # MQTT 5: echoes a request's (daemon/requests.py)


@dataclass(frozen=True)
class Inbound:
    """A message received on a subscribed topic filter, with the MQTT 5 request-response properties."""

    topic: str
    payload: bytes
    response_topic: Optional[str]
    correlation_data: Optional[bytes]


def private_client_id(state_dir: Path, device_id: str) -> str:
    """``edgescribe-<device_id>-<random>``: readable, but not guessable by another local process
    (which could otherwise connect with it and so disconnect the daemon). The random part is
    made once and kept private in the state directory, so the broker sees one client across
    restarts; if it cannot be kept, a fresh one is used for this run."""
    path = state_dir / "mqtt-client-id"
    prefix = f"edgescribe-{device_id}-"
    try:
        stored = path.read_text(encoding="ascii").strip()
        if stored.startswith(prefix) and len(stored) > len(prefix):
            return stored
    except (OSError, UnicodeDecodeError):
        pass
    client_id = prefix + secrets.token_hex(6)
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as file:
            file.write(client_id + "\n")
    except OSError as error:
        log.warning("cannot keep the mqtt client id in %s (%s); using %s for this run", path,
                    error.strerror or error, client_id)
    return client_id


def new_client(config: MqttConfig, client_id: str, password: Optional[str]) -> mqtt.Client:
    """A paho client for the configured broker: protocol, credentials and TLS, one copy for
    every connection the daemon opens. A clean session: the outbox is the session state that
    matters (a broker-side one would only duplicate it), and Sparkplug requires one."""
    version5 = config.protocol == "5"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5 if version5 else mqtt.MQTTv311,
                         clean_session=None if version5 else True)
    client.max_queued_messages_set(0)
    if config.username:
        client.username_pw_set(config.username, password)
    if config.tls:
        try:
            client.tls_set(ca_certs=config.tls_ca_file or None, certfile=config.tls_cert_file or None,
                           keyfile=config.tls_key_file or None, cert_reqs=ssl.CERT_REQUIRED)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(f"mqtt.tls_*: cannot load TLS files: {describe_connect_failure(error)}") from None
    return client


def describe_connect_failure(error: BaseException) -> str:
    """One line for the log and health: what failed, in the technician's terms."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS: certificate verify failed ({error.verify_message})"
    if isinstance(error, ssl.SSLError):
        return f"TLS: {error.reason or error}"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (is the broker running and listening on this port?)"
    if isinstance(error, TimeoutError):
        return "connection timed out"
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return str(error)


class MqttLink:
    def __init__(self, config: MqttConfig, availability_topic: str, client_id: str,
                 environ: Optional[dict[str, str]] = None):
        self.config = config
        self.availability_topic = availability_topic
        self._password = read_password(config, environ)
        self._client = self._make_client(client_id)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self._state = "disconnected"
        self._connected = threading.Event()
        self._connected_since: Optional[float] = None
        self._connections = 0
        self._failed_attempts = 0
        self._last_error: Optional[str] = None
        self._last_error_time: Optional[float] = None
        self._aliases: dict[str, int] = {}  # link thread only
        self._refused = False  # the broker refused the current connection attempt (link thread only)
        self._alias_max = 0
        self._subscriptions: dict[str, Callable[[bytes], None]] = {}
        self._filters: dict[str, Callable[[Inbound], None]] = {}  # wildcard topic filters
        self._subscribe_due = False  # (re)subscribe in the link thread at its next turn
        self.pump: Callable[[], None] = lambda: None
        self.on_acknowledged: Callable[[int, bool], None] = lambda mid, ok: None

    # -- setup ------------------------------------------------------------------------

    def _make_client(self, client_id: str) -> mqtt.Client:
        client = new_client(self.config, client_id, self._password)
        # paho keeps its in-flight QoS 1 messages across reconnects and re-sends them itself
        # (same mid), so the publisher need not.
        client.max_inflight_messages_set(self.config.inflight_window)
        client.will_set(self.availability_topic, AVAILABILITY_OFFLINE, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mqtt-link", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        """Publish ``stopped`` (if connected), disconnect cleanly so no will is sent, join."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout + 1.0)
        with self._lock:
            self._state = "stopped"

    @property
    def connections(self) -> int:
        """How many times the link has connected (changes on every reconnect)."""
        with self._lock:
            return self._connections

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def subscribe(self, topic: str, handler: Callable[[bytes], None]) -> None:
        """Deliver messages on ``topic`` to ``handler`` (link thread), on this and every later connection."""
        with self._lock:
            self._subscriptions[topic] = handler
            self._subscribe_due = True

    def subscribe_filter(self, topic_filter: str, handler: Callable[[Inbound], None]) -> None:
        """Deliver messages matching ``topic_filter`` (wildcards allowed) to ``handler`` (link thread),
        on this and every later connection."""
        with self._lock:
            self._filters[topic_filter] = handler
            self._subscribe_due = True

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def publish(self, message: Message) -> Optional[int]:
        """Hand a message to paho (call only from ``pump``); returns its mid, or None if refused.

        paho keeps QoS 1 messages when the connection drops and re-sends them after the
        next connect, so the mid stays valid; QoS 0 ones are dropped (None).
        """
        topic, properties = self._alias(message)
        if message.correlation_data is not None and self.config.protocol == "5":
            properties = properties or Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = message.correlation_data
        info = self._client.publish(topic, message.payload, qos=message.qos, retain=message.retain,
                                    properties=properties)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (message.qos > 0 and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN):
            return info.mid
        return None

    def _alias(self, message: Message) -> tuple[str, Optional[Properties]]:
        """MQTT 5 topic alias for QoS 0 messages: partials then cost 2 bytes of topic, not ~45.

        Only QoS 0: paho re-sends QoS 1 packets after a reconnect, when the broker has
        forgotten this connection's aliases.
        """
        if message.qos != 0 or not self._alias_max:
            return message.topic, None
        properties = Properties(PacketTypes.PUBLISH)
        alias = self._aliases.get(message.topic)
        if alias is not None:
            properties.TopicAlias = alias
            return "", properties
        if len(self._aliases) >= self._alias_max:
            return message.topic, None
        alias = self._aliases[message.topic] = len(self._aliases) + 1
        properties.TopicAlias = alias
        return message.topic, properties

    def stats(self) -> LinkStats:
        with self._lock:
            return LinkStats(
                state=self._state,
                broker=f"{self.config.host}:{self.config.port}",
                connected_since=self._connected_since,
                reconnects=max(0, self._connections - 1),
                failed_attempts=self._failed_attempts,
                last_error=self._last_error,
                last_error_time=self._last_error_time,
            )

    # -- the connection thread ------------------------------------------------------------

    def _run(self) -> None:
        delay = self.config.reconnect_min_s
        first = True
        while not self._stop.is_set():
            with self._lock:
                self._state = "connecting"
            self._refused = False
            try:
                if first:
                    self._client.connect(self.config.host, self.config.port, keepalive=self.config.keepalive_s)
                    first = False
                else:
                    self._client.reconnect()
            except (OSError, ssl.SSLError, ValueError) as error:
                # paho raises ValueError for a host it cannot use; every other failure is OSError.
                self._record_error(describe_connect_failure(error))
            else:
                self._loop_until_disconnected()
                if self._connected_since is not None and time.time() - self._connected_since > 60:
                    delay = self.config.reconnect_min_s  # a long-lived connection resets the backoff
            with self._lock:
                self._connected_since = None
                if self._state != "stopped":
                    self._state = "disconnected"
            self._connected.clear()
            if self._stop.wait(delay * random.uniform(0.8, 1.2)):
                break
            delay = min(self.config.reconnect_max_s, delay * 2)

    def _loop_until_disconnected(self) -> None:
        while not self._stop.is_set():
            # A short timeout bounds how long a queued message waits for the next pump.
            rc = self._client.loop(timeout=0.05)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                # After a refused CONNACK (recorded in _on_connect) paho reports a follow-on
                # error (v3: CONN_REFUSED, v5: PROTOCOL) that would only hide the reason.
                if not self._refused:
                    self._record_error(f"connection lost ({mqtt.error_string(rc)})")
                return
            if self._connected.is_set():
                self._subscribe_if_due()
                try:
                    self.pump()
                except Exception:  # a bug in the pump must not take the connection down with it
                    log.exception("mqtt publisher pump failed")
        if self._connected.is_set():
            self._say_stopped()

    def _subscribe_if_due(self) -> None:
        with self._lock:
            topics = [*self._subscriptions, *self._filters] if self._subscribe_due else []
            self._subscribe_due = False
        if topics:
            self._client.subscribe([(topic, 0) for topic in topics])

    def _say_stopped(self, timeout: float = 2.0) -> None:
        self.pump()
        info = self._client.publish(self.availability_topic, AVAILABILITY_STOPPED, qos=1, retain=True)
        deadline = time.monotonic() + timeout
        while not info.is_published() and time.monotonic() < deadline:
            if self._client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
        self._client.disconnect()
        self._client.loop(timeout=0.05)

    def _record_error(self, text: str) -> None:
        with self._lock:
            self._failed_attempts += 1
            repeated = self._last_error == text
            self._last_error = text
            self._last_error_time = time.time()
        if not repeated:
            log.error("mqtt broker %s:%s: %s; retrying", self.config.host, self.config.port, text)
        else:
            log.debug("mqtt broker %s:%s: %s; retrying", self.config.host, self.config.port, text)

    # -- paho callbacks (network thread) ------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused = True
            self._record_error(f"broker refused the connection: {_reason_text(reason_code)}")
            return
        # Aliases live as long as one connection; the broker says how many it keeps.
        self._aliases = {}
        self._alias_max = getattr(properties, "TopicAliasMaximum", 0) if properties is not None else 0
        with self._lock:
            self._state = "connected"
            self._connected_since = time.time()
            self._connections += 1
            if self._last_error:
                log.info("mqtt broker %s:%s: connected", self.config.host, self.config.port)
            self._subscribe_due = bool(self._subscriptions or self._filters)
        client.publish(self.availability_topic, AVAILABILITY_ONLINE, qos=1, retain=True)
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            handler = self._subscriptions.get(message.topic)
            filtered = [h for f, h in self._filters.items() if mqtt.topic_matches_sub(f, message.topic)]
        try:
            if handler is not None:
                handler(message.payload)
            for handle in filtered:
                properties = getattr(message, "properties", None)
                handle(Inbound(message.topic, message.payload, getattr(properties, "ResponseTopic", None),
                               getattr(properties, "CorrelationData", None)))
        except Exception:  # a bad handler must not take the connection down
            log.exception("handling mqtt message on %s failed", message.topic)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        ok = not reason_code.is_failure
        if not ok:
            log.error("mqtt broker rejected message %d: %s", mid, _reason_text(reason_code))
        self.on_acknowledged(mid, ok)


def _reason_text(reason_code) -> str:
    # MQTT 3.1.1 "Not authorized" and MQTT 5 "Not authorized"/"Bad user name or password"
    # come through paho as reason codes; their names are what a technician should read.
    text = str(reason_code).lower().replace("not authorized", "not authorised")
    if text == "bad user name or password":
        text = "not authorised (bad user name or password)"
    return text
