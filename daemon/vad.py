"""Voice activity detection: how likely each 32-ms frame of 16-kHz audio is speech.

Two detectors behind one protocol: Silero VAD (a small recurrent ONNX model, the default,
robust to the steady machine noise of a factory floor) and an energy detector with an
adaptive noise floor (no model, for quiet rooms or as a fallback). Both are streaming:
they keep state between frames, so one detector serves exactly one stream. Which scores
count as speech (``vad.threshold``, ``vad.off_threshold``) is configured with the detector
and applied by the segmenter.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional, Protocol

import numpy as np

from edgescribe.daemon.config.audio import VadOptions
from edgescribe.engines.audio import SAMPLE_RATE
from edgescribe.engines.errors import BackendUnavailableError, ModelSourceError

log = logging.getLogger(__name__)

FRAME_SAMPLES = 512  # what Silero VAD is trained on at 16 kHz (32 ms)
BUNDLED_MODEL = Path(__file__).resolve().parent / "models" / "silero_vad.onnx"


class VoiceDetector(Protocol):
    def speech_prob(self, frame: np.ndarray) -> float:
        """Probability in [0, 1] that ``frame`` (512 float32 samples at 16 kHz) is speech."""

    def reset(self) -> None:
        """Forget the past: the next frame starts a new, unrelated piece of audio."""


# Silero's recurrent state drifts on a long stream of steady machine noise: after about
# four minutes of the corpus in continuous fan, pump or valve noise at 5 dB, a whole sentence
# that a fresh state scored at 0.6-0.99 scored under 0.1, and the utterance was never found
# (scripts/benchmark_noise.py, docs/benchmarks.md). A fresh state scores the same audio
# right, so the detector starts afresh once this much audio has passed since it last did,
# at the first moment it has heard REFRESH_IDLE_S of non-speech: between utterances, never
# inside one. Refreshing every 3 s instead of 10 found no more speech; neither raised more
# noise-only frames over the threshold.
REFRESH_AFTER_S = 10.0
REFRESH_IDLE_S = 1.0


class SileroVad:
    """Silero VAD v6 run with ONNX Runtime on one CPU thread (it needs ~0.1 ms per frame).

    ``idle_below``: a probability under which a frame counts as non-speech for the state's
    refresh (the segmenter's ``vad.off_threshold``); ``refresh_after_s``: REFRESH_AFTER_S."""

    _CONTEXT = 64  # samples of the previous frame the model sees in front of each new one

    def __init__(self, model_path: Optional[str | Path] = None, idle_below: float = VadOptions().off_threshold,
                 refresh_after_s: float = REFRESH_AFTER_S):
        try:
            import onnxruntime
        except ImportError:
            raise BackendUnavailableError(
                "Silero VAD needs onnxruntime (install edgescribe[cpu] or [jetson]), or set vad.engine: energy"
            ) from None

        path = Path(model_path) if model_path else BUNDLED_MODEL
        if not path.is_file():
            raise ModelSourceError(f"Silero VAD model {path}: no such file (set vad.model_path, or vad.engine: energy)")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises several unrelated types for a bad file
            reason = _first_line(error)
            raise ModelSourceError(f"Silero VAD model {path}: not a loadable ONNX model ({reason})") from None
        names = {i.name for i in self._session.get_inputs()}
        if names != {"input", "state", "sr"}:
            raise ModelSourceError(
                f"Silero VAD model {path}: unexpected inputs {sorted(names)} (need input, state, sr; "
                "use silero_vad_16k_op15.onnx or silero_vad.onnx from silero-vad 5/6)"
            )
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self._idle_below = idle_below
        self._refresh_after = refresh_after_s * SAMPLE_RATE / FRAME_SAMPLES
        self._refresh_idle = round(REFRESH_IDLE_S * SAMPLE_RATE / FRAME_SAMPLES)
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros(self._CONTEXT, np.float32)
        self._frames = 0  # since the state was last fresh
        self._idle_frames = 0  # in a row under idle_below

    def speech_prob(self, frame: np.ndarray) -> float:
        frame = np.asarray(frame, dtype=np.float32)
        if frame.shape != (FRAME_SAMPLES,):
            raise ValueError(f"Silero VAD needs frames of {FRAME_SAMPLES} samples, got shape {frame.shape}")
        model_input = np.concatenate([self._context, frame])[None, :]
        prob, self._state = self._session.run(None, {"input": model_input, "state": self._state, "sr": self._sr})
        self._context = frame[-self._CONTEXT:].copy()
        prob = float(prob[0, 0])
        self._frames += 1
        self._idle_frames = self._idle_frames + 1 if prob < self._idle_below else 0
        if self._frames >= self._refresh_after and self._idle_frames >= self._refresh_idle:
            self.reset()
        return prob


class EnergyVad:
    """Loudness against a noise floor that follows the quietest recent frames.

    The floor falls at once to a quieter frame and rises slowly (``rise_db_per_s``), so a
    long utterance does not drag the floor up to speech level, while a machine that starts
    running is learned within seconds.
    """

    def __init__(self, margin_db: float = 10.0, rise_db_per_s: float = 3.0, initial_floor_db: float = -60.0):
        self.margin_db = margin_db
        self._rise_per_frame = rise_db_per_s * FRAME_SAMPLES / SAMPLE_RATE
        self._initial_floor_db = initial_floor_db
        self.reset()

    def reset(self) -> None:
        self.floor_db = self._initial_floor_db

    def speech_prob(self, frame: np.ndarray) -> float:
        frame = np.asarray(frame, dtype=np.float32)
        level_db = rms_dbfs(frame)
        self.floor_db = min(level_db, self.floor_db + self._rise_per_frame)
        # logistic around floor + margin: 0.5 exactly at the margin, ~0.9 three dB above it
        return 1.0 / (1.0 + math.exp(-(level_db - self.floor_db - self.margin_db) / 1.4))


def rms_dbfs(samples: np.ndarray) -> float:
    """RMS level in dB relative to full scale (a full-scale sine is -3 dBFS); -120 for silence."""
    if len(samples) == 0:
        return -120.0
    power = float(np.mean(np.square(samples, dtype=np.float64)))
    return 10.0 * math.log10(max(power, 1e-12))


def create_vad(options: VadOptions) -> VoiceDetector:
    """The detector ``options.engine`` names; one per stream, as detectors keep state."""
    if options.engine == "silero":
        return SileroVad(options.model_path, idle_below=options.off_threshold)
    return EnergyVad(margin_db=options.energy_margin_db)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
