"""The bounded buffer between capture and consumer: drops the oldest audio, and says so."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edgescribe.daemon.ring_buffer import AudioBlock, RingBuffer


def block(index: int, seconds: float = 0.1) -> AudioBlock:
    samples = np.full(int(seconds * 16000), index, np.float32)
    return AudioBlock("s", samples, index * seconds, 1000.0 + index * seconds)


def test_keeps_blocks_in_order_under_capacity():
    ring = RingBuffer(1.0)
    for i in range(10):
        assert ring.put(block(i)) is None
    assert ring.held_seconds == pytest.approx(1.0)
    assert [ring.get(timeout=0).samples[0] for _ in range(10)] == list(range(10))
    assert ring.get(timeout=0) is None


def test_overflow_drops_the_oldest_and_counts_it():
    ring = RingBuffer(1.0)
    for i in range(10):
        ring.put(block(i))
    dropped = ring.put(block(10))
    assert dropped is not None
    assert dropped.audio_start == pytest.approx(0.0) and dropped.duration_s == pytest.approx(0.1)
    big = AudioBlock("s", np.full(8000, 11, np.float32), 1.1, 0.0)  # 0.5 s pushes out five more
    dropped = ring.put(big)
    assert dropped.audio_start == pytest.approx(0.1) and dropped.duration_s == pytest.approx(0.5)
    assert ring.dropped_blocks == 6 and ring.dropped_seconds == pytest.approx(0.6)
    remaining = []
    while (b := ring.get(timeout=0)) is not None:
        remaining.append(int(b.samples[0]))
    assert remaining == [6, 7, 8, 9, 10, 11]


def test_a_block_larger_than_the_capacity_is_still_delivered():
    ring = RingBuffer(1.0)
    ring.put(block(0))
    dropped = ring.put(block(1, seconds=2.0))
    assert dropped.duration_s == pytest.approx(0.1)
    assert len(ring.get(timeout=0).samples) == 32000


def test_get_waits_for_the_producer_and_close_ends_the_stream():
    ring = RingBuffer(1.0)
    threading.Timer(0.1, lambda: ring.put(block(3))).start()
    started = time.monotonic()
    got = ring.get(timeout=2.0)
    assert got is not None and got.samples[0] == 3
    assert 0.05 < time.monotonic() - started < 1.5
    ring.put(block(4))
    ring.close()
    assert not ring.closed_and_empty
    assert ring.get(timeout=5).samples[0] == 4  # drained after close
    started = time.monotonic()
    assert ring.get(timeout=5) is None and time.monotonic() - started < 1.0  # closed: no waiting
    assert ring.closed_and_empty


def test_get_times_out_when_nothing_comes():
    ring = RingBuffer(1.0)
    started = time.monotonic()
    assert ring.get(timeout=0.1) is None
    assert time.monotonic() - started >= 0.09
