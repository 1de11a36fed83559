"""Choose the Runner that executes a model package: ONNX Runtime or TensorRT.

(Stub until the TensorRT work lands: only ONNX Runtime.)
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def create_runner(package, backend: str = "auto", engine_dir=None, threads: int = 0):
    from engines.onnx_runner import OnnxRunner

    return OnnxRunner(package, threads=threads)
