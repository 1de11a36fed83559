"""Typed messages that flow one way: capture -> segmenter -> transcriber -> publisher.

Every outbound message is one of these dataclasses; the publisher serialises them
(``dataclasses.asdict``) and owns topic naming, sequence numbers and timestamps of
publication. Audio times are seconds since the stream opened; wall-clock times are
UTC POSIX seconds (the publisher renders them as ISO 8601).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union


@dataclass(frozen=True)
class Confidence:
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    temperature: float


@dataclass(frozen=True)
class WordTiming:
    """One word of a final (transcription.word_timestamps), times in the stream's audio time."""

    word: str  # as in the final's text, without surrounding spaces
    start: float
    end: float
    probability: Optional[float]  # None when the decoder kept no token probabilities (beam search)


@dataclass(frozen=True)
class TranscriptEvent:
    stream: str
    utterance_id: str  # unique per device: "<stream>-<start wall ms>-<counter>"
    sequence: int  # per utterance: 0, 1, 2 ... partials then exactly one final
    kind: Literal["partial", "final"]
    stable_text: str  # never changes in later partials of the same utterance
    unstable_text: str  # empty on a final
    audio_start: float
    audio_end: float
    wall_start: float
    wall_end: float
    language: str
    confidence: Confidence
    model: str
    backend: str
    latency_s: float  # end of the audio this result covers -> result ready
    # finals with transcription.word_timestamps: the text's words in order; None: not timed
    words: Optional[tuple[WordTiming, ...]] = None

    @property
    def text(self) -> str:
        return (self.stable_text + self.unstable_text).strip()


@dataclass(frozen=True)
class GapEvent:
    """Audio was lost between capture and inference (ring buffer overflow, xrun)."""

    stream: str
    reason: Literal["overflow", "xrun"]
    audio_start: float
    duration_s: float
    wall_time: float


@dataclass(frozen=True)
class StreamStateEvent:
    """A capture stream went down (device missing/unplugged) or came back up."""

    stream: str
    state: Literal["up", "down"]
    detail: str
    wall_time: float


@dataclass(frozen=True)
class ModelEvent:
    """The serving model changed, or engines were (re)built; ``build_*``: a model/switch building the
    new package's TensorRT engines (daemon/engine_rollout.py)."""

    action: Literal["loaded", "switched", "engine_rebuilt", "build_started", "build_progress", "build_done",
                    "build_failed"]
    model: str
    backend: str
    detail: str
    wall_time: float


@dataclass(frozen=True)
class OutboxDropEvent:
    """Messages were lost: the outbox hit a bound and dropped its oldest entries ("size", "age"),
    or a stop found messages it could neither store (disk full) nor deliver ("unstored")."""

    dropped: int
    reason: Literal["size", "age", "unstored"]
    wall_time: float


@dataclass(frozen=True)
class OutboxDamagedEvent:
    """The outbox database could not be opened; it was moved aside and a fresh one started."""

    moved_to: str  # where the damaged file now is (kept for inspection)
    recovered: int  # rows read back from it into the fresh outbox
    detail: str  # what was wrong, e.g. "file is not a database"
    wall_time: float


@dataclass(frozen=True)
class AlertEvent:
    """A phrase alert (daemon/alerts.py): early from a partial, then confirmed or retracted by the final."""

    alert: str  # the alert's configured name
    state: Literal["early", "confirmed", "retracted"]
    stream: str
    utterance_id: str
    phrase: str  # the configured phrase that matched
    matched_text: str  # the words as the transcript wrote them
    distance: int  # character edits between the two (normalised)
    audio_start: float  # where the phrase is in the stream's audio (see audio_time)
    audio_end: float
    wall_start: float
    wall_end: float
    transcript_sequence: int  # the ``sequence`` of the partial or final that raised it
    # "words": the matched words' times (a final with word timings); "estimated": from the text
    audio_time: Literal["words", "estimated"] = "estimated"


@dataclass(frozen=True)
class RequestEvent:
    """A remote request (daemon/requests.py) was answered: the audit trail of every operation."""

    operation: str  # e.g. "config/set"; what the topic named, even when unknown
    transaction: Optional[Union[str, int, float]]  # the requester's, echoed
    outcome: Literal["ok", "error"]
    detail: str  # the error, or what was done
    changed: tuple[str, ...]  # configuration keys the request changed
    wall_time: float


@dataclass(frozen=True)
class ConfigChangeEvent:
    """A remote configuration change was applied, proved healthy (confirmed), or rolled back."""

    action: Literal["applied", "confirmed", "rolled_back"]
    transaction: Optional[Union[str, int, float]]  # of the config/set that made the change
    changed: tuple[str, ...]
    detail: str
    wall_time: float


Event = Union[TranscriptEvent, GapEvent, StreamStateEvent, ModelEvent, OutboxDropEvent, OutboxDamagedEvent,
              AlertEvent, RequestEvent, ConfigChangeEvent]
