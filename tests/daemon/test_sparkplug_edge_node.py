"""The Sparkplug edge node against a real mosquitto, judged by a Sparkplug host application.

Every test ends with ``host.check()``: the host decoded every payload with the protobuf
definition and found no breach of the specification's rules (tests/fixtures/sparkplug_host.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edgescribe.daemon.config.mqtt import MqttConfig
from edgescribe.daemon.events import Confidence, StreamStateEvent, TranscriptEvent
from edgescribe.daemon.outbox import Outbox
from edgescribe.daemon.sparkplug.edge_node import NodeIdentity, SparkplugEdgeNode
from edgescribe.daemon.sparkplug.session import NodeStatus
from tests.fixtures.mosquitto import mosquitto  # noqa: F401 (fixture)
from tests.fixtures.sparkplug_host import SparkplugHost, value_of

REPO = Path(__file__).resolve().parents[2]
NODE = "line3"


def transcript(stream: str, kind: str, text: str, number: int) -> TranscriptEvent:
    start = time.time() - 2.0
    return TranscriptEvent(stream=stream, utterance_id=f"{stream}-{number}", sequence=1 if kind == "final" else 0,
                           kind=kind, stable_text=text, unstable_text="", audio_start=0.0, audio_end=1.0,
                           wall_start=start, wall_end=start + 1.0, language="en",
                           confidence=Confidence(-0.2, 0.01, 1.2, 0.0), model="tiny.en", backend="onnxruntime",
                           latency_s=0.5)


def make_node(port: int, state_dir: Path, identity: NodeIdentity = NodeIdentity("plant", NODE),
              streams=("mic1", "mic2")) -> SparkplugEdgeNode:
    config = MqttConfig(host="127.0.0.1", port=port, reconnect_min_s=0.1, reconnect_max_s=0.5, keepalive_s=5)
    outbox = Outbox(state_dir / "sparkplug-outbox.db")
    return SparkplugEdgeNode(identity, config, list(streams), outbox, state_dir, client_id=f"{NODE}-spb")


def bd_seqs(host: SparkplugHost, kind: str) -> list[int]:
    return [value_of(m) for o in host.messages if o.kind == kind for m in o.payload.metrics if m.name == "bdSeq"]


def test_births_data_device_death_rebirth_and_clean_stop(mosquitto, tmp_path):
    host = SparkplugHost(mosquitto.port, "plant").connect()
    node = make_node(mosquitto.port, tmp_path / "state")
    node.start()
    try:
        assert host.wait_for(lambda h: h.kinds(NODE)[:3] == ["NBIRTH", "DBIRTH/mic1", "DBIRTH/mic2"], 10), host.kinds()
        node.submit(transcript("mic1", "partial", "stop the", 1))
        node.submit(transcript("mic1", "final", "stop the press", 1))
        node.update_status(NodeStatus(model="tiny.en", backend="onnxruntime", uptime_s=12.0, outbox_depth=0),
                           {"mic1": -42.0})
        assert host.wait_for(lambda h: h.finals("mic1") == ["stop the press"], 10)
        assert host.wait_for(lambda h: [p.value for p in h.values("Uptime (s)")][-1:] == [12.0], 10)
        assert [p.value for p in host.values("Transcript/Partial", "mic1")] == ["stop the"]
        assert not any(p.historical for p in host.values("Transcript/Final"))

        node.submit(StreamStateEvent("mic2", "down", "unplugged", time.time()))
        assert host.wait_for(lambda h: "DDEATH/mic2" in h.kinds(), 10)
        node.submit(StreamStateEvent("mic2", "up", "back", time.time()))
        assert host.wait_for(lambda h: h.kinds().count("DBIRTH/mic2") == 2, 10)

        host.request_rebirth(NODE)
        assert host.wait_for(lambda h: h.count("NBIRTH") == 2 and h.kinds().count("DBIRTH/mic1") == 2, 10)
        assert bd_seqs(host, "NBIRTH") == [0, 0]  # a rebirth keeps the session's bdSeq
        node.submit(transcript("mic2", "final", "press two clear", 2))
        assert host.wait_for(lambda h: h.finals("mic2") == ["press two clear"], 10)
    finally:
        node.stop()
    assert host.wait_for(lambda h: h.count("NDEATH") == 1, 10), host.kinds()
    assert bd_seqs(host, "NDEATH") == [0] and not host.alive(NODE)
    assert node.outbox.stats().depth == 0  # every final confirmed by the broker
    node.outbox.close()
    host.check()

    node = make_node(mosquitto.port, tmp_path / "state")  # the next run uses the next bdSeq
    node.start()
    try:
        assert host.wait_for(lambda h: h.count("NBIRTH") == 3, 10)
        assert bd_seqs(host, "NBIRTH")[-1] == 1
    finally:
        node.stop()
    host.disconnect()
    host.check()


def test_sigkill_leaves_the_will_ndeath_with_the_births_bdseq(mosquitto, tmp_path):
    host = SparkplugHost(mosquitto.port, "plant").connect()
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {str(REPO)!r})
        from tests.daemon.test_sparkplug_edge_node import make_node
        node = make_node({mosquitto.port}, Path({str(tmp_path / 'state')!r}))
        node.start()
        time.sleep(600)
    """)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "sparkplug-bdseq").write_text("41\n")  # a node that has run before
    process = subprocess.Popen([sys.executable, "-c", script])
    try:
        assert host.wait_for(lambda h: h.kinds(NODE)[:3] == ["NBIRTH", "DBIRTH/mic1", "DBIRTH/mic2"], 20)
        os.kill(process.pid, signal.SIGKILL)
        assert host.wait_for(lambda h: h.count("NDEATH") == 1, 10), host.kinds()
    finally:
        process.kill()
        process.wait()
    assert bd_seqs(host, "NBIRTH") == bd_seqs(host, "NDEATH") == [42]
    assert not host.alive(NODE)
    host.disconnect()
    host.check()


