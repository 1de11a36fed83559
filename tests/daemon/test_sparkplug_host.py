"""The test suite's Sparkplug host must catch each breach it claims to check, or its passes mean nothing.

A hand-driven paho client plays a faulty edge node on a real mosquitto.
"""

from __future__ import annotations

import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgescribe.daemon.sparkplug.payload import DataType, Metric, encode
from tests.fixtures.mosquitto import Subscriber, mosquitto  # noqa: F401 (fixture)
from tests.fixtures.sparkplug_host import SparkplugHost

T = "spBv1.0/plant"


def nbirth(seq=0, bd_seq=5, rebirth=True) -> bytes:
    metrics = [Metric(DataType.Int64, bd_seq, name="bdSeq"), Metric(DataType.String, "x", name="Model", alias=1)]
    if rebirth:
        metrics.append(Metric(DataType.Boolean, False, name="Node Control/Rebirth"))
    return encode(metrics, 1, seq=seq)


def dbirth(seq) -> bytes:
    return encode([Metric(DataType.String, None, name="Transcript/Final", alias=2)], 1, seq=seq)


def ddata(seq, text="hello", alias=2) -> bytes:
    return encode([Metric(DataType.String, text, alias=alias)], 1, seq=seq)


def ndeath(bd_seq=5) -> bytes:
    return encode([Metric(DataType.Int64, bd_seq, name="bdSeq")], 1, seq=None)


class FaultyNode:
    def __init__(self, port):
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="faulty")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, *messages) -> None:
        for topic, payload, *qos in messages:
            self.client.publish(f"{T}/{topic}", payload, qos=qos[0] if qos else 0).wait_for_publish(5)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def judged(port, *messages) -> SparkplugHost:
    host = SparkplugHost(port, "plant").connect()
    node = FaultyNode(port)
    node.send(*messages)
    time.sleep(0.5)
    node.close()
    host.disconnect()
    return host


GOOD = [("NBIRTH/n", nbirth()), ("DBIRTH/n/mic1", dbirth(1)), ("DDATA/n/mic1", ddata(2)), ("NDEATH/n", ndeath(), 1)]


def test_a_correct_sequence_passes(mosquitto):
    host = judged(mosquitto.port, *GOOD)
    host.check()
    assert host.finals() == ["hello"]


@pytest.mark.parametrize("messages,rule", [
    ([("NBIRTH/n", nbirth()), ("DDATA/n/mic1", ddata(1))], "payloads-ddata-order"),
    ([("NBIRTH/n", nbirth()), ("DBIRTH/n/mic1", dbirth(1)), ("DDATA/n/mic1", ddata(3))],
     "payloads-sequence-num-incrementing"),
    ([("NBIRTH/n", nbirth(seq=3))], "payloads-sequence-num-zero-nbirth"),
    ([("NBIRTH/n", nbirth(rebirth=False))], "payloads-nbirth-rebirth-req"),
    ([("NBIRTH/n", nbirth(bd_seq=5)), ("NDEATH/n", ndeath(bd_seq=6), 1)], "topics-ndeath-bdseq"),
    ([("NBIRTH/n", nbirth()), ("NDEATH/n", ndeath(), 1), ("DBIRTH/n/mic1", dbirth(1))], "before the node's NBIRTH"),
    ([("NBIRTH/n", nbirth()), ("DBIRTH/n/mic1", dbirth(1), 1)], "MUST be QoS 0"),
    ([("NBIRTH/n", nbirth()), ("NDEATH/n", encode([Metric(DataType.Int64, 5, name="bdSeq")], 1, seq=1), 1)],
     "payloads-ndeath-seq"),
    ([("NBIRTH/n", nbirth()), ("DBIRTH/n/mic1", dbirth(1)), ("DDATA/n/mic1", ddata(2, alias=9))],
     "payloads-alias-data-cmd-requirement"),
    ([("NBIRTH/n", nbirth()), ("DBIRTH/n/mic1", encode([Metric(DataType.String, "x", name="Other", alias=1)], 1,
                                                        seq=1))], "payloads-alias-uniqueness"),
    ([("NBIRTH/n", nbirth()), ("DBIRTH/n/mic1", dbirth(1)), ("DDATA/n/mic1", b"\x0a\xff\xff")], "does not decode"),
])
def test_each_breach_is_caught(mosquitto, messages, rule):
    host = judged(mosquitto.port, *messages)
    with pytest.raises(AssertionError, match=rule):
        host.check()


def test_a_host_that_joins_mid_session_asks_for_a_rebirth_instead_of_judging(mosquitto):
    commands = Subscriber(mosquitto.port, [f"{T}/NCMD/#"]).connect()
    host = judged(mosquitto.port, ("DDATA/n/mic1", ddata(7)), ("DDATA/n/mic1", ddata(8)))
    host.check()
    asked = commands.wait_for(lambda m: bool(m), 5)
    assert [m.topic for m in asked] == [f"{T}/NCMD/n"]  # once, not per message
    commands.disconnect()
