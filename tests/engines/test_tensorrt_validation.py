"""Validation numerics on real runners: ONNX Runtime on both sides, the real tiny.en package and
the reference recording. The candidate is float32 (must pass), int8 (real drift), or float32
with a known perturbation (the reported drift must equal the one we put in)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from edgescribe.engines.files import file_sha256
from edgescribe.engines.onnx_export import quantize_int8
from edgescribe.engines.onnx_runner import CrossKV, OnnxRunner
from edgescribe.engines.package import ModelPackage
from edgescribe.engines.tensorrt import validation
from edgescribe.engines.tensorrt.validation import TOLERANCES, Capture, Tolerance, compare, relative_error, top1_agreement
from tests.fixtures.model_package import tiny_package  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def reference(tiny_package):  # noqa: F811
    return OnnxRunner(tiny_package, threads=1, prefer_int8=False)


@pytest.fixture(scope="module")
def mel(tiny_package):  # noqa: F811
    return validation.reference_mel(tiny_package.mel_filters())


@pytest.fixture(scope="module")
def prompt(tiny_package):  # noqa: F811
    special = tiny_package.manifest.special_tokens
    return [special.sot, special.no_timestamps], special.eot


class Perturbed:
    """A float32 runner whose cross K gets ``delta`` added at one position (a known, exact drift)."""

    name = "perturbed"

    def __init__(self, runner, delta: float):
        self.runner = runner
        self.delta = delta

    def encode(self, mel):
        cross = self.runner.encode(mel)
        k = cross.k.copy()
        k[0, :, 0, 0] += self.delta
        return CrossKV(k, cross.v)

    def new_cache(self, batch):
        return self.runner.new_cache(batch)

    def decode(self, tokens, offsets, cache, cross):
        return self.runner.decode(tokens, offsets, cache, cross)


# -- pure numerics -----------------------------------------------------------------------


def test_relative_error_is_max_abs_over_reference_scale():
    ref = np.array([[1.0, -4.0], [2.0, 0.5]], np.float32)
    cand = ref + np.array([[0.0, 0.1], [-0.2, 0.0]], np.float32)
    max_abs, rel = relative_error(ref, cand)
    assert max_abs == pytest.approx(0.2) and rel == pytest.approx(0.05)
    assert relative_error(ref, np.full_like(ref, np.nan)) == (float("inf"), float("inf"))
    with pytest.raises(ValueError, match="shape mismatch"):
        relative_error(ref, ref[:1])


def test_top1_agreement_counts_matching_argmax():
    ref = np.array([[[0, 1, 0]], [[1, 0, 0]], [[0, 0, 1]], [[0, 1, 0]]], np.float32)
    cand = ref.copy()
    cand[3, 0] = [0, 0, 2]
    assert top1_agreement(ref, cand) == 0.75


def test_compare_passes_identical_and_fails_each_limit_with_its_own_line():
    rng = np.random.default_rng(1)
    ref = Capture(rng.standard_normal((2, 1, 5, 3)).astype(np.float32), rng.standard_normal((2, 1, 5, 3)).astype(np.float32),
                  rng.standard_normal((4, 1, 10)).astype(np.float32))
    tight = Tolerance(cross_rel=0.01, logits_abs=0.5, top1=1.0)
    assert compare(ref, ref, tight, ("a", "a")).passed
    logits = ref.logits.copy()
    logits[2, 0] = -logits[2, 0]  # flips that step's argmax and moves logits by ~2
    report = compare(ref, Capture(ref.cross_k, ref.cross_v, logits), tight, ("same text", "other text"))
    failed = {check.name for check in report.checks if not check.passed}
    assert failed == {"logits", "top1", "text"}
    assert report.blamed == {"decoder"}
    assert report.check("top1").value == 0.75
    assert report.check("text").line() == "text: 'other text' != reference 'same text' -> FAIL"


# -- real runners ------------------------------------------------------------------------


def test_float32_against_itself_passes_with_zero_drift(reference, mel, prompt):
    tokens, eot = prompt
    report = validation.validate(reference, reference, mel, tokens, eot, TOLERANCES["fp32"], batch=2)
    assert report.passed, report.lines
    assert report.check("cross_k").value == 0.0 and report.check("logits").value == 0.0
    assert report.check("top1").value == 1.0


def test_known_perturbation_is_reported_exactly_and_judged(reference, mel, prompt):
    tokens, eot = prompt
    scale = float(np.abs(reference.encode(mel).k).max())
    delta = 0.01 * scale  # 1% of the tensor's scale: inside fp16's 2%, outside fp32's 0.2%
    candidate = Perturbed(reference, delta)
    lenient = validation.validate(reference, candidate, mel, tokens, eot, TOLERANCES["fp16"])
    assert lenient.check("cross_k").value == pytest.approx(0.01, rel=1e-3)
    assert lenient.passed, lenient.lines
    strict = validation.validate(reference, candidate, mel, tokens, eot, TOLERANCES["fp32"])
    assert not strict.passed and strict.blamed == {"encoder"}
    assert strict.check("cross_k").line().endswith("(limit 0.002) -> FAIL")
    assert strict.check("cross_v").passed


class LateAligner:
    """A float32 runner whose aligner sees everything ``shift`` encoder positions (20 ms each) late."""

    name = "late"

    def __init__(self, runner, shift: int):
        self.runner = runner
        self.shift = shift

    def encode(self, mel):
        return self.runner.encode(mel)

    def new_cache(self, batch):
        return self.runner.new_cache(batch)

    def decode(self, tokens, offsets, cache, cross):
        return self.runner.decode(tokens, offsets, cache, cross)

    def align(self, tokens, cross):
        return np.roll(self.runner.align(tokens, cross), self.shift, axis=-1)


def test_the_aligner_is_judged_by_its_scores_and_where_tokens_start(reference, mel, prompt):
    tokens, eot = prompt
    same = validation.validate(reference, reference, mel, tokens, eot, TOLERANCES["fp32"], batch=2, align=True)
    assert same.passed, same.lines
    assert same.check("alignment").value == 0.0 and same.check("token starts").value == 0.0
    late = validation.validate(reference, LateAligner(reference, 3), mel, tokens, eot, TOLERANCES["fp16"], align=True)
    assert not late.passed and late.blamed == {"aligner"}  # encoder and decoder are untouched
    assert late.check("cross_k").passed and late.check("logits").passed and not late.check("alignment").passed
    assert late.check("token starts").value == 3.0
    assert late.check("token starts").line() == "token starts: move by at most 3 positions of 20 ms (limit 1) -> FAIL"


@pytest.fixture(scope="module")
def int8_package(tiny_package, tmp_path_factory):  # noqa: F811
    """tiny.en plus int8 graphs quantised here (the shipped test package is float32 only)."""
    if tiny_package.has_int8():
        yield tiny_package
        return
    target = tmp_path_factory.mktemp("int8") / "tiny.en"
    target.mkdir()
    # Link only files that are read; every file written below is new in target (never write
    # through a link into the shared package).
    for name in ("encoder.onnx", "decoder.onnx", "aligner.onnx", "tokenizer.json", "mel_filters.npy"):
        (target / name).symlink_to(tiny_package.dir / name)
    manifest = json.loads((tiny_package.dir / "manifest.json").read_text())
    for graph in ("encoder", "decoder"):
        out = target / f"{graph}.int8.onnx"
        assert not out.exists()
        quantize_int8(onnx.load(str(tiny_package.dir / f"{graph}.onnx")), out)
        manifest["files"][out.name] = {"sha256": file_sha256(out), "size": out.stat().st_size}
        manifest["precision"][out.name] = "int8"
    (target / "manifest.json").write_text(json.dumps(manifest))
    yield ModelPackage.load(target, verify=False)
    shutil.rmtree(target, ignore_errors=True)


@pytest.mark.slow
def test_int8_against_float32_reports_real_drift_and_fails_fp16_limits(reference, int8_package, mel, prompt):
    tokens, eot = prompt
    candidate = OnnxRunner(int8_package, threads=1, prefer_int8=True)
    assert candidate.precision == "int8"
    report = validation.validate(reference, candidate, mel, tokens, eot, TOLERANCES["fp16"])
    # Recompute the encoder drift independently of validate(): the report must say the same.
    expected_k, _ = relative_error(reference.encode(mel).k, candidate.encode(mel).k)
    assert report.check("cross_k").value == pytest.approx(expected_k / float(np.abs(reference.encode(mel).k).max()))
    assert report.check("cross_k").value > TOLERANCES["fp16"].cross_rel
    assert not report.passed and report.blamed == {"encoder"}
