"""The device-to-plant bridge (config/mosquitto/bridge.conf) between two real mosquitto brokers.

The real daemon transcribes into the device's broker; the shipped bridge file, with only
its placeholders filled in and a shorter retry, carries everything to a plant broker
through a TCP proxy this test controls. Cutting the proxy for 30 s drops the link while
both brokers (and the plant broker's persistent sessions) stay up, as a failed switch or
cable would. One such test only: it is the suite's one 30-s outage.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import wave
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.daemon.test_requests import check_response
from tests.daemon.test_requests import write_config as requests_config
from tests.fixtures.daemon import JFK, start_daemon, wait_for_log, write_config
from tests.fixtures.models import tiny_en_package  # noqa: F401  (fixture)
from tests.fixtures.mosquitto import Mosquitto, Subscriber, free_port, make_password_file

REPO = Path(__file__).resolve().parents[2]
BRIDGE_CONF = REPO / "config" / "mosquitto" / "bridge.conf"
OUTAGE_S = 30.0


class TcpProxy:
    """Forwards a loopback port to another; ``cut()`` drops every connection and refuses new ones."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    @property
    def listening(self) -> bool:
        return self._listener is not None

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        try:
            listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone would not
        except OSError:
            pass
        listener.close()
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            connection.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._connections += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class BridgedMosquitto(Mosquitto):
    """The fixture's broker with config/mosquitto/bridge.conf appended, placeholders filled in."""

    def __init__(self, workdir: Path, device_id: str, prefix: str, plant_address: str,
                 password_file: Path | None = None):
        super().__init__(workdir, password_file=password_file)
        text = BRIDGE_CONF.read_text()
        values = {"@DEVICE_ID@": device_id, "@PREFIX@": prefix, "@PLANT_ADDRESS@": plant_address}
        for placeholder, value in values.items():
            assert placeholder in text
            text = text.replace(placeholder, value)
        # the shipped back-off (5 s doubling to 60 s) would make the test wait for a retry
        self.bridge = text.replace("restart_timeout 5 60", "restart_timeout 1 2")
        assert self.bridge != text

    def _write_config(self) -> Path:
        config = super()._write_config()
        config.write_text(config.read_text() + self.bridge)
        return config


def long_speech(path: Path, repeats: int) -> Path:
    """JFK's sentence ``repeats`` times over: speech for the whole outage."""
    with wave.open(str(JFK)) as source:
        params, frames = source.getparams(), source.readframes(source.getnframes())
    with wave.open(str(path), "wb") as out:
        out.setparams(params)
        out.writeframes(frames * repeats)
    return path


def finals(messages) -> list[dict]:
    return [m.json() for m in messages if m.topic.endswith("/final")]


def test_a_30_s_bridge_outage_loses_no_final_and_requests_come_in(tmp_path, tiny_en_package):
    plant = Mosquitto(tmp_path / "plant")  # persistence on: sessions and queues outlive a restart
    plant.start()
    proxy = TcpProxy(plant.port)
    proxy.start()
    device = BridgedMosquitto(tmp_path / "device", "test-press", "edgescribe", f"127.0.0.1:{proxy.port}")
    device.start()
    daemon = None
    try:
        historian = Subscriber(plant.port, ["edgescribe/+/transcript/+/final", "edgescribe/bridge/+",
                                            "edgescribe/+/request/#", "edgescribe/+/response/#"],
                               client_id="plant-historian").connect()
        local = Subscriber(device.port, ["edgescribe/test-press/transcript/+/final",
                                         "edgescribe/test-press/request/#"]).connect()
        bridge_states = lambda m: [x.payload for x in m if x.topic == "edgescribe/bridge/test-press"]  # noqa: E731
        assert bridge_states(historian.wait_for(lambda m: b"1" in bridge_states(m), 20))[-1:] == [b"1"], device.log()

        audio = long_speech(tmp_path / "speech.wav", repeats=4)
        config = write_config(tmp_path / "config.yaml", tiny_en_package.dir, device.port, tmp_path / "state", audio,
                              speed=1.0)
        daemon = start_daemon(config, "--once")
        assert finals(historian.wait_for(lambda m: finals(m), 90)), "no final crossed the bridge before the cut"

        proxy.cut()
        before_cut = len(finals(local.messages))
        plant_side = historian.wait_for(lambda m: bridge_states(m)[-1:] == [b"0"], 10)
        assert bridge_states(plant_side)[-1:] == [b"0"], "the plant broker did not publish the bridge's will"
        # an operator's request while the link is down waits in the bridge's session on the plant broker
        publish(plant.port, "edgescribe/test-press/request/health_check", {"transaction": "during-outage"})
        time.sleep(OUTAGE_S)
        during_outage = len(finals(local.messages)) - before_cut
        assert bridge_states(historian.messages)[-1:] == [b"0"], "the link came back during the outage"
        proxy.start()

        _, stderr = daemon.communicate(timeout=180)
        assert daemon.returncode == 0, stderr
        sent = finals(local.wait_for(lambda m: False, 1))
        assert during_outage >= 1, "no final was published while the link was down: the test tests nothing"
        expected = [f["seq"] for f in sent]
        plant_side = historian.wait_for(lambda m: {f["seq"] for f in finals(m)} >= set(expected), 60)
        seen, unique = set(), []
        for final in finals(plant_side):
            if final["seq"] not in seen:
                seen.add(final["seq"])
                unique.append(final)
        assert [f["seq"] for f in unique] == expected, "finals lost or out of order across the outage"
        assert unique == sent
        plant_side = historian.wait_for(lambda m: bridge_states(m)[-1:] == [b"1"], 10)
        assert bridge_states(plant_side)[-1:] == [b"1"], (bridge_states(plant_side), device.log(), plant.log())

        requests = lambda m: [x.json()["transaction"] for x in m if "/request/" in x.topic]  # noqa: E731
        assert requests(local.wait_for(lambda m: "during-outage" in requests(m), 20)) == ["during-outage"]
        publish(plant.port, "edgescribe/test-press/request/info", {"transaction": "after"})
        assert requests(local.wait_for(lambda m: "after" in requests(m), 10)) == ["during-outage", "after"]
        # a response goes back out; a request is not echoed back to the plant broker
        publish(device.port, "edgescribe/test-press/response/info", {"status": "ok", "transaction": "after"})
        plant_side = historian.wait_for(lambda m: any("/response/" in x.topic for x in m), 10)
        assert [x.json()["transaction"] for x in plant_side if "/response/" in x.topic] == ["after"]
        assert requests(plant_side) == ["during-outage", "after"]
        historian.disconnect()
        local.disconnect()
    finally:
        if daemon and daemon.poll() is None:
            daemon.kill()
        device.stop()
        if proxy.listening:
            proxy.cut()
        plant.stop()


