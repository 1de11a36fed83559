"""``edgescribe build-engines``: build, validate and cache TensorRT engines for this device.

With ``--config`` it builds for every model package the daemon may serve: ``models.serving``
and, when set, ``models.upgrade`` (each into ``engine_dir/<package directory name>``).
Run at install time (systemd/edgescribe-engines.service) and after JetPack upgrades. When the
engines in the output directory already match this package, device, TensorRT, L4T release and
settings, it loads them once to be sure and exits 0 without building: that makes it safe to
run on every boot.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from edgescribe.daemon.config.engine import DEFAULT_MAX_BATCH, DEFAULT_MAX_PROMPT_TOKENS, DEFAULT_WORKSPACE_MB

    parser.add_argument(
        "--config", type=Path,
        help="build for every package the daemon may serve (models.serving and models.upgrade), "
        "with the output directory and settings of this config file's engine section",
    )
    parser.add_argument("--model", type=Path, help="build for this model package directory only (from edgescribe export)")
    parser.add_argument("--out", type=Path, help="engine directory (the daemon's engine.engine_dir)")
    parser.add_argument("--precision", choices=("fp16", "fp32"), help="engine precision (default fp16)")
    parser.add_argument("--max-batch", type=int, help=f"largest batch = number of streams (default {DEFAULT_MAX_BATCH})")
    parser.add_argument("--max-prompt-tokens", type=int, help=f"longest decoder step (default {DEFAULT_MAX_PROMPT_TOKENS})")
    parser.add_argument("--workspace-mb", type=int, help=f"TensorRT workspace limit in MiB (default {DEFAULT_WORKSPACE_MB})")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads for the validation reference")
    parser.add_argument("--force", action="store_true", help="rebuild even when the cached engines are current")
    parser.add_argument("--system-root", type=Path, default=Path("/"), help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from edgescribe.engines.errors import ConfigError
    from edgescribe.engines.package import ModelPackage
    from edgescribe.engines.tensorrt import seam
    from edgescribe.engines.tensorrt.builder import profiles

    settings = _settings(args)
    if not settings.package_dirs or settings.engine_dir is None:
        raise ConfigError("build-engines needs --model and --out (or --config)")
    # In order, serving package first: if the upgrade is missing or fails to build, start-up
    # still has its engines. Each package's settings are checked before the GPU is touched.
    trt = None
    for package_dir in settings.package_dirs:
        package = ModelPackage.load(package_dir)
        try:
            profiles(package.dims, settings.options, package.layer_inputs)
        except ValueError as error:
            raise ConfigError(f"build-engines: model package {package.dir}: {error}") from None
        if trt is None:
            trt = seam.load()
        built = build_engines(
            package, settings.engine_dir, settings.options, trt,
            force=args.force, threads=settings.threads, system_root=args.system_root,
        )
        print(f"{'built and validated' if built else 'up to date:'} TensorRT engines in {settings.engine_dir / package.dir.name}")
    return 0


@dataclass(frozen=True)
class BuildSettings:
    package_dirs: list[Path]  # the serving package first, then the upgrade
    engine_dir: Optional[Path]
    options: Any  # engines.tensorrt.builder.BuildOptions
    threads: int


def _settings(args: argparse.Namespace) -> BuildSettings:
    """What to build, where and how: flags first, then the config file, then the defaults."""
    from edgescribe.engines.errors import ConfigError
    from edgescribe.engines.tensorrt.builder import BuildOptions
    from edgescribe.daemon.config.engine import EngineConfig

    config = None
    if args.config is not None:
        from edgescribe.daemon.config import load_config

        config = load_config(args.config)
    defaults = config.engine if config is not None else EngineConfig()

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
    if args.model is not None:
        package_dirs = [Path(args.model)]
    elif config is not None:
        # every package the daemon may serve: a missing upgrade engine would put the
        # bigger model on the CPU at the moment it takes over
        package_dirs = [p for p in (config.models.serving, config.models.upgrade) if p is not None]
    else:
        package_dirs = []
    engine_dir = args.out if args.out is not None else (config.engine.engine_dir if config is not None else None)
    threads = args.threads or (config.engine.threads if config is not None else 0)
    return BuildSettings(package_dirs, Path(engine_dir) if engine_dir is not None else None, options, threads)


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
    from edgescribe.engines.errors import ConfigError
    from edgescribe.engines.tensorrt import validation
    from edgescribe.engines.tensorrt.builder import EngineBuilder, ValidationOutcome, expected_keys, recipe
    from edgescribe.engines.tensorrt.engine_cache import EngineCache, model_sha256
    from edgescribe.engines.tensorrt.platform import device_facts
    from edgescribe.engines.tensorrt.runner import TensorRTRunner

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
        from edgescribe.engines.onnx_runner import OnnxRunner

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
    from edgescribe.engines.decoding import DecodingOptions, decode
    from edgescribe.engines.model import WhisperModel
    from edgescribe.engines.tokenizer import WhisperTokenizer

    model = WhisperModel(package, WhisperTokenizer.from_package(package), runner, package.mel_filters(), package.dir.name)
    return decode(model, mel, DecodingOptions(language="en", without_timestamps=True))[0].text
