"""Audio in: ALSA devices and WAV files -> 16-kHz mono ``AudioBlock``s in a ring buffer.

One ``CaptureStream`` per configured stream runs one thread that only reads, converts and
queues, so a slow transcriber can never make the device overrun. What can go wrong is
reported, not hidden: buffer overflow and device overruns become ``GapEvent``s, a missing
or unplugged device a ``StreamStateEvent`` (and the stream keeps retrying).

Audio time is seconds since the stream started, counted in delivered samples plus every
gap (overrun, overflow, device down), so it stays close to wall-clock time and a consumer
can see a gap as a jump in ``audio_start``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional, Protocol

import numpy as np

from edgescribe.daemon.config.audio import CaptureOptions, StreamConfig
from edgescribe.daemon.events import Event, GapEvent, StreamStateEvent
from edgescribe.daemon.ring_buffer import AudioBlock, RingBuffer
from edgescribe.engines.audio import SAMPLE_RATE, decode_s24_3le, load_audio, polyphase_filter
from edgescribe.engines.errors import AudioInputError

log = logging.getLogger(__name__)

__all__ = [
    "AudioBlock", "AlsaSource", "CaptureStream", "Overrun", "StreamStats", "StreamingResampler", "WavSource",
]

_MIN_REPORTED_GAP_S = 0.002  # timing jitter below this is not audio loss
# A stalled consumer makes every block push out an old one; those drops are reported as one
# gap per episode (and at least every this many seconds of loss), not one per block.
_OVERFLOW_REPORT_S = 5.0


# ---------------------------------------------------------------- conversion


def _decode_s24_le(data: bytes) -> np.ndarray:
    # 24 significant bits in the low three bytes of four; shift up to sign-extend
    return (np.frombuffer(data, "<i4") << 8).astype(np.float32) / 2.0**31


# ALSA format name -> (bytes per sample, decoder to float32 in [-1, 1])
SAMPLE_DECODERS: dict[str, tuple[int, Callable[[bytes], np.ndarray]]] = {
    "S16_LE": (2, lambda data: np.frombuffer(data, "<i2").astype(np.float32) / 32768.0),
    "S32_LE": (4, lambda data: np.frombuffer(data, "<i4").astype(np.float32) / 2.0**31),
    "S24_LE": (4, _decode_s24_le),
    "S24_3LE": (3, decode_s24_3le),
    "FLOAT_LE": (4, lambda data: np.nan_to_num(np.frombuffer(data, "<f4"), nan=0.0, posinf=1.0, neginf=-1.0)),
}


def to_mono(data: bytes, sample_format: str, channels: int) -> np.ndarray:
    """Interleaved device bytes -> float32 mono (channels averaged)."""
    width, decode = SAMPLE_DECODERS[sample_format]
    usable = len(data) - len(data) % (width * channels)
    samples = decode(data[:usable])
    if channels == 1:
        return samples.astype(np.float32, copy=False)
    return samples.reshape(-1, channels).mean(axis=1, dtype=np.float32)


class StreamingResampler:
    """Rational-ratio polyphase resampler that keeps its history between blocks.

    Output sample n is centred on input time n / target_rate (no added delay in audio
    time); it is produced once the input it needs has arrived, so the output lags the
    input by the filter's half length (about 1 ms at 48 kHz -> 16 kHz).
    """

    def __init__(self, source_rate: int, target_rate: int = SAMPLE_RATE):
        g = math.gcd(source_rate, target_rate)
        self.up, self.down = target_rate // g, source_rate // g
        self._phases, self._half = polyphase_filter(self.up, self.down)
        self._taps = self._phases.shape[1]
        self._k = np.arange(self._taps)
        self.reset()

    def reset(self) -> None:
        # zeros stand for the input before the stream started (absolute indices < 0)
        self._history = np.zeros(self._taps, np.float32)
        self._history_start = -self._taps  # absolute input index of _history[0]
        self._received = 0  # input samples so far
        self._next_out = 0  # absolute index of the next output sample

    def process(self, samples: np.ndarray) -> np.ndarray:
        samples = np.asarray(samples, dtype=np.float32)
        if self.up == self.down:
            return samples
        self._history = np.concatenate([self._history, samples])
        self._received += len(samples)
        # output n needs input up to (n * down + half) // up, which must have arrived
        end = max(self._next_out, (self._received * self.up - 1 - self._half) // self.down + 1)
        n = np.arange(self._next_out, end, dtype=np.int64)
        position = n * self.down + self._half
        newest = position // self.up
        idx = newest[:, None] - self._k[None, :] - self._history_start
        out = np.einsum("nk,nk->n", self._history[idx], self._phases[position % self.up]).astype(np.float32)
        self._next_out = end
        keep_from = (end * self.down + self._half) // self.up - (self._taps - 1)
        drop = min(max(0, keep_from - self._history_start), len(self._history))
        self._history = self._history[drop:]
        self._history_start += drop
        return out


# ---------------------------------------------------------------- sources


class Overrun(Exception):
    """The device overran (xrun): audio was lost before ``samples``. The source has recovered."""

    def __init__(self, message: str, samples: Optional[np.ndarray] = None):
        super().__init__(message)
        self.samples = samples if samples is not None else np.zeros(0, np.float32)


class Source(Protocol):
    rate: int  # after open(): sample rate of what read() returns
    # Seconds of audio delivered per wall-clock second: 1 for a device, more for a file replayed
    # fast. Block wall times and xrun losses are reckoned in wall seconds, so they divide by it.
    speed: float

    def open(self) -> str:
        """Open the input; returns a one-line description. Raises AudioInputError if it is unavailable."""

    def read(self) -> Optional[np.ndarray]:
        """Next mono float32 block at ``rate``; None at the end of a file. Raises Overrun or AudioInputError."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class _PcmSettings:
    rate: int
    channels: int
    sample_format: str


