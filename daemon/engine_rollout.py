"""TensorRT engines for a ``model/switch``: the build path of ``edgescribe build-engines``, reported as events.

A model package arrives on the device as ONNX graphs. Before ``model/switch`` serves it, the
engines for this device are built (or found up to date) with the same function
``edgescribe build-engines`` runs (``engines.tensorrt.build.build_engines``) and the settings of
the daemon's ``engine`` section, so the engines the switch builds are the ones the backend
then looks for. Progress goes out as ``model`` events (``build_started``, ``build_progress``
every ``tick_s`` while TensorRT is silent, ``build_done`` or ``build_failed``).

Where TensorRT cannot be loaded (no JetPack, no GPU, this CI), nothing is built and the new
model runs on ONNX Runtime, as ``engine.backend: auto`` does at start-up; the caller says so in
the response. With ``engine.backend: tensorrt`` a failed build refuses the switch (the serving
model stays); with ``auto`` the new model runs on ONNX Runtime and the response says why.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from edgescribe.daemon.config.engine import EngineConfig
from edgescribe.daemon.events import Event, ModelEvent
from edgescribe.engines.errors import BackendUnavailableError
from edgescribe.engines.package import ModelPackage
from edgescribe.engines.tensorrt import seam
from edgescribe.engines.tensorrt.build import build_engines
from edgescribe.engines.tensorrt.builder import BuildOptions, format_seconds, profiles

BACKEND_TENSORRT = "tensorrt"
BACKEND_ONNXRUNTIME = "onnxruntime"


class EngineBuildRefused(Exception):
    """The engines could not be built and the configured backend needs them; ``str()`` says why."""


@dataclass(frozen=True)
class EnginePlan:
    """What the switch will run the new package on, and why (for the response)."""

    backend: str  # "tensorrt" or "onnxruntime"
    detail: str


@dataclass
class EngineRollout:
    """Builds the engines of a package about to be served. ``build`` and ``load_tensorrt`` are
    ``build_engines`` and ``seam.load`` unless a test hands in others."""

    emit: Callable[[Event], None]
    build: Callable[..., bool] = build_engines
    load_tensorrt: Callable[[], Any] = seam.load
    tick_s: float = 15.0

    def prepare(self, package: ModelPackage, engine: EngineConfig) -> EnginePlan:
        if engine.backend == BACKEND_ONNXRUNTIME:
            return EnginePlan(BACKEND_ONNXRUNTIME, "engine.backend is onnxruntime; no TensorRT engines built")
        try:
            trt = self.load_tensorrt()
        except BackendUnavailableError as error:
            # engine.backend tensorrt: the load that follows refuses the switch with its own line
            return EnginePlan(BACKEND_ONNXRUNTIME, f"TensorRT not available, no engines built: {error}")
        name = package.dir.name
        started = time.monotonic()
        self._event("build_started", name, f"building TensorRT engines for {package.dir} in {engine.engine_dir}")
        done = threading.Event()
        ticker = threading.Thread(target=self._tick, args=(name, started, done), name="engine-build-ticker",
                                  daemon=True)
        ticker.start()
        try:
            options = BuildOptions(precision=engine.precision, max_batch=engine.max_batch,
                                   max_prompt_tokens=engine.max_prompt_tokens, workspace_mb=engine.workspace_mb)
            profiles(package.dims, options)  # the package's limits against the settings, before the GPU
            built = self.build(package, engine.engine_dir, options, trt, threads=engine.threads)
        except Exception as error:  # TensorRT's failures are many; each becomes one line
            done.set()
            ticker.join()
            why = " ".join(str(error).split()) or type(error).__name__
            self._event("build_failed", name, f"after {format_seconds(time.monotonic() - started)}: {why}")
            if engine.backend == BACKEND_TENSORRT:
                raise EngineBuildRefused(f"TensorRT engine build failed: {why}") from None
            return EnginePlan(BACKEND_ONNXRUNTIME, f"TensorRT engine build failed, running on ONNX Runtime: {why}")
        done.set()
        ticker.join()
        where = engine.engine_dir / name
        detail = (f"built and validated in {format_seconds(time.monotonic() - started)}: {where}" if built
                  else f"up to date: {where}")
        self._event("build_done", name, detail)
        return EnginePlan(BACKEND_TENSORRT, f"TensorRT engines {detail}")

    def _tick(self, name: str, started: float, done: threading.Event) -> None:
        while not done.wait(self.tick_s):
            self._event("build_progress", name, f"still building: {format_seconds(time.monotonic() - started)} elapsed")

    def _event(self, action: str, model: str, detail: str) -> None:
        self.emit(ModelEvent(action=action, model=model, backend=BACKEND_TENSORRT, detail=detail,
                             wall_time=time.time()))
