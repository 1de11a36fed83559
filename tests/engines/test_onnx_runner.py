"""ONNX Runtime runner: graph I/O and the in-place KV cache (engines/onnx_runner.py)."""

from __future__ import annotations

import numpy as np
import pytest

from edgescribe.engines.audio import load_audio, log_mel, pad_or_trim
from edgescribe.engines.onnx_runner import OnnxRunner
from tests.fixtures.models import tiny_en_package  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def runner(tiny_en_package):
    return OnnxRunner(tiny_en_package, threads=2, prefer_int8=False)


@pytest.fixture(scope="module")
def cross_pair(runner, tiny_en_package, corpus):
    """Encoder output for two different utterances in one batch."""
    filters = tiny_en_package.mel_filters()
    mels = [pad_or_trim(log_mel(load_audio(corpus / "en" / name), filters)[:, :-1])
            for name in ("jfk_inaugural_1961.wav", "arctic_axb_a0004.wav")]
    return runner.encode(np.stack(mels))


def test_shapes(runner, cross_pair, tiny_en_package):
    dims = tiny_en_package.dims
    assert runner.name == "onnxruntime" and runner.threads == 2 and runner.precision == "float32"
    assert cross_pair.k.shape == (dims.n_text_layer, 2, dims.n_text_head, dims.n_audio_ctx, 64)
    cache = runner.new_cache(2)
    assert cache.k.shape == (dims.n_text_layer, 2, dims.n_text_ctx, dims.n_text_state) and not cache.k.any()
    logits = runner.decode(np.array([[50257], [50257]]), np.zeros(2, np.int64), cache, cross_pair)
    assert logits.shape == (2, dims.n_vocab) and logits.dtype == np.float32
    # the new keys landed at position 0 of both sequences and nowhere else
    assert cache.k[:, :, 0].any() and not cache.k[:, :, 1:].any()


def test_one_call_equals_token_by_token(runner, cross_pair):
    """The cache written step by step reproduces a single multi-token call."""
    tokens = np.array([[50257, 50363, 843, 523, 616], [50257, 50363, 4453, 11, 475]])
    whole_cache = runner.new_cache(2)
    whole = runner.decode(tokens, np.zeros(2, np.int64), whole_cache, cross_pair)
    step_cache = runner.new_cache(2)
    for position in range(tokens.shape[1]):
        step = runner.decode(tokens[:, position : position + 1], np.full(2, position), step_cache, cross_pair)
    np.testing.assert_allclose(step, whole, atol=2e-3)
    np.testing.assert_allclose(step_cache.k[:, :, :5], whole_cache.k[:, :, :5], atol=1e-4)


def test_rows_at_different_offsets(runner, cross_pair):
    """Each row attends only to its own cache rows below its own offset."""
    short = [50257, 50363]
    long = [50257, 50363, 4453, 11]
    separate = []
    for b, prompt in enumerate((short, long)):
        cache = runner.new_cache(1)
        single = type(cross_pair)(cross_pair.k[:, b : b + 1].copy(), cross_pair.v[:, b : b + 1].copy())
        runner.decode(np.array([prompt]), np.zeros(1, np.int64), cache, single)
        separate.append(runner.decode(np.array([[475]]), np.array([len(prompt)]), cache, single)[0])
    cache = runner.new_cache(2)
    runner.decode(np.array([short + [0, 0], long]), np.zeros(2, np.int64), cache, cross_pair)  # row 0 padded
    batched = runner.decode(np.array([[475], [475]]), np.array([len(short), len(long)]), cache, cross_pair)
    np.testing.assert_allclose(batched, np.stack(separate), atol=2e-3)


def test_context_overflow_is_refused(runner, cross_pair, tiny_en_package):
    n_ctx = tiny_en_package.dims.n_text_ctx
    with pytest.raises(ValueError, match="overflow the text context"):
        runner.decode(np.array([[1, 2], [1, 2]]), np.array([0, n_ctx - 1]), runner.new_cache(2), cross_pair)
