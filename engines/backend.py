"""Choose the Runner that executes a model package (ONNX Runtime or TensorRT), and load models on it.

``auto`` takes TensorRT only when engines built *for this device and this package* are in
``engine_dir`` and were validated; otherwise ONNX Runtime. Either way one log line says
which and why, because "why is it slow" on a Jetson is nearly always "it fell back".
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

from edgescribe.engines.errors import BackendUnavailableError, ModelPackageError
from edgescribe.engines.host_aligner import HostAligner
from edgescribe.engines.model import WhisperModel
from edgescribe.engines.onnx_runner import OnnxRunner
from edgescribe.engines.package import ModelPackage
from edgescribe.engines.runtime import Runner
from edgescribe.engines.tensorrt import seam
from edgescribe.engines.tensorrt.builder import build_hint
from edgescribe.engines.tensorrt.engine_cache import (
    ALIGNER,
    DEVICE_AND_MODEL_FIELDS,
    EngineBuildError,
    EngineCache,
    engine_keys,
    model_sha256,
)
from edgescribe.engines.tensorrt.platform import device_facts
from edgescribe.engines.tensorrt.runner import TensorRTRunner

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "onnxruntime")


def load_model(
    package_dir: str | Path,
    backend: str = "auto",
    engine_dir: str | Path | None = None,
    threads: int = 0,
) -> WhisperModel:
    """Open a model package and the runner that executes it (see :func:`create_runner`)."""
    package = ModelPackage.load(package_dir)
    runner = create_runner(package, backend=backend, engine_dir=engine_dir, threads=threads)
    model = WhisperModel.from_package(package, runner)
    log.info("loaded model %s from %s on %s", model.name, package.dir, runner.name)
    return model


def create_runner(
    package: ModelPackage,
    backend: str = "auto",
    engine_dir=None,
    threads: int = 0,
    *,
    load_tensorrt: Optional[Callable[[], object]] = None,
    system_root: Path = Path("/"),
) -> Runner:
    """A Runner for ``package``.

    ``load_tensorrt`` replaces ``edgescribe.engines.tensorrt.seam.load`` (tests); ``system_root`` is where
    ``/etc/nv_tegra_release`` is looked for.
    """
    if backend not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {backend!r} (choose one of {', '.join(BACKENDS)})")
    if backend == "onnxruntime":
        log.info("backend: onnxruntime (configured)")
        return OnnxRunner(package, threads=threads)
    try:
        runner, why = _tensorrt_runner(package, engine_dir, load_tensorrt, system_root)
    except BackendUnavailableError as error:
        if backend == "tensorrt":
            raise BackendUnavailableError(f"TensorRT backend unavailable: {error}") from None
        log.info("backend: onnxruntime (TensorRT not used: %s)", error)
        return OnnxRunner(package, threads=threads)
    log.info("backend: tensorrt (%s)", why)
    return runner


def _tensorrt_runner(package: ModelPackage, engine_dir, load_tensorrt, system_root: Path):
    if engine_dir is None:
        raise BackendUnavailableError(f"no engine directory configured; {build_hint(package.dir, None)}")
    trt = (load_tensorrt or seam.load)()
    facts = device_facts(trt, system_root)
    cache = EngineCache(Path(engine_dir), package.dir.name)
    # Only the fields the daemon checks (device, TensorRT, L4T, model): it takes whatever
    # precision and profile build-engines chose.
    keys = engine_keys(model_sha256(package.dir), facts)
    status = cache.status(keys, only=DEVICE_AND_MODEL_FIELDS)
    if not status.ok:
        raise BackendUnavailableError(f"{status.reason}; {build_hint(package.dir, engine_dir)}")
    aligner_engine = _has_aligner(package) and _aligner_engine_ok(package, cache, facts, engine_dir)
    try:
        runner = TensorRTRunner.from_cache(trt, cache, package.dims, aligner=aligner_engine)
    except EngineBuildError as error:
        raise BackendUnavailableError(str(error)) from None
    if not aligner_engine:
        # for a package without an aligner graph it raises the package's own one-line reason
        runner.host_aligner = HostAligner(package)
    precision = "/".join(cache.precision_of(graph) for graph in ("encoder", "decoder"))
    return runner, f"validated {precision} engines in {cache.dir} for {facts.describe()}"


def _has_aligner(package: ModelPackage) -> bool:
    try:
        package.aligner_path()
    except ModelPackageError:
        return False
    return True


def _aligner_engine_ok(package: ModelPackage, cache: EngineCache, facts, engine_dir) -> bool:
    """Whether the validated engine set has an aligner engine; if not (engines built before the
    aligner had one), say that word timing runs on the CPU over a host copy of the cross K/V."""
    keys = engine_keys(model_sha256(package.dir), facts, graphs=(ALIGNER,))
    status = cache.status(keys, only=DEVICE_AND_MODEL_FIELDS)
    if not status.ok:
        log.info("word timing: no aligner engine (%s), so words are aligned by ONNX Runtime over a host copy of "
                 "the cross K/V; to align on the GPU, %s", status.reason, build_hint(package.dir, engine_dir))
    return status.ok
