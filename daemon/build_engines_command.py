"""``edgescribe build-engines``: build, validate and cache TensorRT engines for this device.

With ``--config`` it builds for every model package the daemon may serve: ``models.serving``
and, when set, ``models.upgrade`` (each into ``engine_dir/<package directory name>``), with the
settings of the config file's ``engine`` section, so the engines built at install time
(systemd/edgescribe-engines.service) are the ones the daemon looks for. The building itself is
``edgescribe.engines.tensorrt.build``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from edgescribe.daemon.config import Config, load_config
from edgescribe.daemon.config.engine import DEFAULT_MAX_BATCH, DEFAULT_MAX_PROMPT_TOKENS, DEFAULT_WORKSPACE_MB, EngineConfig
from edgescribe.engines.errors import ConfigError
from edgescribe.engines.package import ModelPackage
from edgescribe.engines.tensorrt import seam
from edgescribe.engines.tensorrt.build import build_engines
from edgescribe.engines.tensorrt.builder import BuildOptions, profiles


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
    settings = build_settings(args)
    if not settings.package_dirs or settings.engine_dir is None:
        raise ConfigError("build-engines needs --model and --out (or --config)")
    # In order, serving package first: if the upgrade is missing or fails to build, start-up
    # still has its engines. Each package's settings are checked before the GPU is touched.
    trt = None
    for package_dir in settings.package_dirs:
        package = ModelPackage.load(package_dir)
        try:
            profiles(package.dims, settings.options)
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
    options: BuildOptions
    threads: int


def build_settings(args: argparse.Namespace) -> BuildSettings:
    """What to build, where and how: flags first, then the config file, then the defaults."""
    config: Optional[Config] = load_config(args.config) if args.config is not None else None
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
