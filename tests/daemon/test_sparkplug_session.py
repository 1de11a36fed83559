"""The edge-node bookkeeping: seq, bdSeq, aliases, births before data, report by exception."""

from __future__ import annotations

import pytest

from edgescribe.daemon.sparkplug.payload import DataType, Metric, encode
from edgescribe.daemon.sparkplug.session import EdgeSession, Final, NodeStatus, rebirth_requested
from tests.fixtures.sparkplug_host import decode, value_of

NOW = 1_796_000_000.0


def final(stream="mic1", text="stop the press", start=NOW - 3.0) -> Final:
    return Final(stream, f"{stream}-1", text, "en", start, start + 1.5, 0.4, -0.2, 0.01, 1.1)


def born(streams=("mic1", "mic2")) -> EdgeSession:
    session = EdgeSession("plant", "line3", list(streams))
    session.node_birth(4, NodeStatus(model="tiny.en", temperatures_c={"cpu": 40.0}), NOW)
    for stream in streams:
        session.device_birth(stream, -50.0, NOW)
    return session


def test_topics():
    session = EdgeSession("plant", "line3", ["mic1"])
    assert session.node_topic("NBIRTH") == "spBv1.0/plant/NBIRTH/line3"
    assert session.device_topic("DDATA", "mic1") == "spBv1.0/plant/DDATA/line3/mic1"


def test_nbirth_has_seq_zero_bdseq_and_rebirth_and_ndeath_matches_it():
    session = EdgeSession("plant", "line3", ["mic1"])
    birth = decode(session.node_birth(17, NodeStatus(), NOW).payload)
    death_message = session.death(17)
    death = decode(death_message.payload)
    assert birth.seq == 0 and birth.HasField("seq")
    metrics = {m.name: m for m in birth.metrics}
    assert value_of(metrics["bdSeq"]) == 17 and metrics["bdSeq"].datatype == DataType.Int64
    assert value_of(metrics["Node Control/Rebirth"]) is False
    assert [value_of(m) for m in death.metrics if m.name == "bdSeq"] == [17]
    assert not death.HasField("seq") and death_message.qos == 1 and not death_message.retain


def test_seq_counts_every_message_and_wraps_after_255():
    session = born(["mic1"])  # NBIRTH 0, DBIRTH 1
    seqs = [decode(session.device_data("mic1", {"Transcript/Partial": f"p{i}"}, NOW).payload).seq for i in range(300)]
    assert seqs[:3] == [2, 3, 4]
    assert seqs[253:256] == [255, 0, 1]
    assert all(b == (a + 1) % 256 for a, b in zip(seqs, seqs[1:]))
    assert decode(session.node_birth(4, NodeStatus(), NOW).payload).seq == 0  # a rebirth starts again


def test_data_before_birth_is_refused():
    session = EdgeSession("plant", "line3", ["mic1"])
    with pytest.raises(RuntimeError, match="no NBIRTH"):
        session.device_birth("mic1", None, NOW)
    session.node_birth(0, NodeStatus(), NOW)
    with pytest.raises(RuntimeError, match="no DBIRTH"):
        session.final(final(), False, NOW)
    session.device_birth("mic1", None, NOW)
    session.device_death("mic1", NOW)
    with pytest.raises(RuntimeError, match="no DBIRTH"):
        session.final(final(), False, NOW)


def test_aliases_unique_across_node_and_devices_and_data_carries_alias_only():
    session = EdgeSession("plant", "line3", ["mic1", "mic2"])
    births = [decode(session.node_birth(1, NodeStatus(), NOW).payload),
              decode(session.device_birth("mic1", None, NOW).payload),
              decode(session.device_birth("mic2", None, NOW).payload)]
    aliases = [m.alias for b in births for m in b.metrics if m.HasField("alias")]
    assert len(aliases) == len(set(aliases)) > 20
    assert all(m.HasField("name") and m.HasField("datatype") for b in births for m in b.metrics)
    data = decode(session.final(final("mic2"), False, NOW).payload)
    assert all(not m.HasField("name") and m.HasField("alias") for m in data.metrics)
    mic2_aliases = {m.alias for m in births[2].metrics}
    assert {m.alias for m in data.metrics} <= mic2_aliases
    # a rebirth keeps every alias
    session.node_birth(1, NodeStatus(), NOW)
    again = decode(session.device_birth("mic1", None, NOW).payload)
    assert {m.name: m.alias for m in again.metrics} == {m.name: m.alias for m in births[1].metrics}


def test_final_is_stamped_with_its_speech_and_flagged_historical():
    session = born(["mic1"])
    live = decode(session.final(final(start=NOW - 10), False, NOW).payload)
    late = decode(session.final(final(start=NOW - 5000), True, NOW).payload)
    assert {m.timestamp for m in live.metrics} == {round((NOW - 10) * 1000)}
    assert not any(m.is_historical for m in live.metrics)
    assert all(m.is_historical for m in late.metrics)
    assert "stop the press" in [value_of(m) for m in live.metrics]


def test_node_data_reports_only_changes():
    session = born(["mic1"])
    assert session.node_data(NodeStatus(model="tiny.en", temperatures_c={"cpu": 40.0}), NOW) is None
    changed = decode(session.node_data(NodeStatus(model="tiny.en", uptime_s=30.0, outbox_depth=2,
                                                  temperatures_c={"cpu": 40.0, "gpu": 39.0}), NOW).payload)
    assert sorted(value_of(m) for m in changed.metrics) == [2, 30.0]  # gpu appeared after the birth: next birth


def test_final_survives_the_outbox_encoding():
    original = final(text="Größe 12, zwölf Millimeter")
    assert Final.from_bytes(original.to_bytes()) == original


def test_rebirth_command_is_recognised():
    ask = encode([Metric(DataType.Boolean, True, name="Node Control/Rebirth")], 1, seq=None)
    no = encode([Metric(DataType.Boolean, False, name="Node Control/Rebirth")], 1, seq=None)
    assert rebirth_requested(ask) and not rebirth_requested(no) and not rebirth_requested(b"\xff\xff garbage")
