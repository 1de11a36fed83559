"""The real engines/tensorrt/seam.py against the real TensorRT 10.3 Python API, without a GPU.

Every ``trt`` attribute the seam reads, every property it sets and every call it makes goes
through tests/fixtures/tensorrt_api.py, which checks it against the 10.3 bindings' own classes,
enums and pybind signatures; what TensorRT does in reply is scripted per test. This proves the
seam speaks TensorRT 10.3's API (names, argument counts and types, return types handled). It
does not prove anything about a GPU, numerics or speed: tests/engines/test_tensorrt_gpu.py on
a Jetson does that. ``seam.Gpu`` (pycuda) is not covered here.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from edgescribe.engines.errors import BackendUnavailableError
from edgescribe.engines.tensorrt import seam
from edgescribe.engines.tensorrt.builder import FP32_LAYER_TYPES, BuildOptions, recipe
from edgescribe.engines.weights import ModelDims
from tests.fixtures.tensorrt_api import (
    VERSION,
    ApiChecker,
    ApiMismatch,
    ScriptedBuilder,
    ScriptedConfig,
    ScriptedContext,
    ScriptedEngine,
    ScriptedIO,
    ScriptedLayer,
    ScriptedNetwork,
    ScriptedParser,
    ScriptedRuntime,
    ScriptedTensor,
    api_checker,  # noqa: F401 (fixture)
    tensorrt_api,  # noqa: F401 (fixture)
)

TINY_EN = ModelDims(n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4,
                    n_vocab=51864, n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4)
ONNX = Path("/models/tiny.en/decoder.onnx")  # never opened: the scripted parser only records it


@pytest.fixture
def real(tensorrt_api):  # noqa: F811
    """The real bindings module, for its enums and DataType members."""
    return tensorrt_api.module


def decoder_recipe(precision: str) -> seam.NetworkRecipe:
    """The recipe builder.py really makes for tiny.en's decoder."""
    options = BuildOptions(precision=precision, max_batch=2, max_prompt_tokens=32, workspace_mb=256)
    return recipe(ONNX, "decoder", TINY_EN, options, precision)


def decoder_network(real, recipe_: seam.NetworkRecipe) -> ScriptedNetwork:
    """A parsed decoder: every input the recipe profiles, float outputs, and a mix of layers
    (a float and an integer Reduce, two-output layers, a type the recipe does not pin)."""
    f32, i64 = real.float32, real.int64
    inputs = [ScriptedTensor(name, i64 if name in ("tokens", "offset") else f32) for name in recipe_.profile]
    outputs = [ScriptedTensor(name, f32) for name in ("logits", "new_k", "new_v")]

    def layer(kind, *dtypes):
        return ScriptedLayer(getattr(real.LayerType, kind), [ScriptedTensor(f"out{i}", d) for i, d in enumerate(dtypes)])

    layers = [
        layer("NORMALIZATION", f32),
        layer("MATRIX_MULTIPLY", f32),
        layer("SOFTMAX", f32),
        layer("REDUCE", i64),  # shape arithmetic: nothing to pin
        layer("REDUCE", f32, f32),
        layer("ELEMENTWISE", real.float16),
    ]
    return ScriptedNetwork(layers, inputs, outputs)


def scripted_build(api_checker, builder: ScriptedBuilder, parser: ScriptedParser):  # noqa: F811
    def parser_for(network, logger):
        assert network is builder.network, "the parser must fill the network the builder created"
        return parser

    trt = api_checker.module(Builder=lambda logger: builder, OnnxParser=parser_for)
    return seam.TensorRT(trt, gpu=None, version=VERSION)


def build(api_checker, real, precision="fp16", timing_cache=None, **config):  # noqa: F811
    recipe_ = decoder_recipe(precision)
    network = decoder_network(real, recipe_)
    builder = ScriptedBuilder(network, ScriptedConfig(**config))
    built = scripted_build(api_checker, builder, ScriptedParser(network)).build(recipe_, timing_cache)
    return recipe_, builder, built


# -- the checker itself: each of these is a mistake the seam could make ----------------------------


