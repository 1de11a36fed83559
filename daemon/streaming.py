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
de-duplication; if speech resumes, it is withdrawn or its result ignored. The speculation
heard the speech and the pause so far, not the rest of the ``min_silence_s`` the ended
update adds (those samples do not exist yet when it starts), and tiny.en can change a word
between the two. So a final with no speech after its last pause decodes exactly the audio
up to that pause whether or not a speculation ran: when inference is behind the offer is
refused, and the final must not then hear different audio (issue 15: finals are a
function of the audio alone, tests/daemon/test_determinism.py). A fixed tail of zeros
instead was tried and rejected: it changed words (JFK's "Americans" became "American").

Context: the segmenter ends an utterance at a pause, and people pause inside sentences,
more so on a loud floor. A piece decoded alone loses words (tiny.en on the corpus in pump
noise: most extra errors were inside split sentences, not only next to the cut). So a final
whose utterance began within ``CONTEXT_AFTER_GAP_S`` of the previous one's end is decoded
after the previous utterance's audio, with the previous final forced as the start of its
transcript (the decoder's prefix), and only the continuation is kept: the model hears and
reads what came just before, as offline decoding of the whole sentence does. Finals of a
stream therefore go out in order, each queued once the one before is out (a second one
waiting holds the pipeline thread, which keeps the back-pressure of a full final queue),
and a speculation starts only once the previous final is out, so the context, and the
text, never depend on timing.

Partials: a periodic update ends mid-speech, usually inside a word, and Whisper completes
a cut word into whatever fits; so the last word of a mid-speech hypothesis is neither shown
nor fed to the agreement. Partials lag one word behind the audio for it.

Guards against Whisper's known failures on live audio (openai-whisper's rules where they
exist): too-short bursts never get here (the segmenter's ``min_speech_s`` is the one length
gate); a result with a high no-speech probability and a low average log-probability is
dropped; a repetition loop (high gzip compression ratio) is decoded again at a higher
temperature and dropped if it keeps looping (a window decoded in a short encoder window is
first decoded again in the full one: the retry policy is engines/fallback.py's, shared with
the offline pipeline); earlier text is not used as a prompt unless
configured; when the segmenter had to cut a long utterance, words repeated from the
previous final at the start of the next are removed. The rules that judge a decoded
result live in engines/quality_gates.py, shared with the offline pipeline.

Structure: each utterance is a ``LiveUtterance``, a state machine fed its segmenter updates
and its decode outcomes. Every transition returns the actions it needs (queue a decode,
withdraw one, publish an event, release the model lease) and ``StreamTranscriber``, a small
driver, carries them out; so one utterance's path reads top to bottom in one class.
"""

from __future__ import annotations

import collections
import enum
import logging
import re
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from edgescribe.daemon import chinese_script
from edgescribe.daemon.alerts import PhraseWatch
from edgescribe.daemon.config.transcription import TranscriptionConfig
from edgescribe.daemon.events import Confidence, TranscriptEvent, WordTiming
from edgescribe.daemon.scheduler import DecodeOutcome, DecodeRequest, EngineManager, InferenceScheduler, ModelLease
from edgescribe.daemon.segmenter import Utterance
from edgescribe.engines.audio import CHUNK_SECONDS, N_FRAMES, SAMPLE_RATE
from edgescribe.engines.fallback import Attempt, FallbackLadder
from edgescribe.engines.quality_gates import QualityGates
from edgescribe.engines.word_timing import Word

log = logging.getLogger(__name__)

# An utterance that starts within this much audio time of the previous one's end was cut
# by the segmenter (a cut leaves no gap; after a pause the segmenter's pre-roll only holds
# audio from after the previous end), so its first words may repeat the last ones.
_CUT_TOLERANCE_S = 0.05
# Longest run of words the boundary de-duplication removes: about the 1-2 s of audio a
# segmenter pre-roll can repeat. Longer matches are more likely to be real speech.
_MAX_REPEATED_WORDS = 6
# A previous final longer than this is not used as context: its forced text would crowd the
# decoder's text context (and the TensorRT profile's prompt length).
_MAX_CONTEXT_WORDS = 48
# An utterance with at least this much speech (by the voice detector) is not dropped as
# silence on the first decode's word: the gates must find it silent at every temperature, and
# its windows that fail every temperature get one beam-search decode before they are dropped
# (engines/fallback.py). Below it, bursts are short enough that a wrong "silence" costs a word
# or two, and a hotter decode of a door slam only invents some.
DOUBT_SILENCE_AFTER_S = 2.0
# While an alert phrase may be on its way into the stable words (daemon/alerts.py PhraseWatch),
# partials come this often (audio s) instead of every partial_interval_s: the phrase turns
# stable, and its early alert fires, one agreeing partial later. The scheduler's partial
# budget still bounds what they cost.
WATCH_INTERVAL_S = 0.25
# A final whose utterance began within this much audio time of the previous one's end is
# decoded with that utterance as its context (the module docstring's "Context"). Gaps of 1, 2
# and 3 s were measured in four factory noises: 3 s was the one within 2 points of offline
# decoding at 20 and 10 dB for all four (docs/benchmarks.md "The live path in factory noise").
CONTEXT_AFTER_GAP_S = 3.0


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


def strip_repeated_prefix(previous_words: list[str], words: list[str]) -> list[str]:
    """Drop the longest run (up to ``_MAX_REPEATED_WORDS``) that ends ``previous_words`` and begins ``words``."""
    for k in range(min(_MAX_REPEATED_WORDS, len(previous_words), len(words)), 0, -1):
        if _same_words(previous_words[-k:], words[:k]):
            return words[k:]
    return words


def place_words(windows: list[tuple[float, Optional[list[Word]]]], heard: list[str], kept: list[str],
                script: Callable[[str], str], audio_start: float, audio_end: float) -> Optional[tuple[WordTiming, ...]]:
    """A final's timed words in the stream's audio time, matching its text.

    ``windows``: each kept window's start in the utterance (s) and its words (times from the
    window start; None when they could not be timed, which leaves the whole final untimed).
    ``heard`` are the final's words before the cut de-duplication, ``kept`` after it (a
    prefix of ``heard`` dropped). The text of the final is built from the joined window texts
    (script-converted, then split on spaces), so the words take their characters from it in
    order: their text joined is exactly the final's text without spaces, in the plant's script,
    and the characters de-duplication dropped drop the timed words they belong to (a word cut
    in two keeps its remaining characters and times).
    """
    timed: list[tuple[str, float, float, Optional[float]]] = []
    for offset, words in windows:
        if words is None:
            return None
        for word in words:
            text = "".join(word.word.split())
            if text:
                timed.append((text, offset + word.start, offset + word.end, word.probability))
    characters = "".join(heard)
    if sum(len(text) for text, *_ in timed) == len(characters):
        texts, position = [], 0
        for text, *_ in timed:
            texts.append(characters[position : position + len(text)])
            position += len(text)
    else:  # the script conversion changed the length of a phrase: convert word by word
        texts = ["".join(script(text).split()) for text, *_ in timed]
    drop = len(characters) - len("".join(kept))
    placed = []
    for text, (_, start, end, probability) in zip(texts, timed):
        if drop >= len(text):
            drop -= len(text)
            continue
        text, drop = text[drop:], 0
        start = min(max(audio_start + start, audio_start), audio_end)
        end = min(max(audio_start + end, start), audio_end)
        placed.append(WordTiming(text, round(start, 3), round(end, 3), probability))
    return tuple(placed)


def build_prompt(config: TranscriptionConfig, previous_text: str = "") -> str:
    """Hotwords first, then the initial prompt, then (if enabled) the previous final.

    faster-whisper puts hotwords ahead of the previous text in the same way; the decoder
    keeps only the last tokens of an over-long prompt, so the newest context survives.
    """
    parts = [" ".join(word.strip() for word in config.hotwords), config.initial_prompt.strip()]
    if config.condition_on_previous_text:
        parts.append(previous_text.strip())
    return " ".join(part for part in parts if part)


def split_windows(samples: np.ndarray) -> list[np.ndarray]:
    """Cut audio into equal windows of at most 30 s (the segmenter normally keeps utterances
    shorter, so this is one window; equal lengths avoid a tiny last window Whisper misreads)."""
    limit = int(CHUNK_SECONDS * SAMPLE_RATE)
    count = max(1, -(-len(samples) // limit))
    return [np.ascontiguousarray(part, dtype=np.float32) for part in np.array_split(samples, count)]


# -- what a transition asks the driver to do ------------------------------------------------


@dataclass(frozen=True)
class Queue:
    """Queue a decode the utterance needs. A final may wait for room (back-pressure), so the
    driver queues it outside its lock; ``urgent`` (a fallback retry, or a final that waited
    for its stream's previous one) goes first and never waits."""

    request: DecodeRequest
    urgent: bool = False


@dataclass(frozen=True)
class Offer:
    """Queue an optional decode (a partial, a speculative final) only if inference is not
    behind and there is room now; the answer goes back through ``LiveUtterance.answered``."""

    request: DecodeRequest


@dataclass(frozen=True)
class Withdraw:
    """Take a queued decode back; one already running still delivers, and is ignored."""

    request: DecodeRequest


@dataclass(frozen=True)
class Publish:
    event: TranscriptEvent


@dataclass(frozen=True)
class Release:
    """The utterance is done with its model (see ``ModelLease``)."""

    lease: ModelLease


Action = Union[Queue, Offer, Withdraw, Publish, Release]


@dataclass
class StreamMemory:
    """What one stream carries from one utterance to the next (guarded by its driver's lock)."""

    previous_words: list[str] = field(default_factory=list)  # the last final's words: cut de-duplication
    previous_text: str = ""  # the last final that had words: condition_on_previous_text
    previous_audio_end: float = -1e9  # where the last utterance ended: the next continues it if it starts there
    speculations: collections.Counter = field(default_factory=collections.Counter)  # started / reused / discarded
    drops: collections.Counter = field(default_factory=collections.Counter)  # what the gates kept out of finals


@dataclass(frozen=True)
class SpeculationCounts:
    """Speculative final decodes of one stream since start (see the module docstring).

    ``started`` = ``reused`` + ``discarded`` + those still waiting for their utterance's end.
    """

    started: int  # final decodes begun at a pause
    reused: int  # became the final's first decode: no speech after the pause
    discarded: int  # withdrawn or ignored: speech resumed, the prompt changed, it failed, or the stream stopped


@dataclass(frozen=True)
class DropCounts:
    """What one stream's finals left out since start, by the rule that did it."""

    no_speech: int  # windows judged silent (no-speech probability high, text unlikely)
    compression_ratio: int  # windows still looping at every temperature
    repeated_words: int  # words a cut utterance repeated from the previous final
    empty_finals: int  # ended utterances that gave no text at all (nothing published)
    # windows a gate rejected at first that a retry kept (not drops: what the retries saved)
    rescued_hotter: int = 0  # kept at a hotter temperature
    rescued_beam: int = 0  # kept by the beam-search retry after every temperature failed


@dataclass(frozen=True)
class _Settings:
    """What every utterance of a stream decodes and judges with."""

    stream: str
    config: TranscriptionConfig
    gates: QualityGates
    ladder: FallbackLadder  # a final's retries; each final adds its own doubt of silence
    deliver: Callable[[DecodeOutcome], None]  # the driver's entry for outcomes (the requests' on_done)
    # transcription.chinese_script: applied to every hypothesis before the agreement sees it,
    # so stable words stay stable in the plant's script
    script: Callable[[str], str] = lambda text: text
    # whether an alert phrase may be on its way into the stable words (PhraseWatch.pending,
    # given the stable and the unsettled words): then partials come faster
    watch: Callable[[list[str], list[str]], bool] = lambda stable, unsettled: False


@dataclass(frozen=True)
class _Context:
    """What a final's decode is given before its own audio (``CONTEXT_AFTER_GAP_S``)."""

    samples: np.ndarray  # the end of the previous utterance's audio, heard first
    prefix: str  # the previous final's text, forced as the start of the transcript


@dataclass
class _Speculation:
    """A final's first decode, started when the utterance paused (see the module docstring)."""

    speech_end: int  # the pause update's speech_end: the speech this decode heard
    request: DecodeRequest
    outcome: Optional[DecodeOutcome] = None  # set when decoded before the end was known


class Phase(enum.Enum):
    OPEN = "open"  # speech goes on: updates may give partials
    SPECULATING = "speculating"  # paused: the final's first decode started on the audio so far
    WAITING = "waiting"  # ended: the final waits for the previous utterance's (order, context)
    DECODING_FINAL = "decoding final"  # ended: one attempt of the fallback ladder is queued or running
    DONE = "done"  # the final went out, nothing was owed, or the stream closed


class LiveUtterance:
    """One utterance from its first update to its final, as a state machine.

    Inputs: ``update`` (a segmenter update), ``answered`` (whether an ``Offer`` was queued),
    ``decoded`` (an outcome of one of its requests), ``close`` (the stream stopped). Each
    returns the actions to carry out, in order. The path::

        OPEN --pause--> SPECULATING --more speech--> OPEN
        OPEN | SPECULATING --end--> DECODING_FINAL (the first attempt, then each retry of
        engines/fallback.py's ladder the gates ask for) --> DONE

    A speculation still valid at the end is the final's first attempt (decoded or not), so
    it goes through the same gates, fallback and de-duplication as a fresh one.
    """

    def __init__(self, first: Utterance, lease: ModelLease, continues: bool, settings: _Settings,
                 previous: Optional["LiveUtterance"] = None, with_context: bool = False):
        """``previous``: the stream's utterance before this one. Its final goes out first (the
        finals of a stream are published in order), and is this final's context when
        ``with_context`` (this one began within ``CONTEXT_AFTER_GAP_S`` of its end)."""
        self.utterance_id = first.utterance_id
        self.phase = Phase.OPEN
        self._settings = settings
        self._lease = lease
        self._audio_start = first.audio_start
        self._wall_start = first.wall_start
        self._continues = continues  # starts where the previous utterance was cut: de-duplicate its first words
        self._agreement = LocalAgreement()
        self._sequence = 0
        self._published = False  # whether any event of it went out (then a final must follow)
        self._last_partial_s = -1e9  # utterance length (audio s) at the last partial queued
        self._watching = False  # an alert phrase may be on its way into the stable words
        self._offered: Optional[Utterance] = None  # the update whose Offer awaits its answer
        self._speculation: Optional[_Speculation] = None
        # (speech_end, samples) of the last pause update: a final after it with no more speech
        # decodes just those samples, speculated or not, so its text does not depend on load
        self._pause: Optional[tuple[int, int]] = None
        # the final: one result slot per window, filled as attempts pass the gates
        self._final: Optional[DecodeRequest] = None  # the attempt being decoded
        self._ladder = settings.ladder  # the final's, with its doubt of silence (set at the end)
        self._attempt = settings.ladder.first()  # the ladder's step self._final decodes
        self._windows: list[np.ndarray] = []
        self._results: list[Any] = []
        self._attempts: list[list[Any]] = []  # every result so far that the verdict weighs, per window
        self._words: dict[int, Optional[list[Word]]] = {}  # id(result) -> its window's timed words
        self._ended_at = 0.0  # monotonic time the ended update arrived
        self._duration = 0.0
        self._speech_s = 0.0  # what the voice detector scored as speech in it
        self._previous = previous  # until this final's context is taken from it
        self._with_context = with_context
        self._context: Optional[_Context] = None
        self.heard: Optional[np.ndarray] = None  # the audio the final decodes, without context (set at the end)
        self._context_samples = 0  # of the final's window: the context's audio before its own
        self.final_words: list[str] = []  # the published final's words (the next one's context)

    # -- inputs ----------------------------------------------------------------------------

    def update(self, utterance: Utterance, stream: StreamMemory) -> list[Action]:
        if self.phase not in (Phase.OPEN, Phase.SPECULATING):
            return []  # already ended
        if utterance.ended:
            return self._end(utterance, stream)
        actions: list[Action] = []
        if self._speculation is not None and self._speculation.speech_end != utterance.speech_end:
            actions += self._drop_speculation(stream)  # speech resumed: that decode heard too little
        if utterance.pause and self._settings.config.speculative_final and utterance.speech_end is not None:
            actions += self._drop_speculation(stream)
            self._pause = (utterance.speech_end, len(utterance.samples))
            if not self._context_known():
                return actions  # a speculation would not know its context: the end decodes
            self._offered = utterance
            request = self._request(self._final_windows(utterance.samples), stream, final=True,
                                    attempt=self._settings.ladder.first())
            self._speculation = _Speculation(utterance.speech_end, request)
            self.phase = Phase.SPECULATING
            return actions + [Offer(request)]  # optional: refused when inference is behind
        return actions + self._partial(utterance, stream)

    def answered(self, request: DecodeRequest, queued: bool, stream: StreamMemory) -> list[Action]:
        update, self._offered = self._offered, None
        if self._speculation is not None and request is self._speculation.request:
            if queued:
                stream.speculations["started"] += 1
                return []
            self._speculation = None
            self.phase = Phase.OPEN
            return self._partial(update, stream)  # no speculation now: a partial may go instead
        if queued:
            self._last_partial_s = len(update.samples) / SAMPLE_RATE
        return []

    def decoded(self, outcome: DecodeOutcome, stream: StreamMemory) -> list[Action]:
        request = outcome.request
        if self._speculation is not None and request is self._speculation.request:
            self._speculation.outcome = outcome  # the end (or more speech) decides what it is worth
            return []
        if request is self._final:
            return self._final_decoded(outcome, stream)
        if not request.final and self.phase in (Phase.OPEN, Phase.SPECULATING):
            return self._partial_decoded(outcome, stream)
        return []  # a withdrawn speculation decoded anyway, or a partial overtaken by the end

    def close(self, stream: StreamMemory) -> list[Action]:
        """The stream stopped: forget the utterance unless it ended (its final still comes)."""
        if self.phase not in (Phase.OPEN, Phase.SPECULATING):
            return []
        actions = self._drop_speculation(stream)
        self.phase = Phase.DONE
        return actions + [Release(self._lease)]

    # -- while speech goes on --------------------------------------------------------------

    def _partial(self, update: Utterance, stream: StreamMemory) -> list[Action]:
        config = self._settings.config
        # measured in audio time, like the segmenter's updates (a little slack for frame
        # rounding), so a replayed file at any speed yields the same partials as live audio
        duration = len(update.samples) / SAMPLE_RATE
        interval = min(config.partial_interval_s, WATCH_INTERVAL_S) if self._watching else config.partial_interval_s
        if not config.partials or duration - self._last_partial_s < interval * 0.95:
            return []
        # Mid-speech, the audio ends inside a word, and Whisper completes a cut word into
        # whatever fits ("what your coun-" became a profanity in tiny.en's partial of JFK).
        # At a pause the last word is whole, so only then is it shown.
        self._offered = update
        return [Offer(self._request(split_windows(update.samples), stream, final=False, tag=not update.pause))]

    def _partial_decoded(self, outcome: DecodeOutcome, stream: StreamMemory) -> list[Action]:
        ready = time.monotonic()
        if outcome.error is not None:
            return []
        if not all(self._settings.gates.is_usable(r) for r in outcome.results):
            return []  # a dubious hypothesis would only poison the agreement
        heard = self._dedupe(stream, self._settings.script(" ".join(r.text.strip() for r in outcome.results)).split())
        # cut mid-word: the last word is kept out of the agreement (a cut word must not turn stable)
        words = heard[:-1] if outcome.request.tag else heard
        stable, tail = self._agreement.update(words)
        self._watching = self._settings.watch(stable, heard[len(stable):])
        if not stable and not tail:
            return []  # nothing to show yet
        audio_end = self._audio_start + sum(len(w) for w in outcome.request.windows) / SAMPLE_RATE
        latency = ready - outcome.request.submitted
        return [Publish(self._event("partial", stable, tail, outcome.results, outcome, audio_end, latency))]

    def _drop_speculation(self, stream: StreamMemory) -> list[Action]:
        if self._speculation is None:
            return []
        request = self._speculation.request
        self._speculation = None
        if self.phase is Phase.SPECULATING:
            self.phase = Phase.OPEN
        stream.speculations["discarded"] += 1
        return [Withdraw(request)]

    # -- the final ---------------------------------------------------------------------------

    def _end(self, ended: Utterance, stream: StreamMemory) -> list[Action]:
        self.phase = Phase.DECODING_FINAL
        self._ended_at = time.monotonic()
        self._duration = len(ended.samples) / SAMPLE_RATE
        self._speech_s = ended.speech_s
        stream.previous_audio_end = ended.audio_end
        self.heard = ended.samples
        if self._pause is not None and ended.speech_end == self._pause[0]:
            self.heard = self.heard[: self._pause[1]]  # what a speculation at the pause heard (issue 15)
        speculation = self._speculation
        if speculation is not None and self._speculation_stands_for(ended, stream):
            self._speculation = None
            stream.speculations["reused"] += 1
            self._begin_final(speculation.request)  # fallback retries decode the same audio
            if speculation.outcome is None:
                return []  # still decoding: its outcome finishes the final
            return self._final_decoded(speculation.outcome, stream)
        actions = self._drop_speculation(stream)
        if not self._context_known():
            self.phase = Phase.WAITING
            return actions
        return actions + self._queue_final(stream)

    def resume_ready(self) -> bool:
        """Whether a final waiting for the previous one (its context) can be queued now."""
        return self.phase is Phase.WAITING and self._context_known()

    def resume(self, stream: StreamMemory) -> list[Action]:
        """Queue a final that waited for the previous one (``resume_ready``). Queued from the
        inference worker, so it goes first and never waits (a waiting submit there would block
        the worker that empties the queue); it is the oldest final its stream owes."""
        if not self.resume_ready():
            return []
        self.phase = Phase.DECODING_FINAL
        return self._queue_final(stream, urgent=True)

    def _queue_final(self, stream: StreamMemory, urgent: bool = False) -> list[Action]:
        windows = self._final_windows(self.heard)
        self._begin_final(self._request(windows, stream, final=True, attempt=self._settings.ladder.first()))
        return [Queue(self._final, urgent=urgent)]

    def _context_known(self) -> bool:
        """Whether this final may be decoded: the previous utterance's final, its context, is out."""
        return self._previous is None or self._previous.phase is Phase.DONE

    def _final_windows(self, heard: np.ndarray) -> list[np.ndarray]:
        """The windows a final of ``heard`` decodes: one, after its context's audio, when the
        previous final had text and both fit one window; else ``heard`` alone."""
        if self._previous is not None:  # settled (_context_known): taken once, so no chain of utterances is kept
            previous, self._previous = self._previous, None
            if self._with_context and 0 < len(previous.final_words) <= _MAX_CONTEXT_WORDS and previous.heard is not None:
                self._context = _Context(previous.heard, " ".join(previous.final_words))
        context = self._context
        fits = context is not None and len(context.samples) + len(heard) <= CHUNK_SECONDS * SAMPLE_RATE
        self._context_samples = len(context.samples) if fits else 0
        return [np.concatenate([context.samples, heard])] if fits else split_windows(heard)

    def _speculation_stands_for(self, ended: Utterance, stream: StreamMemory) -> bool:
        """Whether the speculation can be this ended utterance's first decode: no speech came
        after the pause (same speech_end), its prompt is the one the final would get now (a
        previous final may have finished since, with condition_on_previous_text), and it did
        not fail."""
        speculation = self._speculation
        return (
            ended.speech_end is not None
            and speculation.speech_end == ended.speech_end
            and speculation.request.prompt == build_prompt(self._settings.config, stream.previous_text)
            and (speculation.outcome is None or speculation.outcome.error is None)
        )

    def _begin_final(self, first: DecodeRequest) -> None:
        self._final = first
        self._windows = first.windows
        self._results = [None] * len(first.windows)
        self._attempts = [[] for _ in first.windows]
        self._words = {}
        doubt = self._speech_s >= DOUBT_SILENCE_AFTER_S
        self._ladder = replace(self._settings.ladder, doubt_silence=doubt, beam_rescue=doubt)
        self._attempt = self._ladder.first()

    def _final_decoded(self, outcome: DecodeOutcome, stream: StreamMemory) -> list[Action]:
        if outcome.error is not None and self._attempt.step == "beam":
            # the beam-search retry failed (a TensorRT engine built for fewer decoder rows):
            # judge what the temperatures gave, as without the retry
            log.warning("%s: beam-search retry of %s failed: %s", self._settings.stream, self.utterance_id, outcome.error)
            for index, result in enumerate(self._results):
                if result is None:
                    self._results[index] = self._settings.gates.best_of_failed(self._attempts[index])
            outcome = replace(outcome, error=None, results=[])
        if outcome.error is not None:
            # the engine failed on this audio; say so rather than lose the utterance silently
            log.error("%s: final of %s could not be decoded: %s", self._settings.stream, self.utterance_id, outcome.error)
            return self._finish(stream, outcome, [], [])
        retry = self._keep_passing(outcome, stream)
        if retry is not None:
            self._final = retry
            return [Queue(retry, urgent=True)]
        gates = self._settings.gates
        kept = [r for r in self._results if gates.is_usable(r)]
        for result in self._results:
            if gates.is_silent(result):
                stream.drops["no_speech"] += 1
            elif gates.is_looping(result):
                stream.drops["compression_ratio"] += 1
        heard = self._settings.script(" ".join(r.text.strip() for r in kept)).split()
        words = self._dedupe_final(stream, heard)
        timings = self._timed_words(heard, words) if self._settings.config.word_timestamps else None
        return self._finish(stream, outcome, words, kept, timings)

    def _timed_words(self, heard: list[str], words: list[str]) -> Optional[tuple[WordTiming, ...]]:
        """The kept windows' timed words for the final made of ``words`` (see ``place_words``)."""
        gates = self._settings.gates
        starts = np.cumsum([0] + [len(window) for window in self._windows]) / SAMPLE_RATE
        windows = [(float(starts[index]), self._words.get(id(result)))
                   for index, result in enumerate(self._results) if gates.is_usable(result)]
        return place_words(windows, heard, words, self._settings.script, self._audio_start,
                           self._audio_start + self._duration)

    def _keep_passing(self, outcome: DecodeOutcome, stream: StreamMemory) -> Optional[DecodeRequest]:
        """Keep the results that pass the gates; returns the retry of the others (the next step of
        the final's ``FallbackLadder``: the full encoder window after a short one, then each
        hotter temperature, then the beam-search rescue), if there is one. When the ladder is
        exhausted, the gates pick the best attempt (as the offline pipeline does); one that still
        loops is then left out of the text.

        Beyond Whisper's rules: when the voice detector heard at least ``DOUBT_SILENCE_AFTER_S``
        of speech, a "no speech here" verdict is doubted and the window decoded again hotter,
        like a failed one. The no-speech probability does not change with temperature, but
        the text's likelihood does: speech that the model reads with confidence at a higher
        temperature is kept, and only what stays improbable is dropped (and counted).
        Such a window that fails at every temperature is decoded once more by beam search
        (engines/fallback.py) before it is dropped. Each retry decodes the window's own audio
        with a fixed seed, so the final still depends on its audio alone."""
        gates, ladder, attempt = self._settings.gates, self._ladder, self._attempt
        pending = [i for i, r in enumerate(self._results) if r is None]
        timed = outcome.words or [None] * len(outcome.results)
        frames = outcome.window_frames or [N_FRAMES] * len(outcome.results)
        failed, short = [], False
        for index, result, words, window_frames in zip(pending, outcome.results, timed, frames):
            self._attempts[index].append(result)
            self._words[id(result)] = words  # kept alive by _attempts, so the id stays its own
            if not ladder.fails(result, gates):
                self._results[index] = result
                if attempt.step in ("hotter", "beam"):
                    stream.drops[f"rescued_{attempt.step}"] += 1
            else:
                failed.append(index)
                short = short or window_frames < N_FRAMES
        following = ladder.next_after(attempt, short) if failed else None
        if following is None:
            for index in failed:
                self._results[index] = gates.best_of_failed(self._attempts[index])
            return None
        if following.step == "full_window":
            # the short window is the suspect: the full window's attempts alone decide, as offline
            for index in failed:
                for result in self._attempts[index]:
                    self._words.pop(id(result), None)
                self._attempts[index].clear()
            log.debug("%s: %s: %d window(s) failed in a short encoder window, retried in the full window",
                      self._settings.stream, self.utterance_id, len(failed))
        elif following.step == "beam":
            log.debug("%s: %s: %d window(s) failed every temperature, retried with beam search",
                      self._settings.stream, self.utterance_id, len(failed))
        else:
            log.debug("%s: %s: %d window(s) retried at temperature %.1f", self._settings.stream, self.utterance_id,
                      len(failed), following.temperature)
        self._attempt = following
        return self._request([self._windows[i] for i in failed], stream, final=True, attempt=following)

    def _finish(self, stream: StreamMemory, outcome: DecodeOutcome, words: list[str], kept: list[Any],
                timings: Optional[tuple[WordTiming, ...]] = None) -> list[Action]:
        self.phase = Phase.DONE
        self.final_words = words
        # finals complete in submission order (retries jump the queue), so this is the
        # utterance just before the next one to de-duplicate against
        stream.previous_words = words
        if words:
            stream.previous_text = " ".join(words)
        actions: list[Action] = [Release(self._lease)]
        if not words and not self._published:
            stream.drops["empty_finals"] += 1
            log.debug("%s: utterance %s gave no text (gated), nothing published", self._settings.stream, self.utterance_id)
            return actions
        # an utterance whose partials went out is always closed by a final, even an empty one
        results = kept or [r for r in self._results if r is not None]
        audio_end = self._audio_start + self._duration
        latency = time.monotonic() - self._ended_at
        return actions + [Publish(self._event("final", words, [], results, outcome, audio_end, latency, timings))]

    # -- shared by partials and finals -------------------------------------------------------

    def _request(self, windows: list[np.ndarray], stream: StreamMemory, final: bool,
                 attempt: Optional[Attempt] = None, tag: Any = None) -> DecodeRequest:
        """A decode of ``windows``: a final's at one step of its fallback ladder (``attempt``),
        or a partial's (greedy, temperature 0, in the scheduler's encoder window)."""
        config = self._settings.config
        after_context = final and self._context_samples > 0
        return DecodeRequest(
            key=self.utterance_id,
            final=final,
            windows=windows,
            lease=self._lease,
            on_done=self._settings.deliver,
            temperature=attempt.temperature if attempt else 0.0,
            language=None if config.language == "auto" else config.language,
            task=config.task,
            prompt=build_prompt(config, stream.previous_text),
            beam_size=attempt.beam_size if attempt else 1,
            # A final decoded after its context reads a full window: in a short one the model
            # must continue a forced prefix close to the window's end and loses the end or
            # repeats (docs/benchmarks.md, "Encoder windows": the streaming gate).
            encoder_window="full" if after_context else attempt.window if attempt else None,
            word_timestamps=final and config.word_timestamps,
            prefix=self._context.prefix if after_context else "",
            context_samples=self._context_samples if final else 0,
            tag=tag,
        )

    def _dedupe(self, stream: StreamMemory, words: list[str]) -> list[str]:
        return strip_repeated_prefix(stream.previous_words, words) if self._continues else words

    def _dedupe_final(self, stream: StreamMemory, words: list[str]) -> list[str]:
        kept = self._dedupe(stream, words)
        stream.drops["repeated_words"] += len(words) - len(kept)
        return kept

    def _event(self, kind: str, stable: list[str], tail: list[str], results: list[Any], outcome: DecodeOutcome,
               audio_end: float, latency: float, words: Optional[tuple[WordTiming, ...]] = None) -> TranscriptEvent:
        sequence = self._sequence
        self._sequence += 1
        self._published = True
        return TranscriptEvent(
            stream=self._settings.stream,
            utterance_id=self.utterance_id,
            sequence=sequence,
            kind=kind,
            stable_text=" ".join(stable),
            unstable_text=(" " if stable and tail else "") + " ".join(tail),
            audio_start=self._audio_start,
            audio_end=audio_end,
            wall_start=self._wall_start,
            wall_end=self._wall_start + (audio_end - self._audio_start),
            language=_language(results, self._settings.config.language),
            confidence=_confidence(results),
            model=outcome.model,
            backend=outcome.backend,
            latency_s=max(0.0, latency),
            words=words,
        )


class StreamTranscriber:
    """Turns one stream's utterance updates into TranscriptEvents through the shared scheduler:
    the driver of its ``LiveUtterance`` machines.

    ``push`` is called from the stream's pipeline thread and outcomes arrive on the inference
    worker thread; one lock serialises both, and everything that may wait (queueing a final,
    emitting) happens outside it.
    """

    def __init__(
        self,
        stream: str,
        config: TranscriptionConfig,
        scheduler: InferenceScheduler,
        engines: EngineManager,
        emit: Callable[[TranscriptEvent], None],
        alert_phrases: Sequence[str] = (),
    ):
        """``alert_phrases``: the stream's alert phrases, watched for in partials (PhraseWatch)."""
        self.stream = stream
        self.config = config
        self._scheduler = scheduler
        self._engines = engines
        self._emit = emit
        gates = QualityGates(config.compression_ratio_threshold, config.log_prob_threshold, config.no_speech_threshold)
        # the first attempt goes in the scheduler's window; a retry may ask for the full one
        ladder = FallbackLadder(tuple(config.temperatures), config.beam_size, scheduler.encoder_window)
        script = chinese_script.converter(config.chinese_script)
        # the phrases in the plant's script, as the hypotheses are
        watch = PhraseWatch([script(phrase) for phrase in alert_phrases])
        self._settings = _Settings(stream, config, gates, ladder, self._deliver, script, watch.pending)
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)  # notified when an utterance is done
        self._closed = False
        self._open: dict[str, LiveUtterance] = {}  # in the order the utterances began
        self._last: Optional[LiveUtterance] = None  # the utterance that began last (the next one's context)
        self._memory = StreamMemory()

    def push(self, utterance: Utterance) -> None:
        """Handle one segmenter update (``edgescribe.daemon.segmenter.Utterance``)."""
        with self._lock:
            machine = self._open.get(utterance.utterance_id)
            if machine is None:
                gap = utterance.audio_start - self._memory.previous_audio_end
                machine = LiveUtterance(utterance, self._engines.lease(), gap <= _CUT_TOLERANCE_S, self._settings,
                                        self._last, with_context=gap < CONTEXT_AFTER_GAP_S)
                self._open[utterance.utterance_id] = machine
                self._last = machine
            later = self._carry_out(machine, machine.update(utterance, self._memory))
        self._carry_out_unlocked(later)
        if machine.phase is Phase.WAITING:
            self._hold_back()

    def _hold_back(self) -> None:
        """On the pipeline thread, once a second final of the stream waits for its previous one:
        wait until the first is queued. One waiting final is held without blocking (its
        predecessor is usually being decoded); more would pile up audio in memory, so this
        keeps the back-pressure a full final queue gives: while inference is stuck, the ring
        buffer fills and the loss is reported as a gap."""
        with self._done:
            self._done.wait_for(lambda: self._closed or sum(m.phase is Phase.WAITING for m in self._open.values()) < 2)

    def speculation_counts(self) -> SpeculationCounts:
        """A consistent copy of the speculative-final counters (read from the health thread)."""
        with self._lock:
            counts = self._memory.speculations
            return SpeculationCounts(counts["started"], counts["reused"], counts["discarded"])

    def drop_counts(self) -> DropCounts:
        """A consistent copy of what the gates kept out of this stream's finals (health thread)."""
        with self._lock:
            drops = self._memory.drops
            return DropCounts(drops["no_speech"], drops["compression_ratio"], drops["repeated_words"],
                              drops["empty_finals"], drops["rescued_hotter"], drops["rescued_beam"])

    def close(self) -> None:
        """Forget open utterances (stream stopped); their finals already queued still arrive."""
        with self._lock:
            self._closed = True
            self._done.notify_all()
            for machine in list(self._open.values()):
                self._carry_out(machine, machine.close(self._memory))

    def _deliver(self, outcome: DecodeOutcome) -> None:
        """Every request's ``on_done`` (inference worker thread): hand the outcome to its utterance."""
        with self._lock:
            machine = self._open.get(outcome.request.key)
            if machine is None:
                return  # the stream closed before it ended
            later = self._carry_out(machine, machine.decoded(outcome, self._memory))
        self._carry_out_unlocked(later)

    def _carry_out(self, machine: LiveUtterance, actions: list[Action]) -> list[Action]:
        """Under the lock: the actions that never wait; returns those that may (in order)."""
        later: list[Action] = []
        todo = collections.deque(actions)
        while todo:
            action = todo.popleft()
            if isinstance(action, Offer):
                queued = (
                    self._scheduler.finals_waiting() < self._scheduler.max_batch  # else inference is behind: finals first
                    and self._scheduler.submit(action.request, timeout=0)
                )
                todo.extend(machine.answered(action.request, queued, self._memory))
            elif isinstance(action, Withdraw):
                self._scheduler.withdraw(action.request)
            elif isinstance(action, Release):
                action.lease.release()
            else:
                later.append(action)
        if machine.phase is Phase.DONE:
            del self._open[machine.utterance_id]
            for waiting in list(self._open.values()):  # the next final may have been waiting for this one
                if waiting.resume_ready():
                    later += self._carry_out(waiting, waiting.resume(self._memory))
            self._done.notify_all()  # for _hold_back
        return later

    def _carry_out_unlocked(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Queue):
                # a final may block here while inference catches up (back-pressure)
                self._scheduler.submit(action.request, urgent=action.urgent)
            elif isinstance(action, Publish):
                self._emit(action.event)


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
