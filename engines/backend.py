"""Choose the Runner that executes a model package: ONNX Runtime or TensorRT.

``auto`` takes TensorRT only when engines built *for this device and this package* are in
``engine_dir`` and were validated; otherwise ONNX Runtime. Either way one log line says
which and why, because "why is it slow" on a Jetson is nearly always "it fell back".
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

from edgescribe.engines.errors import BackendUnavailableError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "onnxruntime")


def create_runner(
    package,
    backend: str = "auto",
    engine_dir=None,
    threads: int = 0,
    *,
    load_tensorrt: Optional[Callable[[], object]] = None,
    system_root: Path = Path("/"),
):
    """A Runner for ``package`` (an ``edgescribe.engines.package.ModelPackage``).

    ``load_tensorrt`` replaces ``edgescribe.engines.tensorrt.seam.load`` (tests); ``system_root`` is where
    ``/etc/nv_tegra_release`` is looked for.
    """
    if backend not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {backend!r} (choose one of {', '.join(BACKENDS)})")
    if backend == "onnxruntime":
        log.info("backend: onnxruntime (configured)")
        return _onnx_runner(package, threads)
    try:
        runner, why = _tensorrt_runner(package, engine_dir, load_tensorrt, system_root)
    except BackendUnavailableError as error:
        if backend == "tensorrt":
            raise BackendUnavailableError(f"TensorRT backend unavailable: {error}") from None
        log.info("backend: onnxruntime (TensorRT not used: %s)", error)
        return _onnx_runner(package, threads)
    log.info("backend: tensorrt (%s)", why)
    return runner


def _onnx_runner(package, threads: int):
    from edgescribe.engines.onnx_runner import OnnxRunner

    return OnnxRunner(package, threads=threads)


def _tensorrt_runner(package, engine_dir, load_tensorrt, system_root: Path):
    from edgescribe.engines.tensorrt import seam
    from edgescribe.engines.tensorrt.builder import build_hint
    from edgescribe.engines.tensorrt.engine_cache import DEVICE_AND_MODEL_FIELDS, EngineBuildError, EngineCache
    from edgescribe.engines.tensorrt.platform import device_facts
    from edgescribe.engines.tensorrt.runner import TensorRTRunner

    if engine_dir is None:
        raise BackendUnavailableError(f"no engine directory configured; {build_hint(package.dir, None)}")
    trt = (load_tensorrt or seam.load)()
    facts = device_facts(trt, system_root)
    cache = EngineCache(Path(engine_dir), package.dir.name)
    keys = runtime_keys(package, facts)
    status = cache.status(keys, only=DEVICE_AND_MODEL_FIELDS)
    if not status.ok:
        raise BackendUnavailableError(f"{status.reason}; {build_hint(package.dir, engine_dir)}")
    try:
        runner = TensorRTRunner.from_cache(trt, cache, package.dims)
    except EngineBuildError as error:
        raise BackendUnavailableError(str(error)) from None
    precision = "/".join(cache.precision_of(graph) for graph in ("encoder", "decoder"))
    return runner, f"validated {precision} engines in {cache.dir} for {facts.describe()}"


def runtime_keys(package, facts):
    """Keys carrying only the fields the daemon checks (device, TensorRT, L4T, model)."""
    from edgescribe.engines.tensorrt.engine_cache import GRAPHS, EngineKey, model_sha256

    sha = model_sha256(package.dir)
    return {
        graph: EngineKey(graph, sha, facts.tensorrt_version, facts.gpu_name, facts.compute_capability, facts.l4t,
                         precision="", profile=())
        for graph in GRAPHS
    }
