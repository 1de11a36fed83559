"""Publisher: topics, payloads (validated against docs/schemas), seq, QoS, drop reports; real mosquitto."""

from __future__ import annotations

import time

import pytest

from edgescribe.daemon.config.mqtt import MqttConfig
from edgescribe.daemon.events import Confidence, GapEvent, ModelEvent, OutboxDropEvent, StreamStateEvent, TranscriptEvent
from edgescribe.daemon.publisher import Publisher, Topics, event_payload, final_payload, iso_utc, partial_payload
from tests.fixtures.mosquitto import Subscriber, mosquitto, validate_payload  # noqa: F401 (fixture)

WALL = 1_795_000_000.25


def transcript(kind: str = "final", index: int = 0, stream: str = "line1", text: str = "start the conveyor") -> TranscriptEvent:
    return TranscriptEvent(
        stream=stream, utterance_id=f"{stream}-1795000000000-{index}", sequence=3 if kind == "final" else 1, kind=kind,
        stable_text=text if kind == "final" else text.split()[0] + " ", unstable_text="" if kind == "final" else "the",
        audio_start=12.5 + index, audio_end=14.25 + index, wall_start=WALL, wall_end=WALL + 1.75, language="en",
        confidence=Confidence(avg_logprob=-0.25, no_speech_prob=0.02, compression_ratio=1.2, temperature=0.0),
        model="tiny.en", backend="onnxruntime", latency_s=0.61,
    )


EVENTS = [
    GapEvent(stream="line1", reason="overflow", audio_start=30.0, duration_s=0.5, wall_time=WALL),
    StreamStateEvent(stream="line1", state="down", detail="device hw:2,0 disappeared", wall_time=WALL),
    ModelEvent(action="switched", model="base", backend="tensorrt", detail="requested by config", wall_time=WALL),
    OutboxDropEvent(dropped=12, reason="size", wall_time=WALL),
]


def make_publisher(port: int, state_dir, device_id: str = "press-7", **overrides) -> Publisher:
    config = MqttConfig(host="127.0.0.1", port=port, reconnect_min_s=0.1, reconnect_max_s=0.5, keepalive_s=5,
                        **overrides)
    return Publisher.from_config(config, device_id, state_dir)


