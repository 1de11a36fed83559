"""sd_notify over a real AF_UNIX datagram socket, as systemd would receive it."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from edgescribe.daemon.notify import Notifier, Progress

pytest.importorskip("systemd.daemon", reason="systemd-python (edgescribe[systemd]) is not installed")

WATCHDOG_S = 0.3


class Pipeline:
    """Progress counters bumped from a thread, as the capture and inference threads bump them."""

    def __init__(self):
        self.audio = 0
        self.done = 0
        self.waiting = 0
        self.audio_flows = True
        self.inference_flows = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.01):
            if self.audio_flows:
                self.audio += 160
            if self.inference_flows and self.waiting:
                self.done += 1

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=2)

    def probe(self) -> Progress:
        return Progress(self.audio, self.done, self.waiting, summary="2/2 streams up, onnxruntime")


@pytest.fixture
def systemd_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", str(int(WATCHDOG_S * 1e6)))
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    yield sock
    sock.close()


def receive(sock: socket.socket, seconds: float) -> list[dict[str, str]]:
    """Every datagram that arrives within ``seconds``, each as its KEY=value fields."""
    messages = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(4096)
        except socket.timeout:
            break
        messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))
    return messages


def pings(messages):
    return [m for m in messages if m.get("WATCHDOG") == "1"]


def make_notifier(pipeline, stall_timeout_s=0.4):
    return Notifier(pipeline.probe, stall_timeout_s=stall_timeout_s, status_interval_s=5)


def test_ready_then_status_and_watchdog_while_the_pipeline_moves(systemd_socket):
    with Pipeline() as pipeline:
        notifier = make_notifier(pipeline)
        assert notifier.interval_s == pytest.approx(WATCHDOG_S / 3)
        notifier.ready("listening on 2 streams")
        try:
            first, *rest = receive(systemd_socket, 1.0)
        finally:
            notifier.stopping()
    assert first == {"READY": "1", "STATUS": "listening on 2 streams"}
    assert len(pings(rest)) >= 5
    assert rest[-1]["STATUS"].startswith("2/2 streams up, onnxruntime; ")
    assert "windows transcribed, 0 waiting" in rest[-1]["STATUS"]


def test_stalled_audio_stops_the_pings_and_they_resume_after(systemd_socket):
    with Pipeline() as pipeline:
        notifier = make_notifier(pipeline)
        notifier.ready("ok")
        try:
            assert pings(receive(systemd_socket, 0.5))
            pipeline.audio_flows = False
            receive(systemd_socket, 0.5)  # within the stall timeout pings may still go out
            stalled = receive(systemd_socket, 1.0)
            pipeline.audio_flows = True
            resumed = receive(systemd_socket, 0.5)
        finally:
            notifier.stopping()
    assert stalled and pings(stalled) == []
    assert stalled[-1]["STATUS"].startswith("STALLED: no audio captured for ")
    assert pings(resumed)


def test_inference_stuck_on_waiting_work_stops_the_pings_but_idle_does_not(systemd_socket):
    with Pipeline() as pipeline:
        notifier = make_notifier(pipeline)
        notifier.ready("ok")
        try:
            pipeline.inference_flows = False  # nothing waiting: idle, healthy
            assert pings(receive(systemd_socket, 0.8))
            pipeline.waiting = 3  # work waiting and nothing finishes: wedged engine
            receive(systemd_socket, 0.5)
            stuck = receive(systemd_socket, 0.8)
            pipeline.inference_flows = True
            recovered = receive(systemd_socket, 0.5)
        finally:
            notifier.stopping()
    assert stuck and pings(stuck) == []
    assert stuck[-1]["STATUS"].startswith("STALLED: inference finished nothing for ")
    assert "3 waiting" in stuck[-1]["STATUS"]
    assert pings(recovered)


def test_stopping_is_sent_and_the_pings_end(systemd_socket):
    with Pipeline() as pipeline:
        notifier = make_notifier(pipeline)
        notifier.ready("ok")
        receive(systemd_socket, 0.3)
        notifier.stopping()
        after = receive(systemd_socket, 0.6)
    assert after and after[-1] == {"STOPPING": "1", "STATUS": "stopping: flushing transcripts"}
    assert pings(after[-1:]) == [] and len(after) <= 2  # at most one tick was in flight


def test_a_failing_probe_withholds_the_ping(systemd_socket):
    def broken():
        raise RuntimeError("counter gone")

    notifier = Notifier(broken, stall_timeout_s=10, status_interval_s=5)
    notifier.ready("ok")
    try:
        messages = receive(systemd_socket, 0.5)
    finally:
        notifier.stopping()
    assert pings(messages) == []
    assert messages[-1]["STATUS"] == "STALLED: progress probe failed (see the journal)"


def test_watchdog_meant_for_another_process_is_ignored(systemd_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_PID", "1")
    with Pipeline() as pipeline:
        notifier = Notifier(pipeline.probe, stall_timeout_s=10, status_interval_s=0.1)
        notifier.ready("ok")
        try:
            messages = receive(systemd_socket, 0.5)
        finally:
            notifier.stopping()
    assert notifier.watchdog_s is None
    assert len(messages) >= 3 and pings(messages) == []  # STATUS keeps being refreshed


def test_outside_systemd_everything_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    with Pipeline() as pipeline:
        notifier = make_notifier(pipeline)
        notifier.ready("ok")
        notifier.status("still ok")
        assert notifier._thread is None
        notifier.stopping()


def test_start_up_phases_are_reported_before_ready(systemd_socket):
    with Pipeline() as pipeline:
        notifier = make_notifier(pipeline)
        notifier.status("loading engines for base (tensorrt fp16)")
        notifier.extend_timeout(90)
        messages = receive(systemd_socket, 0.3)
    assert messages == [{"STATUS": "loading engines for base (tensorrt fp16)"}, {"EXTEND_TIMEOUT_USEC": "90000000"}]
