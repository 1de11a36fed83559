"""Per-stream live transcription: partial and final transcripts of each utterance.

Every update of an utterance (the segmenter sends the whole utterance so far, every
``partial_interval_s`` of audio) is decoded again from its start. Two consecutive
hypotheses that agree on their first words make those words *stable* (LocalAgreement-2,
Macháček et al. 2023, whisper_streaming): a word is only trusted once a second, longer
look at the audio produced it again. Stable text never changes in later partials; the rest is the unstable
tail. When the utterance ends it is decoded once more, with temperature fallback, and
exactly one final carries the full transcript. The final is that fresh decode of all the
audio, so it may still correct a word the partials showed as stable: "stable" promises
that later partials keep it, and the final is the authoritative text.

Speculative final: most of the wait for a final is the segmenter's ``min_silence_s`` of
silence before it declares the end. So when it reports a pause (``PAUSE_AFTER_S`` of
non-speech), the final's first decode starts right away on the audio up to that pause. If
the utterance then ends with no more speech, that decode *is* the final's first attempt
(waited for if still running) and goes through exactly the same gates, fallback and
de-duplication; if speech resumes, it is withdrawn or its result ignored. The reused decode
heard the speech and the pause so far, not the rest of the ``min_silence_s`` the ended
update adds: those samples do not exist yet when it starts. Whisper reads the rest of its
30-s window as padding either way, so the text is nearly always the same, but tiny.en can
change a word (the segmenter's ``PAUSE_AFTER_S`` note gives the measured cost). Making
every final decode its speech plus a fixed tail of zeros would make the two identical; it
was tried and rejected: it changed words too (JFK's "Americans" became "American").

Partials: a periodic update ends mid-speech, usually inside a word, and Whisper completes
a cut word into whatever fits; so the last word of a mid-speech hypothesis is neither shown
nor fed to the agreement. Partials lag one word behind the audio for it.

Guards against Whisper's known failures on live audio (openai-whisper's rules where they
exist): too-short bursts never get here (the segmenter's ``min_speech_s`` is the one length
gate); a result with a high no-speech probability and a low average log-probability is
dropped; a repetition loop (high gzip compression ratio) is decoded again at a higher
temperature and dropped if it keeps looping; earlier text is not used as a prompt unless
configured; when the segmenter had to cut a long utterance, words repeated from the
previous final at the start of the next are removed.
"""

from __future__ import annotations

import collections
import functools
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from edgescribe.daemon.config.transcription import TranscriptionConfig
from edgescribe.daemon.events import Confidence, TranscriptEvent
from edgescribe.daemon.scheduler import DecodeOutcome, DecodeRequest, EngineManager, InferenceScheduler
from edgescribe.engines.audio import CHUNK_SECONDS, SAMPLE_RATE

if TYPE_CHECKING:
    from edgescribe.daemon.segmenter import Utterance

log = logging.getLogger(__name__)

# An utterance that starts within this much audio time of the previous one's end was cut
# by the segmenter (a cut leaves no gap; after a pause the segmenter's pre-roll only holds
# audio from after the previous end), so its first words may repeat the last ones.
_CUT_TOLERANCE_S = 0.05
# Longest run of words the boundary de-duplication removes: about the 1-2 s of audio a
# segmenter pre-roll can repeat. Longer matches are more likely to be real speech.
_MAX_REPEATED_WORDS = 6


def _word_key(word: str) -> str:
    """Words compare equal when they differ only in case and punctuation ("Dinner," == "dinner")."""
    return re.sub(r"[^\w']", "", word.lower())


def _same_words(a: list[str], b: list[str]) -> bool:
    return len(a) == len(b) and all(_word_key(x) == _word_key(y) for x, y in zip(a, b))


def common_prefix(a: list[str], b: list[str]) -> int:
    """Number of leading words two hypotheses share."""
    n = 0
    for x, y in zip(a, b):
        if _word_key(x) != _word_key(y):
            break
        n += 1
    return n


class LocalAgreement:
    """LocalAgreement-2 over successive hypotheses of one growing utterance.

    ``stable`` only ever grows: it is extended by the words the newest hypothesis shares
    with the previous one beyond what is already stable. A hypothesis that contradicts the
    stable words does not change them; its words after the stable length become the tail.
    """

    def __init__(self) -> None:
        self.stable: list[str] = []
        self._previous: Optional[list[str]] = None

    def update(self, words: list[str]) -> tuple[list[str], list[str]]:
        """Feed one hypothesis; returns (stable words, unstable tail)."""
        n = len(self.stable)
        if self._previous is not None and _same_words(words[:n], self.stable):
            # compare only what follows the stable words, so one hypothesis that garbled an
            # already-stable word does not block agreement on the words after it
            agreed = common_prefix(self._previous[n:], words[n:])
            self.stable = self.stable + words[n : n + agreed]
        self._previous = list(words)
        return list(self.stable), list(words[len(self.stable) :])