def test_iso_utc_is_z_suffixed_milliseconds():
    assert iso_utc(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso_utc(WALL) == "2026-11-18T11:06:40.250Z"


def test_topics_follow_prefix_device_layout():
    topics = Topics("edgescribe", "press-7")
    assert topics.availability == "edgescribe/press-7/availability"
    assert topics.transcript("line1", "final") == "edgescribe/press-7/transcript/line1/final"
    assert topics.transcript("a/b+#", "partial") == "edgescribe/press-7/transcript/a_b__/partial"
    assert topics.event == "edgescribe/press-7/event" and topics.health == "edgescribe/press-7/health"


def test_final_and_partial_payloads_match_the_schema():
    final = final_payload(transcript("final"), "press-7", seq=41, now=WALL + 2)
    validate_payload(final, "final")
    assert final["seq"] == 41 and final["text"] == "start the conveyor" and final["start"] == "2026-11-18T11:06:40.250Z"
    assert final["emitted"] == "2026-11-18T11:06:42.250Z" and final["audio_end"] == 14.25
    partial = partial_payload(transcript("partial"), stable_offset=0)
    validate_payload(partial, "partial")
    assert "seq" not in partial and partial["stable_append"] + partial["unstable_text"] == "start the"


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_event_payloads_match_the_schema(event):
    payload = event_payload(event, "press-7", seq=7)
    validate_payload(payload, "event")
    assert payload["time"] == "2026-11-18T11:06:40.250Z"


def test_schema_rejects_a_final_without_seq():
    import jsonschema

    payload = final_payload(transcript("final"), "press-7", seq=1, now=WALL)
    del payload["seq"]
    with pytest.raises(jsonschema.ValidationError):
        validate_payload(payload, "final")


def test_messages_arrive_on_their_topics_with_qos_and_seq(mosquitto, tmp_path):
    subscriber = Subscriber(mosquitto.port, ["edgescribe/#"]).connect()
    publisher = make_publisher(mosquitto.port, tmp_path)
    publisher.start()
    try:
        assert publisher.link.wait_connected(10)
        publisher.publish(transcript("partial", 0))
        time.sleep(0.2)  # let the first partial go alone: the second then travels under its MQTT 5 topic alias
        publisher.publish(transcript("partial", 0, text="start the conveyor now"))
        publisher.publish(transcript("final", 0))
        for event in EVENTS[:3]:
            publisher.publish(event)
        publisher.publish(transcript("final", 1, stream="line2"))
        messages = subscriber.wait_for(lambda m: len([r for r in m if "/availability" not in r.topic]) >= 7, 10)
    finally:
        publisher.stop()
        subscriber.disconnect()
    data = [m for m in messages if "/availability" not in m.topic]
    assert [m.topic.split("/", 2)[2] for m in data] == [
        "transcript/line1/partial", "transcript/line1/partial", "transcript/line1/final", "event", "event", "event",
        "transcript/line2/final"]
    assert publisher.link._alias_max > 0  # the broker granted aliases, so the second partial used one
    durable = [m.json() for m in data[2:]]
    assert [p["seq"] for p in durable] == [1, 2, 3, 4, 5]
    for message in data:
        validate_payload(message.json(), message.topic.rsplit("/", 1)[1])
    assert publisher.stats().acked == 5


def test_seq_keeps_increasing_across_restarts(mosquitto, tmp_path):
    subscriber = Subscriber(mosquitto.port, ["edgescribe/press-7/transcript/#"]).connect()
    for run in range(2):
        publisher = make_publisher(mosquitto.port, tmp_path)
        publisher.start()
        assert publisher.link.wait_connected(10)
        publisher.publish(transcript("final", run))
        publisher.publish(transcript("final", run + 10))
        subscriber.wait_for(lambda m: len(m) >= 2 * (run + 1), 10)
        publisher.stop()
    subscriber.disconnect()
    assert [m.json()["seq"] for m in subscriber.messages] == [1, 2, 3, 4]


def test_partials_are_dropped_not_stored_while_the_broker_is_away(tmp_path):
    from tests.fixtures.mosquitto import free_port

    publisher = make_publisher(free_port(), tmp_path)  # nothing listens there
    publisher.start()
    try:
        publisher.publish(transcript("partial"))
        publisher.publish(transcript("final"))
        time.sleep(0.3)
        stats = publisher.stats()
        assert stats.partials_dropped == 1 and stats.finals == 1
        assert publisher.outbox.stats().depth == 1  # only the final was stored
        assert "refused" in publisher.link.stats().last_error
    finally:
        publisher.stop()


def test_full_outbox_drops_oldest_and_reports_it(mosquitto, tmp_path):
    from tests.fixtures.mosquitto import free_port

    offline = make_publisher(free_port(), tmp_path, outbox_max_entries=10)
    offline.start()
    for index in range(25):
        offline.publish(transcript("final", index))
    offline.stop()

    subscriber = Subscriber(mosquitto.port, ["edgescribe/press-7/#"]).connect()
    publisher = make_publisher(mosquitto.port, tmp_path, outbox_max_entries=10)
    publisher.start()
    try:
        subscriber.wait_for(lambda m: len([r for r in m if "/availability" not in r.topic]) >= 10, 15)
    finally:
        publisher.stop()  # also sends a last drop report
        messages = subscriber.wait_for(lambda m: m[-1].payload == b"stopped", 5)
        subscriber.disconnect()
    payloads = [m.json() for m in messages if "/availability" not in m.topic]
    drops = [p for p in payloads if p.get("type") == "outbox_drop"]
    finals = [p for p in payloads if "text" in p]
    assert drops, "no OutboxDropEvent was delivered"
    for drop in drops:
        validate_payload(drop, "event")
    # The survivors are the newest finals, in order; everything dropped was counted.
    assert [p["seq"] for p in finals] == sorted(p["seq"] for p in finals)
    assert finals[-1]["utterance_id"].endswith("-24")
    survivors = [int(p["utterance_id"].rsplit("-", 1)[1]) for p in finals]
    assert survivors == list(range(25 - len(finals), 25)) and len(finals) >= 8  # newest kept, oldest dropped
    # The very first report (1 dropped) was itself pushed out; later ones cover the 15 finals lost.
    assert all(d["reason"] == "size" for d in drops) and sum(d["dropped"] for d in drops) >= 15
    stats = publisher.outbox.stats()
    # Exact accounting: every message ever stored was either delivered or dropped and counted.
    assert stats.depth == 0 and stats.dropped_size_total == (stats.next_seq - 1) - len(payloads)


def test_backlog_drains_at_the_configured_rate(mosquitto, tmp_path):
    from tests.fixtures.mosquitto import free_port

    offline = make_publisher(free_port(), tmp_path)
    for index in range(30):
        offline.publish(transcript("final", index))
    offline.stop()

    subscriber = Subscriber(mosquitto.port, ["edgescribe/press-7/transcript/#"]).connect()
    publisher = make_publisher(mosquitto.port, tmp_path, drain_rate=10)
    started = time.monotonic()
    publisher.start()
    try:
        messages = subscriber.wait_for(lambda m: len(m) >= 30, 20)
        elapsed = time.monotonic() - started
    finally:
        publisher.stop()
        subscriber.disconnect()
    assert [m.json()["seq"] for m in messages] == list(range(1, 31))
    # 10 msg/s with a one-message burst allowance: 30 messages cannot arrive in under ~2.9 s.
    assert elapsed >= 2.8, elapsed


def test_a_final_the_disk_refuses_is_still_delivered_while_the_broker_is_up(mosquitto, tmp_path):
    subscriber = Subscriber(mosquitto.port, ["edgescribe/press-7/transcript/#"]).connect()
    publisher = make_publisher(mosquitto.port, tmp_path)
    box = publisher.outbox
    # A real SQLITE_FULL: cap the database at its current size, as a full disk would.
    box._db.execute(f"PRAGMA max_page_count={box._db.execute('PRAGMA page_count').fetchone()[0]}")
    publisher.start()
    try:
        assert publisher.link.wait_connected(10)
        for index in range(3):
            publisher.publish(transcript("final", index, text="x" * 6000))
        assert box.stats().write_errors >= 1
        messages = subscriber.wait_for(lambda m: len(m) >= 3, 10)
        deadline = time.monotonic() + 5
        while box.held() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert box.held() == 0  # acknowledged by the broker: nothing left to lose
    finally:
        publisher.stop()
        subscriber.disconnect()
    assert [m.json()["seq"] for m in messages] == [1, 2, 3]


def client_id(state_dir, **overrides) -> str:
    publisher = make_publisher(1, state_dir, **overrides)
    publisher.outbox.close()
    return publisher.link._client._client_id.decode()


def test_client_id_is_readable_private_and_not_guessable(tmp_path):
    first = client_id(tmp_path / "a")
    again = client_id(tmp_path / "a")
    other = client_id(tmp_path / "b")
    assert first.startswith("edgescribe-press-7-") and len(first) > len("edgescribe-press-7-") + 8
    assert again == first  # one client across restarts
    assert other != first  # another install cannot predict it
    stored = tmp_path / "a" / "mqtt-client-id"
    assert stored.read_text().strip() == first and stored.stat().st_mode & 0o077 == 0
    explicit = client_id(tmp_path / "a", client_id="plant-7-scribe")
    assert explicit == "plant-7-scribe"
