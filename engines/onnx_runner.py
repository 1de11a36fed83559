"""ONNX Runtime (CPU) implementation of the Runner seam.

The self-attention cache is a pair of numpy arrays [n_text_layer, batch, n_text_ctx,
n_text_state] allocated once per window. The decoder takes each layer's slice ``cache.k[i]``
as its own input; those views are contiguous (the layer is the leading axis) and ONNX Runtime
reads contiguous numpy inputs in place, so a step copies no cache. The graph returns only
the new rows, which are written into the cache at each sequence's offset.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from edgescribe.engines.errors import ModelPackageError
from edgescribe.engines.host_aligner import HostAligner
from edgescribe.engines.onnx_session import session_options
from edgescribe.engines.package import ModelPackage
from edgescribe.engines.runtime import KV_TENSORS, layer_input

log = logging.getLogger(__name__)


@dataclass
class KVCache:
    """Self-attention keys and values of every decoder layer for a batch of sequences."""

    k: np.ndarray  # float32 [n_text_layer, batch, n_text_ctx, n_text_state]
    v: np.ndarray


@dataclass
class CrossKV:
    """Cross-attention keys and values of every decoder layer, from one encoder run."""

    k: np.ndarray  # float32 [n_text_layer, batch, n_text_head, window frames / 2, d_head]
    v: np.ndarray


class OnnxRunner:
    """Runs a package's encoder and decoder graphs with ONNX Runtime on the CPU.

    ``threads`` is the intra-op thread count (0: one per CPU, at most 4); ``prefer_int8``
    takes the package's int8 graphs when it has them; ``spin`` lets threads spin between
    operators (engines/onnx_session.py says when not to).
    Inputs are passed as numpy arrays, which ONNX Runtime reads in place; IOBinding with
    preallocated outputs was barely faster per step, not worth a second code path.
    """

    name = "onnxruntime"

    def __init__(self, package: ModelPackage, threads: int = 0, prefer_int8: bool = True, spin: bool = True):
        import onnxruntime as ort

        self.dims = package.dims
        encoder_path, decoder_path = package.graph_paths(prefer_int8=prefer_int8)
        self.precision = package.manifest.precision.get(decoder_path.name, "float32")
        threads = threads if threads > 0 else min(os.cpu_count() or 1, 4)
        options = session_options(threads, spin)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No arena and no memory pattern: the arena grows in doubling chunks and keeps its peak,
        # and the int8 decoder's shapes change every step (cache rows in use), so each step
        # would plan a new pattern. Without them peak RSS drops by about a third for tiny.en,
        # with no measurable change in speed.
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        providers = ["CPUExecutionProvider"]
        try:
            self._encoder = ort.InferenceSession(str(encoder_path), options, providers=providers)
            self._decoder = ort.InferenceSession(str(decoder_path), options, providers=providers)
        except Exception as error:  # onnxruntime raises its own untyped exceptions
            raise ModelPackageError(f"model package {package.dir}: ONNX Runtime cannot load its graphs ({error})") from None
        self.threads = threads
        self._aligner = HostAligner(package, threads=self.threads)
        frames = self._encoder.get_inputs()[0].shape[-1]  # a name if the graph takes any length
        self.min_window_frames = frames if isinstance(frames, int) else 0
        layers = range(self.dims.n_text_layer)
        self._input_names = {name: [layer_input(name, i) for i in layers] for name in KV_TENSORS}
        log.debug("onnxruntime: %s graphs, %d threads", self.precision, self.threads)

    def encode(self, mel: np.ndarray) -> CrossKV:
        mel = np.ascontiguousarray(mel, dtype=np.float32)
        most = 2 * self.dims.n_audio_ctx
        if mel.ndim != 3 or mel.shape[1] != self.dims.n_mels or not self.min_window_frames <= mel.shape[2] <= most:
            raise ValueError(f"mel must be [batch, {self.dims.n_mels}, {self.min_window_frames or 2}..{most}], "
                             f"got {list(mel.shape)}")
        cross_k, cross_v = self._encoder.run(["cross_k", "cross_v"], {"mel": mel})
        return CrossKV(cross_k, cross_v)

    def new_cache(self, batch: int) -> KVCache:
        shape = (self.dims.n_text_layer, batch, self.dims.n_text_ctx, self.dims.n_text_state)
        return KVCache(np.zeros(shape, np.float32), np.zeros(shape, np.float32))

    def decode(self, tokens: np.ndarray, offsets: np.ndarray, cache: KVCache, cross: CrossKV) -> np.ndarray:
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        n = tokens.shape[1]
        if int(offsets.max()) + n > self.dims.n_text_ctx or int(offsets.min()) < 0:
            raise ValueError(f"tokens at offsets {offsets.tolist()} + {n} overflow the text context {self.dims.n_text_ctx}")
        feeds = {"tokens": tokens, "offset": offsets}
        buffers = {"self_k": cache.k, "self_v": cache.v, "cross_k": cross.k, "cross_v": cross.v}
        for name, array in buffers.items():
            feeds.update(zip(self._input_names[name], array))  # array[i]: layer i, a view
        logits, new_k, new_v = self._decoder.run(["logits", "new_k", "new_v"], feeds)
        first = int(offsets[0])
        if (offsets == first).all():
            cache.k[:, :, first : first + n] = new_k
            cache.v[:, :, first : first + n] = new_v
        else:
            for b, offset in enumerate(offsets.tolist()):
                cache.k[:, b, offset : offset + n] = new_k[:, b]
                cache.v[:, b, offset : offset + n] = new_v[:, b]
        return logits

    def align(self, tokens: np.ndarray, cross: CrossKV) -> np.ndarray:
        return self._aligner.run(tokens, cross.k, cross.v)

    def select_cross(self, cross: CrossKV, indices: np.ndarray) -> CrossKV:
        return CrossKV(cross.k[:, indices], cross.v[:, indices])  # fancy indexing: contiguous copies

    def reorder(self, cache: KVCache, indices: np.ndarray, length: int) -> None:
        moved = np.flatnonzero(indices != np.arange(len(indices)))
        if moved.size:
            for buffer in (cache.k, cache.v):
                # the right side is gathered into a copy first, so a permutation is safe
                buffer[:, moved, :length] = buffer[:, indices[moved], :length]
