"""Remote requests over MQTT: ``<prefix>/<device_id>/request/<op>`` in, ``.../response/<op>`` out.

zigbee2mqtt's bridge/request convention: the request is a JSON object whose optional
``transaction`` is echoed in the response ``{"status": "ok"|"error", "data": ...,
"error": "...", "transaction": ...}``. With MQTT 5 a request's response topic and
correlation data are honoured. Layouts: docs/mqtt.md#requests, docs/schemas/request.json,
docs/schemas/response.json.

Threads: the MQTT link thread only checks the size and the token bucket and queues the
raw request (bounded); one ``requests`` thread parses, runs and answers them one at a
time. Capture, inference and the dispatcher never wait for a request, so a flood of bad
requests cannot delay a transcript. Every request that passes the bucket is audited as a
``RequestEvent`` through the dispatcher and outbox; refused ones (too large, over the rate,
queue full) are counted into one audit event every ``_REFUSALS_REPORT_S``, and only the
first of each kind in that time is answered.

A ``config/set`` goes on probation (``ChangeGuard``): unless the daemon is healthy (every
stream not paused is up, the model is loaded, the broker is connected) within
``requests.rollback_after_s`` of the change, the previous overlay is restored, a
``ConfigChangeEvent`` says so, and the daemon applies it (in place, or by a restart).

A ``model/switch`` first builds the new package's TensorRT engines where TensorRT is present
(daemon/engine_rollout.py, progress as ``model`` events) and answers which backend serves it.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

from edgescribe.daemon.config import Config
from edgescribe.daemon.config.errors import InvalidConfig
from edgescribe.daemon.config.host import Host
from edgescribe.daemon.config.overlay import (
    PendingChange, changed_keys, flat_keys, merge, overlay_path, read_overlay, validate_merged, write_overlay,
)
from edgescribe.daemon.config.reference import plain, render_json_schema
from edgescribe.daemon.config.requests import RequestsConfig
from edgescribe.daemon.engine_rollout import EngineBuildRefused, EngineRollout
from edgescribe.daemon.events import ConfigChangeEvent, Event, RequestEvent
from edgescribe.daemon.health import ServiceInfo
from edgescribe.daemon.mqtt_link import Inbound
from edgescribe.daemon.publisher import Publisher, Topics
from edgescribe.engines.files import file_sha256
from edgescribe.engines.package import MANIFEST, ModelPackage

log = logging.getLogger(__name__)

QUEUE_LIMIT = 32  # requests waiting for the request thread; more are refused as busy
_REFUSALS_REPORT_S = 10.0  # refused requests are summed into one audit event per this long
_SECRET_PARTS = ("password", "secret", "token", "credential")
_LOG_LEVELS = ("debug", "info", "warning", "error")


class Daemon(Protocol):
    """What requests need of the running service (daemon/service.py)."""

    config: Config
    config_path: Optional[str]

    def health_verdict(self) -> tuple[bool, str]: ...
    def service_info(self) -> ServiceInfo: ...
    def apply(self, new: Config) -> tuple[list[str], list[str]]: ...
    def switch_model(self, package_dir: Path) -> None: ...
    def pause_stream(self, name: str) -> None: ...
    def resume_stream(self, name: str) -> None: ...
    def restart(self, reason: str) -> None: ...


class RequestError(Exception):
    """A request that cannot be served; ``str()`` is the response's ``error``."""


@dataclass(frozen=True)
class Outcome:
    data: Any = None
    detail: str = "done"
    changed: tuple[str, ...] = ()
    then: Optional[Callable[[], None]] = None  # runs after the response is queued (restart)


@dataclass(frozen=True)
class Request:
    operation: str
    payload: bytes
    response_topic: str
    correlation_data: Optional[bytes]


