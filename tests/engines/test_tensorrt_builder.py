"""Engine build orchestration with a GPU double (tests/fixtures/fake_tensorrt.py) and everything
else real: the tiny.en package, the engine cache on disk, the TensorRT runner's buffer and
cache arithmetic, and validation against ONNX Runtime on the reference recording."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import onnx
import pytest

from edgescribe.engines.onnx_runner import OnnxRunner
from edgescribe.engines.tensorrt import validation
from edgescribe.engines.tensorrt.build import build_engines
from edgescribe.engines.alignment_export import aligner_inputs
from edgescribe.engines.tensorrt.builder import (
    FP32_LAYER_TYPES,
    HALF_IO,
    BuildOptions,
    Ticker,
    aligner_kv_inputs,
    profiles,
    recipe,
)
from edgescribe.engines.tensorrt.engine_cache import EngineBuildError, EngineCache
from edgescribe.engines.tensorrt.runner import TensorRTRunner, cache_copies
from tests.fixtures import fake_tensorrt
from tests.fixtures.fake_tensorrt import FakeTensorRT
from tests.fixtures.model_package import onnx_sessions, tiny_package  # noqa: F401 (fixtures)

KV_NAMES = {f"{name}.{layer}" for name in ("self_k", "self_v", "cross_k", "cross_v") for layer in range(4)}  # tiny.en

OPTIONS = BuildOptions(precision="fp16", max_batch=2, max_prompt_tokens=32, workspace_mb=256)


@pytest.fixture
def fake(onnx_sessions):  # noqa: F811
    return FakeTensorRT(sessions=onnx_sessions)


def build(package, out, fake, options=OPTIONS, **kwargs):
    return build_engines(package, out, options, fake, threads=1, tick_interval=60, **kwargs)


# -- decisions (pure) --------------------------------------------------------------------


def test_profiles_cover_batch_and_prompt_range_with_single_token_opt(tiny_package):  # noqa: F811
    dims = tiny_package.dims
    shapes = profiles(dims, BuildOptions(max_batch=4, max_prompt_tokens=224))
    # every window length, tuned for the shortest (engines/encoder_window.py)
    assert shapes["encoder"]["mel"] == ((1, 80, 1000), (1, 80, 1000), (4, 80, 3000))
    assert shapes["decoder"]["tokens"] == ((1, 1), (1, 1), (4, 224))
    # one K/V input per layer, each with one layer's shape
    assert set(shapes["decoder"]) == {"tokens", "offset"} | KV_NAMES
    assert shapes["decoder"]["self_v.3"] == ((1, 448, 384), (1, 448, 384), (4, 448, 384))
    # cross K/V split into heads: [batch, 6 heads, rows, 64]
    assert shapes["decoder"]["cross_k.0"] == ((1, 6, 500, 64), (1, 6, 500, 64), (4, 6, 1500, 64))
    with pytest.raises(ValueError, match="exceeds the model's text context 448"):
        profiles(dims, BuildOptions(max_prompt_tokens=449))


def test_every_graph_input_gets_a_profile_of_its_rank_and_nothing_else_does(tiny_package):  # noqa: F811
    heads = tiny_package.manifest.alignment_heads
    for graph in ("encoder", "decoder", "aligner"):
        inputs = onnx.load(str(tiny_package.file(f"{graph}.onnx")), load_external_data=False).graph.input
        ranks = {value.name: len(value.type.tensor_type.shape.dim) for value in inputs}
        made = recipe(f"{graph}.onnx", graph, tiny_package.dims, OPTIONS, "fp16", heads)
        assert {name: len(triple[0]) for name, triple in made.profile.items()} == ranks
    # the builder's copy of the aligner's input names (it must not import onnx) agrees with the exporter's
    for some in ([(3, 1), (1, 0)], [(0, 2)], heads):
        assert aligner_kv_inputs(some) == aligner_inputs(some)


def test_the_aligner_profile_spans_a_windows_tokens_and_the_decoders_windows(tiny_package):  # noqa: F811
    shapes = profiles(tiny_package.dims, BuildOptions(max_batch=4, max_prompt_tokens=224), tiny_package.manifest.alignment_heads)
    aligner = shapes["aligner"]
    assert aligner["tokens"] == ((1, 1), (1, 64), (1, 448))  # up to the text context, one window at a time
    assert set(aligner) == {"tokens", "cross_k.0", "cross_k.1", "cross_k.2", "cross_k.3", "cross_v.0", "cross_v.1", "cross_v.2"}
    decoder_rows = [shape[2] for shape in shapes["decoder"]["cross_k.0"]]
    assert [shape[2] for shape in aligner["cross_v.2"]] == decoder_rows == [500, 500, 1500]
    fp16 = recipe("aligner.onnx", "aligner", tiny_package.dims, OPTIONS, "fp16", tiny_package.manifest.alignment_heads)
    assert set(aligner) - {"tokens"} <= set(fp16.half_io) and "alignment" not in fp16.half_io  # reads the encoder's fp16 K/V
    assert "aligner" not in profiles(tiny_package.dims, OPTIONS)  # a package without an aligner graph


def test_fp16_recipe_pins_norm_and_softmax_and_halves_only_device_side_kv(tiny_package):  # noqa: F811
    dims = tiny_package.dims
    fp16 = recipe("decoder.onnx", "decoder", dims, OPTIONS, "fp16")
    assert fp16.fp16 and {"NORMALIZATION", "SOFTMAX"} <= set(fp16.fp32_layer_types)
    assert set(fp16.half_io) == set(HALF_IO) | KV_NAMES
    assert "logits" not in fp16.half_io and "mel" not in fp16.half_io
    assert fp16.workspace_bytes == 256 << 20
    fallback = recipe("decoder.onnx", "decoder", dims, OPTIONS, "fp32")
    assert not fallback.fp16 and fallback.fp32_layer_types == ()
    assert fallback.half_io == fp16.half_io  # must keep exchanging fp16 K/V with an fp16 encoder
    fp32 = recipe("decoder.onnx", "decoder", dims, BuildOptions(precision="fp32"), "fp32")
    assert fp32.half_io == () and FP32_LAYER_TYPES


@pytest.mark.parametrize("offsets", [[0, 3, 6], [5, 5, 5]], ids=["rows at different offsets", "rows in step"])
def test_cache_copies_place_each_row_at_its_own_offset(offsets):
    layers, batch, n, ctx, state = 2, 3, 2, 8, 4
    offsets = np.array(offsets)
    new = np.arange(layers * batch * n * state, dtype=np.float16).reshape(layers, batch, n, state)
    cache = np.zeros((layers, batch, ctx, state), np.float16)
    flat_cache, flat_new = cache.reshape(-1).view(np.uint8), new.reshape(-1).view(np.uint8)
    copies = cache_copies(layers, batch, n, ctx, state, 2, offsets)
    for c in copies:
        for row in range(c.height):
            d, s = c.dst + row * c.dst_pitch, c.src + row * c.src_pitch
            flat_cache[d : d + c.width] = flat_new[s : s + c.width]
    expected = np.zeros_like(cache)
    for b, offset in enumerate(offsets):
        expected[:, b, offset : offset + n] = new[:, b]
    np.testing.assert_array_equal(cache, expected)
    # One strided copy when rows are in step, one per row otherwise; never one per layer.
    assert len(copies) == (1 if len(set(offsets.tolist())) == 1 else batch)


def test_ticker_logs_progress_from_its_thread_and_stops(caplog):
    caplog.set_level(logging.INFO, logger="edgescribe.engines.tensorrt.builder")
    with Ticker("decoder engine (fp16)", interval=0.05):
        time.sleep(0.3)
    ticks = [r.getMessage() for r in caplog.records if r.getMessage().startswith("still building decoder engine (fp16)")]
    assert len(ticks) >= 2 and ticks[0].endswith("s elapsed")
    count = len(caplog.records)
    time.sleep(0.15)
    assert len(caplog.records) == count  # the thread has stopped


# -- orchestration -----------------------------------------------------------------------


def test_build_validates_marks_good_then_is_a_no_op(tiny_package, fake, tmp_path, caplog):  # noqa: F811
    caplog.set_level(logging.INFO)
    assert build(tiny_package, tmp_path, fake) is True
    cache = EngineCache(tmp_path, "tiny.en")
    mark = json.loads(cache.good_path.read_text())
    assert any(line.startswith("text: 'in being comparatively modern.'") and line.endswith("ok") for line in mark["report"])
    assert fake.builds == [("encoder", True), ("decoder", True), ("aligner", True)]
    assert cache.read_timing_cache() == b"timing:3"
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("building encoder engine (fp16)") for m in messages)
    assert any(m.startswith(f"built {cache.engine_path('decoder')} in ") for m in messages)

    caplog.clear()
    assert build(tiny_package, tmp_path, fake) is False
    assert len(fake.builds) == 3
    assert any("up to date; nothing to build" in r.getMessage() for r in caplog.records)


def test_package_builds_validates_and_binds_each_layer_into_one_buffer(tiny_package, fake, tmp_path):  # noqa: F811
    package = tiny_package
    assert build(package, tmp_path, fake) is True
    cache = EngineCache(tmp_path, "tiny.en")
    report = json.loads(cache.good_path.read_text())["report"]
    assert any(line.startswith("text: 'in being comparatively modern.'") and line.endswith("ok") for line in report)
    decoder_profile = fake.recipes[1].profile
    assert "self_k" not in decoder_profile and decoder_profile["self_k.3"][2] == (2, 448, 384)

    with fake.gpu.active():
        runner = TensorRTRunner.from_cache(fake, cache, package.dims)
    special = package.manifest.special_tokens
    kv_cache, cross = runner.new_cache(2), runner.encode(np.zeros((2, 80, 3000), np.float32))
    runner.decode(np.array([[special.sot, special.no_timestamps]] * 2), np.array([0, 0]), kv_cache, cross)
    context = [c for c in fake.gpu.contexts if "tokens" in c.engine.inputs][-1]  # this runner's decoder
    itemsize = np.dtype(runner.kv_dtype).itemsize
    for layer in range(4):  # layer l of the [4, 2, 6, rows, 64] buffers starts l * 2 * rows * 384 items in
        assert context.addresses[f"self_v.{layer}"] == kv_cache.v.ptr + layer * 2 * 448 * 384 * itemsize
        assert context.addresses[f"cross_k.{layer}"] == cross.k.ptr + layer * 2 * 1500 * 384 * itemsize
        assert context.shapes[f"cross_k.{layer}"] == (2, 6, 1500, 64)
    assert build(package, tmp_path, fake) is False


def test_runner_encodes_short_windows_and_binds_their_rows(tiny_package, fake, tmp_path):  # noqa: F811
    """A 10-s window (the shortest bucket) goes through the one profile: half as many cross
    K/V rows as mel frames, bound per layer at that row count, the same logits as ONNX Runtime."""
    package = tiny_package
    build(package, tmp_path, fake)
    with fake.gpu.active():
        runner = TensorRTRunner.from_cache(fake, EngineCache(tmp_path, "tiny.en"), package.dims)
    assert runner.min_window_frames == 1000
    mel = validation.reference_mel(package.mel_filters(), frames=1000)
    special = package.manifest.special_tokens
    tokens, offsets = np.array([[special.sot, special.no_timestamps]]), np.array([0])
    cross = runner.encode(mel)
    assert cross.rows == 500
    logits = runner.decode(tokens, offsets, runner.new_cache(1), cross)
    context = [c for c in fake.gpu.contexts if "tokens" in c.engine.inputs][-1]
    assert context.shapes["cross_v.3"] == (1, 6, 500, 64)
    itemsize = np.dtype(runner.kv_dtype).itemsize
    assert context.addresses["cross_v.3"] == cross.v.ptr + 3 * 500 * 384 * itemsize
    reference = OnnxRunner(package, threads=1, prefer_int8=False)
    expected = reference.decode(tokens, offsets, reference.new_cache(1), reference.encode(mel))
    assert int(logits.argmax()) == int(expected.argmax())
    assert np.abs(logits - expected).max() < 0.05 * np.abs(expected).max()
    for frames in (998, 3002):
        with pytest.raises(ValueError, match=r"mel must be \[1..2, 80, 1000..3000 \(even\)\]"):
            runner.encode(np.zeros((1, 80, frames), np.float32))


def test_force_rebuilds_and_reuses_the_saved_timing_cache(tiny_package, fake, tmp_path):  # noqa: F811
    build(tiny_package, tmp_path, fake)
    assert fake.timing_caches_seen[0] is None
    build(tiny_package, tmp_path, fake, force=True)
    assert len(fake.builds) == 6
    assert fake.timing_caches_seen[3] == b"timing:3"


def test_stale_key_rebuilds_once_and_says_which_field(tiny_package, fake, tmp_path, caplog):  # noqa: F811
    build(tiny_package, tmp_path, fake)
    caplog.set_level(logging.INFO)
    fake.version = "10.3.1"  # a JetPack update
    assert build(tiny_package, tmp_path, fake) is True
    assert len(fake.builds) == 6
    assert any("tensorrt_version: built for 10.3.0, now 10.3.1" in r.getMessage() for r in caplog.records)
    sidecar = json.loads(EngineCache(tmp_path, "tiny.en").sidecar_path("decoder").read_text())
    assert sidecar["key"]["tensorrt_version"] == "10.3.1"


def test_changed_settings_make_the_cache_stale(tiny_package, fake, tmp_path):  # noqa: F811
    build(tiny_package, tmp_path, fake)
    assert build(tiny_package, tmp_path, fake, options=BuildOptions(max_batch=1, max_prompt_tokens=32)) is True
    assert fake.recipes[-1].profile["tokens"][2] == (1, 32)


def test_cached_engine_that_fails_to_load_is_rebuilt_once(tiny_package, fake, tmp_path, caplog):  # noqa: F811
    build(tiny_package, tmp_path, fake)
    caplog.set_level(logging.INFO)
    fake.unloadable = 1
    assert build(tiny_package, tmp_path, fake) is True
    assert len(fake.builds) == 6
    assert any("encoder.engine cannot be loaded" in r.getMessage() for r in caplog.records)


def test_engine_that_still_fails_after_the_rebuild_is_a_clear_error(tiny_package, fake, tmp_path):  # noqa: F811
    fake.broken_plans = True
    with pytest.raises(EngineBuildError) as raised:
        build(tiny_package, tmp_path, fake)
    message = str(raised.value)
    assert str(tmp_path / "tiny.en" / "encoder.engine") in message and "even right after rebuilding it" in message
    assert "\n" not in message
    assert len(fake.builds) == 3  # built once, not retried in a loop
    assert not EngineCache(tmp_path, "tiny.en").good_path.exists()


def test_fp16_drift_in_the_encoder_falls_back_to_fp32_for_that_graph(tiny_package, fake, tmp_path, caplog):  # noqa: F811
    caplog.set_level(logging.INFO)
    fake.fp16_noise = {"cross_k": 0.05}  # 5% of scale: far past the 2% fp16 limit
    assert build(tiny_package, tmp_path, fake) is True
    assert fake.builds == [("encoder", True), ("decoder", True), ("aligner", True), ("encoder", False)]
    cache = EngineCache(tmp_path, "tiny.en")
    assert cache.precision_of("encoder") == "fp32" and cache.precision_of("decoder") == "fp16"
    assert cache.good_path.exists()
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("validation: cross_k:") and m.endswith("FAIL") for m in messages)
    assert any("fp16 encoder drifts past tolerance; rebuilding it in fp32" in m for m in messages)


def test_engines_built_before_the_aligner_engine_gain_just_it_and_it_falls_back_to_fp32_alone(tiny_package, fake,  # noqa: F811
                                                                                                tmp_path, caplog):
    build(tiny_package, tmp_path, fake)
    cache = EngineCache(tmp_path, "tiny.en")
    cache.engine_path("aligner").unlink()  # an engine set as build-engines made it before the aligner had one
    cache.sidecar_path("aligner").unlink()
    old = {graph: cache.read_sidecar(graph).engine_sha256 for graph in ("encoder", "decoder")}
    cache.mark_good(("encoder", "decoder"), ["validated before"])
    caplog.set_level(logging.INFO)
    fake.fp16_noise = {"alignment": 0.1}  # the fp16 aligner drifts; the others do not
    assert build(tiny_package, tmp_path, fake) is True
    assert fake.builds[3:] == [("aligner", True), ("aligner", False)]
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("building TensorRT engines (aligner): no aligner engine at ") for m in messages)
    assert any(m.startswith("validation: alignment:") and m.endswith("FAIL") for m in messages)
    assert any("fp16 aligner drifts past tolerance; rebuilding it in fp32" in m for m in messages)
    assert {graph: cache.read_sidecar(graph).engine_sha256 for graph in ("encoder", "decoder")} == old
    assert cache.precision_of("aligner") == "fp32" and cache.precision_of("encoder") == "fp16"
    assert set(json.loads(cache.good_path.read_text())["engines"]) == {"encoder", "decoder", "aligner"}
    assert build(tiny_package, tmp_path, fake) is False


def test_drift_that_survives_the_fallback_fails_and_leaves_engines_unmarked(tiny_package, fake, tmp_path):  # noqa: F811
    fake.fp16_noise = {"logits": 0.2}
    fake.drift_fp32 = True
    with pytest.raises(EngineBuildError, match=r"disagree with ONNX Runtime: logits: max abs .* FAIL"):
        build(tiny_package, tmp_path, fake)
    assert fake.builds[-1] == ("decoder", False)
    assert not EngineCache(tmp_path, "tiny.en").good_path.exists()


def test_a_gpu_error_while_validating_is_one_line_naming_the_directory(tiny_package, fake, tmp_path, monkeypatch):  # noqa: F811
    def fail(self, stream):
        raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log above)")

    monkeypatch.setattr(fake_tensorrt.FakeContext, "execute", fail)
    with pytest.raises(EngineBuildError) as raised:
        build(tiny_package, tmp_path, fake)
    assert str(raised.value) == (f"running the new engines in {tmp_path / 'tiny.en'} failed: "
                                 "TensorRT execute_async_v3 failed (see the TensorRT log above)")
    assert not EngineCache(tmp_path, "tiny.en").good_path.exists()
