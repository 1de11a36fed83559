"""The whole daemon as systemd runs it: ``edgescribe run`` in a subprocess, real speech from a
WAV source, a real mosquitto, a real paho subscriber and a real sd_notify socket."""

from __future__ import annotations

import json
import re
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgescribe.daemon.homeassistant import SENSORS
from tests.daemon.test_outbox import TinyDisk, tiny_disk  # noqa: F401  (fixture)
from tests.fixtures.daemon import JFK, JFK_TEXT, REPO, finals, run_once, start_daemon, valid_finals, wait_for_log, write_config
from tests.fixtures.models import tiny_en_package  # noqa: F401  (fixture)
from tests.fixtures.mosquitto import Subscriber, mosquitto, retained, validate_payload  # noqa: F401
from tests.fixtures.scoring import wer


def test_run_publishes_transcripts_and_health_then_stops_cleanly(tmp_path, mosquitto, tiny_en_package):
    package = tiny_en_package.dir
    subscriber = Subscriber(mosquitto.port, ["edgescribe/test-press/#"]).connect()
    discovery = Subscriber(mosquitto.port, ["homeassistant/sensor/#"]).connect()
    config = write_config(tmp_path / "config.yaml", package, mosquitto.port, tmp_path / "state", JFK, speed=2.0,
                          extra="homeassistant:\n  enabled: true\n")
    stderr = run_once(config, umask=0o022)  # outside systemd, with a permissive umask

    messages = subscriber.until_stopped()
    received = valid_finals(messages)
    assert received, f"no final transcript arrived; daemon log:\n{stderr}"
    seqs = [p["seq"] for p in received]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    text = " ".join(p["text"] for p in received)
    assert wer(JFK_TEXT, text) <= 0.25, text

    health = [m.json() for m in messages if m.topic.endswith("/health")]
    assert health, "no health report"
    validate_payload(health[-1], "health")
    assert health[-1]["service"]["backend"] == "onnxruntime"
    assert health[-1]["streams"]["press"]["finals"] >= 1
    # JFK pauses between phrases: final decodes start at those pauses, and the ends reuse them
    speculative = max((h["streams"]["press"]["speculative_finals"] for h in health), key=lambda c: c["started"])
    assert speculative["started"] >= 1 and speculative["reused"] >= 1, speculative
    assert speculative["started"] >= speculative["reused"] + speculative["discarded"]
    assert retained(mosquitto.port, "edgescribe/test-press/availability") == b"stopped"
    # Home Assistant discovery went out on the first (and only) connect.
    announced = discovery.wait_for(lambda m: len(m) >= len(SENSORS), timeout=5)
    discovery.disconnect()
    assert len({m.topic for m in announced}) == len(SENSORS), "no Home Assistant discovery on the first connect"
    # Transcripts are private even though the umask was 022.
    state = tmp_path / "state"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    private = [f for f in state.iterdir() if f.is_file()]
    assert {f.name for f in private} >= {"outbox.sqlite3", "mqtt-client-id"}
    assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in private} == {f.name: 0o600 for f in private}


def test_notify_ready_then_stopping_and_sigterm_flushes_the_open_utterance(tmp_path, mosquitto, tiny_en_package):
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(0.5)
    subscriber = Subscriber(mosquitto.port, ["edgescribe/test-press/transcript/#"]).connect()
    # Real-time pace: SIGTERM arrives while the speaker is mid-sentence. A second microphone is missing.
    config = write_config(tmp_path / "config.yaml", tiny_en_package.dir, mosquitto.port, tmp_path / "state", JFK,
                          speed=1.0, more_streams="  - name: absent\n    device: hw:CARD=NoSuchCard,DEV=0\n")
    daemon = start_daemon(config, env={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "3000000"})
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("READY=1" in s for s in seen):
            try:
                seen.append(notify.recv(4096).decode())
            except socket.timeout:
                assert daemon.poll() is None, daemon.stderr.read()
        assert any("READY=1" in s for s in seen), seen
        watchdog_deadline = time.monotonic() + 5
        while time.monotonic() < watchdog_deadline and not any("WATCHDOG=1" in s for s in seen):
            try:
                seen.append(notify.recv(4096).decode())
            except socket.timeout:
                pass
        assert any("WATCHDOG=1" in s for s in seen), seen
        time.sleep(2.5)  # into "ask not what your country ..."
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=60)
        while True:
            try:
                seen.append(notify.recv(4096).decode())
            except socket.timeout:
                break
    finally:
        daemon.kill()
        notify.close()
    assert daemon.returncode == 0, stderr
    assert any("STOPPING=1" in s for s in seen), seen
    status = [s for s in seen if "STATUS=" in s]
    assert any("streams up" in s for s in status), status
    # READY comes once the audio is open: one stream up, the missing one down with its reason.
    ready = next(s for s in seen if "READY=1" in s)
    assert "1/2 streams up (absent down: " in ready and "NoSuchCard" in ready, ready
    messages = subscriber.wait_for(lambda m: bool(finals(m)), timeout=10)
    subscriber.disconnect()
    # What was spoken before SIGTERM is not lost: the open utterance is flushed as a final.
    assert finals(messages), f"SIGTERM lost the utterance in progress; log:\n{stderr}"
    assert retained(mosquitto.port, "edgescribe/test-press/availability") == b"stopped"


