"""Tell systemd how the daemon is doing: READY, a readable STATUS, WATCHDOG pings, STOPPING.

The watchdog ping is a claim that the pipeline works, not that the process is alive: it is
sent only while captured audio keeps advancing and inference is not stuck on waiting work.
A hung capture thread or a wedged engine therefore stops the pings and systemd restarts
the service ``WatchdogSec=`` later (``Restart=on-watchdog``).

Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op and no thread is started.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from edgescribe.engines.errors import EdgescribeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """Monotonic counters the service exposes; only their changes matter.

    ``audio`` must advance on every pass of each capture loop, including reopen attempts of
    an unplugged device (a missing microphone is reported as a stream going down, and a
    restart would not bring it back). ``inference_done`` counts finished windows and
    ``inference_waiting`` is how many are queued now.
    """

    audio: int
    inference_done: int
    inference_waiting: int
    summary: str = ""  # e.g. "2/2 streams up, tensorrt fp16": the start of the STATUS line


ProgressProbe = Callable[[], Progress]


@dataclass(frozen=True)
class Health:
    """The verdict on one probe: is the pipeline moving, and what to show a technician."""

    moving: bool
    status: str


class StallDetector:
    """Decides from successive probes whether audio and inference are still moving."""

    def __init__(self, stall_timeout_s: float, clock: Callable[[], float] = time.monotonic):
        self.stall_timeout_s = stall_timeout_s
        self.clock = clock
        self.last: Optional[Progress] = None
        now = clock()
        self.audio_moved_at = now
        self.inference_moved_at = now

    def observe(self, progress: Progress) -> Health:
        now = self.clock()
        if self.last is None or progress.audio != self.last.audio:
            self.audio_moved_at = now
        # Inference is fine when it has nothing to do or finished something since last time.
        if progress.inference_waiting == 0 or self.last is None or progress.inference_done != self.last.inference_done:
            self.inference_moved_at = now
        self.last = progress
        audio_idle = now - self.audio_moved_at
        inference_idle = now - self.inference_moved_at
        counts = f"{progress.inference_done} windows transcribed, {progress.inference_waiting} waiting"
        lead = f"{progress.summary}; " if progress.summary else ""
        if audio_idle >= self.stall_timeout_s:
            return Health(False, f"STALLED: no audio captured for {audio_idle:.0f} s; {lead}{counts}")
        if inference_idle >= self.stall_timeout_s:
            return Health(False, f"STALLED: inference finished nothing for {inference_idle:.0f} s; {lead}{counts}")
        return Health(True, f"{lead}{counts}")


class Notifier:
    """sd_notify for the daemon. Call ``ready()`` once engines are loaded and audio is open,
    ``stopping()`` on shutdown; in between a thread refreshes STATUS and pings the watchdog."""

    def __init__(self, probe: ProgressProbe, *, stall_timeout_s: float, status_interval_s: float):
        self.probe = probe
        self.detector = StallDetector(stall_timeout_s)
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self.watchdog_s = _watchdog_seconds()
        # Three pings per watchdog period: one missed tick is not yet a restart.
        self.interval_s = min(status_interval_s, self.watchdog_s / 3) if self.watchdog_s else status_interval_s
        self._send = _sender() if self.enabled else None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._stalled = False

    def status(self, text: str) -> None:
        """A start-up phase for `systemctl status` ("building engines", "opening hw:1,0")."""
        self._notify(f"STATUS={text}")

    def extend_timeout(self, seconds: float) -> None:
        """Ask for more start-up time than TimeoutStartSec= (slow engine load after an upgrade)."""
        self._notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def ready(self, status: str) -> None:
        self._notify(f"READY=1\nSTATUS={status}")
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="sd-notify", daemon=True)
            self._thread.start()

    def stopping(self, status: str = "stopping: flushing transcripts") -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._notify(f"STOPPING=1\nSTATUS={status}")

    def tick(self) -> Health:
        """Probe once, report STATUS, and ping the watchdog if the pipeline moved."""
        try:
            health = self.detector.observe(self.probe())
        except Exception:  # a broken probe must not kill the notifier; stopping the pings is the answer
            log.exception("progress probe failed; withholding the watchdog ping")
            health = Health(False, "STALLED: progress probe failed (see the journal)")
        if not health.moving and not self._stalled:
            log.error("%s; watchdog pings stop so systemd restarts the service", health.status)
        elif health.moving and self._stalled:
            log.warning("pipeline moving again: %s", health.status)
        self._stalled = not health.moving
        ping = "WATCHDOG=1\n" if health.moving and self.watchdog_s else ""
        self._notify(f"{ping}STATUS={health.status}")
        return health

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.tick()

    def _notify(self, message: str) -> None:
        if self._send is not None and not self._send(message):
            log.debug("sd_notify %r was not delivered", message.split("\n", 1)[0])


def _watchdog_seconds() -> Optional[float]:
    """WatchdogSec= as passed by systemd, if it is meant for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        seconds = int(usec) / 1e6
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not a number", usec)
        return None
    return seconds if seconds > 0 else None


def _sender() -> Callable[[str], bool]:
    try:
        from systemd import daemon
    except ImportError:
        raise EdgescribeError(
            "NOTIFY_SOCKET is set but systemd-python is missing: install edgescribe[systemd] "
            "(without it systemd never sees READY=1 and the watchdog restarts the service)"
        ) from None
    return daemon.notify