def test_a_request_sent_to_the_plant_broker_is_answered_by_the_device(tmp_path, tiny_en_package):
    """The fleet operator's path end to end: plant broker -> bridge -> the device's authenticated
    broker -> the real daemon's request handler -> response back over the bridge."""
    plant = Mosquitto(tmp_path / "plant")
    plant.start()
    users = make_password_file(tmp_path / "device" / "passwords", {"edgescribe": "device-pw"})
    device = BridgedMosquitto(tmp_path / "device", "test-press", "edgescribe", f"127.0.0.1:{plant.port}",
                              password_file=users)
    device.start()
    daemon, lines = None, []
    try:
        operator = Subscriber(plant.port, ["edgescribe/test-press/response/#", "edgescribe/bridge/+"]).connect()
        state = lambda m: [x.payload for x in m if x.topic == "edgescribe/bridge/test-press"][-1:]  # noqa: E731
        assert state(operator.wait_for(lambda m: state(m) == [b"1"], 20)) == [b"1"], device.log()
        daemon = start_daemon(requests_config(tmp_path, device.port, tiny_en_package.dir))
        wait_for_log(daemon, lines, "ready:", 90)

        def answer(operation: str, transaction: str, timeout: float) -> dict | None:
            publish(plant.port, f"edgescribe/test-press/request/{operation}", {"transaction": transaction})
            found = operator.wait_for(lambda m: any(transaction.encode() in x.payload for x in m), timeout)
            replies = [x for x in found if x.topic == f"edgescribe/test-press/response/{operation}"
                       and x.json().get("transaction") == transaction]
            return replies[0].json() if replies else None

        # the daemon subscribes once its link is up; a request before that has no one to reach
        deadline, attempt, health = time.monotonic() + 30, 0, None
        while health is None and time.monotonic() < deadline:
            attempt += 1
            health = answer("health_check", f"plant-health-{attempt}", 2)
        assert health is not None, f"no response crossed the bridge; device log:\n{device.log()}"
        check_response("health_check", health)
        info = answer("info", "plant-info", 15)
        assert info is not None and info["status"] == "ok", info
        check_response("info", info)
        assert info["data"]["config"]["device_id"] == "test-press" and info["data"]["backend"] == "onnxruntime"
        # a refusal crosses back the same way, its transaction echoed
        refused = answer("reboot_now", "plant-unknown", 15)
        assert refused is not None and "unknown operation 'reboot_now'" in refused["error"], refused
        operator.disconnect()
        daemon.terminate()
        lines.append(daemon.communicate(timeout=60)[1])
        assert daemon.returncode == 0, "".join(lines)
        assert "Traceback" not in "".join(lines)
    finally:
        if daemon and daemon.poll() is None:
            daemon.kill()
        device.stop()
        plant.stop()


def publish(port: int, topic: str, payload: dict) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.publish(topic, json.dumps(payload), qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()
