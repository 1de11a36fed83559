"""Phrase alerts: named phrases found in the live transcript, early from partials and then
confirmed or retracted by the final.

The matcher runs on the dispatcher thread as a consumer of ``TranscriptEvent``s (never on a
capture or inference thread), and its ``AlertEvent``s go into the outbox right behind the
transcript event that raised them, so they share its ``seq`` order and its delivery
guarantee. Per utterance and alert there is at most one *early* alert (the phrase appeared
in the stable text of a partial, which later partials never change) and at most one
resolution: *confirmed* when the final contains the phrase (also when no partial had it),
*retracted* when an early alert's phrase is not in the final (the final is a fresh decode
of all the audio and is the authoritative text).

Matching ignores case, punctuation and width (NFKC); words are compared as words, and Han,
kana and hangul characters one by one, so Chinese needs no spaces. A window of the text
matches a phrase when its character edit distance from the phrase is at most
``tolerance`` x the phrase's length (the window may have a word or character more or fewer
than the phrase). A confirmed alert from a final with timed words
(``transcription.word_timestamps``) takes its audio time from the matched words: the first
one's start to the last one's end. Otherwise (early alerts: partials have no word times)
the time is estimated from the phrase's position in the text: characters are spread
evenly over the audio the text covers. A retraction repeats its early alert's time.

Phrase alerts are not a safety function (docs/mqtt.md "Alerts").
"""

from __future__ import annotations

import collections
import re
import threading
import unicodedata
from dataclasses import dataclass
from typing import Callable, Optional

from edgescribe.daemon.config.alerts import AlertRule
from edgescribe.daemon.events import AlertEvent, TranscriptEvent, WordTiming

# Han (with extensions and compatibility forms), kana, hangul: one token per character.
_CHARACTER_SCRIPTS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0003134f"
_TOKEN = re.compile(rf"[{_CHARACTER_SCRIPTS}]|(?:(?![{_CHARACTER_SCRIPTS}])[\w'])+")
_OPEN_UTTERANCES = 256  # early alerts kept for this many utterances whose final has not come


@dataclass(frozen=True)
class _Token:
    text: str  # normalised
    start: int  # character offsets in the original text
    end: int
    character: bool  # one Han/kana/hangul character (joined to its neighbours without a space)


def _tokens(text: str) -> list[_Token]:
    found = []
    for match in _TOKEN.finditer(text):
        normal = unicodedata.normalize("NFKC", match.group()).casefold().replace("'", "")
        if normal:
            found.append(_Token(normal, match.start(), match.end(), len(match.group()) == 1
                                and re.match(f"[{_CHARACTER_SCRIPTS}]", match.group()) is not None))
    return found


def _joined(tokens: list[_Token]) -> str:
    text = ""
    for index, token in enumerate(tokens):
        if index and not (token.character and tokens[index - 1].character):
            text += " "
        text += token.text
    return text


def edit_distance(a: str, b: str, limit: int) -> int:
    """Levenshtein distance of two strings, or ``limit + 1`` once it is known to exceed ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        if min(current) > limit:
            return limit + 1
        previous = current
    return previous[-1]


@dataclass(frozen=True)
class Match:
    phrase: str  # the configured phrase
    text: str  # the matched words as the transcript wrote them
    start: int  # character offsets in the transcript
    end: int
    distance: int  # character edits between the two (normalised)


class PhraseMatcher:
    """Finds the best match of any of an alert's phrases in a text."""

    def __init__(self, phrases: list[str], tolerance: float):
        self._phrases = []
        for phrase in phrases:
            tokens = _tokens(phrase)
            if tokens:
                joined = _joined(tokens)
                errors = int(tolerance * len(joined.replace(" ", "")) + 1e-9)
                self._phrases.append((phrase, len(tokens), joined, errors))

    def find(self, text: str) -> Optional[Match]:
        tokens = _tokens(text)
        best: Optional[Match] = None
        best_rank = (0, 0)  # (edits, words or characters more or fewer than the phrase): lower is better
        for phrase, length, joined, errors in self._phrases:
            # a window may hold a word or character more or fewer than the phrase
            for size in range(max(1, length - min(errors, length - 1)), length + errors + 1):
                for first in range(0, len(tokens) - size + 1):
                    window = tokens[first : first + size]
                    distance = edit_distance(_joined(window), joined, errors)
                    rank = (distance, abs(size - length))
                    if distance <= errors and (best is None or rank < best_rank):
                        best, best_rank = Match(phrase, text[window[0].start : window[-1].end], window[0].start,
                                                window[-1].end, distance), rank
                        if rank == (0, 0):
                            return best
        return best


class PhraseWatch:
    """Whether an alert phrase of a stream may be on its way into a partial's stable text.

    The transcriber asks it after every partial: while the answer is yes it takes partials
    more often (``daemon/streaming.py`` ``WATCH_INTERVAL_S``), because a phrase turns stable,
    and its early alert fires, only when two successive partials agree on it. A phrase is on
    its way when its first word is among the unsettled words, or among the last stable ones
    with too few stable words after it to hold the rest of the phrase. Watching costs only
    extra partials, so the first word is matched exactly (normalised), not within the alert's
    tolerance."""

    def __init__(self, phrases: list[str]):
        # (first token, tokens in the phrase)
        self._phrases = {(tokens[0].text, len(tokens)) for tokens in map(_tokens, phrases) if tokens}
        self._longest = max((length for _, length in self._phrases), default=0)

    def pending(self, stable: list[str], unsettled: list[str]) -> bool:
        # only the last words of the stable text can hold a phrase's start without its end
        recent: list[str] = []
        for word in reversed(stable):
            if len(recent) >= self._longest - 1:
                break
            recent[:0] = [token.text for token in _tokens(word)]
        unsettled_tokens = {token.text for token in _tokens(" ".join(unsettled))}
        return any(first in unsettled_tokens or first in recent[max(0, len(recent) - length + 1) :]
                   for first, length in self._phrases)


