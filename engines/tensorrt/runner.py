"""The TensorRT :class:`engines.runtime.Runner`: encoder and decoder engines on the GPU.

Per window (up to 30 s) the mel goes up once and the cross-attention K/V stay on the device; per
decoding step only the tokens (a few bytes) go up and the logits come down. The decoder
returns each step's new self-attention K/V in a scratch buffer and the runner copies them
into the caller's cache at each row's offset with strided device-to-device copies, so the
cache never leaves the GPU. The decoder takes one K/V input per layer (``self_k.0``, ...); each
is bound at its layer's offset into one buffer per tensor, so there is one cache buffer per
window and one optimisation profile. Buffers are sized from the
engines' own tensor shapes and dtypes (name-based TensorRT 10 API), so fp16 K/V engines and
fp32 ones run through the same code; the host converts only mel (in) and logits (out).
Word timing's aligner engine reads the same cross K/V buffers in place (bound per layer and
row like the decoder's inputs): only tokens go up and the alignment scores come down.

All GPU calls go through ``edgescribe.engines.tensorrt.seam``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgescribe.engines.errors import ModelPackageError
from edgescribe.engines.host_aligner import HostAligner
from edgescribe.engines.runtime import cross_layer_shape
from edgescribe.engines.tensorrt.builder import KVInput, kv_inputs
from edgescribe.engines.tensorrt.engine_cache import ALIGNER, GRAPHS, EngineBuildError, EngineCache
from edgescribe.engines.tensorrt.seam import DeviceBuffer, Shape

log = logging.getLogger(__name__)

ENCODER_IO = {"mel": True, "cross_k": False, "cross_v": False}  # name -> is_input
# IExecutionContext::setTensorAddress: "The pointer must have at least 256-byte alignment."
ADDRESS_ALIGNMENT = 256
DECODER_OWN_IO = {"tokens": True, "offset": True, "logits": False, "new_k": False, "new_v": False}
ALIGNER_OWN_IO = {"tokens": True, "alignment": False}


def decoder_io(kv: list[KVInput]) -> dict[str, bool]:
    return DECODER_OWN_IO | {item.tensor: True for item in kv}


@dataclass
class DeviceCrossKV:
    """Cross-attention K/V of ``batch`` windows, [n_text_layer, batch, n_text_head, rows, d_head];
    ``rows`` is the window's mel frames / 2. One window's K (or V) in one layer is contiguous."""

    k: DeviceBuffer
    v: DeviceBuffer
    batch: int
    rows: int


@dataclass
class DeviceCache:
    """Self-attention K/V cache of ``batch`` sequences, [n_text_layer, batch, n_text_ctx, n_text_state]."""

    k: DeviceBuffer
    v: DeviceBuffer
    batch: int


@dataclass(frozen=True)
class Copy2D:
    """``height`` rows of ``width`` bytes; row i goes from src + i*src_pitch to dst + i*dst_pitch."""

    dst: int
    dst_pitch: int
    src: int
    src_pitch: int
    width: int
    height: int


def cache_copies(
    layers: int, batch: int, n_tokens: int, ctx: int, state: int, itemsize: int, offsets: np.ndarray
) -> list[Copy2D]:
    """Byte-offset copies that write new K (or V) into the cache at each row's offset.

    Source ``new`` is [layers, batch, n_tokens, state]; destination ``cache`` is
    [layers, batch, ctx, state]. Seen as rows of ``n_tokens * state`` elements, both are
    (layers * batch) rows with a fixed pitch, so when every sequence is at the same offset
    (streams decoding in step) one strided copy does everything; otherwise one copy per
    sequence, striding over the layers. Either way the launch count does not grow with depth.
    """
    row = state * itemsize
    width = n_tokens * row
    if (offsets == offsets[0]).all():
        return [Copy2D(int(offsets[0]) * row, ctx * row, 0, width, width, layers * batch)]
    return [
        Copy2D((b * ctx + int(offsets[b])) * row, batch * ctx * row, b * width, batch * width, width, layers)
        for b in range(batch)
    ]


def _nbytes(shape: Shape, dtype: np.dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _check_io(engine, expected: dict[str, bool], where: str) -> dict[str, Any]:
    specs = {spec.name: spec for spec in engine.tensors}
    for name, is_input in expected.items():
        spec = specs.get(name)
        if spec is None or spec.is_input != is_input:
            kind = "input" if is_input else "output"
            raise EngineBuildError(
                f"{where} has no {kind} tensor {name!r} (has {sorted(specs)}); it was built from another graph "
                "contract: rebuild with edgescribe build-engines --force"
            )
    return specs


class DeviceAligner:
    """The aligner engine (word timing) over cross K/V where the encoder left them.

    Its cross K/V inputs (``cross_k.0`` ..., the layers the alignment heads need) are bound at
    their layer's and row's offset into the encoder's buffers, so nothing is copied. Its
    profile has batch 1 (word timing aligns one window at a time), so a batch runs row by row.
    The scores' buffers grow to the largest output asked for rather than the profile's
    maximum: a model whose weights name no heads gets CTranslate2's default of every head of
    half the layers, and at 448 tokens x 30 s that would be hundreds of MB.
    """

    def __init__(self, gpu, stream, engine, dims, kv_dtype: np.dtype, where: str):
        self._gpu, self._stream, self._dims, self._kv_dtype = gpu, stream, dims, np.dtype(kv_dtype)
        specs = _check_io(engine, ALIGNER_OWN_IO, where)
        self._cross = [(name, *name.split(".")) for name, spec in specs.items() if spec.is_input and name != "tokens"]
        if not self._cross or any(tensor not in ("cross_k", "cross_v") for _, tensor, _ in self._cross):
            raise EngineBuildError(f"{where} takes inputs {sorted(specs)}, not tokens and cross K/V: it was built "
                                   "from another graph contract: rebuild with edgescribe build-engines --force")
        dtypes = {specs[name].dtype for name, _, _ in self._cross}
        if dtypes != {self._kv_dtype}:
            raise EngineBuildError(f"{where} reads cross K/V as {sorted(map(str, dtypes))}, the encoder writes "
                                   f"{self._kv_dtype.name}: rebuild the engines with edgescribe build-engines --force")
        self.max_tokens = engine.profile_max("tokens")[1]
        self._context = engine.create_context()
        shape = engine.profile_max("tokens")
        self._device = {"tokens": gpu.alloc(_nbytes(shape, specs["tokens"].dtype))}
        self._host = {"tokens": gpu.pinned(shape, specs["tokens"].dtype)}
        self._alignment_dtype = specs["alignment"].dtype

    def _alignment_buffers(self, shape: Shape) -> tuple[DeviceBuffer, np.ndarray]:
        nbytes = _nbytes(shape, self._alignment_dtype)
        if "alignment" not in self._device or self._device["alignment"].nbytes < nbytes:
            self._device["alignment"] = self._gpu.alloc(nbytes)
            self._host["alignment"] = self._gpu.pinned((int(np.prod(shape)),), self._alignment_dtype)
        return self._device["alignment"], self._host["alignment"][: int(np.prod(shape))].reshape(shape)

    def run(self, tokens: np.ndarray, cross: DeviceCrossKV) -> np.ndarray:
        """``alignment`` float32 [heads, batch, n, rows] for ``tokens`` [batch, n]; call inside gpu.active()."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[0] != cross.batch or not 1 <= tokens.shape[1] <= self.max_tokens:
            raise ValueError(f"tokens must be [{cross.batch}, 1..{self.max_tokens}], got {list(tokens.shape)}")
        gpu, stream, context, dims = self._gpu, self._stream, self._context, self._dims
        n, state = tokens.shape[1], dims.n_text_state
        row_bytes = _nbytes((cross.rows, state), self._kv_dtype)  # one window's K (or V) in one layer
        context.set_input_shape("tokens", (1, n))
        for name, _, _ in self._cross:
            context.set_input_shape(name, cross_layer_shape(dims, 1, cross.rows))
        device, host = self._alignment_buffers(context.tensor_shape("alignment"))  # [heads, 1, n, rows]
        rows = []
        for b in range(cross.batch):
            host_tokens = self._host["tokens"].reshape(-1)[:n].reshape(1, n)
            host_tokens[...] = tokens[b]
            gpu.upload(self._device["tokens"].ptr, host_tokens, stream)
            context.set_address("tokens", self._device["tokens"].ptr)
            for name, tensor, layer in self._cross:
                buffer = cross.k if tensor == "cross_k" else cross.v
                context.set_address(name, buffer.ptr + (int(layer) * cross.batch + b) * row_bytes)
            context.set_address("alignment", device.ptr)
            context.execute(stream)
            gpu.download(host, device.ptr, stream)
            stream.synchronize()  # the pinned buffers are reused by the next row
            rows.append(host.astype(np.float32, copy=True))
        return np.concatenate(rows, axis=1)


