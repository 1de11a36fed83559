"""The retry policy for one window: which decodes to try, in order, until one passes the gates.

Shared by the offline pipeline (engines/transcribe.py) and the live transcriber
(daemon/streaming.py), so a window fails and recovers the same way in both. The ladder:

1. the first temperature in the configured encoder window (engines/encoder_window.py);
2. if that window was shorter than 30 s and the decode failed: the same temperature in the full
   window. The short window saves work and must not change verdicts, so it is the suspect: its
   result is set aside and the full window's decodes alone decide, as if it had never run;
3. each hotter temperature, in the full window (Whisper's temperature fallback);
4. where allowed, one beam-search decode (``RESCUE_BEAM_SIZE`` beams, temperature 0) in the full
   window once every temperature failed (issue 16: beam search read noisy speech better than
   greedy), unless the configured beam search was already at least that wide.

Pure: no model calls. Every attempt is a function of the window's audio and the results before
it, so a caller that decodes each attempt with a fixed seed keeps its text a function of the
audio alone (issue 15).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from edgescribe.engines.encoder_window import DEFAULT_ENCODER_WINDOW, EncoderWindow
from edgescribe.engines.quality_gates import QualityGates, Scored

# Beams of the last-resort decode (the width issue 16 measured offline).
RESCUE_BEAM_SIZE = 5

Step = Literal["first", "full_window", "hotter", "beam"]


@dataclass(frozen=True)
class Attempt:
    """One decode of a window: where (encoder window), how hot, how many beams, and why."""

    window: EncoderWindow
    temperature: float
    beam_size: int  # > 1: beam search (temperature 0 only)
    step: Step = "first"


@dataclass(frozen=True)
class FallbackLadder:
    temperatures: tuple[float, ...]  # increasing; the first is the first attempt's
    beam_size: int = 1  # beams at temperature 0 (1: greedy)
    encoder_window: EncoderWindow = DEFAULT_ENCODER_WINDOW  # the first attempt's window
    # a "no speech" verdict fails too, so hotter decodes get their say (the live path's doubt
    # when the voice detector heard several seconds of speech)
    doubt_silence: bool = False
    beam_rescue: bool = False  # step 4 of the ladder is allowed

    def __post_init__(self) -> None:
        if not self.temperatures:
            raise ValueError("a fallback ladder needs at least one temperature")

    def first(self) -> Attempt:
        return Attempt(self.encoder_window, self.temperatures[0], self._beams(self.temperatures[0]))

    def fails(self, result: Scored, gates: QualityGates) -> bool:
        """Whether ``result`` asks for the next attempt."""
        return gates.needs_fallback(result) or (self.doubt_silence and gates.is_silent(result))

    def next_after(self, attempt: Attempt, short: bool = False) -> Optional[Attempt]:
        """The attempt after ``attempt`` failed, or None when the ladder is exhausted (the gates
        then pick the best of what was tried). ``short``: ``attempt`` was decoded in a window
        shorter than 30 s."""
        if short and attempt.window != "full":
            return Attempt("full", attempt.temperature, attempt.beam_size, "full_window")
        if attempt.step == "beam":
            return None
        hotter = [t for t in self.temperatures if t > attempt.temperature]
        if hotter:
            return Attempt("full", hotter[0], self._beams(hotter[0]), "hotter")
        if self.beam_rescue and self.beam_size < RESCUE_BEAM_SIZE:
            return Attempt("full", 0.0, RESCUE_BEAM_SIZE, "beam")
        return None

    def attempts(self, short: bool = False) -> tuple[Attempt, ...]:
        """The whole ladder for a window whose first attempt was ``short``, when each fails."""
        ladder = [self.first()]
        while (following := self.next_after(ladder[-1], short and len(ladder) == 1)) is not None:
            ladder.append(following)
        return tuple(ladder)

    def _beams(self, temperature: float) -> int:
        # as openai-whisper: beam search at temperature 0, sampling above it
        return self.beam_size if temperature == 0 else 1
