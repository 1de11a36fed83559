"""The whole daemon as systemd runs it: ``edgescribe run`` in a subprocess, real speech from a
WAV source, a real mosquitto, a real paho subscriber and a real sd_notify socket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgescribe.engines.scoring import wer
from tests.fixtures.models import tiny_en_package  # noqa: F401  (fixture)
from tests.fixtures.mosquitto import Subscriber, mosquitto, retained, validate_payload  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
JFK = REPO / "engines" / "data" / "jfk_inaugural_1961.wav"
JFK_TEXT = "And so, my fellow Americans, ask not what your country can do for you, ask what you can do for your country."


def write_config(path: Path, package: Path, port: int, state_dir: Path, audio: Path, speed: float) -> Path:
    path.write_text(
        f"""device_id: test-press
service:
  state_dir: {state_dir}
streams:
  - name: press
    file: {audio}
    speed: {speed}
models:
  serving: {package}
engine:
  engine_dir: {state_dir / "engines"}
  threads: 2
mqtt:
  host: 127.0.0.1
  port: {port}
  keepalive_s: 5
health:
  interval_s: 1
"""
    )
    return path


def start_daemon(config: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "edgescribe.daemon.cli", "run", "--config", str(config), *extra],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finals(messages) -> list[dict]:
    return [m.json() for m in messages if m.topic.endswith("/final")]


def test_run_publishes_transcripts_and_health_then_stops_cleanly(tmp_path, mosquitto, tiny_en_package):
    package = tiny_en_package.dir
    subscriber = Subscriber(mosquitto.port, ["edgescribe/test-press/#"]).connect()
    config = write_config(tmp_path / "config.yaml", package, mosquitto.port, tmp_path / "state", JFK, speed=2.0)
    daemon = start_daemon(config, "--once")
    try:
        _, stderr = daemon.communicate(timeout=120)
    finally:
        daemon.kill()
    assert daemon.returncode == 0, stderr
    assert "Traceback" not in stderr

    messages = subscriber.wait_for(lambda m: any(x.payload == b"stopped" for x in m), timeout=10)
    subscriber.disconnect()
    received = finals(messages)
    assert received, f"no final transcript arrived; daemon log:\n{stderr}"
    for payload in received:
        validate_payload(payload, "final")
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


def test_notify_ready_then_stopping_and_sigterm_flushes_the_open_utterance(tmp_path, mosquitto, tiny_en_package):
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(0.5)
    subscriber = Subscriber(mosquitto.port, ["edgescribe/test-press/transcript/#"]).connect()
    # Real-time pace: SIGTERM arrives while the speaker is mid-sentence.
    config = write_config(tmp_path / "config.yaml", tiny_en_package.dir, mosquitto.port, tmp_path / "state", JFK, speed=1.0)
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
