"""The real seam on a real GPU: build, validate, load and decode with TensorRT 10 + pycuda.

Skipped wherever TensorRT, pycuda or a CUDA GPU is missing (CI, developer laptops): these
are the tests scripts/verify-jetson.sh runs on a Jetson Orin. NOT run during development
(no GPU was available); see docs/jetson.md.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from edgescribe.engines.backend import create_runner
from edgescribe.engines.errors import BackendUnavailableError
from edgescribe.engines.onnx_runner import OnnxRunner
from edgescribe.engines.tensorrt import seam, validation
from edgescribe.engines.tensorrt.build import build_engines
from edgescribe.engines.tensorrt.builder import BuildOptions
from edgescribe.engines.tensorrt.engine_cache import EngineCache
from edgescribe.engines.tensorrt.platform import device_facts
from tests.fixtures.model_package import tiny_package  # noqa: F401 (fixture)

REASON = "needs TensorRT 10 and a CUDA GPU (Jetson Orin); run scripts/verify-jetson.sh on the device"


def _gpu_available() -> bool:
    if importlib.util.find_spec("tensorrt") is None or importlib.util.find_spec("pycuda") is None:
        return False
    try:
        seam.load()
    except BackendUnavailableError:
        return False
    return True


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _gpu_available(), reason=REASON)]


@pytest.fixture(scope="module")
def trt():
    return seam.load()


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("engines")


def test_device_facts_come_from_the_gpu(trt):
    facts = device_facts(trt)
    assert facts.tensorrt_version.startswith("10.")
    assert facts.gpu_name and facts.compute_capability.count(".") == 1


def test_fp16_build_validates_then_is_a_no_op(trt, tiny_package, engine_dir):  # noqa: F811
    options = BuildOptions(precision="fp16", max_batch=2, max_prompt_tokens=64, workspace_mb=512)
    assert build_engines(tiny_package, engine_dir, options, trt, threads=2) is True
    assert build_engines(tiny_package, engine_dir, options, trt, threads=2) is False


def test_runner_matches_onnx_runtime_with_rows_at_different_offsets(trt, tiny_package, engine_dir):  # noqa: F811
    runner = create_runner(tiny_package, "tensorrt", engine_dir=engine_dir)
    reference = OnnxRunner(tiny_package, threads=2, prefer_int8=False)
    mel = validation.reference_mel(tiny_package.mel_filters())
    mel2 = np.concatenate([mel, np.zeros_like(mel)])
    special = tiny_package.manifest.special_tokens
    runners = (reference, runner)
    caches = [r.new_cache(2) for r in runners]
    crosses = [r.encode(mel2) for r in runners]
    offsets = np.array([0, 0])
    tokens = np.array([[special.sot, special.no_timestamps]] * 2)
    for step in range(6):
        logits = [r.decode(tokens, offsets, c, x) for r, c, x in zip(runners, caches, crosses)]
        np.testing.assert_allclose(logits[1], logits[0], atol=validation.TOLERANCES["fp16"].logits_abs)
        offsets = offsets + np.array([tokens.shape[1], 1 if step else tokens.shape[1] - 1])
        tokens = np.argmax(logits[0], axis=-1)[:, None]


def test_the_aligner_engine_reads_the_encoders_cross_kv_and_matches_onnx_runtime(trt, tiny_package, engine_dir):  # noqa: F811
    runner = create_runner(tiny_package, "tensorrt", engine_dir=engine_dir)
    assert runner.aligns_on_gpu  # built by the fp16 test above, the aligner engine among them
    reference = OnnxRunner(tiny_package, threads=2, prefer_int8=False)
    mel = validation.reference_mel(tiny_package.mel_filters(), frames=1000)
    special = tiny_package.manifest.special_tokens
    prompt = [special.sot, special.no_timestamps]
    forced = validation.greedy_tokens(reference, mel, prompt, special.eot, 32)
    tokens = np.array([prompt + forced])
    ours = runner.align(tokens, runner.encode(mel))
    theirs = reference.align(tokens, reference.encode(mel))
    tolerance = validation.TOLERANCES["fp16"]
    assert validation.relative_error(theirs, ours)[1] <= tolerance.alignment_rel
    shift = np.abs(validation.token_starts(ours[:, 0]) - validation.token_starts(theirs[:, 0])).max()
    assert shift <= tolerance.start_shift


def test_fp32_build_meets_fp32_tolerances(trt, tiny_package, tmp_path):  # noqa: F811
    build_engines(tiny_package, tmp_path, BuildOptions(precision="fp32", max_batch=1, max_prompt_tokens=32), trt, threads=2)
    assert EngineCache(tmp_path, tiny_package.dir.name).status({}).ok
