"""The outbound dispatcher: producers never wait for the outbox, the queue bound drops only
partials, and a daemon whose every outbox write takes 2 s still captures and decodes on time."""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

from edgescribe.daemon.config import load_config
from edgescribe.daemon.dispatcher import Dispatcher
from edgescribe.daemon.events import StreamStateEvent, TranscriptEvent
from edgescribe.daemon.service import Service
from tests.daemon.test_publisher import transcript
from tests.fixtures.daemon import JFK, write_config
from tests.fixtures.models import tiny_en_package  # noqa: F401  (fixture)
from tests.fixtures.mosquitto import Subscriber, mosquitto  # noqa: F401  (fixture)

SLOW_WRITE_S = 2.0


class StuckHandler:
    """A handler that blocks until released, recording what it was handed."""

    def __init__(self):
        self.release = threading.Event()
        self.handled: list = []

    def __call__(self, event) -> None:
        self.release.wait()
        self.handled.append(event)


def test_submit_returns_at_once_while_the_handler_is_stuck():
    handler = StuckHandler()
    dispatcher = Dispatcher(handler, capacity=8)
    dispatcher.start()
    started = time.monotonic()
    for index in range(100):
        dispatcher.submit(transcript("final", index))
    assert time.monotonic() - started < 0.1
    handler.release.set()
    dispatcher.stop()
    assert [e.utterance_id for e in handler.handled] == [transcript("final", i).utterance_id for i in range(100)]


def test_a_full_queue_drops_partials_first_and_never_a_final():
    handler = StuckHandler()
    dispatcher = Dispatcher(handler, capacity=4)
    dispatcher.start()
    dispatcher.submit(transcript("final", 0))
    time.sleep(0.1)  # taken by the (stuck) handler
    for index in range(1, 5):
        dispatcher.submit(transcript("partial", index))  # fills the queue
    dispatcher.submit(transcript("partial", 5))  # full: dropped
    dispatcher.submit(transcript("final", 6))  # takes the oldest partial's place
    dispatcher.submit(StreamStateEvent("line1", "down", "unplugged", 0.0))  # and the next one's
    for index in range(7, 12):
        dispatcher.submit(transcript("final", index))  # two more evictions, then over the bound, kept
    stats = dispatcher.stats()
    assert (stats.partials_dropped, stats.over_bound, stats.queued) == (5, 3, 7)
    handler.release.set()
    dispatcher.stop()
    kinds = [(e.kind, int(e.utterance_id.rsplit("-", 1)[1])) if isinstance(e, TranscriptEvent) else ("event", -1)
             for e in handler.handled]
    assert kinds == [("final", 0), ("final", 6), ("event", -1)] + [("final", i) for i in range(7, 12)]
    assert dispatcher.stats().queued == 0


def two_jfk_streams(path: Path, package: Path, port: int, state_dir: Path) -> Path:
    """Two microphones each hearing JFK in real time."""
    second = f"  - name: press2\n    file: {JFK}\n    speed: 1.0\n"
    return write_config(path, package, port, state_dir, JFK, 1.0, more_streams=second, device_id="slow-disk")


def run_daemon(config_path: Path, slow_outbox: bool) -> tuple[Service, list[float], list[TranscriptEvent]]:
    """Run the daemon in-process until both (real-time) sources end; returns it, how long each
    producer call to ``emit`` took, and the finals."""
    service = Service(load_config(config_path), once=True)
    if slow_outbox:
        outbox = service.publisher.outbox
        real_put = outbox.put

        def slow_put(*args, **kwargs):  # an eMMC stalled on fsync
            time.sleep(SLOW_WRITE_S)
            return real_put(*args, **kwargs)

        outbox.put = slow_put
    waits: list[float] = []
    finals: list[TranscriptEvent] = []
    real_emit = service.emit

    def timed_emit(event):  # what each capture / inference thread pays to hand an event over
        started = time.monotonic()
        real_emit(event)
        waits.append(time.monotonic() - started)
        if isinstance(event, TranscriptEvent) and event.kind == "final":
            finals.append(event)

    service.emit = timed_emit
    assert service.run() == 0
    return service, waits, finals


def test_outbox_writes_of_2_s_lose_no_audio_and_delay_no_decode(tmp_path, mosquitto, tiny_en_package):
    subscriber = Subscriber(mosquitto.port, ["edgescribe/slow-disk/transcript/+/final"]).connect()
    baseline_config = two_jfk_streams(tmp_path / "fast.yaml", tiny_en_package.dir, mosquitto.port, tmp_path / "fast")
    _, _, baseline = run_daemon(baseline_config, slow_outbox=False)
    slow_config = two_jfk_streams(tmp_path / "slow.yaml", tiny_en_package.dir, mosquitto.port, tmp_path / "slow")
    service, waits, finals = run_daemon(slow_config, slow_outbox=True)

    # Capture and inference threads never waited for the disk.
    assert max(waits) < 0.1, f"a producer waited {max(waits):.2f} s to hand over an event"
    for name, stream in service.streams.items():
        stats = stream.capture.stats()
        assert stats.dropped_s == 0 and stats.xruns == 0, (name, stats)
    # Decode latency is what it is with a fast disk (within noise), not seconds behind.
    assert baseline and len(finals) >= 4
    fast = [f.latency_s for f in baseline]
    slow = [f.latency_s for f in finals]
    # The margin absorbs a loaded machine; a decode queued behind 2-s writes is many seconds late.
    assert statistics.median(slow) <= statistics.median(fast) * 1.5 + 1.0, (fast, slow)
    # Every final of the slow run was still stored and delivered, once each.
    slow_ids = {f.utterance_id for f in finals}
    messages = subscriber.wait_for(
        lambda m: slow_ids <= {x.json()["utterance_id"] for x in m}, timeout=10)
    subscriber.disconnect()
    delivered = [m.json() for m in messages if m.json()["utterance_id"] in slow_ids]
    assert {p["utterance_id"] for p in delivered} == slow_ids
    assert len({p["seq"] for p in delivered}) == len(slow_ids)