@pytest.mark.parametrize(
    "mistake, message",
    [
        (lambda ctx, trt: ctx.set_tensor_address("self_k.0"), "missing memory"),
        (lambda ctx, trt: ctx.set_tensor_address("x", "0x100"), "memory must be int"),
        (lambda ctx, trt: ctx.set_tensor_address(name="x", ptr=256), "no keyword argument 'ptr'"),
        (lambda ctx, trt: ctx.set_input_shape("tokens", 3), "fits no TensorRT 10.3.0 signature"),
        (lambda ctx, trt: ctx.execute_async_v2([], 7), "IExecutionContext.execute_async_v2 does not exist"),
        (lambda ctx, trt: ctx.set_binding_shape(0, (1, 2)), "IExecutionContext.set_binding_shape does not exist"),
        (lambda ctx, trt: trt.BuilderFlag.STRICT_TYPES, "STRICT_TYPES"),
        (lambda ctx, trt: trt.volume((1, 2)), "trt.volume is not modelled"),
        (lambda ctx, trt: trt.Runtime(), "missing logger"),
        (lambda ctx, trt: trt.OnnxParserr, "trt.OnnxParserr does not exist"),
    ],
)
def test_the_checker_rejects_calls_that_tensorrt_10_3_rejects(tensorrt_api, mistake, message):  # noqa: F811
    checker = ApiChecker(tensorrt_api)
    context = checker.double("IExecutionContext", ScriptedContext())
    trt = checker.module(Runtime=ScriptedRuntime)
    with pytest.raises((ApiMismatch, AttributeError), match=message):
        mistake(context, trt)


def test_the_checker_rejects_wrong_argument_and_property_types(tensorrt_api, real):  # noqa: F811
    checker = ApiChecker(tensorrt_api)
    engine = checker.double("ICudaEngine", ScriptedEngine([ScriptedIO("mel", real.TensorIOMode.INPUT, real.float32,
                                                                      (-1, 80, 3000), ((1, 80, 3000),) * 3)]))
    with pytest.raises(ApiMismatch, match="missing profile_index"):
        engine.get_tensor_profile_shape("mel")
    with pytest.raises(ApiMismatch, match="profile_index must be int, got bool"):
        engine.get_tensor_profile_shape("mel", False)
    layer = checker.double("ILayer", ScriptedLayer(real.LayerType.SOFTMAX, []))
    with pytest.raises(ApiMismatch, match="takes DataType"):
        layer.precision = np.float32  # a numpy type where TensorRT wants trt.float32
    with pytest.raises(ApiMismatch, match="ILayer.type is read-only"):
        layer.type = real.LayerType.REDUCE
    config = checker.double("IBuilderConfig", ScriptedConfig())
    with pytest.raises(ApiMismatch, match="flag must be BuilderFlag"):
        config.set_flag(real.MemoryPoolType.WORKSPACE)
    with pytest.raises(ApiMismatch, match="min must be Dims"):
        checker.double("IOptimizationProfile", object()).set_shape("mel", (1.5, 80), (1, 80), (2, 80))
    assert len(checker.violations) == 6


def test_the_checker_reads_overloads_defaults_and_the_real_dims(tensorrt_api, real):  # noqa: F811
    checker = ApiChecker(tensorrt_api)
    context = checker.double("IExecutionContext", ScriptedContext())
    # set_input_shape has tuple, list and Dims overloads; create_execution_context a default.
    assert context.set_input_shape("tokens", [1, 4]) is True
    assert context.set_input_shape("tokens", real.Dims([1, 4])) is True
    shape = context.get_tensor_shape("tokens")
    assert isinstance(shape, real.Dims) and tuple(shape) == (1, 4)
    engine = checker.double("ICudaEngine", ScriptedEngine([]))
    assert engine.create_execution_context()._spec is real.IExecutionContext
    assert checker.violations == []


# -- TensorRT.build ---------------------------------------------------------------------------------


