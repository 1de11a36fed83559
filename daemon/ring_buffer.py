"""The bounded queue between a capture thread and the slower consumer behind it.

Capture must never wait for inference (a blocked ALSA reader overruns and loses audio at
the device, unreported), so when the consumer falls behind by more than the capacity the
OLDEST blocks are dropped: recent speech is worth more than stale speech, and every drop
is counted and reported as a gap with its audio time and duration.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Optional

import numpy as np

from edgescribe.engines.audio import SAMPLE_RATE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioBlock:
    stream: str
    samples: np.ndarray  # float32, 16 kHz mono, [-1, 1]
    audio_start: float  # seconds of stream audio time at samples[0] (advances across gaps too)
    wall_time: float  # time.time() when samples[0] was captured

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    @property
    def audio_end(self) -> float:
        return self.audio_start + self.duration


@dataclass(frozen=True)
class DroppedAudio:
    """One contiguous run of blocks a ``put`` pushed out of the buffer."""

    audio_start: float
    duration_s: float


class RingBuffer:
    """Holds at most ``capacity_s`` seconds of ``AudioBlock``s; thread-safe, one producer, one consumer."""

    def __init__(self, capacity_s: float):
        self.capacity_samples = max(1, int(round(capacity_s * SAMPLE_RATE)))
        self._blocks: deque[AudioBlock] = deque()
        self._held = 0  # samples in _blocks
        self._closed = False
        self._ready = threading.Condition()
        self.dropped_blocks = 0
        self.dropped_seconds = 0.0

    def put(self, block: AudioBlock) -> Optional[DroppedAudio]:
        """Append ``block``; returns what had to be dropped to make room, if anything."""
        with self._ready:
            self._blocks.append(block)
            self._held += len(block.samples)
            dropped_start = None
            dropped_samples = 0
            while self._held > self.capacity_samples and len(self._blocks) > 1:
                oldest = self._blocks.popleft()
                self._held -= len(oldest.samples)
                if dropped_start is None:
                    dropped_start = oldest.audio_start
                dropped_samples += len(oldest.samples)
                self.dropped_blocks += 1
            self.dropped_seconds += dropped_samples / SAMPLE_RATE
            self._ready.notify()
        if dropped_start is None:
            return None
        return DroppedAudio(dropped_start, dropped_samples / SAMPLE_RATE)

    def get(self, timeout: Optional[float] = None) -> Optional[AudioBlock]:
        """The oldest block; None after ``timeout`` seconds, or when closed and empty."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._ready:
            while not self._blocks:
                if self._closed:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._ready.wait(remaining)
            block = self._blocks.popleft()
            self._held -= len(block.samples)
            return block

    def close(self) -> None:
        """No more blocks will come; ``get`` drains what is left, then returns None at once."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    @property
    def closed_and_empty(self) -> bool:
        with self._ready:
            return self._closed and not self._blocks

    @property
    def held_seconds(self) -> float:
        with self._ready:
            return self._held / SAMPLE_RATE
