"""``edgescribe build-engines``: build, validate and cache TensorRT engines for this device.

Run at install time (systemd/edgescribe-engines.service) and after JetPack upgrades. When the
engines in the output directory already match this package, device, TensorRT, L4T release and
settings, it loads them once to be sure and exits 0 without building: that makes it safe to
run on every boot.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from daemon.config.engine import DEFAULT_MAX_BATCH, DEFAULT_MAX_PROMPT_TOKENS, DEFAULT_WORKSPACE_MB

    parser.add_argument("--config", type=Path, help="take model, output directory and settings from this config file's engine section")
    parser.add_argument("--model", type=Path, help="model package directory (from edgescribe export)")
    parser.add_argument("--out", type=Path, help="engine directory (the daemon's engine.engine_dir)")
    parser.add_argument("--precision", choices=("fp16", "fp32"), help="engine precision (default fp16)")
    parser.add_argument("--max-batch", type=int, help=f"largest batch = number of streams (default {DEFAULT_MAX_BATCH})")
    parser.add_argument("--max-prompt-tokens", type=int, help=f"longest decoder step (default {DEFAULT_MAX_PROMPT_TOKENS})")
    parser.add_argument("--workspace-mb", type=int, help=f"TensorRT workspace limit in MiB (default {DEFAULT_WORKSPACE_MB})")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads for the validation reference")
    parser.add_argument("--force", action="store_true", help="rebuild even when the cached engines are current")
    parser.add_argument("--system-root", type=Path, default=Path("/"), help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from engines.errors import ConfigError
    from engines.package import ModelPackage
    from engines.tensorrt import seam
    from engines.tensorrt.builder import profiles

    package_dir, engine_dir, options, threads = _settings(args)
    if package_dir is None or engine_dir is None:
        raise ConfigError("build-engines needs --model and --out (or --config with an engine section)")
    package = ModelPackage.load(package_dir)
    try:
        profiles(package.dims, options, package.layer_inputs)  # settings the model cannot take fail before the GPU is touched
    except ValueError as error:
        raise ConfigError(f"build-engines: {error}") from None
    trt = seam.load()
    built = build_engines(package, engine_dir, options, trt, force=args.force, threads=threads, system_root=args.system_root)
    print(f"{'built and validated' if built else 'up to date:'} TensorRT engines in {engine_dir / package.dir.name}")
    return 0


def _settings(args: argparse.Namespace):
    from engines.errors import ConfigError
    from engines.tensorrt.builder import BuildOptions

    engine = None
    if args.config is not None:
        from daemon.config import load_config

        engine = getattr(load_config(args.config), "engine", None)
        if engine is None:
            raise ConfigError(f"{args.config}: has no engine section")
    from daemon.config.engine import EngineConfig

    defaults = engine or EngineConfig()

    def pick(flag, name):
        return flag if flag is not None else getattr(defaults, name)

    try:
        options = BuildOptions(
            precision=pick(args.precision, "precision"),
            max_batch=pick(args.max_batch, "max_batch"),
            max_prompt_tokens=pick(args.max_prompt_tokens, "max_prompt_tokens"),
            workspace_mb=pick(args.workspace_mb, "workspace_mb"),
        )
    except ValueError as error:
        raise ConfigError(f"build-engines: {error}") from None
    package_dir = args.model if args.model is not None else (engine.package_dir if engine else None)
    engine_dir = args.out if args.out is not None else (engine.engine_dir if engine else None)
    threads = args.threads or (engine.threads if engine else 0)
    return package_dir, (Path(engine_dir) if engine_dir is not None else None), options, threads


def build_engines(
    package,
    engine_dir: Path,
    options,
    trt,
    force: bool = False,
    threads: int = 0,
    system_root: Path = Path("/"),
    tick_interval: float = 15.0,
    reference_wav: Optional[Path] = None,
) -> bool:
    """Make ``engine_dir/<package name>`` hold validated engines; True when it built any."""
    from engines.errors import ConfigError
    from engines.tensorrt import validation
    from engines.tensorrt.builder import EngineBuilder, ValidationOutcome, expected_keys, recipe
    from engines.tensorrt.engine_cache import EngineCache, model_sha256
    from engines.tensorrt.platform import device_facts
    from engines.tensorrt.runner import TensorRTRunner

    dims = package.dims
    facts = device_facts(trt, system_root)
    log.info("device: %s", facts.describe())
    try:
        keys = expected_keys(model_sha256(package.dir), facts, options, dims, package.layer_inputs)
    except ValueError as error:
        raise ConfigError(f"build-engines: {error}") from None
    cache = EngineCache(Path(engine_dir), package.dir.name)
    encoder_onnx, decoder_onnx = package.graph_paths(prefer_int8=False)  # TensorRT builds from float32
    onnx = {"encoder": encoder_onnx, "decoder": decoder_onnx}

    def validate() -> ValidationOutcome:
        from engines.onnx_runner import OnnxRunner

        mel = validation.reference_mel(package.mel_filters(), reference_wav or validation.REFERENCE_WAV)
        special = package.manifest.special_tokens
        reference = OnnxRunner(package, threads=threads, prefer_int8=False)
        with trt.gpu.active():
            candidate = TensorRTRunner.from_cache(trt, cache, dims)
            report = validation.validate(
                reference, candidate, mel, _prompt(package), special.eot, validation.TOLERANCES[options.precision],
                transcribe=lambda runner: _transcribe(package, runner, mel), batch=min(2, options.max_batch),
            )
        return ValidationOutcome(report.passed, report.lines, report.blamed)

    builder = EngineBuilder(
        cache, trt, keys,
        lambda graph, precision: recipe(onnx[graph], graph, dims, options, precision, package.layer_inputs),
        validate, tick_interval,
    )
    with trt.gpu.active():
        return builder.ensure(force=force)


def _prompt(package) -> list[int]:
    """Start-of-transcript tokens in English without timestamps: the shortest real prompt."""
    special = package.manifest.special_tokens
    if package.manifest.multilingual:
        return [special.sot, package.manifest.language_tokens["en"], special.transcribe, special.no_timestamps]
    return [special.sot, special.no_timestamps]


def _transcribe(package, runner, mel) -> str:
    from engines.decoding import DecodingOptions, decode
    from engines.model import WhisperModel
    from engines.tokenizer import WhisperTokenizer

    model = WhisperModel(package, WhisperTokenizer.from_package(package), runner, package.mel_filters(), package.dir.name)
    return decode(model, mel, DecodingOptions(language="en", without_timestamps=True))[0].text