def test_fp16_build_pins_float_layers_sets_half_io_and_profiles_every_input(api_checker, real):  # noqa: F811
    recipe_, builder, built = build(api_checker, real, "fp16")
    network, config = builder.network, builder.config

    assert builder.network_flags == [0]
    assert builder.built == [(network, config)]
    assert config.flags == [real.BuilderFlag.FP16, real.BuilderFlag.OBEY_PRECISION_CONSTRAINTS]
    assert config.pool_limits == {real.MemoryPoolType.WORKSPACE: 256 << 20}
    (profile,) = config.profiles
    assert profile.shapes == dict(recipe_.profile)

    # NORMALIZATION, SOFTMAX and the float REDUCE are pinned; the int64 REDUCE, MATRIX_MULTIPLY
    # and ELEMENTWISE are left to TensorRT.
    assert set(FP32_LAYER_TYPES) == {"NORMALIZATION", "SOFTMAX", "REDUCE"}
    pinned = [layer for layer in network.layers if layer.precision is not None]
    assert [layer.type for layer in pinned] == [real.LayerType.NORMALIZATION, real.LayerType.SOFTMAX,
                                                real.LayerType.REDUCE]
    for layer in pinned:
        assert layer.precision == real.float32
        assert layer.output_types == {i: real.float32 for i in range(layer.num_outputs)}
    assert all(not layer.output_types for layer in network.layers if layer not in pinned)
    assert built.fp32_layers == 3

    dtypes = {t.name: t.dtype for t in network.inputs + network.outputs}
    half = {name for name, dtype in dtypes.items() if dtype == real.float16}
    assert half == set(recipe_.half_io) & set(dtypes)
    assert {"self_k.0", "cross_v.3", "new_k", "new_v"} <= half
    assert dtypes["logits"] == real.float32 and dtypes["tokens"] == real.int64

    assert built.plan == b"serialized plan" and type(built.plan) is bytes
    assert built.timing_cache == b"tuned:"
    # One logger, the seam's ILogger subclass, for the builder and the parser.
    constructed = [(c.member, c.args) for c in api_checker.calls if c.owner == "trt"]
    assert [name for name, _ in constructed] == ["Builder", "OnnxParser"]
    assert constructed[0][1][0] is constructed[1][1][1]
    assert isinstance(constructed[0][1][0], real.ILogger)


def test_the_aligner_engine_builds_with_its_own_profile_and_reads_fp16_cross_kv(api_checker, real):  # noqa: F811
    """No TensorRT call beyond the encoder's and decoder's: the aligner's recipe through the same build."""
    heads = [(1, 0), (2, 0), (2, 5), (3, 0), (3, 1), (3, 2), (3, 3), (3, 4)]  # tiny.en's
    options = BuildOptions(precision="fp16", max_batch=2, max_prompt_tokens=32, workspace_mb=256)
    recipe_ = recipe(Path("/models/tiny.en/aligner.onnx"), "aligner", TINY_EN, options, "fp16", heads)
    f32 = real.float32
    inputs = [ScriptedTensor(name, real.int64 if name == "tokens" else f32) for name in recipe_.profile]
    network = ScriptedNetwork([ScriptedLayer(real.LayerType.SOFTMAX, [ScriptedTensor("out0", f32)])], inputs,
                              [ScriptedTensor("alignment", f32)])
    builder = ScriptedBuilder(network, ScriptedConfig())
    built = scripted_build(api_checker, builder, ScriptedParser(network)).build(recipe_, None)
    (profile,) = builder.config.profiles
    assert profile.shapes == dict(recipe_.profile) and profile.shapes["tokens"] == ((1, 1), (1, 64), (1, 448))
    dtypes = {t.name: t.dtype for t in network.inputs + network.outputs}
    assert {name for name, dtype in dtypes.items() if dtype == real.float16} == set(recipe_.profile) - {"tokens"}
    assert dtypes["alignment"] == f32 and dtypes["tokens"] == real.int64
    assert built.fp32_layers == 1 and api_checker.violations == []


def test_fp32_build_sets_no_precision_flags_and_touches_no_layer(api_checker, real):  # noqa: F811
    recipe_, builder, built = build(api_checker, real, "fp32")
    assert recipe_.fp32_layer_types == () and recipe_.half_io == ()
    assert builder.config.flags == []
    assert all(layer.precision is None and not layer.output_types for layer in builder.network.layers)
    assert all(t.dtype != real.float16 for t in builder.network.inputs + builder.network.outputs)
    assert built.fp32_layers == 0