class AlsaSource:
    """An ALSA capture PCM, opened at 16 kHz mono S16_LE if the device allows, else at what it offers."""

    def __init__(
        self, device: str, period_s: float = 0.1, rate: int = 0, channels: int = 0, sample_format: str = "auto"
    ):
        self.device = device
        self.period_s = period_s
        self._wanted = (rate, channels, sample_format)
        self._pcm = None
        self.settings: Optional[_PcmSettings] = None
        self.rate = rate or SAMPLE_RATE
        self.speed = 1.0

    def _candidates(self) -> list[tuple[int, int, str]]:
        rate, channels, sample_format = self._wanted
        rates = [rate] if rate else [SAMPLE_RATE, 48000, 44100]
        channel_counts = [channels] if channels else [1, 2]
        formats = [sample_format] if sample_format != "auto" else ["S16_LE", "S32_LE", "S24_LE", "S24_3LE", "FLOAT_LE"]
        return [(r, c, f) for f in formats for c in channel_counts for r in rates]

    def open(self) -> str:
        import alsaaudio

        first_error = None
        for rate, channels, sample_format in self._candidates():
            try:
                pcm = alsaaudio.PCM(
                    alsaaudio.PCM_CAPTURE,
                    alsaaudio.PCM_NORMAL,
                    device=self.device,
                    rate=rate,
                    channels=channels,
                    format=getattr(alsaaudio, f"PCM_FORMAT_{sample_format}"),
                    periodsize=max(32, int(round(self.period_s * rate))),
                )
            except alsaaudio.ALSAAudioError as error:
                first_error = first_error or error
                if "Invalid argument" not in str(error):
                    break  # missing, busy or unknown: no other setting will help
                continue
            # ALSA may settle on a nearby rate/format; read back what the device really does
            info = pcm.info()
            actual = _PcmSettings(int(info["rate"]), int(info["channels"]), str(info["format_name"]))
            if actual.sample_format not in SAMPLE_DECODERS:
                pcm.close()
                first_error = first_error or f"unsupported sample format {actual.sample_format}"
                continue
            self._pcm, self.settings, self.rate = pcm, actual, actual.rate
            return f"{self.device} at {actual.rate} Hz, {actual.channels} ch, {actual.sample_format}"
        raise AudioInputError(f"ALSA capture device {self.device!r}: cannot open ({first_error})")

    def read(self) -> Optional[np.ndarray]:
        import alsaaudio

        if self._pcm is None:
            raise AudioInputError(f"ALSA capture device {self.device!r}: not open")
        try:
            state = self._pcm.state()
            if state == alsaaudio.PCM_STATE_DISCONNECTED:
                raise AudioInputError(f"ALSA capture device {self.device!r}: disconnected")
            # an overrun between reads: pyalsaaudio 0.11 re-prepares inside read() without a word
            overran = state == alsaaudio.PCM_STATE_XRUN
            frames, data = self._pcm.read()
        except alsaaudio.ALSAAudioError as error:
            raise AudioInputError(f"ALSA capture device {self.device!r}: read failed ({error})") from None
        if frames < 0:  # -EPIPE: overrun during the read; pyalsaaudio has re-prepared the PCM
            raise Overrun(f"{self.device}: overrun ({frames})")
        samples = to_mono(data, self.settings.sample_format, self.settings.channels)
        if overran:
            raise Overrun(f"{self.device}: overrun", samples)
        return samples

    def close(self) -> None:
        if self._pcm is not None:
            try:
                self._pcm.close()
            except Exception as error:  # an unplugged device may fail to close; nothing to recover
                log.debug("%s: close failed: %s", self.device, error)
            self._pcm = None


