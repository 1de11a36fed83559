"""The one thread that takes outbound events off the capture and inference threads.

Producers (each stream's capture thread, the inference worker, the engine manager) call
``submit``, which only appends to a bounded in-memory queue and returns: it never touches
a disk or a socket. One dispatcher thread takes events in order and hands each to the
handler (the service's: count for health, write finals and events to the outbox, queue for
MQTT). On a Jetson's eMMC one fsync of the outbox can take 100 ms or more; it now delays
only this thread, never an ALSA period or a decode.

When the queue is full (the handler fell behind by ``capacity`` events, e.g. a stalled
disk):

* an arriving **partial** is dropped and counted (``partials_dropped``): a stale partial is
  worthless, and the final of its utterance carries the whole text;
* an arriving **final or event** is never dropped and never makes its producer wait: it
  takes the place of the oldest queued partial, or, when the queue holds only finals and
  events, is queued beyond the bound (counted in ``over_bound``, logged once per
  episode). Finals are few (one per utterance, bounded upstream by the scheduler's
  pending-finals limit), so this cannot grow without bound while audio is real time.

``stop`` hands everything still queued to the handler before returning.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

from edgescribe.daemon.events import Event, TranscriptEvent

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 256
_PROGRESS_LOG_S = 5.0  # while stopping, how often to say how many events are still being handed over


@dataclass(frozen=True)
class DispatcherStats:
    queued: int  # events waiting for the dispatcher thread now
    partials_dropped: int  # partials dropped because the queue was full
    over_bound: int  # finals/events queued beyond the bound (none lost)


def _is_partial(event: Event) -> bool:
    return isinstance(event, TranscriptEvent) and event.kind == "partial"


class Dispatcher:
    def __init__(self, handle: Callable[[Event], None], capacity: int = DEFAULT_CAPACITY,
                 idle: Optional[Callable[[], None]] = None, idle_interval_s: float = 1.0):
        """``handle`` runs on the dispatcher thread for every event, in submission order;
        ``idle`` (if given) runs there at least every ``idle_interval_s`` (retries, expiry)."""
        self._handle = handle
        self._idle = idle
        self._idle_interval_s = idle_interval_s
        self.capacity = capacity
        self._queue: deque[Event] = deque()
        self._ready = threading.Condition()
        self._stopping = False
        self._partials_dropped = 0
        self._over_bound = 0
        self._overflowing = False
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dispatcher", daemon=True)
        self._thread.start()

    def submit(self, event: Event) -> None:
        """Queue ``event``; returns at once, whatever the handler is doing."""
        with self._ready:
            if len(self._queue) >= self.capacity:
                if _is_partial(event):
                    self._partials_dropped += 1
                    return
                if not self._evict_a_partial():
                    self._over_bound += 1
                    if not self._overflowing:
                        self._overflowing = True
                        log.warning("outbound queue is over its bound of %d (the outbox writes slowly); "
                                    "finals and events are kept, partials are dropped", self.capacity)
            self._queue.append(event)
            self._ready.notify()

    def stop(self) -> None:
        """Hand every queued event to the handler, then end the thread."""
        with self._ready:
            self._stopping = True
            self._ready.notify()
        if self._thread is None:
            return
        while True:
            self._thread.join(_PROGRESS_LOG_S)
            if not self._thread.is_alive():
                return
            log.info("stopping: still handing %d queued message(s) to the outbox", self.stats().queued)

    def stats(self) -> DispatcherStats:
        with self._ready:
            return DispatcherStats(len(self._queue), self._partials_dropped, self._over_bound)

    # -- the dispatcher thread -----------------------------------------------------------------

    def _evict_a_partial(self) -> bool:
        for index, queued in enumerate(self._queue):
            if _is_partial(queued):
                del self._queue[index]
                self._partials_dropped += 1
                return True
        return False

    def _run(self) -> None:
        idle_due = time.monotonic() + self._idle_interval_s
        while True:
            with self._ready:
                while not self._queue and not self._stopping:
                    if not self._ready.wait(max(0.0, idle_due - time.monotonic())):
                        break
                event = self._queue.popleft() if self._queue else None
                if event is None and self._stopping:
                    return
                if len(self._queue) < self.capacity // 2 and self._overflowing:
                    self._overflowing = False
                    log.info("outbound queue is back under its bound")
            if event is not None:
                try:
                    self._handle(event)
                except Exception:  # one bad event must not stop everything behind it
                    log.exception("handling outbound %s failed", type(event).__name__)
            if self._idle is not None and time.monotonic() >= idle_due:
                idle_due = time.monotonic() + self._idle_interval_s
                try:
                    self._idle()
                except Exception:
                    log.exception("outbound housekeeping failed")