@pytest.mark.parametrize(
    "saved_cache, created, attached, warning",
    [
        ("accepted", [b"saved"], [(b"saved", False)], None),
        ("rejected", [b"saved", b""], [(b"saved", False), (b"", False)], "TensorRT ignored the saved timing cache"),
        ("null", [b"saved", b""], [(b"", False)], "saved timing cache is unreadable"),
        ("raises", [b"saved", b""], [(b"", False)], "saved timing cache is unreadable"),
    ],
)
def test_a_saved_timing_cache_is_used_only_when_tensorrt_accepts_it(api_checker, real, caplog,  # noqa: F811
                                                                    saved_cache, created, attached, warning):
    with caplog.at_level(logging.WARNING, logger="edgescribe.engines.tensorrt.seam"):
        _, builder, built = build(api_checker, real, timing_cache=b"saved", saved_cache=saved_cache)
    config = builder.config
    assert config.caches_created == created
    assert config.caches_set == attached  # ignore_mismatch is always False
    messages = [r.getMessage() for r in caplog.records]
    if warning is None:
        assert messages == []
    else:
        assert len(messages) == 1 and warning in messages[0], messages
    assert built.timing_cache == b"tuned:" + attached[-1][0]


def test_no_saved_timing_cache_starts_a_fresh_one_quietly(api_checker, real, caplog):  # noqa: F811
    with caplog.at_level(logging.WARNING, logger="edgescribe.engines.tensorrt.seam"):
        _, builder, built = build(api_checker, real, timing_cache=None)
    assert builder.config.caches_created == [b""]
    assert builder.config.caches_set == [(b"", False)]
    assert caplog.records == []
    assert built.timing_cache == b"tuned:"


def test_a_parse_failure_names_the_file_and_every_parser_error(api_checker, real):  # noqa: F811
    recipe_ = decoder_recipe("fp16")
    network = decoder_network(real, recipe_)
    builder = ScriptedBuilder(network)
    parser = ScriptedParser(network, errors=["node 12 (Einsum): unsupported", "node 40: bad weights"])
    with pytest.raises(RuntimeError) as raised:
        scripted_build(api_checker, builder, parser).build(recipe_, None)
    assert str(raised.value) == (f"TensorRT cannot parse {ONNX}: node 12 (Einsum): unsupported; node 40: bad weights")
    assert parser.parsed == [str(ONNX)]
    assert builder.built == []


def test_a_failed_build_is_one_clear_error(api_checker, real):  # noqa: F811
    recipe_ = decoder_recipe("fp16")
    network = decoder_network(real, recipe_)
    builder = ScriptedBuilder(network, plan=None)
    with pytest.raises(RuntimeError, match=f"TensorRT failed to build an engine from {ONNX}"):
        scripted_build(api_checker, builder, ScriptedParser(network)).build(recipe_, None)


# -- TensorRT.deserialize, Engine, Context ------------------------------------------------------------


def decoder_engine(real) -> ScriptedEngine:
    inp, out = real.TensorIOMode.INPUT, real.TensorIOMode.OUTPUT
    return ScriptedEngine([
        ScriptedIO("tokens", inp, real.int64, (-1, -1), ((1, 1), (1, 1), (2, 32))),
        ScriptedIO("self_k.0", inp, real.float16, (-1, 448, 384), ((1, 448, 384), (1, 448, 384), (2, 448, 384))),
        ScriptedIO("logits", out, real.float32, (-1, -1, 51864)),
        ScriptedIO("new_k", out, real.float16, (4, -1, -1, 384)),
    ])


def deserialize(api_checker, runtime: ScriptedRuntime, plan=b"plan bytes"):  # noqa: F811
    trt = api_checker.module(Runtime=lambda logger: runtime)
    return seam.TensorRT(trt, gpu=None, version=VERSION).deserialize(plan)


def test_an_engine_reports_its_tensors_profile_and_makes_contexts(api_checker, real):  # noqa: F811
    runtime = ScriptedRuntime(decoder_engine(real))
    engine = deserialize(api_checker, runtime)
    assert runtime.plans == [b"plan bytes"]
    assert engine.tensors == [
        seam.TensorSpec("tokens", True, np.dtype(np.int64), (-1, -1)),
        seam.TensorSpec("self_k.0", True, np.dtype(np.float16), (-1, 448, 384)),
        seam.TensorSpec("logits", False, np.dtype(np.float32), (-1, -1, 51864)),
        seam.TensorSpec("new_k", False, np.dtype(np.float16), (4, -1, -1, 384)),
    ]
    assert engine.profile_max("tokens") == (2, 32)
    assert engine.profile_max("self_k.0") == (2, 448, 384)
    assert engine.profile_min("tokens") == (1, 1)
    assert isinstance(engine.create_context(), seam.Context)


