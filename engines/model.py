"""A loaded Whisper model: package + tokenizer + runner + mel filters, ready for decoding."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgescribe.engines.audio import log_mel
from edgescribe.engines.package import ModelPackage
from edgescribe.engines.runtime import Runner
from edgescribe.engines.tokenizer import WhisperTokenizer
from edgescribe.engines.weights import ModelDims

log = logging.getLogger(__name__)


@dataclass
class WhisperModel:
    """Everything :func:`engines.decoding.decode` and the offline pipeline need of a model."""

    package: ModelPackage
    tokenizer: WhisperTokenizer
    runner: Runner
    mel_filters: np.ndarray  # float32 [n_mels, 201]
    name: str  # the weights' source name ("tiny.en", "base", or a directory)

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


def load_model(
    package_dir: str | Path,
    backend: str = "auto",
    engine_dir: str | Path | None = None,
    threads: int = 0,
) -> WhisperModel:
    """Open a model package and the runner that executes it (see ``edgescribe.engines.backend``)."""
    from edgescribe.engines.backend import create_runner

    package = ModelPackage.load(package_dir)
    runner = create_runner(package, backend=backend, engine_dir=engine_dir, threads=threads)
    model = WhisperModel.from_package(package, runner)
    log.info("loaded model %s from %s on %s", model.name, package.dir, runner.name)
    return model