def test_bad_config_is_one_line_exit_2(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("device_id: x\nstreams:\n  - name: a\n    devcie: hw:1,0\n")
    result = subprocess.run(
        [sys.executable, "-m", "edgescribe.daemon.cli", "run", "--config", str(config)], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "devcie" in result.stderr and "device" in result.stderr


def test_sighup_reloads_the_config_and_keeps_running(tmp_path, mosquitto, tiny_en_package):
    subscriber = Subscriber(mosquitto.port, ["edgescribe/test-press/#"]).connect()
    path = tmp_path / "config.yaml"
    config = write_config(path, tiny_en_package.dir, mosquitto.port, tmp_path / "state", JFK, speed=1.0)
    daemon = start_daemon(config)
    lines: list[str] = []
    try:
        wait_for_log(daemon, lines, "ready:", 60)
        # a key applied live, and one that needs a restart
        path.write_text(path.read_text().replace("interval_s: 1", "interval_s: 2") + "logging:\n  level: debug\n")
        daemon.send_signal(signal.SIGHUP)
        wait_for_log(daemon, lines, "applied logging.level", 10)
        wait_for_log(daemon, lines, "health.interval_s changed; restart", 10)
        # an invalid file: rejected with check-config's lines, and the daemon runs on
        path.write_text(path.read_text() + "streams_extra: 1\n")
        daemon.send_signal(signal.SIGHUP)
        wait_for_log(daemon, lines, "rejected", 10)
        wait_for_log(daemon, lines, "streams_extra", 10)
        time.sleep(1.0)  # mid-sentence
        assert daemon.poll() is None, "".join(lines)
        daemon.send_signal(signal.SIGTERM)
        _, rest = daemon.communicate(timeout=60)
    finally:
        daemon.kill()
    log = "".join(lines) + rest
    assert daemon.returncode == 0, log
    assert "Traceback" not in log
    messages = subscriber.wait_for(lambda m: bool(finals(m)), timeout=10)
    subscriber.disconnect()
    assert finals(messages), f"the utterance open at the stop was lost; log:\n{log}"
    assert retained(mosquitto.port, "edgescribe/test-press/availability") == b"stopped"


def other_layout(path: Path) -> bytes:
    """An outbox table of another layout holding one readable message (seq 41)."""
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE outbox (id INTEGER PRIMARY KEY, seq INTEGER, topic TEXT, payload BLOB);"
                     "INSERT INTO outbox (seq, topic, payload) VALUES "
                     "(41, 'edgescribe/test-press/transcript/old/final', x'7b22736571223a34317d');")
    db.commit()
    db.close()
    return path.read_bytes()


@pytest.mark.parametrize("damage", [b"\x00not a database" * 512, b"SQLite format 3\x00" + b"\x01" * 5000, other_layout],
                         ids=["random-bytes", "truncated", "other-layout"])
def test_a_damaged_outbox_is_moved_aside_and_the_daemon_runs(tmp_path, mosquitto, tiny_en_package, damage):
    subscriber = Subscriber(mosquitto.port, ["edgescribe/test-press/#"]).connect()
    state = tmp_path / "state"
    state.mkdir()
    if callable(damage):
        damage = damage(state / "outbox.sqlite3")
    else:
        (state / "outbox.sqlite3").write_bytes(damage)
    config = write_config(tmp_path / "config.yaml", tiny_en_package.dir, mosquitto.port, state, JFK, speed=4.0)
    stderr = run_once(config)
    moved = [p for p in state.iterdir()
             if p.name.startswith("outbox.sqlite3.damaged-") and not p.name.endswith(("-wal", "-shm"))]
    assert len(moved) == 1 and moved[0].read_bytes() == damage  # kept for inspection
    assert len([line for line in stderr.splitlines() if str(moved[0]) in line]) == 1
    messages = subscriber.until_stopped()
    events = [m.json() for m in messages if m.topic.endswith("/event")]
    damaged = [e for e in events if e["type"] == "outbox_damaged"]
    assert len(damaged) == 1 and damaged[0]["moved_to"] == str(moved[0])
    validate_payload(damaged[0], "event")
    if damaged[0]["recovered"]:  # the readable message went out, and seq went on above it
        assert any(m.payload == b'{"seq":41}' for m in messages)
        assert damaged[0]["seq"] > 41
    assert finals(messages), "the daemon did not transcribe after replacing its outbox"


@pytest.mark.parametrize("space_returns", [False, True], ids=["disk-stays-full", "space-returns"])
def test_full_disk_with_the_broker_down_loses_no_final_and_never_reuses_seq(
        tmp_path, mosquitto, tiny_en_package, tiny_disk, space_returns):
    # A persistent-session consumer: the broker keeps what it is owed while the consumer is away.
    consumer = Subscriber(mosquitto.port, ["edgescribe/test-press/transcript/+/final", "edgescribe/test-press/event"],
                          client_id="disk-full-consumer").connect()
    consumer.disconnect()
    mosquitto.stop()
    state = tiny_disk.path / "state"
    config = write_config(tmp_path / "config.yaml", tiny_en_package.dir, mosquitto.port, state, JFK, speed=1.0,
                          engine_dir=tmp_path / "engines")
    produced: list[list[dict]] = []
    for run in range(2):  # the second run starts on the disk as the first left it
        daemon = start_daemon(config, "--once", "--print-events")
        try:
            if run == 0:
                deadline = time.monotonic() + 30
                while not (state / "outbox.sqlite3").exists() and time.monotonic() < deadline:
                    time.sleep(0.02)
                tiny_disk.fill()  # before the first final
                time.sleep(6.0)  # speech goes on with the broker down and the disk full
                if space_returns:
                    tiny_disk.free()
                    time.sleep(2.0)
                mosquitto.start()
            stdout, stderr = daemon.communicate(timeout=120)
        finally:
            daemon.kill()
        assert daemon.returncode == 0, stderr
        assert "Traceback" not in stderr
        if run == 0:
            assert "cannot be written" in stderr, stderr
            assert "could neither be stored nor delivered" not in stderr, stderr
        printed = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
        produced.append([p for p in printed if p["type"] == "TranscriptEvent" and p["kind"] == "final"])
    consumer.connect()
    wanted = {p["utterance_id"] for run in produced for p in run}
    messages = consumer.wait_for(
        lambda m: wanted <= {x.json().get("utterance_id") for x in m if x.topic.endswith("/final")}, timeout=20)
    consumer.disconnect()
    received = [m.json() for m in messages if m.topic.endswith("/final")]
    assert {p["utterance_id"] for p in received} >= wanted, "finals were lost"
    seq_of: dict[str, int] = {}
    for payload in received:
        assert seq_of.setdefault(payload["utterance_id"], payload["seq"]) == payload["seq"]  # a resend keeps its seq
    first_ids = {p["utterance_id"] for p in produced[0]}
    first = [seq for utterance, seq in seq_of.items() if utterance in first_ids]
    second = [seq for utterance, seq in seq_of.items() if utterance not in first_ids]
    assert first and second
    assert min(second) > max(first), "the restart reused sequence numbers"
    assert len(set(seq_of.values())) == len(seq_of)  # no two finals share a seq


def test_a_stop_that_can_neither_store_nor_deliver_says_so_and_the_next_start_reports_it(
        tmp_path, mosquitto, tiny_en_package, tiny_disk):
    consumer = Subscriber(mosquitto.port, ["edgescribe/test-press/#"], client_id="unstored-consumer").connect()
    consumer.disconnect()
    mosquitto.stop()  # down for the whole first run
    state = tiny_disk.path / "state"
    config = write_config(tmp_path / "config.yaml", tiny_en_package.dir, mosquitto.port, state, JFK, speed=2.0,
                          engine_dir=tmp_path / "engines")
    stderrs = []
    for run in range(2):
        daemon = start_daemon(config, "--once")
        try:
            if run == 0:
                deadline = time.monotonic() + 30
                while not (state / "outbox.sqlite3").exists() and time.monotonic() < deadline:
                    time.sleep(0.02)
                tiny_disk.fill()
            _, stderr = daemon.communicate(timeout=120)
        finally:
            daemon.kill()
        assert daemon.returncode == 0 and "Traceback" not in stderr, stderr
        stderrs.append(stderr)
        if run == 0:
            mosquitto.start()
    lost_lines = [line for line in stderrs[0].splitlines() if "could neither be stored nor delivered" in line]
    assert len(lost_lines) == 1, stderrs[0]
    count, first, last = re.search(r"(\d+) message\(s\) \(seq (\d+)-(\d+)", lost_lines[0]).groups()
    consumer.connect()
    messages = consumer.wait_for(lambda m: any(x.topic.endswith("/event") and x.json()["type"] == "outbox_drop"
                                               for x in m) and any(x.payload == b"stopped" for x in m), timeout=20)
    consumer.disconnect()
    drops = [m.json() for m in messages if m.topic.endswith("/event") and m.json()["type"] == "outbox_drop"]
    assert [(d["reason"], d["dropped"]) for d in drops] == [("unstored", int(count))]
    validate_payload(drops[0], "event")
    seqs = [m.json()["seq"] for m in messages if m.topic.endswith(("/final", "/event"))]
    assert seqs and min(seqs) > int(last) >= int(first)  # the second run never reused the lost numbers