class WavSource:
    """A WAV file played at real-time pace (times ``speed``), optionally looping, for demos and benchmarks."""

    def __init__(self, path: str | Path, period_s: float = 0.1, speed: float = 1.0, loop: bool = False,
                 stop: Optional[threading.Event] = None):
        self.path = Path(path)
        self.period = max(1, int(round(period_s * SAMPLE_RATE)))
        self.speed = speed
        self.loop = loop
        self.rate = SAMPLE_RATE
        self._stop = stop or threading.Event()
        self._samples: Optional[np.ndarray] = None

    def open(self) -> str:
        self._samples = load_audio(self.path)  # already 16 kHz mono
        self._position = 0
        self._emitted = 0
        self._started = time.monotonic()
        looping = ", looping" if self.loop else ""
        return f"{self.path} ({len(self._samples) / SAMPLE_RATE:.1f} s, speed {self.speed:g}x{looping})"

    def read(self) -> Optional[np.ndarray]:
        if self._samples is None:
            raise AudioInputError(f"WAV source {self.path}: not open")
        if self._position >= len(self._samples):
            if not self.loop or len(self._samples) == 0:
                return None
            self._position = 0
        block = self._samples[self._position : self._position + self.period]
        self._position += len(block)
        self._emitted += len(block)
        # pace against the start, not the previous block, so sleep jitter does not accumulate
        due = self._started + self._emitted / (SAMPLE_RATE * self.speed)
        self._stop.wait(max(0.0, due - time.monotonic()))
        return block

    def close(self) -> None:
        self._samples = None


# ---------------------------------------------------------------- the capture thread


@dataclass(frozen=True)
class StreamStats:
    """A snapshot for health reporting; taken under the stream's lock."""

    stream: str
    state: Literal["starting", "up", "down", "ended", "stopped"]
    source: str  # what is open, e.g. "hw:1,0 at 48000 Hz, 2 ch, S32_LE"
    level_dbfs: float  # RMS over the last second of captured audio; -120 when silent or down
    xruns: int
    dropped_s: float  # audio lost to ring-buffer overflow and overruns
    blocks: int
    reopens: int  # successful opens after the first
    buffered_s: float  # audio waiting for the consumer
    audio_time: float  # stream audio time captured so far


