"""Nothing final is lost: broker outages, SIGKILL of the daemon, last will. Real mosquitto, real paho.

The consumer is a persistent-session QoS 1 subscriber: while the broker is down the finals
wait in the daemon's outbox; once both are back the broker queues them for the consumer's
session until it reconnects, so the consumer gets every one even if the daemon drains first.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from edgescribe.daemon.config.mqtt import MqttConfig
from edgescribe.daemon.publisher import Publisher
from tests.daemon.test_publisher import transcript
from tests.fixtures.mosquitto import Subscriber, mosquitto, retained, validate_payload  # noqa: F401 (fixture)

DRIVER = Path(__file__).resolve().parents[2] / "scripts" / "mqtt_soak_driver.py"


def unique_seqs(messages) -> list[int]:
    """Seqs in arrival order, duplicates removed (delivery is at-least-once by design)."""
    seen, order = set(), []
    for message in messages:
        seq = message.json()["seq"]
        if seq not in seen:
            seen.add(seq)
            order.append(seq)
    return order


def test_broker_outage_of_30_s_loses_no_final(mosquitto, tmp_path):
    consumer = Subscriber(mosquitto.port, ["edgescribe/line-a/transcript/+/final"], client_id="consumer-outage").connect()
    config = MqttConfig(host="127.0.0.1", port=mosquitto.port, keepalive_s=5, reconnect_min_s=0.2, reconnect_max_s=2)
    publisher = Publisher.from_config(config, "line-a", tmp_path / "state")
    publisher.start()
    try:
        assert publisher.link.wait_connected(10)
        for index in range(5):
            publisher.publish(transcript("final", index))
        assert len(consumer.wait_for(lambda m: len(m) >= 5, 10)) == 5

        mosquitto.stop()
        outage_started = time.monotonic()
        for index in range(5, 65):  # 60 finals over the 30-s outage
            publisher.publish(transcript("final", index))
            time.sleep(0.5)
        assert time.monotonic() - outage_started >= 30
        assert publisher.outbox.stats().depth == 60
        mosquitto.start()

        messages = consumer.wait_for(lambda m: len(unique_seqs(m)) >= 65, 40)
    finally:
        publisher.stop()
        consumer.disconnect()
    assert unique_seqs(messages) == list(range(1, 66))
    texts = [m.json()["utterance_id"].rsplit("-", 1)[1] for m in messages]
    assert sorted(set(texts), key=int) == [str(i) for i in range(65)]
    assert publisher.link.stats().reconnects >= 1
    for message in messages[:3] + messages[-3:]:
        validate_payload(message.json(), "final")


class Driver:
    """scripts/mqtt_soak_driver.py as a separate process; collects its 'produced <seq>' lines."""

    def __init__(self, port: int, state_dir: Path, *args: str):
        self.produced: list[int] = []
        self.process = subprocess.Popen(
            [sys.executable, str(DRIVER), "--port", str(port), "--device-id", "line-b", "--state-dir", str(state_dir),
             "--reconnect-max", "1", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.startswith("produced "):
                self.produced.append(int(line.split()[1]))

    def wait_produced(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.produced) < count:
            assert time.monotonic() < deadline, f"driver produced only {len(self.produced)}: {self.stderr_tail()}"
            assert self.process.poll() is None, f"driver exited: {self.stderr_tail()}"
            time.sleep(0.05)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(15)

    def stderr_tail(self) -> str:
        if self.process.poll() is None:
            return "(still running)"
        return self.process.stderr.read()[-2000:]


def test_sigkill_while_the_broker_is_down_loses_no_final(mosquitto, tmp_path):
    consumer = Subscriber(mosquitto.port, ["edgescribe/line-b/transcript/+/final"], client_id="consumer-kill").connect()
    state_dir = tmp_path / "state"
    driver = Driver(mosquitto.port, state_dir, "--count", "1000", "--interval", "0.1")
    try:
        driver.wait_produced(10, 20)
        mosquitto.stop()
        before_outage = len(driver.produced)
        driver.wait_produced(before_outage + 20, 20)
        driver.kill()
    finally:
        if driver.process.poll() is None:
            driver.kill()
    produced = list(driver.produced)

    mosquitto.start()
    restarted = Driver(mosquitto.port, state_dir, "--count", "0")
    try:
        messages = consumer.wait_for(lambda m: set(produced) <= set(unique_seqs(m)), 30)
        assert restarted.terminate() == 0
    finally:
        if restarted.process.poll() is None:
            restarted.kill()
        consumer.disconnect()
    received = unique_seqs(messages)
    assert set(produced) <= set(received), f"lost: {sorted(set(produced) - set(received))}"
    assert received == sorted(received)  # in order
    assert len(produced) >= 30


def test_sigkill_leaves_offline_and_clean_stop_leaves_stopped(mosquitto, tmp_path):
    topic = "edgescribe/line-b/availability"
    driver = Driver(mosquitto.port, tmp_path / "a", "--count", "1", "--keepalive", "2")
    driver.wait_produced(1, 20)
    deadline = time.monotonic() + 10
    while retained(mosquitto.port, topic, timeout=1) != b"online" and time.monotonic() < deadline:
        pass
    driver.kill()
    # The broker sends the will once 1.5 x keepalive passes without a packet.
    deadline = time.monotonic() + 15
    state = None
    while time.monotonic() < deadline:
        state = retained(mosquitto.port, topic, timeout=1)
        if state == b"offline":
            break
        time.sleep(0.5)
    assert state == b"offline"

    clean = Driver(mosquitto.port, tmp_path / "b", "--count", "1", "--keepalive", "2")
    clean.wait_produced(1, 20)
    deadline = time.monotonic() + 10
    while retained(mosquitto.port, topic, timeout=1) != b"online" and time.monotonic() < deadline:
        pass
    assert clean.terminate() == 0
    time.sleep(4)  # longer than 1.5 x keepalive: a will, wrongly sent, would have replaced "stopped"
    assert retained(mosquitto.port, topic) == b"stopped"
