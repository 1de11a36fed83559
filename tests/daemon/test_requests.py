"""Remote requests through the real daemon: ``edgescribe run`` in a subprocess, a real mosquitto
with password authentication, a real MQTT 5 operator client, real speech from a looping WAV."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import jsonschema
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgescribe.daemon.config import InvalidConfig, load_config
from edgescribe.daemon.config.overlay import OVERLAY_NAME, PENDING_NAME, merge
from edgescribe.daemon.requests import TokenBucket
from edgescribe.daemon.service import RESTART_EXIT_STATUS
from tests.fixtures.daemon import JFK, start_daemon, wait_for_log
from tests.fixtures.daemon import write_config as daemon_config
from tests.fixtures.models import tiny_en_package  # noqa: F401  (fixture)
from tests.fixtures.mosquitto import Mosquitto, make_password_file, validate_payload

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
BASE = "edgescribe/test-press"
OPERATOR = ("fleet-operator", "operator-pw")


def schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.json").read_text())


def check_response(operation: str, response: dict) -> None:
    """Against docs/schemas/response.json, and an ok answer's data against its operation's layout."""
    document = schema("response")
    jsonschema.validate(response, document)
    if response["status"] == "ok":
        jsonschema.validate(response["data"], {**document["$defs"][operation], "$defs": document["$defs"]})


@pytest.fixture
def broker(tmp_path):
    users = make_password_file(tmp_path / "broker" / "passwords", {"edgescribe": "device-pw", OPERATOR[0]: OPERATOR[1]})
    server = Mosquitto(tmp_path / "broker", password_file=users)
    server.start()
    yield server
    server.stop()


def write_config(tmp_path: Path, port: int, package: Path, rollback_after_s: float = 30.0,
                 stream: str = "    file: {jfk}\n    loop: true\n", extra: str = "") -> Path:
    """The daemon's config with requests on, signed in to the broker as ``edgescribe``."""
    password = tmp_path / "mqtt-password"
    password.write_text("device-pw\n")
    password.chmod(0o600)
    return daemon_config(
        tmp_path / "config.yaml", package, port, tmp_path / "state", JFK, speed=1.0,
        engine_dir=tmp_path / "engines", source=stream.format(jfk=JFK),
        mqtt=f"  username: edgescribe\n  password_file: {password}\n",
        extra=f"requests:\n  enabled: true\n  rate_per_s: 5\n  burst: 20\n  rollback_after_s: {rollback_after_s}\n{extra}")