def strip_repeated_prefix(previous_words: list[str], words: list[str], limit: int = _MAX_REPEATED_WORDS) -> list[str]:
    """Drop the longest run (up to ``limit`` words) that ends ``previous_words`` and begins ``words``."""
    for k in range(min(limit, len(previous_words), len(words)), 0, -1):
        if _same_words(previous_words[-k:], words[:k]):
            return words[k:]
    return words


def build_prompt(config: TranscriptionConfig, previous_text: str = "") -> str:
    """Hotwords first, then the initial prompt, then (if enabled) the previous final.

    faster-whisper puts hotwords ahead of the previous text in the same way; the decoder
    keeps only the last tokens of an over-long prompt, so the newest context survives.
    """
    parts = [" ".join(word.strip() for word in config.hotwords), config.initial_prompt.strip()]
    if config.condition_on_previous_text:
        parts.append(previous_text.strip())
    return " ".join(part for part in parts if part)


def split_windows(samples: np.ndarray, window_s: float = CHUNK_SECONDS) -> list[np.ndarray]:
    """Cut audio into equal windows of at most 30 s (the segmenter normally keeps utterances
    shorter, so this is one window; equal lengths avoid a tiny last window Whisper misreads)."""
    limit = int(window_s * SAMPLE_RATE)
    count = max(1, -(-len(samples) // limit))
    return [np.ascontiguousarray(part, dtype=np.float32) for part in np.array_split(samples, count)]


@dataclass
class _Utterance:
    """What one stream remembers about an utterance until its final is out."""

    utterance_id: str
    lease: Any  # daemon.scheduler.ModelLease
    audio_start: float
    wall_start: float
    continues: bool  # starts where the previous utterance was cut: de-duplicate its first words
    agreement: LocalAgreement = field(default_factory=LocalAgreement)
    sequence: int = 0
    last_partial_s: float = -1e9  # utterance length (audio s) at the last partial submitted
    final_submitted: bool = False
    published: bool = False  # whether any event of it went out (then a final must follow)
    # final decoding state: one result slot per window, filled as temperatures succeed
    final_windows: list[np.ndarray] = field(default_factory=list)
    final_results: list[Any] = field(default_factory=list)
    final_attempts: list[list[Any]] = field(default_factory=list)  # every result so far, per window
    ended_at: float = 0.0  # monotonic time the ended update arrived
    duration: float = 0.0
    speculation: Optional["_Speculation"] = None


@dataclass(frozen=True)
class SpeculationCounts:
    """Speculative final decodes of one stream since start (see the module docstring).

    ``started`` = ``reused`` + ``discarded`` + those still waiting for their utterance's end.
    """

    started: int  # final decodes begun at a pause
    reused: int  # became the final's first decode: no speech after the pause
    discarded: int  # withdrawn or ignored: speech resumed, the prompt changed, it failed, or the stream stopped


@dataclass
class _Speculation:
    """A final's first decode, started when the utterance paused (see the module docstring)."""

    speech_end: int  # the pause update's speech_end: the speech this decode heard
    request: DecodeRequest
    outcome: Optional[DecodeOutcome] = None  # set when decoded
    claimed: bool = False  # the utterance ended at this pause: the outcome finishes it


class StreamTranscriber:
    """Turns one stream's utterance updates into TranscriptEvents through the shared scheduler.

    ``push`` is called from the stream's pipeline thread; results arrive on the inference
    worker thread; ``emit`` is called on the worker thread.
    """

    def __init__(
        self,
        stream: str,
        config: TranscriptionConfig,
        scheduler: InferenceScheduler,
        engines: EngineManager,
        emit: Callable[[TranscriptEvent], None],
    ):
        self.stream = stream
        self.config = config
        self._scheduler = scheduler
        self._engines = engines
        self._emit = emit
        self._lock = threading.Lock()
        self._open: dict[str, _Utterance] = {}
        self._previous_words: list[str] = []  # words of the last final (for cut de-duplication)
        self._previous_text = ""
        self._previous_audio_end = -1e9
        self.skipped_partials = 0
        self._speculations: collections.Counter = collections.Counter()  # started / reused / discarded

    # -- utterance updates (pipeline thread) -------------------------------------------------

    def push(self, utterance: Utterance) -> None:
        """Handle one segmenter update (``edgescribe.daemon.segmenter.Utterance``)."""
        now = time.monotonic()
        duration = len(utterance.samples) / SAMPLE_RATE
        reused: Optional[DecodeOutcome] = None
        with self._lock:
            state = self._open.get(utterance.utterance_id)
            if state is None:
                state = self._open_utterance(utterance)
            if state.final_submitted:
                return
            if utterance.ended:
                state.final_submitted = True
                state.ended_at = now
                state.duration = duration
                self._previous_audio_end = utterance.audio_start + duration
                speculation = self._valid_speculation(state, utterance)
                if speculation is None:
                    state.final_windows = split_windows(utterance.samples)
                else:
                    state.final_windows = speculation.request.windows  # fallback retries decode the same audio
                state.final_results = [None] * len(state.final_windows)
                state.final_attempts = [[] for _ in state.final_windows]
                if speculation is None:
                    request = self._request(state, state.final_windows, self._on_final, final=True,
                                            temperature=self.config.temperatures[0])
                elif speculation.outcome is None:
                    speculation.claimed = True  # still decoding: _on_speculation finishes the final
                    return
                else:
                    reused = speculation.outcome
            else:
                if state.speculation is not None and state.speculation.speech_end != utterance.speech_end:
                    self._drop_speculation(state)  # speech resumed: that decode heard too little
                if utterance.pause and self._speculate(state, utterance):
                    return
                if not self._partial_due(state, duration):
                    return
                state.last_partial_s = duration
                # Mid-speech, the audio ends inside a word, and Whisper completes a cut word into
                # whatever fits ("what your coun-" became a profanity in tiny.en's partial of
                # JFK). At a pause the last word is whole, so only then is it shown.
                on_done = functools.partial(self._on_partial, cut_mid_word=not utterance.pause)
                request = self._request(state, split_windows(utterance.samples), on_done, final=False)
                request.submitted = now
        if reused is not None:
            # decoded before the end was known: handle it here as the worker would have
            self._on_final(reused)
            return
        # outside the lock: a final may block here while inference catches up (back-pressure)
        self._scheduler.submit(request)

    def speculation_counts(self) -> SpeculationCounts:
        """A consistent copy of the speculative-final counters (read from the health thread)."""
        with self._lock:
            counts = self._speculations
            return SpeculationCounts(counts["started"], counts["reused"], counts["discarded"])

    def close(self) -> None:
        """Forget open utterances (stream stopped); their finals already queued still arrive."""
        with self._lock:
            for state in self._open.values():
                if not state.final_submitted:
                    self._drop_speculation(state)
                    state.lease.release()
            self._open = {key: s for key, s in self._open.items() if s.final_submitted}

    def _open_utterance(self, utterance: Utterance) -> _Utterance:
        state = _Utterance(
            utterance_id=utterance.utterance_id,
            lease=self._engines.lease(),
            audio_start=utterance.audio_start,
            wall_start=utterance.wall_start,
            continues=utterance.audio_start <= self._previous_audio_end + _CUT_TOLERANCE_S,
        )
        self._open[utterance.utterance_id] = state
        return state

    def _partial_due(self, state: _Utterance, duration: float) -> bool:
        if not self.config.partials:
            return False
        # measured in audio time, like the segmenter's updates (a little slack for frame rounding),
        # so a replayed file at any speed yields the same partials as live audio
        if duration - state.last_partial_s < self.config.partial_interval_s * 0.95:
            return False
        if self._scheduler.finals_waiting() >= self._scheduler.max_batch:
            self.skipped_partials += 1  # inference is behind: finals first
            return False
        return True

    def _speculate(self, state: _Utterance, utterance: Utterance) -> bool:
        """Start the final's first decode at a pause; False if not started (then a partial may go)."""
        if not self.config.speculative_final or utterance.speech_end is None:
            return False
        if self._scheduler.finals_waiting() >= self._scheduler.max_batch:
            return False  # inference is behind: real finals first, this one may never be needed
        self._drop_speculation(state)
        request = self._request(state, split_windows(utterance.samples), self._on_speculation, final=True,
                                temperature=self.config.temperatures[0])
        # never wait for queue room here (timeout=0): a speculation is optional work
        if not self._scheduler.submit(request, timeout=0):
            return False
        state.speculation = _Speculation(utterance.speech_end, request)
        self._speculations["started"] += 1
        return True

    def _valid_speculation(self, state: _Utterance, ended: Utterance) -> Optional[_Speculation]:
        """The speculation that can stand for this ended utterance's first decode, if any.

        Valid when no speech came after the pause (same speech_end), its prompt is the one
        the final would get now (a previous final may have finished since, with
        condition_on_previous_text), and it did not fail.
        """
        speculation = state.speculation
        valid = (
            speculation is not None
            and ended.speech_end is not None
            and speculation.speech_end == ended.speech_end
            and speculation.request.prompt == build_prompt(self.config, self._previous_text)
            and (speculation.outcome is None or speculation.outcome.error is None)
        )
        if not valid:
            self._drop_speculation(state)
            return None
        self._speculations["reused"] += 1
        return speculation

    def _drop_speculation(self, state: _Utterance) -> None:
        if state.speculation is not None:
            # if it is already being decoded, _on_speculation ignores the outcome
            self._scheduler.withdraw(state.speculation.request)
            state.speculation = None
            self._speculations["discarded"] += 1

    def _request(
        self,
        state: _Utterance,
        windows: list[np.ndarray],
        on_done: Callable[[DecodeOutcome], None],
        final: bool,
        temperature: float = 0.0,
    ) -> DecodeRequest:
        language = None if self.config.language == "auto" else self.config.language
        return DecodeRequest(
            key=state.utterance_id,
            final=final,
            windows=windows,
            lease=state.lease,
            on_done=on_done,
            temperature=temperature,
            language=language,
            task=self.config.task,
            prompt=build_prompt(self.config, self._previous_text),
        )

    # -- results (inference worker thread) ---------------------------------------------------

    def _silent(self, result: Any) -> bool:
        """openai-whisper's no-speech rule: both a likely-silence token and low confidence."""
        return result.no_speech_prob > self.config.no_speech_threshold and result.avg_logprob < self.config.log_prob_threshold

    def _looping(self, result: Any) -> bool:
        return result.compression_ratio > self.config.compression_ratio_threshold

    def _on_partial(self, outcome: DecodeOutcome, cut_mid_word: bool) -> None:
        ready = time.monotonic()
        with self._lock:
            state = self._open.get(outcome.request.key)
            if state is None or state.final_submitted or outcome.error is not None:
                return
            kept = [r for r in outcome.results if not self._silent(r) and not self._looping(r)]
            if len(kept) != len(outcome.results):
                return  # a dubious hypothesis would only poison the agreement
            words = self._dedupe(state, " ".join(r.text.strip() for r in kept).split())
            if cut_mid_word:
                words = words[:-1]  # also kept out of the agreement: a cut word must not turn stable
            stable, tail = state.agreement.update(words)
            if not stable and not tail:
                return  # nothing to show yet
            audio_end = state.audio_start + sum(len(w) for w in outcome.request.windows) / SAMPLE_RATE
            event = self._event(state, "partial", stable, tail, kept, outcome, audio_end, ready - outcome.request.submitted)
        self._emit(event)

    def _on_speculation(self, outcome: DecodeOutcome) -> None:
        with self._lock:
            state = self._open.get(outcome.request.key)
            speculation = state.speculation if state is not None else None
            if speculation is None or speculation.request is not outcome.request:
                return  # withdrawn too late: speech resumed or the stream closed
            speculation.outcome = outcome
            if not speculation.claimed:
                return  # the ended update (or more speech) decides what it is worth
        self._on_final(outcome)

    def _on_final(self, outcome: DecodeOutcome) -> None:
        with self._lock:
            state = self._open.get(outcome.request.key)
            if state is None:
                return
            if outcome.error is not None:
                # the engine failed on this audio; say so rather than lose the utterance silently
                log.error("%s: final of %s could not be decoded: %s", self.stream, state.utterance_id, outcome.error)
                event = self._finish(state, outcome, [], [])
            else:
                retry = self._take_final_results(state, outcome)
                if retry is not None:
                    self._scheduler.submit(retry, urgent=True)
                    return
                event = self._finish(state, outcome, *self._final_words(state))
        if event is not None:
            self._emit(event)

    def _take_final_results(self, state: _Utterance, outcome: DecodeOutcome) -> Optional[DecodeRequest]:
        """Keep results that pass the gates; returns the retry at the next temperature, if any.

        When every temperature fails, the likeliest attempt that is not a repetition loop is
        kept (as the offline pipeline does); a window that loops at every temperature is
        dropped by ``_final_words``.
        """
        temperature = outcome.request.temperature
        higher = [t for t in self.config.temperatures if t > temperature]
        pending = [i for i, r in enumerate(state.final_results) if r is None]
        retry_windows = []
        for index, result in zip(pending, outcome.results):
            state.final_attempts[index].append(result)
            needs_fallback = not self._silent(result) and (
                self._looping(result) or result.avg_logprob < self.config.log_prob_threshold
            )
            if not needs_fallback:
                state.final_results[index] = result
            elif higher:
                retry_windows.append(index)
            else:
                attempts = state.final_attempts[index]
                usable = [r for r in attempts if not self._looping(r)] or attempts
                state.final_results[index] = max(usable, key=lambda r: r.avg_logprob)
        if not retry_windows:
            return None
        log.debug("%s: %s: %d window(s) retried at temperature %.1f", self.stream, state.utterance_id, len(retry_windows), higher[0])
        return self._request(
            state, [state.final_windows[i] for i in retry_windows], self._on_final, final=True, temperature=higher[0]
        )

    def _final_words(self, state: _Utterance) -> tuple[list[str], list[Any]]:
        kept = [r for r in state.final_results if not self._silent(r) and not self._looping(r)]
        words = self._dedupe(state, " ".join(r.text.strip() for r in kept).split())
        return words, kept

    def _finish(self, state: _Utterance, outcome: DecodeOutcome, words: list[str], kept: list[Any]) -> Optional[TranscriptEvent]:
        del self._open[state.utterance_id]
        state.lease.release()
        audio_end = state.audio_start + state.duration
        # finals complete in submission order (retries jump the queue), so this is the
        # utterance just before the next one to de-duplicate against
        self._previous_words = words
        if words:
            self._previous_text = " ".join(words)
        if not words and not state.published:
            log.debug("%s: utterance %s gave no text (gated), nothing published", self.stream, state.utterance_id)
            return None
        # an utterance whose partials went out is always closed by a final, even an empty one
        results = kept or state.final_results
        return self._event(state, "final", words, [], [r for r in results if r is not None], outcome, audio_end, time.monotonic() - state.ended_at)

    def _dedupe(self, state: _Utterance, words: list[str]) -> list[str]:
        return strip_repeated_prefix(self._previous_words, words) if state.continues else words

    def _event(
        self,
        state: _Utterance,
        kind: str,
        stable: list[str],
        tail: list[str],
        results: list[Any],
        outcome: DecodeOutcome,
        audio_end: float,
        latency: float,
    ) -> TranscriptEvent:
        stable_text = " ".join(stable)
        unstable_text = (" " if stable and tail else "") + " ".join(tail)
        sequence = state.sequence
        state.sequence += 1
        state.published = True
        return TranscriptEvent(
            stream=self.stream,
            utterance_id=state.utterance_id,
            sequence=sequence,
            kind=kind,
            stable_text=stable_text,
            unstable_text=unstable_text,
            audio_start=state.audio_start,
            audio_end=audio_end,
            wall_start=state.wall_start,
            wall_end=state.wall_start + (audio_end - state.audio_start),
            language=_language(results, self.config.language),
            confidence=_confidence(results),
            model=outcome.model,
            backend=outcome.backend,
            latency_s=max(0.0, latency),
        )


def _language(results: list[Any], configured: str) -> str:
    for result in results:
        if getattr(result, "language", None):
            return result.language
    return "" if configured == "auto" else configured


def _confidence(results: list[Any]) -> Confidence:
    """One set of figures for an utterance: the weakest window speaks for it."""
    if not results:
        return Confidence(avg_logprob=0.0, no_speech_prob=1.0, compression_ratio=0.0, temperature=0.0)
    return Confidence(
        avg_logprob=float(min(r.avg_logprob for r in results)),
        no_speech_prob=float(max(r.no_speech_prob for r in results)),
        compression_ratio=float(max(r.compression_ratio for r in results)),
        temperature=float(max(r.temperature for r in results)),
    )


def consume(capture: Any, segmenter: Any, transcriber: StreamTranscriber, stop: threading.Event, poll_s: float = 0.1) -> None:
    """The consumer side of one stream: ring buffer -> segmenter -> transcriber.

    Runs on its own thread until the capture has ended and is drained, or ``stop`` is set;
    then flushes the open utterance so its final is not lost. ``transcriber.push`` blocks
    when inference is far behind, and then audio piles up in the capture ring buffer,
    which drops and reports it (GapEvent) when full.
    """
    while not stop.is_set():
        block = capture.get(timeout=poll_s)
        if block is None:
            if capture.finished:
                break
            continue
        for utterance in segmenter.push(block):
            transcriber.push(utterance)
    for utterance in segmenter.flush():
        transcriber.push(utterance)
