"""Whisper's quality gates: which decoding results to trust, retry hotter, or drop.

One copy of openai-whisper's rules (whisper/transcribe.py), used by the offline pipeline
(engines/transcribe.py) and the live transcriber (daemon/streaming.py). The boundaries are
openai-whisper's own, and they are not symmetric: a result *falls back* when its average
log-probability is strictly below ``log_prob_threshold``, but a likely-silent result is only
*kept* when it is strictly above it. A threshold of None switches its rule off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, TypeVar


class Scored(Protocol):
    """What the gates read of a result (engines.decoding.DecodingResult has all three)."""

    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float


R = TypeVar("R", bound=Scored)


@dataclass(frozen=True)
class QualityGates:
    compression_ratio_threshold: float | None = 2.4  # gzip ratio above: a repetition loop
    log_prob_threshold: float | None = -1.0  # average token log-probability below: unlikely text
    no_speech_threshold: float | None = 0.6  # no-speech probability above (and unlikely text): silence

    def is_looping(self, result: Scored) -> bool:
        """Too repetitive for zlib: Whisper is stuck in a loop."""
        return self.compression_ratio_threshold is not None and result.compression_ratio > self.compression_ratio_threshold

    def is_unlikely(self, result: Scored) -> bool:
        """The model itself doubts the text."""
        return self.log_prob_threshold is not None and result.avg_logprob < self.log_prob_threshold

    def is_silent(self, result: Scored) -> bool:
        """openai-whisper's no-speech skip: a likely-silence token, unless the text is confident
        (strictly above ``log_prob_threshold``); a result at the threshold is silence."""
        if self.no_speech_threshold is None or result.no_speech_prob <= self.no_speech_threshold:
            return False
        return not (self.log_prob_threshold is not None and result.avg_logprob > self.log_prob_threshold)

    def needs_fallback(self, result: Scored) -> bool:
        """Decode again at the next temperature: a loop or unlikely text, unless the unlikely
        text is explained by silence (a hotter decode would not find speech there)."""
        silence = (
            self.no_speech_threshold is not None
            and result.no_speech_prob > self.no_speech_threshold
            and self.is_unlikely(result)
        )
        return (self.is_looping(result) or self.is_unlikely(result)) and not silence

    def is_usable(self, result: Scored) -> bool:
        """Text worth publishing: neither silence nor a repetition loop."""
        return not self.is_silent(result) and not self.is_looping(result)

    def best_of_failed(self, attempts: Sequence[R]) -> R:
        """When every temperature needed a fallback: the likeliest attempt that is not a
        loop, or the likeliest of all when every one loops (the first of equals)."""
        if not attempts:
            raise ValueError("best_of_failed needs at least one attempt")
        candidates = [r for r in attempts if not self.is_looping(r)] or list(attempts)
        return max(candidates, key=lambda r: r.avg_logprob)
