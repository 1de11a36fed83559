"""Speech segmentation: a stream of ``AudioBlock``s -> ``Utterance`` updates, one stream each.

The voice detector scores 32-ms frames. An utterance opens when a frame reaches
``vad.threshold`` (with ``pre_roll_s`` of the audio before it, so soft onsets survive) and
closes after ``min_silence_s`` of frames below ``vad.off_threshold``; the gap between the
two thresholds keeps a soft syllable from ending it (the thresholds are the vad section's:
they interpret the scores of the detector configured there). While speech goes on, the
utterance so far is handed out every ``update_interval_s`` of audio for partial
transcripts (the daemon passes ``transcription.partial_interval_s``, or None when partials
are off: the pace is the consumer's, so it is not a segmenter setting); the last update
has ``ended=True``. A pause in speech (``PAUSE_AFTER_S`` of non-speech) also sends an update, flagged ``pause``,
whatever the interval: the end of the utterance is likely ``min_silence_s`` away, and a
consumer can start its final decode now instead of then. Bursts with less than
``min_speech_s`` of speech (door slams, clicks) are never handed out at all: this is the
only length gate before transcription. Speech longer than ``max_utterance_s`` is cut in
the last ``cut_search_s`` where the detector was surest there was no speech (between words
where there is a between), and the rest starts the next utterance.

How much silence ends an utterance depends on the floor (``daemon/noise_floor.py``): under
loud machine noise the detector's speech probability sags between the words of one
sentence, and a short silence cuts the sentence into pieces that Whisper decodes without
each other, making two to three times the errors of the whole (docs/benchmarks.md). So
``min_silence_s`` holds on a quiet floor, ``noisy_min_silence_s`` on a loud one, and the
silence needed moves between them as the stream's estimated SNR does.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Optional

import numpy as np

from edgescribe.daemon.config.audio import (LOUD_FLOOR_SNR_DB, LOUDEST_EXTRA_SILENCE_S, LOUDEST_FLOOR_SNR_DB,
                                           QUIET_FLOOR_SNR_DB, SegmenterOptions, VadOptions)
from edgescribe.daemon.config.transcription import DEFAULT_PARTIAL_INTERVAL_S
from edgescribe.daemon.noise_floor import NoiseFloor
from edgescribe.daemon.ring_buffer import AudioBlock
from edgescribe.daemon.vad import FRAME_SAMPLES, VoiceDetector
from edgescribe.engines.audio import SAMPLE_RATE

log = logging.getLogger(__name__)

# The "pause" update (see the module docstring) goes out after this much non-speech, not at
# the first silent frame: a word's soft ending (a final "s", a released stop) often scores
# as silence, and a speculative final that starts there hears it cut (JFK's "my fellow
# Americans" came out "am I fellow American" at 32 ms, right at 96 ms). Measured with
# tiny.en, speculative finals against waiting out the whole silence: the 33 single-utterance
# English corpus files, WER 12.6 % at 32 ms, 12.5 % at 64, 12.1 % at 96, 12.6 % at 128
# (11.9 % waiting); the benchmark's joined stream, 6.7 / 7.0 / 7.4 % (6.3 % waiting). So
# every delay costs a word or three in ~500 and none is better on both sets: the delay is
# for the mechanism, and it costs 64 ms of the latency the speculation saves.
PAUSE_AFTER_S = 0.096
# A speculative decode needs about this long to finish before the end is declared (tiny.en on
# two CPU cores; less on an Orin). When the floor makes the end wait longer, the pause update
# waits too, so the decode hears more of the pause and is still done in time.
_DECODE_HEADROOM_S = 0.2
_FRAME_S = FRAME_SAMPLES / SAMPLE_RATE
_GAP_TOLERANCE_S = 0.5 / SAMPLE_RATE  # audio_start rounding, not a gap


@dataclass
class Utterance:
    stream: str
    utterance_id: str  # "<stream>-<start wall ms>-<counter>", unique per device
    audio_start: float  # stream audio time of samples[0] (pre-roll included)
    wall_start: float
    samples: np.ndarray  # float32 16 kHz mono: the whole utterance so far
    ended: bool  # True exactly once, on the final update
    # True on the update sent when speech has paused for PAUSE_AFTER_S (the utterance may be
    # about to end); every field still means the same, so a consumer may ignore it
    pause: bool = False
    # samples[:speech_end] ends with the last frame scored as speech; what follows is the
    # trailing silence so far. An ended update with the same speech_end as a pause update
    # differs from it only by that silence. None: unknown (updates built by hand).
    speech_end: Optional[int] = None
    # seconds of it the detector scored as speech (what the transcriber's gates weigh a
    # "no speech here" verdict against)
    speech_s: float = 0.0

    @property
    def audio_end(self) -> float:
        return self.audio_start + len(self.samples) / SAMPLE_RATE


class _Open:
    """The utterance being collected."""

    def __init__(self, audio_start: float, wall_start: float, frames: list[np.ndarray], probs: list[float],
                 speech_s: float):
        self.audio_start = audio_start
        self.wall_start = wall_start
        self.frames = frames  # whole 32-ms frames, but for a last partial one at flush
        self.probs = probs  # the detector's speech probability of each frame
        self.n_samples = sum(len(f) for f in frames)
        self.speech_s = speech_s  # frames that were speech, for min_speech_s
        self.silence_s = 0.0  # trailing run of silent frames
        self.speech_end = self.n_samples  # samples up to the end of the last speech frame
        self.utterance_id: Optional[str] = None  # assigned when first handed out
        self.last_update_s = 0.0  # utterance length at the last update

    def append(self, frame: np.ndarray, prob: float) -> None:
        self.frames.append(frame)
        self.probs.append(prob)
        self.n_samples += len(frame)

    @property
    def length_s(self) -> float:
        return self.n_samples / SAMPLE_RATE

    def samples(self) -> np.ndarray:
        return np.concatenate(self.frames) if self.frames else np.zeros(0, np.float32)


class Segmenter:
    """Turns one stream's audio into utterance updates; not thread-safe (one consumer thread per stream)."""

    def __init__(
        self,
        stream: str,
        options: SegmenterOptions,
        vad: VoiceDetector,
        update_interval_s: Optional[float] = DEFAULT_PARTIAL_INTERVAL_S,
        thresholds: VadOptions = VadOptions(),
    ):
        self.stream = stream
        self.options = options
        self.vad = vad
        self.threshold = thresholds.threshold
        self.off_threshold = thresholds.off_threshold
        # None: no periodic updates, only pauses and ends
        self.update_interval_s = update_interval_s
        self._counter = 0
        self._pre_roll: deque[tuple[np.ndarray, float]] = deque(maxlen=max(0, int(round(options.pre_roll_s / _FRAME_S))))
        self.floor = NoiseFloor()
        # the floor's latest estimate, kept as a plain float so the health thread can read it
        self.snr_db: Optional[float] = None
        self._pending = np.zeros(0, np.float32)  # samples short of a whole frame
        self._pending_start = 0.0  # audio time of _pending[0]
        self._pending_wall = 0.0
        self._expected: Optional[float] = None  # audio time the next block should start at
        self._open: Optional[_Open] = None
        # what the segmenter's own rules did, for health (read from another thread: plain ints)
        self.discarded_bursts = 0  # utterances under min_speech_s, never transcribed
        self.length_cuts = 0  # utterances cut at max_utterance_s

    def push(self, block: AudioBlock) -> list[Utterance]:
        out: list[Utterance] = []
        if self._expected is not None and abs(block.audio_start - self._expected) > _GAP_TOLERANCE_S + 1e-9:
            # audio was lost (overflow, overrun, device away): what follows is not the same utterance
            log.debug("stream %s: discontinuity %.3f s -> %.3f s", self.stream, self._expected, block.audio_start)
            out += self._close()
            self._restart()
        if not len(self._pending):
            self._pending_start, self._pending_wall = block.audio_start, block.wall_time
        self._expected = block.audio_end
        self._pending = np.concatenate([self._pending, np.asarray(block.samples, np.float32)])
        whole = len(self._pending) // FRAME_SAMPLES
        for i in range(whole):
            frame = self._pending[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]
            offset = i * _FRAME_S
            out += self._frame(frame, self._pending_start + offset, self._pending_wall + offset)
        consumed = whole * FRAME_SAMPLES
        self._pending = self._pending[consumed:]
        self._pending_start += consumed / SAMPLE_RATE
        self._pending_wall += consumed / SAMPLE_RATE
        return out

    def flush(self) -> list[Utterance]:
        """End of input: close the open utterance (with the last partial frame), forget state."""
        if self._open is not None and len(self._pending):
            self._open.append(self._pending, 0.0)
        out = self._close()
        self._restart()
        self._expected = None
        return out

    # -- per frame

    def _frame(self, frame: np.ndarray, audio_time: float, wall_time: float) -> list[Utterance]:
        frame = frame.copy()  # _pending is reused; utterances keep their own frames
        prob = self.vad.speech_prob(frame)
        self.floor.update(frame, speech=prob >= self.threshold, silence=prob < self.off_threshold)
        self.snr_db = self.floor.snr_db()
        o = self.options
        current = self._open
        if current is None:
            if prob >= self.threshold:
                pre = list(self._pre_roll)
                start = audio_time - len(pre) * _FRAME_S
                self._open = _Open(start, wall_time - len(pre) * _FRAME_S, [f for f, _ in pre] + [frame],
                                   [p for _, p in pre] + [prob], _FRAME_S)
                self._pre_roll.clear()
                return self._maybe_update()
            self._pre_roll.append((frame, prob))
            return []

        current.append(frame, prob)
        pause = False
        ends_after = self.silence_to_end()
        if prob >= self.off_threshold:
            current.speech_s += _FRAME_S
            current.silence_s = 0.0
            current.speech_end = current.n_samples
        else:
            before = current.silence_s
            current.silence_s += _FRAME_S
            pause_after = max(PAUSE_AFTER_S, ends_after - _DECODE_HEADROOM_S)
            pause = before < pause_after - 1e-9 <= current.silence_s
        if current.silence_s >= ends_after - 1e-9:
            return self._close()
        if current.length_s >= o.max_utterance_s - 1e-9:
            return self._cut()
        return self._maybe_update(pause)

    def silence_to_end(self) -> float:
        """The silence that ends an utterance now: longer the louder the floor (module docstring),
        linear in the estimated SNR between the points above."""
        quiet, loud = self.options.min_silence_s, self.options.noisy_min_silence_s
        snr = self.snr_db
        if snr is None:
            return quiet
        return float(np.interp(snr, [LOUDEST_FLOOR_SNR_DB, LOUD_FLOOR_SNR_DB, QUIET_FLOOR_SNR_DB],
                               [loud + LOUDEST_EXTRA_SILENCE_S, loud, quiet]))

    def _maybe_update(self, pause: bool = False) -> list[Utterance]:
        """The periodic update if one is due; at a pause, an update anyway (flagged ``pause``)."""
        current = self._open
        if current is None or current.speech_s < self.options.min_speech_s - 1e-9:
            return []
        length = current.length_s
        interval = self.update_interval_s
        due = interval is not None and length - current.last_update_s >= interval - 1e-9
        if not (due or pause):
            return []
        if due:  # a pause update outside the schedule leaves the periodic pacing as it was
            current.last_update_s = length
        return [self._utterance(current, ended=False, pause=pause)]

    def _close(self) -> list[Utterance]:
        current, self._open = self._open, None
        if current is None:
            return []
        if current.speech_s < self.options.min_speech_s - 1e-9:
            log.debug("stream %s: %.2f s of speech discarded (min_speech_s)", self.stream, current.speech_s)
            self.discarded_bursts += 1
            return []
        return [self._utterance(current, ended=True)]

    def _cut(self) -> list[Utterance]:
        """Close the over-long utterance where speech was least likely; the rest opens the next one."""
        current = self._open
        search = int(round(self.options.cut_search_s / _FRAME_S))
        frame = cut_frame(current.probs, current.frames, max(1, len(current.frames) - search), len(current.frames),
                          self.off_threshold)
        tail_frames, tail_probs = current.frames[frame:], current.probs[frame:]
        current.frames, current.probs = current.frames[:frame], current.probs[:frame]
        current.n_samples = sum(len(f) for f in current.frames)
        current.speech_end = min(current.speech_end, current.n_samples)
        closed = self._utterance(current, ended=True)
        self.length_cuts += 1
        offset = current.n_samples / SAMPLE_RATE
        # the tail is speech in progress: it counts as speech so it is never discarded as a click
        tail_s = sum(len(f) for f in tail_frames) / SAMPLE_RATE
        self._open = _Open(current.audio_start + offset, current.wall_start + offset, tail_frames, tail_probs, tail_s)
        return [closed]

    def _utterance(self, current: _Open, ended: bool, pause: bool = False) -> Utterance:
        if current.utterance_id is None:
            self._counter += 1
            current.utterance_id = f"{self.stream}-{int(current.wall_start * 1000)}-{self._counter}"
        return Utterance(self.stream, current.utterance_id, current.audio_start, current.wall_start,
                         current.samples(), ended, pause, current.speech_end, current.speech_s)

    def _restart(self) -> None:
        self.vad.reset()
        self._pre_roll.clear()
        self._pending = np.zeros(0, np.float32)