@dataclass(frozen=True)
class AlertCounts:
    """Alerts of one name since start, by state."""

    early: int
    confirmed: int
    retracted: int


class _Alert:
    def __init__(self, rule: AlertRule, convert: Callable[[str], str]):
        self.name = rule.name
        self.streams = set(rule.streams)
        # the phrases are written in the plant's script, as the transcript is
        self.matcher = PhraseMatcher([convert(phrase) for phrase in rule.phrases], rule.tolerance)

    def listens_to(self, stream: str) -> bool:
        return not self.streams or stream in self.streams


class AlertTracker:
    """Turns a device's transcript events into alert events (one instance per device).

    ``observe`` is called for every ``TranscriptEvent`` in the order the dispatcher hands
    them out; ``counts`` may be called from any thread (health)."""

    def __init__(self, rules: list[AlertRule], convert: Callable[[str], str] = lambda text: text):
        self._alerts = [_Alert(rule, convert) for rule in rules]
        self._early: collections.OrderedDict[str, dict[str, AlertEvent]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._counts = {alert.name: collections.Counter() for alert in self._alerts}

    @property
    def names(self) -> list[str]:
        return [alert.name for alert in self._alerts]

    def observe(self, event: TranscriptEvent) -> list[AlertEvent]:
        alerts = [alert for alert in self._alerts if alert.listens_to(event.stream)]
        if not alerts:
            return []
        if event.kind == "partial":
            return self._partial(event, alerts)
        return self._final(event, alerts)

    def counts(self) -> dict[str, AlertCounts]:
        with self._lock:
            return {name: AlertCounts(c["early"], c["confirmed"], c["retracted"]) for name, c in self._counts.items()}

    def _partial(self, event: TranscriptEvent, alerts: list[_Alert]) -> list[AlertEvent]:
        fired = self._early.get(event.utterance_id, {})
        raised = []
        for alert in alerts:
            if alert.name in fired:
                continue  # never twice for one utterance
            match = alert.matcher.find(event.stable_text)
            if match is not None:
                # the partial's whole text (stable and unstable) covers its audio
                raised.append(_alert_event(alert.name, "early", event, match, event.stable_text + event.unstable_text))
        if raised:
            fired = self._early.setdefault(event.utterance_id, {})
            fired.update({alert.alert: alert for alert in raised})
            while len(self._early) > _OPEN_UTTERANCES:  # utterances whose final never came (stream stopped)
                self._early.popitem(last=False)
        self._count(raised)
        return raised

    def _final(self, event: TranscriptEvent, alerts: list[_Alert]) -> list[AlertEvent]:
        fired = self._early.pop(event.utterance_id, {})
        resolved = []
        for alert in alerts:
            match = alert.matcher.find(event.text)
            early = fired.get(alert.name)
            if match is not None:
                resolved.append(_alert_event(alert.name, "confirmed", event, match, event.text,
                                             _word_span(event.words, event.text, match)))
            elif early is not None:
                resolved.append(_retraction(early, event))
        self._count(resolved)
        return resolved

    def _count(self, raised: list[AlertEvent]) -> None:
        with self._lock:
            for alert in raised:
                self._counts[alert.alert][alert.state] += 1


def _word_span(words: Optional[tuple[WordTiming, ...]], text: str, match: Match) -> Optional[tuple[float, float]]:
    """The audio time of the timed words ``match`` (offsets in ``text``) falls on; None when
    there are no word times, or they do not spell ``text``."""
    if not words:
        return None
    # the words joined are the text without its spaces: find each visible character's word
    owner = [index for index, word in enumerate(words) for _ in word.word]
    visible = [position for position, character in enumerate(text) if not character.isspace()]
    if len(owner) != len(visible):
        return None
    covered = [owner[i] for i, position in enumerate(visible) if match.start <= position < match.end]
    if not covered:
        return None
    return words[covered[0]].start, words[covered[-1]].end


def _alert_event(name: str, state: str, event: TranscriptEvent, match: Match, covered: str,
                 span: Optional[tuple[float, float]] = None) -> AlertEvent:
    if span is not None:
        audio_start, audio_end = span
    else:
        share = (event.audio_end - event.audio_start) / max(1, len(covered.rstrip()))
        audio_start = event.audio_start + match.start * share
        audio_end = event.audio_start + min(len(covered), match.end) * share
    return AlertEvent(
        alert=name,
        state=state,
        stream=event.stream,
        utterance_id=event.utterance_id,
        phrase=match.phrase,
        matched_text=match.text,
        distance=match.distance,
        audio_start=audio_start,
        audio_end=audio_end,
        wall_start=event.wall_start + (audio_start - event.audio_start),
        wall_end=event.wall_start + (audio_end - event.audio_start),
        transcript_sequence=event.sequence,
        audio_time="words" if span is not None else "estimated",
    )


def _retraction(early: AlertEvent, final: TranscriptEvent) -> AlertEvent:
    """The early alert's phrase and time, withdrawn by the final (which no longer has it)."""
    return AlertEvent(
        alert=early.alert,
        state="retracted",
        stream=early.stream,
        utterance_id=early.utterance_id,
        phrase=early.phrase,
        matched_text=early.matched_text,
        distance=early.distance,
        audio_start=early.audio_start,
        audio_end=early.audio_end,
        wall_start=early.wall_start,
        wall_end=early.wall_end,
        transcript_sequence=final.sequence,
        audio_time=early.audio_time,
    )
