"""The only code in edgescribe that imports ``tensorrt`` and ``pycuda``.

Everything that needs the GPU goes through the few classes here, so the rest of
``engines/tensorrt`` (cache keys, build orchestration, buffer arithmetic, validation) runs
and is tested on machines without a GPU. Written against the TensorRT 10 Python API as
shipped by JetPack 6.1/6.2 (TensorRT 10.3) and pycuda >= 2024.1. The TensorRT calls are
checked against the real 10.3 bindings without a GPU (tests/engines/test_tensorrt_seam.py);
see docs/jetson.md for what has and has not been run on hardware.

Nothing is imported at module import time: :func:`load` does it, and turns every reason
TensorRT cannot be used into one :class:`BackendUnavailableError` line.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np

from edgescribe.engines.errors import BackendUnavailableError

log = logging.getLogger(__name__)

SUPPORTED_MAJOR = 10
# Versions the code was written and checked against (API docs); others of major 10 get a warning.
DOCUMENTED_VERSIONS = ("10.3",)

Shape = tuple[int, ...]


@dataclass(frozen=True)
class TensorSpec:
    """One engine I/O tensor as the engine reports it (-1 marks a dynamic dimension)."""

    name: str
    is_input: bool
    dtype: np.dtype
    shape: Shape


@dataclass(frozen=True)
class NetworkRecipe:
    """Everything the builder decides, as plain data, so it is decided and tested without TensorRT.

    ``profile`` maps each dynamic input to its (min, opt, max) shapes. ``fp32_layer_types``
    names TensorRT ``LayerType`` members pinned to fp32 in an fp16 build. ``half_io`` names
    network inputs/outputs whose buffers are fp16 (the K/V tensors that only live on the device).
    """

    onnx_path: Path
    profile: Mapping[str, tuple[Shape, Shape, Shape]]
    fp16: bool
    fp32_layer_types: Sequence[str]
    half_io: Sequence[str]
    workspace_bytes: int


@dataclass(frozen=True)
class BuiltEngine:
    plan: bytes
    timing_cache: bytes
    fp32_layers: int  # how many layers the fp16 build pinned to fp32 (reported in the sidecar)


def load() -> "TensorRT":
    """Import TensorRT and pycuda and open GPU 0, or say in one line why that is impossible."""
    try:
        import tensorrt as trt  # noqa: PLC0415 (the one place it is imported)
    except ImportError as error:
        raise BackendUnavailableError(
            f"TensorRT is not installed for this Python ({error}); on a Jetson install JetPack 6.1 or 6.2 "
            "(python3-libnvinfer) and create the virtualenv with --system-site-packages"
        ) from None
    version = str(getattr(trt, "__version__", "unknown"))
    check_version(version)
    try:
        import pycuda.driver as cuda  # noqa: PLC0415
    except ImportError as error:
        raise BackendUnavailableError(
            f"pycuda is not installed ({error}); install it with: pip install 'edgescribe[jetson]'"
        ) from None
    try:
        cuda.init()
        if cuda.Device.count() == 0:
            raise BackendUnavailableError("no CUDA GPU found (pycuda reports 0 devices)")
        device = cuda.Device(0)
        # The primary context is the one the CUDA runtime (and so TensorRT) uses; sharing it
        # avoids two contexts fighting over one GPU.
        context = device.retain_primary_context()
    except cuda.Error as error:
        raise BackendUnavailableError(f"cannot open the CUDA GPU: {error}") from None
    return TensorRT(trt, Gpu(cuda, device, context), version)


def check_version(version: str) -> None:
    major = version.split(".")[0]
    if major != str(SUPPORTED_MAJOR):
        raise BackendUnavailableError(
            f"TensorRT {version} is not supported: edgescribe needs TensorRT {SUPPORTED_MAJOR}.x "
            "(JetPack 6.1 or 6.2; JetPack 6.0 ships TensorRT 8.6)"
        )
    if not any(version.startswith(v) for v in DOCUMENTED_VERSIONS):
        log.warning("TensorRT %s: edgescribe was written against %s", version, ", ".join(DOCUMENTED_VERSIONS))


class DeviceBuffer:
    """Device memory owned by pycuda; freed when the object is garbage collected."""

    def __init__(self, allocation, nbytes: int):
        self._allocation = allocation
        self.nbytes = nbytes

    @property
    def ptr(self) -> int:
        return int(self._allocation)


class Stream:
    def __init__(self, stream):
        self._stream = stream

    @property
    def handle(self) -> int:
        return self._stream.handle

    def synchronize(self) -> None:
        self._stream.synchronize()


class Gpu:
    """GPU 0 through pycuda: facts, memory, copies. Methods must run inside :meth:`active`."""

    def __init__(self, cuda, device, context):
        self._cuda = cuda
        self._device = device
        self._context = context

    @property
    def name(self) -> str:
        return self._device.name()

    @property
    def compute_capability(self) -> str:
        major, minor = self._device.compute_capability()
        return f"{major}.{minor}"

    def memory_used(self) -> int:
        """Bytes of device memory in use (on a Jetson: of the RAM shared by CPU and GPU)."""
        free, total = self._cuda.mem_get_info()
        return total - free

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        # Make the context current on whichever thread calls (the daemon decodes on a worker thread).
        self._context.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    def stream(self) -> Stream:
        return Stream(self._cuda.Stream())

    def alloc(self, nbytes: int) -> DeviceBuffer:
        return DeviceBuffer(self._cuda.mem_alloc(max(nbytes, 1)), nbytes)

    def pinned(self, shape: Shape, dtype) -> np.ndarray:
        return self._cuda.pagelocked_empty(shape, dtype)

    def zero(self, ptr: int, nbytes: int, stream: Stream) -> None:
        self._cuda.memset_d8_async(ptr, 0, nbytes, stream._stream)

    def upload(self, ptr: int, host: np.ndarray, stream: Stream) -> None:
        self._cuda.memcpy_htod_async(ptr, host, stream._stream)

    def download(self, host: np.ndarray, ptr: int, stream: Stream) -> None:
        self._cuda.memcpy_dtoh_async(host, ptr, stream._stream)

    def copy(self, dst: int, src: int, nbytes: int, stream: Stream) -> None:
        self._cuda.memcpy_dtod_async(dst, src, nbytes, stream._stream)

    def copy_2d(self, dst: int, dst_pitch: int, src: int, src_pitch: int, width: int, height: int, stream: Stream) -> None:
        """Device-to-device strided copy (cuMemcpy2DAsync): ``height`` rows of ``width`` bytes."""
        copy = self._cuda.Memcpy2D()
        copy.set_src_device(src)
        copy.src_pitch = src_pitch
        copy.set_dst_device(dst)
        copy.dst_pitch = dst_pitch
        copy.width_in_bytes = width
        copy.height = height
        copy(stream._stream)


class Context:
    """One ``IExecutionContext``: name-based shapes and addresses, enqueue on a stream."""

    def __init__(self, context, trt):
        self._context = context
        self._trt = trt

    def set_input_shape(self, name: str, shape: Shape) -> None:
        if not self._context.set_input_shape(name, tuple(int(d) for d in shape)):
            raise RuntimeError(f"TensorRT rejected shape {tuple(shape)} for input {name!r}")

    def tensor_shape(self, name: str) -> Shape:
        return tuple(int(d) for d in self._context.get_tensor_shape(name))

    def set_address(self, name: str, ptr: int) -> None:
        if not self._context.set_tensor_address(name, ptr):
            raise RuntimeError(f"TensorRT rejected the buffer address for tensor {name!r}")

    def execute(self, stream: Stream) -> None:
        if not self._context.execute_async_v3(stream.handle):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log above)")


class Engine:
    def __init__(self, engine, runtime, trt):
        self._engine = engine
        self._runtime = runtime  # the runtime must outlive the engine it deserialised
        self._trt = trt

    @property
    def tensors(self) -> list[TensorSpec]:
        trt, engine = self._trt, self._engine
        specs = []
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            specs.append(
                TensorSpec(
                    name=name,
                    is_input=engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                    dtype=np.dtype(trt.nptype(engine.get_tensor_dtype(name))),
                    shape=tuple(int(d) for d in engine.get_tensor_shape(name)),
                )
            )
        return specs

    def profile_max(self, name: str) -> Shape:
        """The largest shape optimisation profile 0 accepts for input ``name``."""
        _min, _opt, largest = self._engine.get_tensor_profile_shape(name, 0)
        return tuple(int(d) for d in largest)

    def profile_min(self, name: str) -> Shape:
        """The smallest shape optimisation profile 0 accepts for input ``name``."""
        smallest, _opt, _max = self._engine.get_tensor_profile_shape(name, 0)
        return tuple(int(d) for d in smallest)

    def create_context(self) -> Context:
        return Context(self._engine.create_execution_context(), self._trt)


def _make_logger(trt):
    """Route TensorRT's own log into ours (INFO and below are per-layer detail: debug only)."""

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return Logger()


