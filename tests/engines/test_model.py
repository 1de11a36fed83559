"""A loaded Whisper model (engines/model.py)."""

from __future__ import annotations

from threadpoolctl import threadpool_limits

from edgescribe.engines.audio import load_audio
from edgescribe.engines.model import WhisperModel
from edgescribe.engines.onnx_runner import OnnxRunner
from tests.fixtures.daemon import JFK
from tests.fixtures.model_package import tiny_package  # noqa: F401 (fixture)
from tests.fixtures.spinning import cpu_while_asleep


def test_a_model_leaves_no_blas_threads_spinning_after_a_log_mel(tiny_package):  # noqa: F811
    """OpenBLAS's threads spin for about 0.1 s after each call, and after a log-mel they took
    the cores from the encode that follows (WhisperModel limits them). Without the limit,
    2 BLAS threads burned about 0.1 s of CPU in the 0.2 s after each log-mel here."""
    threadpool_limits(limits=2, user_api="blas")  # numpy's own start on two cores, whatever ran before
    model = WhisperModel.from_package(tiny_package, OnnxRunner(tiny_package, threads=2))
    samples = load_audio(JFK)
    for _ in range(3):
        model.log_mel(samples)
        assert cpu_while_asleep() < 0.01
