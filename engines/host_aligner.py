"""The aligner graph (engines/alignment_export.py) on ONNX Runtime, on the host.

Used by OnnxRunner and, for engine sets built before the aligner had a TensorRT engine of its
own, by the TensorRT runner over a host copy of its cross-attention K/V (one copy per timed
window, not per token). The session loads on first use: most callers never time words.
"""

from __future__ import annotations

import numpy as np

from edgescribe.engines.errors import ModelPackageError
from edgescribe.engines.onnx_session import session_options
from edgescribe.engines.package import ModelPackage


class HostAligner:
    def __init__(self, package: ModelPackage, threads: int = 0):
        self._package = package
        self._threads = threads
        self._session = None

    def available(self) -> bool:
        try:
            self._package.aligner_path()
        except ModelPackageError:
            return False
        return True

    def run(self, tokens: np.ndarray, cross_k: np.ndarray, cross_v: np.ndarray) -> np.ndarray:
        """``alignment`` [heads, batch, n, audio_ctx] for ``tokens`` [batch, n] over float32 cross
        K/V [n_text_layer, batch, n_text_head, audio_ctx, d_head]."""
        session = self._session or self._load()
        n_ctx = self._package.dims.n_text_ctx
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        if tokens.ndim != 2 or not 0 < tokens.shape[1] <= n_ctx:
            raise ValueError(f"tokens must be [batch, 1..{n_ctx}], got {list(tokens.shape)}")
        feeds = {"tokens": tokens}
        for graph_input in session.get_inputs()[1:]:
            tensor, layer = graph_input.name.split(".")
            feeds[graph_input.name] = np.ascontiguousarray((cross_k if tensor == "cross_k" else cross_v)[int(layer)],
                                                           dtype=np.float32)
        return session.run(["alignment"], feeds)[0]

    def _load(self):
        import onnxruntime as ort

        path = self._package.aligner_path()  # raises the clear error for packages without one
        options = session_options(self._threads)
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own untyped exceptions
            raise ModelPackageError(f"model package {self._package.dir}: ONNX Runtime cannot load {path.name} "
                                    f"({error})") from None
        return self._session