def test_an_undeserialisable_plan_is_one_clear_error(api_checker):  # noqa: F811
    with pytest.raises(RuntimeError, match="could not deserialise the engine"):
        deserialize(api_checker, ScriptedRuntime(None))


class _Stream:
    """What seam.Stream reads from a pycuda stream: its handle (an int), nothing else."""

    handle = 0x7F00


def test_a_context_sets_shapes_and_addresses_and_executes_on_the_stream(api_checker, real):  # noqa: F811
    scripted = decoder_engine(real)
    context = deserialize(api_checker, ScriptedRuntime(scripted)).create_context()
    context.set_input_shape("tokens", (np.int64(2), 5))
    assert context.tensor_shape("tokens") == (2, 5)
    context.set_address("tokens", 0x10000)
    context.execute(seam.Stream(_Stream()))
    assert scripted.context.shapes == {"tokens": (2, 5)}
    assert scripted.context.addresses == {"tokens": 0x10000}
    assert scripted.context.streams == [0x7F00]


@pytest.mark.parametrize(
    "refusal, action, message",
    [
        ("accepts_shapes", lambda c: c.set_input_shape("tokens", (9, 999)), "rejected shape (9, 999) for input 'tokens'"),
        ("accepts_addresses", lambda c: c.set_address("logits", 0x20000), "rejected the buffer address for tensor 'logits'"),
        ("executes", lambda c: c.execute(seam.Stream(_Stream())), "execute_async_v3 failed"),
    ],
)
def test_a_context_turns_every_false_from_tensorrt_into_an_error(api_checker, real, refusal, action, message):  # noqa: F811
    scripted = decoder_engine(real)
    setattr(scripted.context, refusal, False)
    context = deserialize(api_checker, ScriptedRuntime(scripted)).create_context()
    with pytest.raises(RuntimeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        action(context)


# -- logger, version, load ------------------------------------------------------------------------------


def test_tensorrts_log_is_routed_by_severity(api_checker, real, caplog):  # noqa: F811
    logger = seam._make_logger(api_checker.module())
    assert isinstance(logger, real.ILogger)  # what Builder(logger) and Runtime(logger) accept
    api_checker.check_call(real.Builder, "__init__", (logger,), {})
    severity = real.ILogger.Severity
    with caplog.at_level(logging.DEBUG, logger="edgescribe.engines.tensorrt.seam"):
        for member in (severity.INTERNAL_ERROR, severity.ERROR, severity.WARNING, severity.INFO, severity.VERBOSE):
            logger.log(member, member.name.lower())  # positionally, as TensorRT calls it
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, "TensorRT: internal_error"),
        (logging.ERROR, "TensorRT: error"),
        (logging.WARNING, "TensorRT: warning"),
        (logging.DEBUG, "TensorRT: info"),
        (logging.DEBUG, "TensorRT: verbose"),
    ]


def test_the_real_version_passes_the_check_quietly_and_others_do_not(real, caplog):
    with caplog.at_level(logging.WARNING, logger="edgescribe.engines.tensorrt.seam"):
        seam.check_version(real.__version__)
        assert caplog.records == []
        seam.check_version("10.7.0")
    assert [r.getMessage() for r in caplog.records] == ["TensorRT 10.7.0: edgescribe was written against 10.3"]
    with pytest.raises(BackendUnavailableError, match="TensorRT 8.6.1 is not supported"):
        seam.check_version("8.6.1")


def test_load_checks_the_real_version_then_needs_pycuda(api_checker, monkeypatch):  # noqa: F811
    monkeypatch.setitem(sys.modules, "tensorrt", api_checker.module())
    monkeypatch.setitem(sys.modules, "pycuda", None)  # not installed: what CI and laptops have
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(BackendUnavailableError, match=r"^pycuda is not installed .*pip install 'edgescribe\[jetson\]'"):
        seam.load()
