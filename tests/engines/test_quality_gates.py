"""openai-whisper's quality gates (engines/quality_gates.py), at their boundaries.

The expected values are openai-whisper's (whisper/transcribe.py): ``needs_fallback`` when
``compression_ratio > threshold`` or ``avg_logprob < threshold`` (unless silence explains the
low probability); ``should_skip`` when ``no_speech_prob > threshold`` unless
``avg_logprob > logprob_threshold``.
"""

from __future__ import annotations

import pytest

from edgescribe.engines.decoding import DecodingResult
from edgescribe.engines.quality_gates import QualityGates

GATES = QualityGates(compression_ratio_threshold=2.4, log_prob_threshold=-1.0, no_speech_threshold=0.6)
ABOVE, BELOW = 1e-9, -1e-9  # the smallest steps the tests take across a threshold


def result(avg_logprob=-0.3, no_speech_prob=0.1, compression_ratio=1.5, text="it is fine") -> DecodingResult:
    return DecodingResult(tokens=[], text=text, language="en", language_probs=None, avg_logprob=avg_logprob,
                          no_speech_prob=no_speech_prob, compression_ratio=compression_ratio, temperature=0.0)


def test_a_loop_is_a_compression_ratio_strictly_above_the_threshold():
    assert not GATES.is_looping(result(compression_ratio=2.4))
    assert GATES.is_looping(result(compression_ratio=2.4 + ABOVE))
    assert not QualityGates(compression_ratio_threshold=None).is_looping(result(compression_ratio=99.0))


def test_fallback_at_a_loop_or_a_log_probability_strictly_below_the_threshold():
    assert not GATES.needs_fallback(result(avg_logprob=-1.0))
    assert GATES.needs_fallback(result(avg_logprob=-1.0 + BELOW))
    assert not GATES.needs_fallback(result(compression_ratio=2.4))
    assert GATES.needs_fallback(result(compression_ratio=2.4 + ABOVE))


def test_no_fallback_when_silence_explains_the_low_probability():
    silent = dict(no_speech_prob=0.6 + ABOVE, avg_logprob=-1.0 + BELOW)
    assert not GATES.needs_fallback(result(**silent))
    assert not GATES.needs_fallback(result(**silent, compression_ratio=3.0))  # even a loop: openai-whisper's order
    # at the no-speech threshold it is not silence, so the unlikely text is retried
    assert GATES.needs_fallback(result(no_speech_prob=0.6, avg_logprob=-1.0 + BELOW))
    # a likely-silent loop whose text is not unlikely is still retried
    assert GATES.needs_fallback(result(no_speech_prob=0.9, avg_logprob=-0.5, compression_ratio=3.0))
    # without a log-probability threshold silence never excuses a loop
    assert QualityGates(log_prob_threshold=None).needs_fallback(result(no_speech_prob=0.9, compression_ratio=3.0))


def test_silence_needs_a_no_speech_probability_above_its_threshold_and_no_confident_text():
    assert not GATES.is_silent(result(no_speech_prob=0.6, avg_logprob=-2.0))
    assert GATES.is_silent(result(no_speech_prob=0.6 + ABOVE, avg_logprob=-2.0))
    # confident text outweighs the no-speech probability only strictly above the threshold
    assert not GATES.is_silent(result(no_speech_prob=0.9, avg_logprob=-1.0 + ABOVE))
    assert GATES.is_silent(result(no_speech_prob=0.9, avg_logprob=-1.0))
    assert QualityGates(log_prob_threshold=None).is_silent(result(no_speech_prob=0.9, avg_logprob=-0.1))
    assert not QualityGates(no_speech_threshold=None).is_silent(result(no_speech_prob=1.0, avg_logprob=-5.0))


def test_at_the_log_probability_threshold_a_likely_silent_result_is_dropped_not_retried():
    """Where the two rules meet: openai-whisper neither retries it nor keeps it."""
    edge = result(no_speech_prob=0.9, avg_logprob=-1.0)
    assert not GATES.needs_fallback(edge)
    assert GATES.is_silent(edge) and not GATES.is_usable(edge)


def test_usable_text_is_neither_silence_nor_a_loop():
    assert GATES.is_usable(result())
    assert not GATES.is_usable(result(compression_ratio=3.0))
    assert not GATES.is_usable(result(no_speech_prob=0.9, avg_logprob=-1.5))
    assert GATES.is_usable(result(avg_logprob=-1.5))  # unlikely but not silent: a caller's fallback decides


def test_when_every_temperature_failed_the_likeliest_attempt_that_does_not_loop_is_kept():
    looping = result(avg_logprob=-0.2, compression_ratio=3.0, text="loop")
    unlikely = result(avg_logprob=-1.4, text="unlikely")
    worse = result(avg_logprob=-1.8, text="worse")
    assert GATES.best_of_failed([looping, worse, unlikely]) is unlikely
    # when every attempt loops, the likeliest of all; equals: the first
    other = result(avg_logprob=-0.2, compression_ratio=4.0, text="other loop")
    assert GATES.best_of_failed([looping, other, result(avg_logprob=-0.9, compression_ratio=2.5)]) is looping
    with pytest.raises(ValueError, match="at least one attempt"):
        GATES.best_of_failed([])


def test_the_default_thresholds_are_openai_whispers():
    assert QualityGates() == GATES