def cut_frame(probs: list[float], frames: list[np.ndarray], first: int, stop: int, pause_below: float) -> int:
    """Index in [first, stop) of the frame to cut before.

    Where the detector heard a pause (a smoothed speech probability under ``pause_below``),
    the cut goes where it was surest, near-ties (within 0.02) to the quieter frame: under
    steady machine noise the quietest instant is as likely to fall inside a word as between
    two. Where it heard none (fluent reading on a quiet line), the cut goes to the quietest
    frame, between words if there is a between. Smoothing over three frames (about 100 ms)
    makes a real pause beat a lone dip inside a word (a stop consonant's closure).
    """
    if stop - first < 1:
        return stop
    smoothed = _smooth(np.asarray(probs, np.float64))[first:stop]
    energy = _smooth(np.array([np.mean(np.square(f, dtype=np.float64)) for f in frames]))[first:stop]
    if smoothed.min() < pause_below:
        candidates = np.flatnonzero(smoothed <= smoothed.min() + 0.02)
    else:
        candidates = np.arange(stop - first)
    return first + int(candidates[np.argmin(energy[candidates])])


def _smooth(values: np.ndarray) -> np.ndarray:
    """Three-point moving average, the ends repeated (no pull towards zero at the edges)."""
    return np.convolve(np.pad(values, 1, mode="edge"), np.ones(3) / 3, mode="valid")