class Operator:
    """The fleet operator's MQTT 5 client: sends requests, collects responses, events and finals."""

    def __init__(self, port: int):
        self.messages: list[tuple[str, dict | bytes, float, Properties | None]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(*OPERATOR)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe([(f"{BASE}/response/#", 1), (f"{BASE}/event", 1), (f"{BASE}/transcript/+/final", 1),
                               ("operator/replies", 1)])
        assert self._subscribed.wait(10)

    def _on_message(self, client, userdata, message):
        try:
            payload = json.loads(message.payload)
        except ValueError:
            payload = message.payload
        with self._lock:
            self.messages.append((message.topic, payload, time.monotonic(), getattr(message, "properties", None)))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def snapshot(self, topic_end: str = "") -> list[tuple[str, dict | bytes, float, Properties | None]]:
        with self._lock:
            return [m for m in self.messages if m[0].endswith(topic_end)]

    def wait(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in self.snapshot() if predicate(m)]
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no {what} within {timeout} s")

    def send(self, operation: str, payload: bytes, properties: Properties | None = None) -> float:
        sent = time.monotonic()
        self.client.publish(f"{BASE}/request/{operation}", payload, qos=1, properties=properties).wait_for_publish(5)
        return sent

    def ask(self, operation: str, body: dict | None = None, timeout: float = 30.0, conforming: bool = True) -> dict:
        """``conforming=False``: a request docs/schemas/request.json refuses (the daemon must too)."""
        transaction = uuid.uuid4().hex
        request = {"transaction": transaction, **(body or {})}
        if conforming:
            jsonschema.validate(request, schema("request"))
        else:
            assert not jsonschema.Draft202012Validator(schema("request")).is_valid(request)
        self.send(operation, json.dumps(request).encode())
        _, response, _, _ = self.wait(lambda m: m[0] == f"{BASE}/response/{operation}" and isinstance(m[1], dict)
                                      and m[1].get("transaction") == transaction, timeout, f"response to {operation}")
        check_response(operation, response)
        return response

    def ask_raw(self, operation: str, payload: bytes, timeout: float = 15.0) -> dict:
        sent = self.send(operation, payload)
        _, response, _, _ = self.wait(lambda m: m[0] == f"{BASE}/response/{operation}" and m[2] >= sent, timeout,
                                      f"response to {operation}")
        check_response(operation, response)
        return response

    def events(self, kind: str) -> list[dict]:
        found = [m[1] for m in self.snapshot("/event") if m[1].get("type") == kind]
        for event in found:
            validate_payload(event, "event")
        return found


def wait_healthy(operator: Operator, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        response = operator.ask("health_check")
        if response["data"]["healthy"] or time.monotonic() > deadline:
            return response
        time.sleep(0.5)


def test_requests_need_an_authenticated_broker_and_the_overlay_merges(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(f"device_id: x\nservice:\n  state_dir: {tmp_path}\nstreams:\n  - name: a\n    device: hw:0,0\n"
                    "requests:\n  enabled: true\n")
    with pytest.raises(InvalidConfig) as refused:
        load_config(path, check_host=False)
    assert "requests.enabled: requests can change this device, so they need an authenticated broker" in str(refused.value)
    path.write_text(path.read_text() + "mqtt:\n  tls: true\n  tls_cert_file: /c.pem\n  tls_key_file: /c.key\n")
    assert load_config(path, check_host=False).requests.enabled
    # the overlay: mappings merge key by key, a list is replaced whole, null returns a key to the file
    assert merge({"vad": {"threshold": 0.5, "off_threshold": 0.3}, "streams": [1, 2]},
                 {"vad": {"threshold": 0.6}, "streams": [3]}) == {"vad": {"threshold": 0.6, "off_threshold": 0.3},
                                                                  "streams": [3]}
    assert merge({"vad": {"threshold": 0.6}}, {"vad": {"threshold": None}}) == {}
    (tmp_path / OVERLAY_NAME).write_text("transcription:\n  language: 'no'\n")
    path.write_text(f"device_id: x\nservice:\n  state_dir: {tmp_path}\nstreams:\n  - name: a\n    file: {JFK}\n")
    assert load_config(path).transcription.language == "no"
    check = subprocess.run([".venv/bin/python", "-m", "edgescribe.daemon.cli", "check-config", str(path)],
                           cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True)
    assert f'# transcription.language: "no" (from {tmp_path / OVERLAY_NAME}, set remotely' in check.stdout, check


def test_token_bucket_allows_the_burst_then_the_rate():
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5
    assert [bucket.take(), bucket.take()] == [True, False]


def test_every_operation_and_its_errors_through_the_daemon(tmp_path, broker, tiny_en_package):
    package = tiny_en_package.dir
    models = tmp_path / "models"
    good, corrupt = models / "tiny-copy", models / "tiny-corrupt"
    shutil.copytree(package, good)
    shutil.copytree(package, corrupt)
    victim = next(p for p in sorted(corrupt.iterdir()) if p.name != "manifest.json" and p.is_file())
    victim.write_bytes(victim.read_bytes()[:-1] + bytes([victim.read_bytes()[-1] ^ 1]))
    # the same package as exported before word timing: no aligner graph, a manifest that agrees
    untimed = models / "tiny-untimed"
    untimed.mkdir()
    manifest = json.loads((package / "manifest.json").read_text())
    manifest["files"].pop("aligner.onnx")
    manifest["precision"].pop("aligner.onnx", None)
    for name in manifest["files"]:
        (untimed / name).symlink_to(package / name)
    (untimed / "manifest.json").write_text(json.dumps(manifest))
    config = write_config(tmp_path, broker.port, package, extra="transcription:\n  word_timestamps: true\n")
    operator = Operator(broker.port)
    daemon = start_daemon(config)
    lines: list[str] = []
    try:
        wait_for_log(daemon, lines, "ready:", 90)
        assert wait_healthy(operator)["data"]["healthy"]

        info = operator.ask("info")["data"]
        assert info["backend"] == "onnxruntime" and info["model"]
        assert info["config"]["mqtt"]["password_file"] == "<redacted>"
        assert info["config"]["device_id"] == "test-press" and "requests" in info["config_schema"]["properties"]
        got = operator.ask("config/get")["data"]
        assert got["overlay"] == {} and got["file"] == str(config)

        # error paths: each answered with one line, and audited
        assert "malformed JSON" in operator.ask_raw("info", b"{not json")["error"]
        assert "unknown operation 'reboot_now'" in operator.ask_raw("reboot_now", b"{}")["error"]
        huge = operator.ask_raw("info", b" " * 20_000)
        assert "over the limit" in huge["error"]
        invalid = operator.ask("config/set", {"config": {"vad": {"threshold": 5}, "streams": [{"name": "a"}]}})
        assert invalid["status"] == "error"
        # check-config's messages, keys named
        assert "vad.threshold: got 5; expected a number from 0.01 to 0.99" in invalid["error"], invalid
        assert "streams[0]" in invalid["error"]
        assert not (tmp_path / "state" / OVERLAY_NAME).exists(), "an invalid config/set changed something"

        # a live key: applied in place, kept in the overlay, confirmed healthy
        applied = operator.ask("config/set", {"config": {"logging": {"level": "debug"}}})
        assert applied["data"] == {"changed": ["logging.level"], "applied": "live"}
        assert "level: debug" in (tmp_path / "state" / OVERLAY_NAME).read_text()
        operator.wait(lambda m: m[0].endswith("/event") and m[1].get("type") == "config_change"
                      and m[1]["action"] == "confirmed", 15, "confirmed config change")
        assert not (tmp_path / "state" / PENDING_NAME).exists()
        assert operator.ask("config/get")["data"]["remote_keys"] == ["logging.level"]
        assert operator.ask("log_level", {"level": "info"})["data"] == {"level": "info"}
        assert "level: expected one of" in operator.ask("log_level", {"level": "loud"}, conforming=False)["error"]

        # pause and resume a stream
        assert operator.ask("stream/pause", {"stream": "press"})["data"] == {"stream": "press", "paused": True}
        assert "already paused" in operator.ask("stream/pause", {"stream": "press"})["error"]
        assert operator.ask("health_check")["data"]["healthy"], "a paused stream is not a fault"
        assert operator.ask("stream/resume", {"stream": "press"})["data"] == {"stream": "press", "paused": False}
        assert "stream: expected one of press" in operator.ask("stream/resume", {"stream": "nope"})["error"]
        assert wait_healthy(operator)["data"]["healthy"]

        # model/switch: wrong sha256 and a corrupt file are refused, the model stays; a good package serves
        wrong = operator.ask("model/switch", {"package": str(good), "sha256": "0" * 64})
        assert "not the expected" in wrong["error"]
        assert "sha256 mismatch" in operator.ask("model/switch", {"package": str(corrupt)})["error"]
        assert "not a model package" in operator.ask("model/switch", {"package": str(models)})["error"]
        # word_timestamps is on: a package that cannot time words would send finals without them
        untimed_error = operator.ask("model/switch", {"package": str(untimed)})["error"]
        assert f"transcription.word_timestamps: is true but model package {untimed} has no word timing" in untimed_error
        manifest_sha = hashlib.sha256((good / "manifest.json").read_bytes()).hexdigest()
        switched = operator.ask("model/switch", {"package": str(good), "sha256": manifest_sha}, timeout=60)
        assert switched["status"] == "ok", switched
        # no TensorRT on this machine: nothing built, ONNX Runtime serves, and the answer says why
        assert switched["data"]["backend"] == "onnxruntime", switched
        assert switched["data"]["engines"].startswith("TensorRT not available, no engines built: TensorRT is not "
                                                      "installed"), switched
        assert not operator.events("model") or not any(e["action"].startswith("build_")
                                                       for e in operator.events("model"))
        operator.wait(lambda m: m[0].endswith("/event") and m[1].get("type") == "model"
                      and m[1]["action"] == "switched" and str(good) in m[1]["detail"], 10, "model switched event")
        assert f"serving: {good}" in (tmp_path / "state" / OVERLAY_NAME).read_text()

        # MQTT 5: the request's response topic and correlation data are honoured
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = "operator/replies"
        properties.CorrelationData = b"corr-42"
        operator.send("health_check", b'{"transaction": 7}', properties)
        _, reply, _, reply_properties = operator.wait(lambda m: m[0] == "operator/replies", 10, "MQTT 5 reply")
        assert reply["transaction"] == 7 and reply_properties.CorrelationData == b"corr-42"

        # a flood of bad requests: refused by the bucket, summarised in the audit, finals keep their pace
        operator.wait(lambda m: len(operator.snapshot("/final")) >= 3, 60, "three finals before the flood")
        before = [m[1]["latency_s"] for m in operator.snapshot("/final")]
        flood_started = time.monotonic()
        for _ in range(400):
            operator.client.publish(f"{BASE}/request/info", b"{bad", qos=0)
        operator.wait(lambda m: m[0].endswith("/final") and m[2] > flood_started + 4, 30, "a final after the flood")
        during = [m[1]["latency_s"] for m in operator.snapshot("/final") if m[2] > flood_started]
        refused = [m for m in operator.snapshot("/response/info") if m[2] > flood_started
                   and isinstance(m[1], dict) and "rate limited" in (m[1]["error"] or "")]
        # the first refusal is answered; answering all 400 would crowd partials out of the outgoing queue
        assert len(refused) == 1, refused
        # the machine's load sets the latency; the flood must not add to it
        assert during and max(during) <= max(before) + 2.0, (before, during)
        def summaries() -> list[dict]:
            return [m[1] for m in operator.snapshot("/event") if m[2] > flood_started
                    and m[1].get("type") == "request" and "request(s) refused" in m[1]["detail"]]

        operator.wait(lambda m: sum(int(e["detail"].split()[0]) for e in summaries()) >= 300, 25,
                      "audit events summing the refused requests")
        for summary in summaries():
            validate_payload(summary, "event")
        flood_audits = [e for e in operator.events("request") if e["operation"] == "info" and e["outcome"] == "error"]
        assert len(summaries()) <= 3 and len(flood_audits) <= 30, (summaries(), len(flood_audits))

        audited = {(e["operation"], e["outcome"]) for e in operator.events("request")}
        assert {("health_check", "ok"), ("info", "ok"), ("config/get", "ok"), ("config/set", "ok"),
                ("config/set", "error"), ("reboot_now", "error"), ("model/switch", "ok"), ("model/switch", "error"),
                ("stream/pause", "ok"), ("stream/resume", "ok"), ("log_level", "ok")} <= audited
        set_audit = next(e for e in operator.events("request") if e["operation"] == "config/set" and e["outcome"] == "ok")
        assert set_audit["changed"] == ["logging.level"] and set_audit["transaction"]

        time.sleep(1.0)  # let the bucket refill after the flood
        assert operator.ask("restart")["data"] == {"restarting": True}
        _, rest = daemon.communicate(timeout=60)
    finally:
        daemon.kill()
        operator.close()
    log = "".join(lines) + rest
    assert daemon.returncode == RESTART_EXIT_STATUS, log
    assert "Traceback" not in log


def test_a_config_set_that_breaks_the_audio_device_rolls_back(tmp_path, broker, tiny_en_package):
    rollback_after_s = 8.0
    config = write_config(tmp_path, broker.port, tiny_en_package.dir, rollback_after_s=rollback_after_s)
    operator = Operator(broker.port)
    logs: list[str] = []
    daemon = start_daemon(config)
    try:
        wait_for_log(daemon, logs, "ready:", 90)
        assert wait_healthy(operator)["data"]["healthy"]
        changed_at = time.monotonic()
        response = operator.ask("config/set", {"config": {"streams": [
            {"name": "press", "device": "hw:CARD=NoSuchCard,DEV=0"}]}})
        assert response["data"] == {"changed": ["streams"], "applied": "restart"}, response
        logs.append(daemon.communicate(timeout=60)[1])
        assert daemon.returncode == RESTART_EXIT_STATUS, "".join(logs)

        # systemd's part: start it again; the broken stream never comes up, so it rolls back and restarts
        daemon = start_daemon(config)
        logs.append(daemon.communicate(timeout=90)[1])
        assert daemon.returncode == RESTART_EXIT_STATUS, "".join(logs)
        _, rolled_back, received, _ = operator.wait(
            lambda m: m[0].endswith("/event") and m[1].get("type") == "config_change"
            and m[1]["action"] == "rolled_back", 15, "rolled back event")
        validate_payload(rolled_back, "event")
        assert rolled_back["changed"] == ["streams"] and rolled_back["transaction"] == response["transaction"]
        assert "not healthy within 8 s" in rolled_back["detail"] and "stream press is down" in rolled_back["detail"]
        assert not (tmp_path / "state" / OVERLAY_NAME).exists() and not (tmp_path / "state" / PENDING_NAME).exists()
        # rolled back within the configured time (the event leaves at the rollback; the clock starts at the change)
        rolled_back_wall = time.mktime(time.strptime(rolled_back["time"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        applied = next(e for e in operator.events("config_change") if e["action"] == "applied")
        applied_wall = time.mktime(time.strptime(applied["time"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        assert rolled_back_wall - applied_wall <= rollback_after_s + 2, (applied, rolled_back)
        assert received - changed_at < 60

        # and started once more, it is healthy on the technician's configuration
        daemon = start_daemon(config)
        wait_for_log(daemon, logs, "ready:", 90)
        healthy = wait_healthy(operator, 30)
        assert healthy["data"] == {"healthy": True, "detail": "streams up, model loaded, broker connected"}
        daemon.terminate()
        logs.append(daemon.communicate(timeout=60)[1])
    finally:
        daemon.kill()
        operator.close()
    assert daemon.returncode == 0, "".join(logs)
    assert "Traceback" not in "".join(logs)


def test_an_in_place_change_on_an_unhealthy_daemon_rolls_back_in_place(tmp_path, broker, tiny_en_package):
    """The in-place path of the rollback. No live key (only ``logging.level`` is one) can itself
    break the daemon, but probation does not ask what broke it: a live change made while a stream
    is down is rolled back at its deadline, applied in place again, with no restart."""
    rollback_after_s = 4.0
    config = write_config(tmp_path, broker.port, tiny_en_package.dir, rollback_after_s=rollback_after_s,
                          stream="    device: hw:CARD=NoSuchCard,DEV=0\n")
    operator = Operator(broker.port)
    logs: list[str] = []
    daemon = start_daemon(config)
    try:
        wait_for_log(daemon, logs, "ready:", 90)
        verdict = operator.ask("health_check")["data"]
        assert not verdict["healthy"] and "stream press is down" in verdict["detail"], verdict
        response = operator.ask("config/set", {"config": {"logging": {"level": "debug"}}})
        assert response["data"] == {"changed": ["logging.level"], "applied": "live"}, response
        assert "level: debug" in (tmp_path / "state" / OVERLAY_NAME).read_text()
        _, rolled_back, _, _ = operator.wait(
            lambda m: m[0].endswith("/event") and m[1].get("type") == "config_change"
            and m[1]["action"] == "rolled_back", rollback_after_s + 15, "rolled back event")
        validate_payload(rolled_back, "event")
        assert rolled_back["changed"] == ["logging.level"] and rolled_back["transaction"] == response["transaction"]
        assert f"not healthy within {rollback_after_s:g} s" in rolled_back["detail"], rolled_back
        assert not any(e["action"] == "confirmed" for e in operator.events("config_change"))
        assert not (tmp_path / "state" / OVERLAY_NAME).exists() and not (tmp_path / "state" / PENDING_NAME).exists()
        # applied in place again: the same process answers, on the technician's level
        assert daemon.poll() is None, "the rollback of a live key restarted the daemon"
        got = operator.ask("config/get")["data"]
        assert got["config"]["logging"]["level"] == "info" and got["remote_keys"] == [], got
        daemon.terminate()
        logs.append(daemon.communicate(timeout=60)[1])
    finally:
        daemon.kill()
        operator.close()
    log = "".join(logs)
    assert daemon.returncode == 0, log
    assert "restarting" not in log and "Traceback" not in log


class AclMosquitto(Mosquitto):
    def __init__(self, workdir: Path, password_file: Path, acl_file: Path):
        super().__init__(workdir, password_file=password_file)
        self.acl_file = acl_file

    def _write_config(self) -> Path:
        config = super()._write_config()
        config.write_text(config.read_text() + f"acl_file {self.acl_file}\n")
        return config


def documented_acl() -> str:
    """The installer's ACL block for a device, and the fleet-operator example from docs/mqtt.md."""
    installed = (Path(__file__).resolve().parents[2] / "config" / "mosquitto" / "edgescribe.acl").read_text()
    installed = (installed.replace("@USER@", "edgescribe").replace("@TREE@", "edgescribe/test-press")
                 .replace("@DISCOVERY@", "homeassistant").replace("@PREFIX@", "edgescribe"))
    docs = (Path(__file__).resolve().parents[2] / "docs" / "mqtt.md").read_text()
    example = next(block for block in docs.split("```") if "user fleet-operator" in block)
    return installed + example + "user dashboard\ntopic read edgescribe/#\n"


def test_the_documented_acl_lets_only_the_fleet_operator_send_requests(tmp_path):
    users = make_password_file(tmp_path / "broker" / "passwords", {"edgescribe": "device-pw", OPERATOR[0]: OPERATOR[1],
                                                                   "dashboard": "dash-pw"})
    acl = tmp_path / "broker" / "acl"
    acl.write_text(documented_acl())
    server = AclMosquitto(tmp_path / "broker", users, acl)
    server.start()
    received: list[bytes] = []
    device = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    device.username_pw_set("edgescribe", "device-pw")
    subscribed = threading.Event()
    device.on_subscribe = lambda *args: subscribed.set()
    device.on_message = lambda client, userdata, message: received.append(message.payload)
    try:
        device.connect("127.0.0.1", server.port)
        device.loop_start()
        device.subscribe(f"{BASE}/request/#", qos=1)
        assert subscribed.wait(10)
        for user, password in (("dashboard", "dash-pw"), OPERATOR):
            sender = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
            sender.username_pw_set(user, password)
            sender.connect("127.0.0.1", server.port)
            sender.loop_start()
            sender.publish(f"{BASE}/request/restart", user.encode(), qos=1).wait_for_publish(5)
            sender.disconnect()
            sender.loop_stop()
        deadline = time.monotonic() + 5
        while b"fleet-operator" not in received and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert received == [b"fleet-operator"], received
    finally:
        device.disconnect()
        device.loop_stop()
        server.stop()