@dataclass
class TokenBucket:
    rate: float  # tokens per second
    burst: int
    clock: Callable[[], float] = time.monotonic
    _tokens: float = field(init=False)
    _at: float = field(init=False)

    def __post_init__(self) -> None:
        self._tokens = float(self.burst)
        self._at = self.clock()

    def take(self) -> bool:
        now = self.clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def redacted(value: Any) -> Any:
    """Configuration as plain data with every secret-looking key's value replaced."""
    if isinstance(value, dict):
        return {k: ("<redacted>" if v and any(p in k for p in _SECRET_PARTS) else redacted(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return value


def verify_package(directory: Path, expected_sha256: Optional[str]) -> None:
    """Raise RequestError unless ``directory`` is a model package whose every file matches its
    manifest (and whose manifest has ``expected_sha256``, when given)."""
    if not directory.is_absolute():
        raise RequestError(f"package: {directory} is not an absolute path")
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise RequestError(f"package: {directory} is not a model package (no {MANIFEST})")
    if expected_sha256 is not None and file_sha256(manifest) != expected_sha256.lower():
        raise RequestError(f"package: {manifest} has sha256 {file_sha256(manifest)}, not the expected {expected_sha256}")
    try:
        ModelPackage.load(directory, verify=True)
    except Exception as error:  # the package says what is wrong in one line
        raise RequestError(f"package: {error}") from None


class RequestHandler:
    def __init__(self, config: RequestsConfig, topics: Topics, publisher: Publisher, emit: Callable[[Event], None],
                 daemon: Daemon, clock: Callable[[], float] = time.monotonic,
                 engine_rollout: Optional[EngineRollout] = None):
        self.config = config
        self.topics = topics
        self.publisher = publisher
        self.emit = emit
        self.daemon = daemon
        self.engine_rollout = engine_rollout or EngineRollout(emit)  # TensorRT engines for model/switch
        self._bucket = TokenBucket(config.rate_per_s, config.burst, clock)
        self._queue: queue.Queue[Optional[Request]] = queue.Queue(QUEUE_LIMIT)
        self._refusals_lock = threading.Lock()
        self._refused = 0  # refused since the last audit event about them
        self._last_refusal = ("", "")  # (operation, problem)
        self._reported_at = time.monotonic()
        self._answered_at: dict[str, float] = {}  # link thread only: when a refusal of each kind was last answered
        self._thread: Optional[threading.Thread] = None
        self.guard: Optional[ChangeGuard] = None
        self._operations: dict[str, Callable[[dict], Outcome]] = {
            "health_check": self._health_check,
            "info": self._info,
            "config/get": self._config_get,
            "config/set": self._config_set,
            "model/switch": self._model_switch,
            "stream/pause": lambda body: self._stream(body, pause=True),
            "stream/resume": lambda body: self._stream(body, pause=False),
            "log_level": self._log_level,
            "restart": self._restart,
        }

    @property
    def request_prefix(self) -> str:
        return f"{self.topics.base}/request/"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="requests", daemon=True)
        self._thread.start()
        self.publisher.link.subscribe_filter(self.request_prefix + "#", self._receive)

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(10)
        if self.guard is not None:
            self.guard.stop()

    # -- the MQTT link thread: bounded work only ------------------------------------------

    def _receive(self, inbound: Inbound) -> None:
        operation = inbound.topic.removeprefix(self.request_prefix)
        request = Request(operation, inbound.payload,
                          inbound.response_topic or f"{self.topics.base}/response/{operation}", inbound.correlation_data)
        kind = problem = None
        if len(inbound.payload) > self.config.max_payload_bytes:
            kind, problem = "size", (f"payload of {len(inbound.payload)} bytes is over the limit of "
                                     f"{self.config.max_payload_bytes}")
        elif not self._bucket.take():
            kind, problem = "rate", (f"rate limited: at most {self.config.rate_per_s:g} requests per second "
                                     f"(burst {self.config.burst})")
        else:
            try:
                self._queue.put_nowait(request)
            except queue.Full:
                kind, problem = "busy", "busy: too many requests waiting"
        if problem is None:
            return
        with self._refusals_lock:
            self._refused += 1
            self._last_refusal = (operation, problem)
        # One answer per kind and interval: answering every request of a flood would crowd
        # partials and health out of the outgoing queue.
        now = time.monotonic()
        if now - self._answered_at.get(kind, -_REFUSALS_REPORT_S) >= _REFUSALS_REPORT_S:
            self._answered_at[kind] = now
            self._respond(request, {"status": "error", "data": None, "transaction": None,
                                    "error": f"{problem} (more refusals in the next {_REFUSALS_REPORT_S:g} s are "
                                             "not answered)"})

    def _report_refusals(self, force: bool = False) -> None:
        """One audit event for the requests refused since the last one (request thread)."""
        with self._refusals_lock:
            if not self._refused or (not force and time.monotonic() - self._reported_at < _REFUSALS_REPORT_S):
                return
            count, (operation, problem) = self._refused, self._last_refusal
            self._refused, self._reported_at = 0, time.monotonic()
        self.emit(RequestEvent(operation, None, "error", f"{count} request(s) refused, the last: {problem}", (),
                               time.time()))

    def _respond(self, request: Request, response: dict) -> None:
        payload = json.dumps(response, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        self.publisher.publish_response(request.response_topic, payload, request.correlation_data)

    # -- the request thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                request = self._queue.get(timeout=1.0)
            except queue.Empty:
                self._report_refusals()
                continue
            if request is None:
                self._report_refusals(force=True)
                return
            self._report_refusals()
            try:
                self._serve(request)
            except Exception:  # one bad request must not stop those behind it
                log.exception("request %s failed", request.operation)

    def _serve(self, request: Request) -> None:
        transaction = None
        try:
            try:
                body = json.loads(request.payload.decode("utf-8")) if request.payload.strip() else {}
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise RequestError(f"malformed JSON: {error}") from None
            if not isinstance(body, dict):
                raise RequestError("malformed request: expected a JSON object")
            transaction = body.get("transaction")
            if not (transaction is None or isinstance(transaction, (str, int, float))) or isinstance(transaction, bool):
                transaction = None
                raise RequestError("transaction: expected a string or a number")
            operation = self._operations.get(request.operation)
            if operation is None:
                raise RequestError(f"unknown operation {request.operation!r}; expected one of "
                                   f"{', '.join(self._operations)}")
            try:
                outcome = operation(body)
            except InvalidConfig as error:  # a hand-edited overlay that no longer parses
                raise RequestError("; ".join(error.lines())) from None
            except (OSError, RuntimeError) as error:  # e.g. the state directory is not writable
                log.exception("request %s failed", request.operation)
                raise RequestError(f"failed: {error}") from None
        except RequestError as error:
            self._respond(request, {"status": "error", "data": None, "error": str(error), "transaction": transaction})
            self.emit(RequestEvent(request.operation, transaction, "error", str(error), (), time.time()))
            log.info("request %s refused: %s", request.operation, error)
            return
        self._respond(request, {"status": "ok", "data": outcome.data, "error": None, "transaction": transaction})
        self.emit(RequestEvent(request.operation, transaction, "ok", outcome.detail, outcome.changed, time.time()))
        log.info("request %s: %s", request.operation, outcome.detail)
        if outcome.then is not None:
            outcome.then()

    # -- operations ----------------------------------------------------------------------

    def _health_check(self, body: dict) -> Outcome:
        healthy, detail = self.daemon.health_verdict()
        return Outcome({"healthy": healthy, "detail": detail}, detail)

    def _effective(self) -> dict:
        return redacted(plain(self.daemon.config))

    def _info(self, body: dict) -> Outcome:
        info = self.daemon.service_info()
        return Outcome({"version": info.version, "model": info.model, "backend": info.backend,
                        "engine_key": info.engine_key, "config": self._effective(),
                        "config_schema": json.loads(render_json_schema(Config))}, "info")

    def _overlay_file(self) -> Path:
        return overlay_path(self.daemon.config.service.state_dir)

    def _config_get(self, body: dict) -> Outcome:
        overlay = read_overlay(self._overlay_file())
        return Outcome({"config": self._effective(), "overlay": redacted(overlay),
                        "remote_keys": [key for key, _ in flat_keys(overlay)], "file": self.daemon.config_path},
                       "configuration read")

    def _propose(self, change: dict, where: str) -> tuple[Config, dict, dict]:
        """The configuration ``change`` would make: (config, new overlay, old overlay), or RequestError
        with check-config's messages."""
        if not self.daemon.config_path:
            raise RequestError("the daemon runs without a configuration file; nothing to change")
        old = read_overlay(self._overlay_file())
        new = merge(old, change)
        try:
            config = validate_merged(self.daemon.config_path, new, Config, name=where, host=Host())
        except InvalidConfig as error:
            raise RequestError("invalid configuration: " + "; ".join(
                f"{p.path}: {p.message}" if p.path else p.message for p in error.problems)) from None
        return config, new, old

    def _config_set(self, body: dict) -> Outcome:
        change = body.get("config")
        if not isinstance(change, dict) or not change:
            raise RequestError("config: expected a JSON object of the keys to change, e.g. {\"vad\": {\"threshold\": 0.6}}")
        if PendingChange.load(self.daemon.config.service.state_dir) is not None:
            raise RequestError("an earlier config/set is still on probation; wait until it is confirmed or rolled back")
        new_config, new_overlay, old_overlay = self._propose(change, "config/set")
        changed = tuple(changed_keys(self.daemon.config, new_config))
        if not changed:
            return Outcome({"changed": [], "applied": "nothing"}, "nothing changed")
        state_dir = self.daemon.config.service.state_dir
        pending = PendingChange(body.get("transaction"), list(changed), old_overlay, time.time(),
                                self.daemon.config.requests.rollback_after_s)
        pending.save(state_dir)  # first: what to restore, should the overlay be written and the power go
        write_overlay(self._overlay_file(), new_overlay, self.daemon.config_path)
        self.emit(ConfigChangeEvent("applied", pending.transaction, changed,
                                    f"on probation for {pending.rollback_after_s:g} s", time.time()))
        live, later = self.daemon.apply(new_config)
        if later:
            return Outcome({"changed": list(changed), "applied": "restart"},
                           f"changed {', '.join(changed)}; restarting to apply {', '.join(later)}", changed,
                           then=lambda: self.daemon.restart("config/set: " + ", ".join(later)))
        self.watch(pending)
        return Outcome({"changed": list(changed), "applied": "live"}, f"changed {', '.join(changed)} in place", changed)

    def _model_switch(self, body: dict) -> Outcome:
        package, expected = body.get("package"), body.get("sha256")
        if not isinstance(package, str) or not package:
            raise RequestError("package: expected the model package directory on this device, e.g. "
                               "\"/var/lib/edgescribe/models/base\"")
        if expected is not None and not (isinstance(expected, str) and len(expected) == 64):
            raise RequestError(f"sha256: expected the 64 hex digits of the package's {MANIFEST}")
        directory = Path(package)
        verify_package(directory, expected)
        _, new_overlay, _ = self._propose({"models": {"serving": str(directory)}}, "model/switch")
        # Built before the switch, on this thread: requests behind it wait (up to QUEUE_LIMIT), capture
        # and inference do not, and the old model serves until the new one is loaded.
        try:
            plan = self.engine_rollout.prepare(ModelPackage.load(directory), self.daemon.config.engine)
        except EngineBuildRefused as error:
            raise RequestError(f"package: {directory}: {error}; the serving model stays") from None
        try:
            self.daemon.switch_model(directory)
        except Exception as error:  # the serving model stays; say why in one line
            raise RequestError(f"package: {directory} failed to load, the serving model stays: {error}") from None
        # kept in the overlay, so a restart serves the new model too
        write_overlay(self._overlay_file(), new_overlay, self.daemon.config_path)
        info = self.daemon.service_info()
        return Outcome({"model": info.model, "package": str(directory), "backend": info.backend,
                        "engines": plan.detail}, f"serving {directory} on {info.backend}", ("models.serving",))

    def _stream(self, body: dict, pause: bool) -> Outcome:
        name = body.get("stream")
        names = [s.name for s in self.daemon.config.streams]
        if name not in names:
            raise RequestError(f"stream: expected one of {', '.join(names)}; got {name!r}")
        try:
            (self.daemon.pause_stream if pause else self.daemon.resume_stream)(name)
        except ValueError as error:
            raise RequestError(str(error)) from None
        return Outcome({"stream": name, "paused": pause}, f"{'paused' if pause else 'resumed'} {name}")

    def _log_level(self, body: dict) -> Outcome:
        level = body.get("level")
        if level not in _LOG_LEVELS:
            raise RequestError(f"level: expected one of {', '.join(_LOG_LEVELS)}; got {level!r}")
        logging.getLogger().setLevel(getattr(logging, level.upper()))
        return Outcome({"level": level}, f"log level {level} until the next restart")

    def _restart(self, body: dict) -> Outcome:
        return Outcome({"restarting": True}, "restarting", then=lambda: self.daemon.restart("restart request"))

    # -- probation ------------------------------------------------------------------------

    def watch(self, pending: PendingChange) -> None:
        if self.guard is not None:
            self.guard.stop()
        self.guard = ChangeGuard(pending, self.daemon, self.emit)
        self.guard.start()


class ChangeGuard:
    """Confirms a config/set once the daemon is healthy, or rolls it back at its deadline."""

    POLL_S = 0.25

    def __init__(self, pending: PendingChange, daemon: Daemon, emit: Callable[[Event], None]):
        self.pending = pending
        self.daemon = daemon
        self.emit = emit
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="config-guard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    def _run(self) -> None:
        state_dir = self.daemon.config.service.state_dir
        detail = "not checked"
        while not self._stop.is_set():
            healthy, detail = self.daemon.health_verdict()
            if healthy:
                PendingChange.clear(state_dir)
                log.info("config change %s confirmed: %s", ", ".join(self.pending.changed), detail)
                self.emit(ConfigChangeEvent("confirmed", self.pending.transaction, tuple(self.pending.changed),
                                            detail, time.time()))
                return
            if time.time() >= self.pending.deadline:
                break
            self._stop.wait(self.POLL_S)
        if self._stop.is_set():
            return
        self._roll_back(state_dir, detail)

    def _roll_back(self, state_dir: str, detail: str) -> None:
        path = overlay_path(state_dir)
        write_overlay(path, self.pending.previous, self.daemon.config_path)
        PendingChange.clear(state_dir)
        text = (f"not healthy within {self.pending.rollback_after_s:g} s of the change ({detail}); "
                f"restored the previous configuration")
        log.error("config change %s rolled back: %s", ", ".join(self.pending.changed), text)
        self.emit(ConfigChangeEvent("rolled_back", self.pending.transaction, tuple(self.pending.changed), text,
                                    time.time()))
        try:
            previous = validate_merged(self.daemon.config_path, self.pending.previous, Config, name=str(path))
        except InvalidConfig as error:  # the file itself changed meanwhile; a restart reports it
            log.error("previous configuration no longer validates:\n%s", error)
            self.daemon.restart("config rollback")
            return
        _, later = self.daemon.apply(previous)
        if later:
            self.daemon.restart("config rollback: " + ", ".join(later))