class TensorRTRunner:
    """Runs one package's encoder and decoder engines (and aligner engine) on GPU 0 (see module docstring).

    One execution context per engine and one stream: call it from one thread at a time (the
    scheduler's inference thread). ``max_batch`` and ``max_tokens`` are the engines' profile
    limits; callers split larger batches.
    """

    name = "tensorrt"

    def __init__(self, trt, encoder_plan: bytes, decoder_plan: bytes, dims, where: dict[str, str],
                 aligner_plan: bytes | None = None):
        self._gpu = gpu = trt.gpu
        self._dims = dims
        with gpu.active():
            self._encoder = self._deserialize(trt, encoder_plan, where["encoder"])
            self._decoder = self._deserialize(trt, decoder_plan, where["decoder"])
            enc = _check_io(self._encoder, ENCODER_IO, where["encoder"])
            self._kv = kv_inputs(dims.n_text_layer)
            dec = _check_io(self._decoder, decoder_io(self._kv), where["decoder"])
            self.kv_dtype = self._shared_kv_dtype(enc, dec, self._kv, where)
            self._check_layer_alignment(where["decoder"])
            self.max_batch = min(self._encoder.profile_max("mel")[0], self._decoder.profile_max("tokens")[0])
            self.max_tokens = self._decoder.profile_max("tokens")[1]
            self.min_window_frames = self._encoder.profile_min("mel")[2]
            self._enc_ctx = self._encoder.create_context()
            self._dec_ctx = self._decoder.create_context()
            self._stream = gpu.stream()
            self._device, self._host = self._allocate(enc, dec)
            self._aligner = None if aligner_plan is None else DeviceAligner(
                gpu, self._stream, self._deserialize(trt, aligner_plan, where["aligner"]), dims, self.kv_dtype,
                where["aligner"])
        self._bound_kv: tuple = ()  # (batch, buffer addresses) the decoder's K/V inputs are bound to
        # Word timing for engine sets built before the aligner had an engine: the aligner graph on
        # ONNX Runtime over a host copy of the window's cross K/V (engines/backend.py attaches it).
        self.host_aligner: HostAligner | None = None
        log.info(
            "TensorRT runner ready: batch <= %d, <= %d tokens per step, K/V %s%s",
            self.max_batch, self.max_tokens, np.dtype(self.kv_dtype).name,
            ", aligner engine" if self._aligner is not None else "",
        )

    @property
    def aligns_on_gpu(self) -> bool:
        return self._aligner is not None

    @staticmethod
    def _shared_kv_dtype(enc, dec, kv: list[KVInput], where: dict[str, str]) -> np.dtype:
        """The cross K/V go from encoder to decoder and the cache from step to step untouched,
        so every K/V tensor of both engines must have one dtype."""
        names = ("new_k", "new_v", *(item.tensor for item in kv))
        dtypes = {enc["cross_k"].dtype, enc["cross_v"].dtype} | {dec[name].dtype for name in names}
        if len(dtypes) != 1:
            raise EngineBuildError(
                f"{where['encoder']} and {where['decoder']} disagree on the K/V dtype ({sorted(map(str, dtypes))}): "
                "rebuild both with edgescribe build-engines --force"
            )
        return dtypes.pop()

    def _check_layer_alignment(self, where: str) -> None:
        """Layer inputs start ``layer * batch * rows * state`` items into their buffer; every
        Whisper width is a multiple of 128, so in fp16 or fp32 that is 256-byte aligned. Say so
        plainly should a model ever break that, rather than let TensorRT reject an address."""
        dims, itemsize = self._dims, np.dtype(self.kv_dtype).itemsize
        for rows in (dims.n_text_ctx, 1):  # cross K/V rows follow the window: any count
            if (rows * dims.n_text_state * itemsize) % ADDRESS_ALIGNMENT:
                raise EngineBuildError(
                    f"{where}: per-layer K/V inputs of {rows} x {dims.n_text_state} {np.dtype(self.kv_dtype).name} "
                    f"cannot start {ADDRESS_ALIGNMENT}-byte aligned in one buffer per tensor; this model "
                    "cannot run on TensorRT (use --backend onnxruntime)"
                )

    def _allocate(self, enc, dec) -> tuple[dict[str, DeviceBuffer], dict[str, np.ndarray]]:
        """Device buffers for the tensors the runner owns, and pinned host twins for those that cross.

        Sized at the profile maximum from the shapes the contexts derive for it: the engines
        report outputs with dynamic (-1) dimensions.
        """
        for context, engine, io in ((self._enc_ctx, self._encoder, ENCODER_IO),
                                    (self._dec_ctx, self._decoder, decoder_io(self._kv))):
            for name, is_input in io.items():
                if is_input:
                    context.set_input_shape(name, engine.profile_max(name))
        owned = {"mel": (self._enc_ctx, enc)} | {
            name: (self._dec_ctx, dec) for name in ("tokens", "offset", "logits", "new_k", "new_v")
        }
        device, host = {}, {}
        for name, (context, specs) in owned.items():
            shape = context.tensor_shape(name)
            device[name] = self._gpu.alloc(_nbytes(shape, specs[name].dtype))
            if name not in ("new_k", "new_v"):  # those never leave the device
                # Page-locked, so the async copies really are asynchronous DMA.
                host[name] = self._gpu.pinned(shape, specs[name].dtype)
        return device, host

    @classmethod
    def from_cache(cls, trt, cache: EngineCache, dims, aligner: bool = False) -> "TensorRTRunner":
        """The runner of the engines in ``cache``; with ``aligner``, its aligner engine too."""
        where = {graph: str(cache.engine_path(graph)) for graph in (*GRAPHS, ALIGNER)}
        aligner_plan = cache.load_plan(ALIGNER) if aligner else None
        return cls(trt, cache.load_plan("encoder"), cache.load_plan("decoder"), dims, where, aligner_plan)

    @staticmethod
    def _deserialize(trt, plan: bytes, where: str):
        try:
            return trt.deserialize(plan)
        except RuntimeError as error:
            raise EngineBuildError(f"{where}: {error}; rebuild it with edgescribe build-engines --force") from None

    # -- Runner protocol -------------------------------------------------------------

    def encode(self, mel: np.ndarray) -> DeviceCrossKV:
        dims = self._dims
        mel = np.asarray(mel)
        frames = f"{self.min_window_frames}..{2 * dims.n_audio_ctx}"
        if (mel.ndim != 3 or mel.shape[1] != dims.n_mels or not 1 <= mel.shape[0] <= self.max_batch
                or not self.min_window_frames <= mel.shape[2] <= 2 * dims.n_audio_ctx or mel.shape[2] % 2):
            raise ValueError(f"mel must be [1..{self.max_batch}, {dims.n_mels}, {frames} (even)], got {list(mel.shape)}")
        batch, rows = mel.shape[0], mel.shape[2] // 2
        gpu, stream, ctx = self._gpu, self._stream, self._enc_ctx
        cross_bytes = _nbytes((dims.n_text_layer, batch, rows, dims.n_text_state), self.kv_dtype)
        with gpu.active():
            host = self._host["mel"].reshape(-1)[: mel.size].reshape(mel.shape)
            host[...] = mel  # converts to the engine's mel dtype
            gpu.upload(self._device["mel"].ptr, host, stream)
            # Fresh buffers per window: a caller may hold several windows' K/V at once (the
            # temperature fallback decodes the same window again from its ``encoded``).
            cross = DeviceCrossKV(gpu.alloc(cross_bytes), gpu.alloc(cross_bytes), batch, rows)
            ctx.set_input_shape("mel", mel.shape)
            ctx.set_address("mel", self._device["mel"].ptr)
            ctx.set_address("cross_k", cross.k.ptr)
            ctx.set_address("cross_v", cross.v.ptr)
            ctx.execute(stream)
            # The pinned mel buffer is reused by the next call; it must have left the host.
            stream.synchronize()
        return cross

    def new_cache(self, batch: int) -> DeviceCache:
        dims = self._dims
        if not 1 <= batch <= self.max_batch:
            raise ValueError(f"batch must be 1..{self.max_batch}, got {batch}")
        nbytes = _nbytes((dims.n_text_layer, batch, dims.n_text_ctx, dims.n_text_state), self.kv_dtype)
        with self._gpu.active():
            cache = DeviceCache(self._gpu.alloc(nbytes), self._gpu.alloc(nbytes), batch)
            # Rows past the offset are masked, but uninitialised memory can hold NaN, and NaN
            # times a zero attention weight is still NaN.
            self._gpu.zero(cache.k.ptr, nbytes, self._stream)
            self._gpu.zero(cache.v.ptr, nbytes, self._stream)
        return cache

    def decode(self, tokens: np.ndarray, offsets: np.ndarray, cache: DeviceCache, cross: DeviceCrossKV) -> np.ndarray:
        dims = self._dims
        tokens = np.asarray(tokens)
        offsets = np.asarray(offsets)
        if tokens.ndim != 2 or not 1 <= tokens.shape[1] <= self.max_tokens:
            raise ValueError(f"tokens must be [batch, 1..{self.max_tokens}], got {list(tokens.shape)}")
        batch, n = tokens.shape
        if cache.batch != batch or cross.batch != batch or offsets.shape != (batch,):
            raise ValueError(
                f"batch mismatch: tokens {batch}, offsets {list(offsets.shape)}, cache {cache.batch}, cross {cross.batch}"
            )
        if offsets.min() < 0 or offsets.max() + n > dims.n_text_ctx:
            raise ValueError(f"offsets {offsets.tolist()} + {n} tokens run past the text context {dims.n_text_ctx}")

        gpu, stream, ctx = self._gpu, self._stream, self._dec_ctx
        layers, state = dims.n_text_layer, dims.n_text_state
        with gpu.active():
            host_tokens = self._host["tokens"].reshape(-1)[: tokens.size].reshape(tokens.shape)
            host_tokens[...] = tokens
            host_offsets = self._host["offset"][:batch]
            host_offsets[...] = offsets
            gpu.upload(self._device["tokens"].ptr, host_tokens, stream)
            gpu.upload(self._device["offset"].ptr, host_offsets, stream)

            ctx.set_input_shape("tokens", (batch, n))
            ctx.set_input_shape("offset", (batch,))
            self._bind_kv(cache, cross, batch)
            for name in ("tokens", "offset", "logits", "new_k", "new_v"):
                ctx.set_address(name, self._device[name].ptr)
            ctx.execute(stream)

            # Same stream: these copies run after the decoder finished reading the cache.
            itemsize = np.dtype(self.kv_dtype).itemsize
            for c in cache_copies(layers, batch, n, dims.n_text_ctx, state, itemsize, offsets):
                for new, cached in (("new_k", cache.k), ("new_v", cache.v)):
                    gpu.copy_2d(cached.ptr + c.dst, c.dst_pitch, self._device[new].ptr + c.src, c.src_pitch,
                                c.width, c.height, stream)

            host_logits = self._host["logits"].reshape(-1)[: batch * dims.n_vocab].reshape(batch, dims.n_vocab)
            gpu.download(host_logits, self._device["logits"].ptr, stream)
            stream.synchronize()
            return host_logits.astype(np.float32, copy=True)

    def align(self, tokens: np.ndarray, cross: DeviceCrossKV) -> np.ndarray:
        if self._aligner is not None:
            with self._gpu.active():
                return self._aligner.run(tokens, cross)
        if self.host_aligner is None:
            raise ModelPackageError("word timing: this TensorRT runner was given no aligner (engine or host)")
        k, v = self.cross_to_host(cross)
        return self.host_aligner.run(tokens, k, v)

    def select_cross(self, cross: DeviceCrossKV, indices: np.ndarray) -> DeviceCrossKV:
        dims = self._dims
        row = _nbytes((cross.rows, dims.n_text_state), self.kv_dtype)
        count = len(indices)
        with self._gpu.active():
            selected = DeviceCrossKV(self._gpu.alloc(row * dims.n_text_layer * count),
                                     self._gpu.alloc(row * dims.n_text_layer * count), count, cross.rows)
            for i, source in enumerate(np.asarray(indices).tolist()):
                for old, new in ((cross.k, selected.k), (cross.v, selected.v)):
                    # one strided copy per row: its slice in every layer
                    self._gpu.copy_2d(new.ptr + i * row, count * row, old.ptr + source * row, cross.batch * row,
                                      row, dims.n_text_layer, self._stream)
            self._stream.synchronize()
        return selected

    def reorder(self, cache: DeviceCache, indices: np.ndarray, length: int) -> None:
        """Device-to-device: the moved rows' sources go to a scratch buffer first (a
        permutation would otherwise read rows already overwritten), then into place."""
        indices = np.asarray(indices)
        moved = np.flatnonzero(indices != np.arange(len(indices))).tolist()
        if not moved or length <= 0:
            return
        dims = self._dims
        layers = dims.n_text_layer
        row = _nbytes((dims.n_text_ctx, dims.n_text_state), self.kv_dtype)  # one sequence in one layer
        width = _nbytes((length, dims.n_text_state), self.kv_dtype)
        gpu, stream = self._gpu, self._stream
        with gpu.active():
            scratch = gpu.alloc(width * layers * len(moved))
            for buffer in (cache.k, cache.v):
                for i, target in enumerate(moved):
                    gpu.copy_2d(scratch.ptr + i * width, len(moved) * width, buffer.ptr + int(indices[target]) * row,
                                cache.batch * row, width, layers, stream)
                for i, target in enumerate(moved):
                    gpu.copy_2d(buffer.ptr + target * row, cache.batch * row, scratch.ptr + i * width,
                                len(moved) * width, width, layers, stream)
            stream.synchronize()  # the scratch buffer is freed when this returns

    def _bind_kv(self, cache: DeviceCache, cross: DeviceCrossKV, batch: int) -> None:
        """Bind the K/V inputs to ``cache`` and ``cross``: each layer's input at its layer's offset.

        Contexts keep shapes and addresses between runs, so binding is redone only when the
        buffers or the batch change (once per window, not per token: a large model has
        over a hundred per-layer inputs).
        """
        buffers = {"self_k": cache.k, "self_v": cache.v, "cross_k": cross.k, "cross_v": cross.v}
        bound = (batch, cross.rows, *(buffer.ptr for buffer in buffers.values()))
        if bound == self._bound_kv:
            return
        dims = self._dims
        for kv in self._kv:
            if kv.source.startswith("self"):
                layer_shape = (batch, dims.n_text_ctx, dims.n_text_state)
            else:
                layer_shape = cross_layer_shape(dims, batch, cross.rows)
            self._dec_ctx.set_input_shape(kv.tensor, layer_shape)
            offset = kv.layer * _nbytes(layer_shape, self.kv_dtype)
            self._dec_ctx.set_address(kv.tensor, buffers[kv.source].ptr + offset)
        self._bound_kv = bound

    # -- for validation and measurement -----------------------------------------------

    def device_memory_used(self) -> int:
        """Device memory in use, all processes (on a Jetson: of the RAM shared with the CPU)."""
        with self._gpu.active():
            return self._gpu.memory_used()

    def cross_to_host(self, cross: DeviceCrossKV) -> tuple[np.ndarray, np.ndarray]:
        """Copy cross K/V back as float32 numpy arrays (validation, and word timing without an
        aligner engine; never per token)."""
        dims = self._dims
        shape = (dims.n_text_layer, *cross_layer_shape(dims, cross.batch, cross.rows))
        with self._gpu.active():
            k = self._gpu.pinned(shape, self.kv_dtype)
            v = self._gpu.pinned(shape, self.kv_dtype)
            self._gpu.download(k, cross.k.ptr, self._stream)
            self._gpu.download(v, cross.v.ptr, self._stream)
            self._stream.synchronize()
        return k.astype(np.float32), v.astype(np.float32)
