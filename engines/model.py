"""A loaded Whisper model: package + tokenizer + runner + mel filters, ready for decoding.

``backend.load_model`` opens one from a package directory on the right runner.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from edgescribe.engines.audio import log_mel, pad_or_trim
from edgescribe.engines.encoder_window import EncoderWindow, window_frames
from edgescribe.engines.package import ModelPackage
from edgescribe.engines.runtime import Runner
from edgescribe.engines.tokenizer import WhisperTokenizer
from edgescribe.engines.weights import ModelDims


@dataclass
class WhisperModel:
    """Everything :func:`engines.decoding.decode` and the offline pipeline need of a model."""

    package: ModelPackage
    tokenizer: WhisperTokenizer
    runner: Runner
    mel_filters: np.ndarray  # float32 [n_mels, 201]
    name: str  # the weights' source name ("tiny.en", "base", or a directory)

    def __post_init__(self) -> None:
        # numpy's BLAS runs on one thread in a process with a model: the runner's threads own
        # the cores, and OpenBLAS's own threads spin for about 0.1 s after every call. After
        # each log-mel (its one matrix product, no faster on two threads) they took the cores
        # from the encode that follows it, which then ran about twice as long
        # (docs/benchmarks.md, "Speed").
        threadpool_limits(limits=1, user_api="blas")

    @property
    def dims(self) -> ModelDims:
        return self.package.dims

    @property
    def is_multilingual(self) -> bool:
        return self.package.manifest.multilingual

    @classmethod
    def from_package(cls, package: ModelPackage, runner: Runner) -> WhisperModel:
        """Assemble a model from an opened package and the runner that executes its graphs."""
        return cls(
            package=package,
            tokenizer=WhisperTokenizer.from_package(package),
            runner=runner,
            mel_filters=package.mel_filters().astype(np.float32),
            name=package.manifest.source.get("name") or package.dir.name,
        )

    def log_mel(self, samples: np.ndarray) -> np.ndarray:
        """Log-mel spectrogram [n_mels, frames] of 16-kHz mono samples, with this model's filters."""
        return log_mel(samples, self.mel_filters)

    def encoder_window(self, mel: np.ndarray, mode: EncoderWindow) -> np.ndarray:
        """``mel`` [n_mels, frames <= 3000] zero-padded to the window the encoder reads for it:
        sized to the audio (``adaptive``) where the runner's encoder takes shorter windows,
        else the full 30 s."""
        frames = max(window_frames(mel.shape[-1], mode), self.runner.min_window_frames)
        return pad_or_trim(mel, frames)
