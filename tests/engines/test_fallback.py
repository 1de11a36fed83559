"""The retry policy of one window (engines/fallback.py): which decodes, in which order."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from edgescribe.engines.fallback import RESCUE_BEAM_SIZE, Attempt, FallbackLadder
from edgescribe.engines.quality_gates import QualityGates

WHISPER = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def _steps(ladder: FallbackLadder, short: bool = False) -> list[tuple]:
    return [(a.window, a.temperature, a.beam_size, a.step) for a in ladder.attempts(short)]


def test_full_windows_climb_the_temperatures_as_whisper_does():
    ladder = FallbackLadder(WHISPER, encoder_window="full")
    expected = [("full", 0.0, 1, "first")] + [("full", t, 1, "hotter") for t in WHISPER[1:]]
    assert _steps(ladder) == expected
    assert _steps(ladder, short=True) == expected  # a full window is never short


def test_a_short_window_that_fails_is_decoded_again_in_the_full_window_before_any_hotter_temperature():
    ladder = FallbackLadder(WHISPER, encoder_window="adaptive")
    assert _steps(ladder, short=True)[:3] == [
        ("adaptive", 0.0, 1, "first"), ("full", 0.0, 1, "full_window"), ("full", 0.2, 1, "hotter")]
    assert all(a.window == "full" for a in ladder.attempts(short=True)[1:])
    # an adaptive window that came out 30 s long (long audio, or a full-only encoder) has nothing to retry
    assert _steps(ladder, short=False)[:2] == [("adaptive", 0.0, 1, "first"), ("full", 0.2, 1, "hotter")]


def test_beam_search_runs_at_temperature_zero_only():
    ladder = FallbackLadder(WHISPER, beam_size=3, encoder_window="adaptive")
    steps = _steps(ladder, short=True)
    assert steps[:3] == [("adaptive", 0.0, 3, "first"), ("full", 0.0, 3, "full_window"), ("full", 0.2, 1, "hotter")]
    assert _steps(FallbackLadder((0.2, 0.6), beam_size=3, encoder_window="full"))[0] == ("full", 0.2, 1, "first")


def test_the_beam_rescue_comes_last_and_only_where_allowed_and_wider_than_configured():
    rescued = FallbackLadder(WHISPER, encoder_window="full", doubt_silence=True, beam_rescue=True)
    assert _steps(rescued)[-1] == ("full", 0.0, RESCUE_BEAM_SIZE, "beam")
    assert len(rescued.attempts()) == len(WHISPER) + 1
    assert rescued.next_after(rescued.attempts()[-1]) is None  # one rescue, then the gates pick
    assert _steps(FallbackLadder(WHISPER, encoder_window="full"))[-1][3] == "hotter"  # not allowed
    wide = FallbackLadder(WHISPER, RESCUE_BEAM_SIZE, encoder_window="full", doubt_silence=True, beam_rescue=True)
    assert _steps(wide)[-1][3] == "hotter"  # the first decode was already that beam search
    # a ladder that does not start at 0: the rescue still decodes at temperature 0
    assert _steps(FallbackLadder((0.2, 0.4), encoder_window="full", beam_rescue=True))[-1] == ("full", 0.0, RESCUE_BEAM_SIZE, "beam")


def test_next_after_skips_repeated_temperatures():
    ladder = FallbackLadder((0.0, 0.0, 0.4), encoder_window="full")
    assert ladder.next_after(Attempt("full", 0.0, 1)) == Attempt("full", 0.4, 1, "hotter")


def test_a_ladder_needs_a_temperature():
    with pytest.raises(ValueError, match="at least one temperature"):
        FallbackLadder(())


@dataclass
class Scores:
    avg_logprob: float
    no_speech_prob: float = 0.1
    compression_ratio: float = 1.5


def test_what_fails_follows_the_gates_and_doubted_silence_fails_too():
    gates = QualityGates()
    plain, doubting = FallbackLadder(WHISPER), FallbackLadder(WHISPER, doubt_silence=True)
    good, loop, unlikely = Scores(-0.3), Scores(-0.3, compression_ratio=3.0), Scores(-1.5)
    silent = Scores(-1.5, no_speech_prob=0.9)  # unlikely text explained by silence
    for ladder in (plain, doubting):
        assert not ladder.fails(good, gates)
        assert ladder.fails(loop, gates) and ladder.fails(unlikely, gates)
    assert not plain.fails(silent, gates)  # Whisper's rule: silence, not a fallback
    assert doubting.fails(silent, gates)