class TensorRT:
    """The TensorRT library plus GPU 0."""

    def __init__(self, trt, gpu: Gpu, version: str):
        self._trt = trt
        self.gpu = gpu
        self.version = version
        self._logger = _make_logger(trt)

    def build(self, recipe: NetworkRecipe, timing_cache: Optional[bytes]) -> BuiltEngine:
        trt = self._trt
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse_from_file(str(recipe.onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT cannot parse {recipe.onnx_path}: {errors}")

        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, recipe.workspace_bytes)
        fp32_layers = 0
        if recipe.fp16:
            config.set_flag(trt.BuilderFlag.FP16)
            # Without this flag TensorRT treats layer.precision as a hint and may still pick fp16.
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            fp32_layers = _pin_fp32(trt, network, recipe.fp32_layer_types)
            _set_half_io(trt, network, recipe.half_io)

        profile = builder.create_optimization_profile()
        for name, (smallest, typical, largest) in recipe.profile.items():
            profile.set_shape(name, smallest, typical, largest)
        config.add_optimization_profile(profile)

        _use_timing_cache(config, timing_cache)

        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError(f"TensorRT failed to build an engine from {recipe.onnx_path} (see the TensorRT log above)")
        return BuiltEngine(
            plan=bytes(plan),
            timing_cache=bytes(config.get_timing_cache().serialize()),
            fp32_layers=fp32_layers,
        )

    def deserialize(self, plan: bytes) -> Engine:
        runtime = self._trt.Runtime(self._logger)
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise RuntimeError("TensorRT could not deserialise the engine (corrupt, or built by another TensorRT/GPU)")
        return Engine(engine, runtime, self._trt)


def _use_timing_cache(config, saved: Optional[bytes]) -> None:
    """Attach the saved timing cache, or a fresh one when TensorRT cannot read the saved one or
    it comes from another device or TensorRT version."""
    if saved:
        try:
            # The bindings return None (a null pointer) for a blob TensorRT cannot read; that
            # None must not reach set_timing_cache, whose parameter is a reference.
            cache, reason = config.create_timing_cache(saved), "see the TensorRT log above"
        except Exception as error:  # and untyped errors are possible too
            cache, reason = None, str(error)
        if cache is None:
            log.warning("saved timing cache is unreadable (%s); timing tactics from scratch", reason)
        # ignore_mismatch=False: a cache from another device/version is dropped, not trusted.
        elif config.set_timing_cache(cache, False):
            return
        else:
            log.warning("TensorRT ignored the saved timing cache; timing tactics from scratch")
    config.set_timing_cache(config.create_timing_cache(b""), False)


def _pin_fp32(trt, network, layer_types: Sequence[str]) -> int:
    wanted = {getattr(trt.LayerType, name) for name in layer_types}
    floats = (trt.float32, trt.float16)
    pinned = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type not in wanted:
            continue
        outputs = [layer.get_output(i) for i in range(layer.num_outputs)]
        if not all(out.dtype in floats for out in outputs):
            continue  # shape arithmetic (int reductions) has no precision to pin
        layer.precision = trt.float32
        for i in range(layer.num_outputs):
            layer.set_output_type(i, trt.float32)
        pinned += 1
    return pinned


def _set_half_io(trt, network, names: Sequence[str]) -> None:
    wanted = set(names)
    for tensors in (
        [network.get_input(i) for i in range(network.num_inputs)],
        [network.get_output(i) for i in range(network.num_outputs)],
    ):
        for tensor in tensors:
            if tensor.name in wanted:
                tensor.dtype = trt.float16
