"""Build, validate and cache the TensorRT engines of one model package on this device.

``edgescribe build-engines`` (daemon/build_engines_command.py) runs this at install time and
after JetPack upgrades. When the engines in the output directory already match the package,
device, TensorRT, L4T release and settings, it loads them once to be sure and builds nothing:
that makes it safe to run on every boot.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from edgescribe.engines.audio import FRAMES_PER_SECOND, N_FRAMES
from edgescribe.engines.decoding import DecodingOptions, decode
from edgescribe.engines.encoder_window import WINDOW_FRAMES
from edgescribe.engines.errors import ConfigError, ModelPackageError
from edgescribe.engines.model import WhisperModel
from edgescribe.engines.onnx_runner import OnnxRunner
from edgescribe.engines.package import ModelPackage
from edgescribe.engines.tensorrt import validation
from edgescribe.engines.tensorrt.builder import BuildOptions, EngineBuilder, ValidationOutcome, expected_keys, recipe
from edgescribe.engines.tensorrt.engine_cache import ALIGNER, EngineCache, model_sha256
from edgescribe.engines.tensorrt.platform import device_facts
from edgescribe.engines.tensorrt.runner import TensorRTRunner
from edgescribe.engines.tokenizer import WhisperTokenizer

log = logging.getLogger(__name__)


def build_engines(
    package: ModelPackage,
    engine_dir: Path,
    options: BuildOptions,
    trt,
    force: bool = False,
    threads: int = 0,
    system_root: Path = Path("/"),
    tick_interval: float = 15.0,
    reference_wav: Optional[Path] = None,
) -> bool:
    """Make ``engine_dir/<package name>`` hold validated engines; True when it built any.

    ``trt`` is ``engines.tensorrt.seam.load()`` (or a test double of it).
    """
    dims = package.dims
    facts = device_facts(trt, system_root)
    log.info("device: %s", facts.describe())
    encoder_onnx, decoder_onnx = package.graph_paths(prefer_int8=False)  # TensorRT builds from float32
    onnx = {"encoder": encoder_onnx, "decoder": decoder_onnx}
    heads = None
    try:
        onnx[ALIGNER] = package.aligner_path()
        heads = package.manifest.alignment_heads
    except ModelPackageError as error:
        log.info("no aligner engine to build: %s", error)
    try:
        keys = expected_keys(model_sha256(package.dir), facts, options, dims, heads)
    except ValueError as error:
        raise ConfigError(f"build-engines: {error}") from None
    cache = EngineCache(Path(engine_dir), package.dir.name)

    def validate() -> ValidationOutcome:
        """Both ends of the encoder profile: the shortest window (the live path's common case,
        the profile's opt point) and the full 30 s; the aligner's scores on the same windows."""
        special = package.manifest.special_tokens
        reference = OnnxRunner(package, threads=threads, prefer_int8=False)
        passed, lines, blamed = True, [], frozenset()
        with trt.gpu.active():
            candidate = TensorRTRunner.from_cache(trt, cache, dims, aligner=heads is not None)
            for frames in (min(WINDOW_FRAMES), N_FRAMES):
                mel = validation.reference_mel(package.mel_filters(), reference_wav or validation.REFERENCE_WAV, frames)
                report = validation.validate(
                    reference, candidate, mel, _prompt(package), special.eot, validation.TOLERANCES[options.precision],
                    transcribe=lambda runner, mel=mel: _transcribe(package, runner, mel), batch=min(2, options.max_batch),
                    align=heads is not None,
                )
                passed, blamed = passed and report.passed, blamed | report.blamed
                lines += [f"window {frames // FRAMES_PER_SECOND} s:", *report.lines]
        return ValidationOutcome(passed, lines, blamed)

    builder = EngineBuilder(
        cache, trt, keys,
        lambda graph, precision: recipe(onnx[graph], graph, dims, options, precision, heads),
        validate, tick_interval,
    )
    with trt.gpu.active():
        return builder.ensure(force=force)


def _prompt(package: ModelPackage) -> list[int]:
    """Start-of-transcript tokens in English without timestamps: the shortest real prompt."""
    special = package.manifest.special_tokens
    if package.manifest.multilingual:
        return [special.sot, package.manifest.language_tokens["en"], special.transcribe, special.no_timestamps]
    return [special.sot, special.no_timestamps]


def _transcribe(package: ModelPackage, runner, mel: np.ndarray) -> str:
    model = WhisperModel(package, WhisperTokenizer.from_package(package), runner, package.mel_filters(), package.dir.name)
    return decode(model, mel, DecodingOptions(language="en", without_timestamps=True))[0].text