@pytest.mark.slow
def test_store_and_forward_across_a_30_s_broker_outage(mosquitto, tmp_path):
    """With a primary host, the node births only after the host is back: no historical final is missed."""
    host = SparkplugHost(mosquitto.port, "plant", host_id="scada").connect()
    node = make_node(mosquitto.port, tmp_path / "state", NodeIdentity("plant", NODE, "scada", True))
    node.start()
    texts = [f"final number {i}" for i in range(9)]
    try:
        assert host.wait_for(lambda h: h.count("DBIRTH") == 2, 10)
        for i in range(3):
            node.submit(transcript("mic1", "final", texts[i], i))
        assert host.wait_for(lambda h: len(h.finals()) == 3, 10)
        mosquitto.stop()
        outage_end = time.monotonic() + 30
        for i in range(3, 6):
            node.submit(transcript("mic1" if i % 2 else "mic2", "final", texts[i], i))
            time.sleep(5)
        assert node.outbox.stats().depth == 3
        time.sleep(max(0.0, outage_end - time.monotonic()))
        mosquitto.start()
        for i in range(6, 9):
            node.submit(transcript("mic2", "final", texts[i], i))
        assert host.wait_for(lambda h: len(h.finals()) == 9, 30), host.finals()
    finally:
        node.stop()
    assert host.finals() == texts  # none lost, in order
    flags = [p.historical for p in host.values("Transcript/Final")]
    assert flags[:3] == [False] * 3 and flags[3:6] == [True] * 3
    assert node.outbox.stats().depth == 0
    host.disconnect()
    host.check()


def test_store_and_forward_across_a_primary_host_outage(mosquitto, tmp_path):
    host = SparkplugHost(mosquitto.port, "plant", host_id="scada").connect()
    node = make_node(mosquitto.port, tmp_path / "state", NodeIdentity("plant", NODE, "scada", True))
    node.start()
    texts = [f"utterance {i}" for i in range(7)]
    try:
        assert host.wait_for(lambda h: h.count("DBIRTH") == 2, 10)
        node.submit(transcript("mic1", "final", texts[0], 0))
        assert host.wait_for(lambda h: len(h.finals()) == 1, 10)
        host.go_offline()
        assert host.wait_for(lambda h: h.count("NDEATH") == 1, 10), host.kinds()  # the node ends its session
        for i in range(1, 5):
            node.submit(transcript("mic2", "final", texts[i], i))
        time.sleep(1.0)
        assert host.count("NBIRTH") == 1 and len(host.finals()) == 1  # nothing while the host is away
        host.go_online()
        for i in range(5, 7):
            node.submit(transcript("mic1", "final", texts[i], i))
        assert host.wait_for(lambda h: len(h.finals()) == 7, 10), host.finals()
    finally:
        node.stop()
    assert host.finals() == texts
    assert bd_seqs(host, "NBIRTH") == [0, 1] and bd_seqs(host, "NDEATH")[:1] == [0]
    assert [p.historical for p in host.values("Transcript/Final")][1:5] == [True] * 4
    host.disconnect()
    host.check()


def test_finals_the_broker_never_took_are_sent_again(mosquitto, tmp_path):
    """QoS 0 has no PUBACK: a final written to the socket of a broker that then dies must stay
    in the outbox until a later SUBACK proves the broker had it, and go again after the restart."""
    node = make_node(mosquitto.port, tmp_path / "state")
    node.start()
    try:
        assert _wait(lambda: node.stats().state == "born", 10)
        mosquitto._process.send_signal(signal.SIGSTOP)  # alive for TCP, deaf for MQTT
        for i in range(3):
            node.submit(transcript("mic1", "final", f"written, never read {i}", i))
        assert _wait(lambda: node.stats().finals_sent == 3, 10)  # handed to the socket
        mosquitto._process.kill()
        mosquitto._process.wait()
        time.sleep(0.5)
        assert node.outbox.stats().depth == 3  # no proof of receipt: all kept
        mosquitto.start()
        assert _wait(lambda: node.outbox.stats().depth == 0, 15)  # sent again, and this time confirmed
        assert node.stats().historical_sent == 3
    finally:
        node.stop()
        node.outbox.close()


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_a_temperature_zone_first_seen_after_the_birth_is_declared_by_a_rebirth(mosquitto, tmp_path):
    host = SparkplugHost(mosquitto.port, "plant").connect()
    node = make_node(mosquitto.port, tmp_path / "state", streams=("mic1",))
    node.start()
    try:
        assert host.wait_for(lambda h: h.kinds(NODE)[:2] == ["NBIRTH", "DBIRTH/mic1"], 10)
        node.on_health({"uptime_s": 30.0, "jetson": {"temperatures_c": {"cpu": 48.5}}})
        assert host.wait_for(lambda h: h.count("NBIRTH") == 2, 10), host.kinds()
        assert [p.value for p in host.values("Temperature/cpu (C)")] == [48.5]
        node.on_health({"uptime_s": 60.0, "jetson": {"temperatures_c": {"cpu": 49.0}}})
        assert host.wait_for(lambda h: [p.value for p in h.values("Temperature/cpu (C)")] == [48.5, 49.0], 10)
        assert host.count("NBIRTH") == 2  # a known zone is data, not a new birth
    finally:
        node.stop()
        node.outbox.close()
    host.disconnect()
    host.check()