@dataclass
class _Counters:
    state: str = "starting"
    source: str = ""
    xruns: int = 0
    xrun_lost_s: float = 0.0
    blocks: int = 0
    reopens: int = 0
    opens: int = 0
    level_window: deque = field(default_factory=deque)  # (sum of squares, samples) per block
    level_sum: float = 0.0
    level_samples: int = 0


class CaptureStream:
    """Reads one source on its own thread into a ring buffer; the consumer calls ``get``."""

    def __init__(
        self,
        config: StreamConfig,
        options: CaptureOptions,
        on_event: Callable[[Event], None],
        source: Optional[Source] = None,
    ):
        self.name = config.name
        self.options = options
        self._on_event = on_event
        self._stopping = threading.Event()
        if source is None:
            if config.file:
                source = WavSource(config.file, options.period_s, config.speed, config.loop, stop=self._stopping)
            else:
                source = AlsaSource(config.device, options.period_s, config.rate, config.channels, config.format)
        self._source = source
        self.buffer = RingBuffer(options.buffer_s)
        self._lock = threading.Lock()
        self._counters = _Counters()
        self._audio_time = 0.0
        self._overflow: Optional[list[float]] = None  # [audio_start, duration_s] of drops not yet reported
        self._thread: Optional[threading.Thread] = None

    # -- consumer side

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"capture-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("stream %s: capture thread did not stop within %.1f s", self.name, timeout)
        with self._lock:
            if self._counters.state != "ended":
                self._counters.state = "stopped"
        self.buffer.close()

    def get(self, timeout: Optional[float] = None) -> Optional[AudioBlock]:
        """Next captured block in order; None on timeout or once the stream has ended and is drained."""
        return self.buffer.get(timeout)

    @property
    def finished(self) -> bool:
        """The source ended (a non-looping file) or the stream was stopped, and every block was taken."""
        return self.buffer.closed_and_empty

    def stats(self) -> StreamStats:
        with self._lock:
            c = self._counters
            level = 10 * math.log10(c.level_sum / c.level_samples) if c.level_samples and c.level_sum > 0 else -120.0
            return StreamStats(
                stream=self.name,
                state=c.state,  # type: ignore[arg-type]
                source=c.source,
                level_dbfs=max(level, -120.0) if c.state == "up" else -120.0,
                xruns=c.xruns,
                dropped_s=self.buffer.dropped_seconds + c.xrun_lost_s,
                blocks=c.blocks,
                reopens=c.reopens,
                buffered_s=self.buffer.held_seconds,
                audio_time=self._audio_time,
            )

    # -- capture thread

    def _run(self) -> None:
        try:
            self._capture_until_stopped()
        except Exception:  # a bug here must not kill the daemon silently; the stream is reported down
            log.exception("stream %s: capture thread failed", self.name)
            self._set_state("down", "capture thread failed (see log)")
        finally:
            self._report_overflow()
            self._source.close()
            self.buffer.close()

    def _capture_until_stopped(self) -> None:
        delay = self.options.reopen_min_s
        down_since: Optional[float] = None
        while not self._stopping.is_set():
            try:
                description = self._source.open()
            except AudioInputError as error:
                if down_since is None:
                    down_since = time.time()
                    self._set_state("down", str(error))
                    log.warning("stream %s: %s; retrying", self.name, error)
                self._stopping.wait(delay)
                delay = min(delay * 2, self.options.reopen_max_s)
                continue
            delay = self.options.reopen_min_s
            if down_since is not None:
                # audio time keeps pace with the wall clock while the device was away
                self._audio_time += time.time() - down_since
                down_since = None
            with self._lock:
                self._counters.source = description
                self._counters.reopens += 1 if self._counters.opens else 0
                self._counters.opens += 1
            self._set_state("up", description)
            log.info("stream %s: capturing from %s", self.name, description)
            outcome = self._read_until_failure()
            self._report_overflow()
            self._source.close()
            if outcome == "ended":
                self._set_state("ended", "end of input")
                self._emit(StreamStateEvent(self.name, "down", "end of input", time.time()))
                return
            if outcome != "stopped":
                down_since = time.time()
                self._set_state("down", outcome)
                log.warning("stream %s: %s; reopening", self.name, outcome)

    def _read_until_failure(self) -> str:
        """Read and queue blocks; returns 'stopped', 'ended' or why the device was lost."""
        resampler = StreamingResampler(self._source.rate) if self._source.rate != SAMPLE_RATE else None
        last_read = time.time()
        overrun_pending = False
        while not self._stopping.is_set():
            try:
                samples = self._source.read()
            except Overrun as overrun:
                samples = overrun.samples  # what was read after recovering, if anything
                overrun_pending = True
                with self._lock:
                    self._counters.xruns += 1
            except AudioInputError as error:
                return str(error)
            now = time.time()
            if samples is None:
                return "ended"
            if len(samples) == 0:
                continue
            if overrun_pending:
                # what the device lost = wall time since the last good read not covered by this read
                lost = ((now - last_read) - len(samples) / (self._source.rate * self._source.speed)) * self._source.speed
                overrun_pending = False
                if lost >= _MIN_REPORTED_GAP_S:
                    self._report_gap("xrun", self._audio_time, lost, now)
                    with self._lock:
                        self._counters.xrun_lost_s += lost
                    self._audio_time += lost
                    if resampler is not None:
                        resampler.reset()  # do not smear the filter across the discontinuity
            last_read = now
            if resampler is not None:
                samples = resampler.process(samples)
            self._queue(samples, now - len(samples) / (SAMPLE_RATE * self._source.speed))
        return "stopped"

    def _queue(self, samples: np.ndarray, wall_time: float) -> None:
        block = AudioBlock(self.name, samples, self._audio_time, wall_time)
        self._audio_time += len(samples) / SAMPLE_RATE
        power = float(np.dot(samples, samples))
        with self._lock:
            c = self._counters
            c.blocks += 1
            c.level_window.append((power, len(samples)))
            c.level_sum += power
            c.level_samples += len(samples)
            while c.level_samples - c.level_window[0][1] >= SAMPLE_RATE:
                old_power, old_samples = c.level_window.popleft()
                c.level_sum -= old_power
                c.level_samples -= old_samples
        dropped = self.buffer.put(block)
        if dropped is None:
            self._report_overflow()
            return
        pending = self._overflow
        if pending is not None and abs(pending[0] + pending[1] - dropped.audio_start) < 1e-4:
            pending[1] += dropped.duration_s
        else:
            self._report_overflow()
            self._overflow = pending = [dropped.audio_start, dropped.duration_s]
        if pending[1] >= _OVERFLOW_REPORT_S:
            self._report_overflow()

    def _report_overflow(self) -> None:
        if self._overflow is not None:
            audio_start, duration_s = self._overflow
            self._overflow = None
            self._report_gap("overflow", audio_start, duration_s, time.time())

    def _report_gap(self, reason: str, audio_start: float, duration_s: float, wall_time: float) -> None:
        log.warning("stream %s: %.3f s of audio lost at %.3f s (%s)", self.name, duration_s, audio_start, reason)
        self._emit(GapEvent(self.name, reason, audio_start, duration_s, wall_time))  # type: ignore[arg-type]

    def _set_state(self, state: str, detail: str) -> None:
        with self._lock:
            self._counters.state = state
        if state in ("up", "down"):
            self._emit(StreamStateEvent(self.name, state, detail, time.time()))  # type: ignore[arg-type]

    def _emit(self, event: Event) -> None:
        try:
            self._on_event(event)
        except Exception:  # a failing subscriber must not stop capture
            log.exception("stream %s: event handler failed for %s", self.name, type(event).__name__)
