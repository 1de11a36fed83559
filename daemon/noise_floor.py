"""How loud a stream's floor is against its speech: a running signal-to-noise estimate.

The segmenter asks it how much silence should end an utterance. On a quiet line a short
silence is a sentence end; under steady machine noise the voice detector's speech
probability sags between words and inside soft syllables, so the same short silence cuts
sentences into pieces that Whisper then decodes without each other (see
docs/benchmarks.md, "The live path in noise").

The estimate compares the mean power of frames the detector calls speech with the median
power of frames it calls silence, each over the last ``window_frames`` of its kind. A
median, because the floor of a factory has bangs and hisses in it that a mean would chase;
a mean over speech, because speech power is what an SNR figure means. Frames between the
two thresholds are neither, and count for nothing.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Optional

import numpy as np

# About 10 s of 32-ms frames: long enough to ride over a pause or a burst, short enough to
# follow a machine starting up.
WINDOW_FRAMES = 312
# Fewer frames than this of either kind (about 1 s) and there is no estimate yet.
MIN_FRAMES = 30


class NoiseFloor:
    """Running SNR of one stream; ``update`` once per scored frame."""

    def __init__(self, window_frames: int = WINDOW_FRAMES):
        self._speech: deque[float] = deque(maxlen=window_frames)
        self._silence: deque[float] = deque(maxlen=window_frames)

    def update(self, frame: np.ndarray, speech: bool, silence: bool) -> None:
        if speech or silence:
            power = float(np.mean(np.square(frame, dtype=np.float64))) + 1e-12
            (self._speech if speech else self._silence).append(power)

    def snr_db(self) -> Optional[float]:
        """Speech power over floor power in dB; None until both have been heard for a while."""
        if len(self._speech) < MIN_FRAMES or len(self._silence) < MIN_FRAMES:
            return None
        return 10.0 * math.log10(float(np.mean(self._speech)) / float(np.median(self._silence)))
