"""The seam between the decoding loop and whatever executes the ONNX graphs.

``decoding.py`` only ever talks to a :class:`Runner`. ONNX Runtime (CPU, tested in CI)
and TensorRT (Jetson) implement it, so the decoding logic that ships is the one CI runs.

Graph contract (see docs/architecture.md for the full table):

* encoder: ``mel`` f32 [batch, n_mels, frames] -> ``cross_k``, ``cross_v``
  f32 [n_text_layer, batch, n_text_head, frames / 2, d_head], for an even ``frames`` up to
  3000 (a window shorter than 30 s reads the first frames / 2 rows of the positional
  embedding); d_head = n_text_state / n_text_head
* decoder: ``tokens`` i64 [batch, n_tokens], ``offset`` i64 [batch], and per decoder layer
  ``l`` the inputs ``self_k.l``, ``self_v.l`` f32 [batch, n_text_ctx, n_text_state] and
  ``cross_k.l``, ``cross_v.l`` f32 [batch, n_text_head, frames / 2, d_head] -> ``logits`` f32
  [batch, n_vocab] (last position only), ``new_k``, ``new_v`` f32
  [n_text_layer, batch, n_tokens, n_text_state]

* aligner (optional, engines/alignment_export.py): ``tokens`` i64 [batch, n_tokens] and the
  decoder's ``cross_k.l``/``cross_v.l`` inputs of the layers it reads -> ``alignment`` f32
  [n_alignment_heads, batch, n_tokens, frames / 2], the alignment heads' cross-attention scores

Runners keep one buffer per K/V tensor, [n_text_layer, batch, ...], and feed the decoder
layer ``l``'s contiguous slice of it. A layer's slice of one window is ``rows * n_text_state``
items either way (rows: n_text_ctx for the cache, frames / 2 for cross K/V).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from edgescribe.engines.weights import ModelDims

# The K/V tensors the decoder reads, each split into one input per layer (``layer_input``).
KV_TENSORS = ("self_k", "self_v", "cross_k", "cross_v")


def layer_input(tensor: str, layer: int) -> str:
    """The decoder input holding ``layer``'s slice of ``tensor`` (``self_k.0``, ...)."""
    return f"{tensor}.{layer}"


def cross_layer_shape(dims: ModelDims, batch: int | str, rows: int | str) -> tuple[int | str, ...]:
    """One layer's cross-attention keys (or values): [batch, n_text_head, rows, d_head].

    Split into heads once per window by the encoder, so a decoder step's attention reads each
    head's rows as they lie (a layout of [batch, rows, n_text_state] made every step either
    transpose them or multiply by a block-diagonal query six times the size)."""
    return batch, dims.n_text_head, rows, dims.n_text_state // dims.n_text_head


class Runner(Protocol):
    """Runs one model package's encoder and decoder graphs.

    ``CrossKV`` and ``Cache`` are opaque to the caller: numpy arrays for ONNX Runtime,
    device buffers for TensorRT. They never need to come back to the host.
    """

    name: str  # "onnxruntime" or "tensorrt", reported in health and logs
    # The shortest window (mel frames) the encoder takes: 3000 for graphs and engines made
    # before windows could be shorter, which then always get full windows.
    min_window_frames: int

    def encode(self, mel: np.ndarray) -> Any:
        """Cross-attention K/V for a batch of log-mel windows [batch, n_mels, frames]."""

    def new_cache(self, batch: int) -> Any:
        """An empty self-attention cache for ``batch`` sequences."""

    def decode(self, tokens: np.ndarray, offsets: np.ndarray, cache: Any, cross: Any) -> np.ndarray:
        """Run ``tokens`` [batch, n] at positions ``offsets`` [batch] onwards.

        Writes the new keys/values into ``cache`` at ``offsets`` and returns the
        logits of the last position, float32 [batch, n_vocab], on the host.
        """

    def align(self, tokens: np.ndarray, cross: Any) -> np.ndarray:
        """Cross-attention scores of the alignment heads for ``tokens`` [batch, n] from position 0,
        float32 [n_alignment_heads, batch, n, frames / 2], on the host (word timing). Raises
        ModelPackageError when the package has no aligner graph."""

    def select_cross(self, cross: Any, indices: np.ndarray) -> Any:
        """New cross-attention K/V whose row ``i`` is row ``indices[i]`` of ``cross`` (a window
        repeated once per beam of a beam search)."""

    def reorder(self, cache: Any, indices: np.ndarray, length: int) -> None:
        """Make row ``i`` of ``cache`` a copy of its row ``indices[i]``, in place, for positions
        below ``length`` (beam search: each beam takes over the cache of the beam it extends)."""
