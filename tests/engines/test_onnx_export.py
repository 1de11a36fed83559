"""Exported graphs: the documented contract, and numerics against CTranslate2 on real speech."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from faster_whisper.feature_extractor import FeatureExtractor

from edgescribe.engines.audio import load_audio
from edgescribe.engines.errors import ModelPackageError
from edgescribe.engines.package import ModelPackage
from edgescribe.engines.package_writer import write_package
from edgescribe.engines.runtime import KV_TENSORS, layer_input
from edgescribe.engines.sources import load_weights, resolve_builtin
from tests.fixtures.models import base_package, tiny_en_package  # noqa: F401  (fixtures)


def _session(path: Path, optimized_to: Path | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if optimized_to is not None:
        options.optimized_model_filepath = str(optimized_to)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _mel(path: Path, n_mels: int = 80) -> np.ndarray:
    mel = FeatureExtractor(feature_size=n_mels)(load_audio(path), padding=480000)[:, :3000]
    return mel[None].astype(np.float32)


class Greedy:
    """The smallest decoding loop over the graphs: argmax, no suppression, stop at eot."""

    def __init__(self, package, int8: bool = False):
        self.dims = package.dims
        encoder, decoder = package.graph_paths(prefer_int8=int8)
        self.encoder, self.decoder = _session(encoder), _session(decoder)

    def encode(self, mel):
        return self.encoder.run(None, {"mel": mel})

    def step(self, tokens, offsets, cache, cross):
        feed = {"tokens": np.asarray(tokens, np.int64), "offset": np.asarray(offsets, np.int64)}
        feed |= _kv_feed(dict(zip(KV_TENSORS, (*cache, *cross))))
        logits, new_k, new_v = self.decoder.run(None, feed)
        n = new_k.shape[2]
        for b, offset in enumerate(offsets):
            cache[0][:, b, offset:offset + n] = new_k[:, b]
            cache[1][:, b, offset:offset + n] = new_v[:, b]
        return logits

    def new_cache(self, batch: int):
        shape = (self.dims.n_text_layer, batch, self.dims.n_text_ctx, self.dims.n_text_state)
        return np.zeros(shape, np.float32), np.zeros(shape, np.float32)

    def decode(self, cross, prompt: list[int], eot: int, limit: int = 100, forced: list[int] | None = None):
        cache = self.new_cache(1)
        tokens, offset, out, chosen = [prompt], 0, [], []
        for _ in range(limit):
            logits = self.step(tokens, [offset], cache, cross)
            offset += len(tokens[0])
            best = int(logits[0].argmax())
            chosen.append(best)
            if forced is not None:  # teacher forcing: follow the reference, record our choice
                if len(out) == len(forced):
                    break
                best = forced[len(out)]
            if best == eot:
                break
            out.append(best)
            tokens = [[best]]
        return out, chosen


def _kv_feed(buffers: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The decoder's per-layer K/V inputs: views of each [layers, ...] buffer, as the runners feed them."""
    return {layer_input(name, layer): array[layer] for name, array in buffers.items() for layer in range(len(array))}


@pytest.fixture(scope="module")
def ct2_tiny():
    import ctranslate2

    return ctranslate2.models.Whisper(str(resolve_builtin("tiny.en")), compute_type="float32", intra_threads=1)


def _ct2_greedy(model, mel, prompt):
    import ctranslate2

    result = model.generate(ctranslate2.StorageView.from_array(mel), [prompt], beam_size=1,
                            suppress_blank=False, suppress_tokens=[], max_length=100)
    return result[0].sequences_ids[0]


# -- the contract ------------------------------------------------------------------------------


def _signature(values):
    return {v.name: (v.type.tensor_type.elem_type,
                     [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in values}


F32, I64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
# tiny.en: 4 layers, 6 heads of 64; windows vary in length. Cross K/V come split into heads.
CROSS, CACHE = [4, "batch", 6, "audio_ctx", 64], [4, "batch", 448, 384]


def _decoder_inputs_signature() -> dict:
    signature = {"tokens": (I64, ["batch", "n_tokens"]), "offset": (I64, ["batch"])}
    for name in KV_TENSORS:
        shape = CACHE if name.startswith("self") else CROSS
        signature |= {layer_input(name, layer): (F32, shape[1:]) for layer in range(4)}
    return signature


def test_graph_contract(tiny_en_package):
    dims = tiny_en_package.dims
    encoder = onnx.load(str(tiny_en_package.file("encoder.onnx")), load_external_data=False)
    decoder = onnx.load(str(tiny_en_package.file("decoder.onnx")), load_external_data=False)

    assert _signature(encoder.graph.input) == {"mel": (F32, ["batch", 80, "frames"])}
    assert _signature(encoder.graph.output) == {"cross_k": (F32, CROSS), "cross_v": (F32, CROSS)}
    assert _signature(decoder.graph.input) == _decoder_inputs_signature()
    int8_decoder = onnx.load(str(tiny_en_package.file("decoder.int8.onnx")), load_external_data=False)
    assert _signature(int8_decoder.graph.input) == _decoder_inputs_signature()
    assert _signature(decoder.graph.output) == {
        "logits": (F32, ["batch", dims.n_vocab]),
        "new_k": (F32, [4, "batch", "n_tokens", 384]), "new_v": (F32, [4, "batch", "n_tokens", 384])}
    for model in (encoder, decoder):
        assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    # The tied embedding is stored once, and layer norms are single nodes.
    vocab_sized = [t.name for t in decoder.graph.initializer if dims.n_vocab in t.dims]
    assert vocab_sized == ["decoder.token_embedding.weight"]
    assert sum(n.op_type == "LayerNormalization" for n in decoder.graph.node) == 3 * dims.n_text_layer + 1


def test_onnx_runtime_fuses_gelu_and_keeps_layer_norm(tiny_en_package, tmp_path):
    for graph in ("encoder.onnx", "decoder.onnx"):
        _session(tiny_en_package.file(graph), optimized_to=tmp_path / graph)
        ops = {node.op_type for node in onnx.load(str(tmp_path / graph), load_external_data=False).graph.node}
        assert "Erf" not in ops and ops & {"Gelu", "BiasGelu", "FastGelu"}, (graph, sorted(ops))
        assert "LayerNormalization" in ops or "SkipLayerNormalization" in ops


# -- numerics against CTranslate2 ---------------------------------------------------------------


def test_cross_attention_keys_match_ctranslate2_encoder(tiny_en_package, ct2_tiny, corpus):
    import ctranslate2

    weights = load_weights("tiny.en")
    mel = _mel(corpus / "en" / "arctic_aew_a0001.wav")
    cross_k, cross_v = Greedy(tiny_en_package).encode(mel)
    encoded = np.array(ct2_tiny.encode(ctranslate2.StorageView.from_array(mel)))  # [1, 1500, 384]
    d_head = 384 // 6
    for layer in (0, 3):
        prefix = f"decoder.blocks.{layer}.cross_attn"
        # Keys are stored pre-scaled by d_head**-0.25 (Whisper scales queries and keys alike).
        keys = encoded[0] @ weights[f"{prefix}.key.weight"].T * d_head ** -0.25
        values = encoded[0] @ weights[f"{prefix}.value.weight"].T + weights[f"{prefix}.value.bias"]
        heads = lambda rows: rows.reshape(len(rows), 6, d_head).transpose(1, 0, 2)  # noqa: E731  [H, T, d_head]
        np.testing.assert_allclose(cross_k[layer, 0], heads(keys), atol=2e-3, rtol=1e-3)
        np.testing.assert_allclose(cross_v[layer, 0], heads(values), atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("clip", ["arctic_aew_a0001.wav", "jfk_inaugural_1961.wav"])
def test_greedy_tokens_match_ctranslate2_tiny_en(tiny_en_package, ct2_tiny, corpus, clip):
    special = tiny_en_package.manifest.special_tokens
    mel = _mel(corpus / "en" / clip)
    prompt = [special.sot, special.no_timestamps]
    greedy = Greedy(tiny_en_package)
    tokens, _ = greedy.decode(greedy.encode(mel), prompt, special.eot)
    expected = _ct2_greedy(ct2_tiny, mel, prompt)
    assert len(expected) > 5 and tokens == expected


def test_greedy_tokens_match_ctranslate2_base_chinese(base_package, corpus):
    import ctranslate2

    manifest = base_package.manifest
    special = manifest.special_tokens
    clip = sorted((corpus / "zh").glob("*.wav"))[0]
    mel = _mel(clip)
    prompt = [special.sot, manifest.language_tokens["zh"], special.transcribe, special.no_timestamps]
    greedy = Greedy(base_package)
    tokens, _ = greedy.decode(greedy.encode(mel), prompt, special.eot)
    model = ctranslate2.models.Whisper(str(resolve_builtin("base")), compute_type="float32", intra_threads=1)
    expected = _ct2_greedy(model, mel, prompt)
    assert len(expected) > 3 and tokens == expected


GRAPHS = pytest.mark.parametrize("int8", [False, True], ids=["float32", "int8"])


def assert_same_logits(actual: np.ndarray, expected: np.ndarray, int8: bool) -> None:
    """float32: equal to rounding. int8 graphs quantise activations with one scale per call, so
    a batch, or a prompt fed at once, shifts logits by up to ~2: same best token, same shape."""
    if not int8:
        np.testing.assert_allclose(actual, expected, atol=1e-3, rtol=1e-4)
    assert actual.argmax() == expected.argmax()
    assert np.corrcoef(actual.ravel(), expected.ravel())[0, 1] > 0.99


@GRAPHS
def test_batch_with_different_offsets_matches_single_runs(tiny_en_package, corpus, int8):
    """Two sequences at different positions in one batch: masks and positions are per row."""
    greedy = Greedy(tiny_en_package, int8=int8)
    special = tiny_en_package.manifest.special_tokens
    crosses = [greedy.encode(_mel(corpus / "en" / clip)) for clip in ("arctic_aew_a0001.wav", "lj_LJ001-0002.wav")]
    prompts = [[special.sot, special.no_timestamps], [special.sot_prev, 464, 1110, special.sot, special.no_timestamps]]
    singles, caches = [], []
    for cross, prompt in zip(crosses, prompts):
        cache = greedy.new_cache(1)
        first = greedy.step([prompt], [0], cache, cross)
        token = int(first[0].argmax())
        singles.append(greedy.step([[token]], [len(prompt)], cache, cross)[0])
        caches.append((cache, token))
    # Replay both in one batch: fill the batched cache from prompts, then one step at offsets 2 and 5.
    batch_cache = greedy.new_cache(2)
    batch_cross = tuple(np.concatenate([c[i] for c in crosses], axis=1) for i in range(2))
    for b, prompt in enumerate(prompts):
        single_cache = greedy.new_cache(1)
        greedy.step([prompt], [0], single_cache, crosses[b])
        batch_cache[0][:, b], batch_cache[1][:, b] = single_cache[0][:, 0], single_cache[1][:, 0]
    logits = greedy.step([[caches[0][1]], [caches[1][1]]], [len(prompts[0]), len(prompts[1])], batch_cache, batch_cross)
    for b in range(2):
        assert_same_logits(logits[b], singles[b], int8)


@GRAPHS
def test_prompt_at_once_equals_token_by_token(tiny_en_package, corpus, int8):
    greedy = Greedy(tiny_en_package, int8=int8)
    special = tiny_en_package.manifest.special_tokens
    cross = greedy.encode(_mel(corpus / "en" / "arctic_aew_a0001.wav"))
    prompt = [special.sot_prev, 464, 1110, 373, special.sot, special.no_timestamps]
    whole_cache = greedy.new_cache(1)
    whole = greedy.step([prompt], [0], whole_cache, cross)
    step_cache = greedy.new_cache(1)
    for position, token in enumerate(prompt):
        stepped = greedy.step([[token]], [position], step_cache, cross)
    assert_same_logits(whole[0], stepped[0], int8)
    n = len(prompt)
    np.testing.assert_allclose(whole_cache[0][:, :, :n], step_cache[0][:, :, :n], atol=0.5 if int8 else 1e-4)
    assert not whole_cache[0][:, :, n:].any()  # the caller's cache beyond the tokens stays untouched


def test_int8_graphs_agree_with_float(tiny_en_package, corpus):
    """Teacher-forced on the float transcript, int8 picks the same token at almost every step."""
    special = tiny_en_package.manifest.special_tokens
    prompt = [special.sot, special.no_timestamps]
    float_model, int8_model = Greedy(tiny_en_package), Greedy(tiny_en_package, int8=True)
    assert tiny_en_package.manifest.precision["decoder.int8.onnx"] == "int8"
    agree = total = 0
    for clip in ("arctic_aew_a0001.wav", "jfk_inaugural_1961.wav", "lj_LJ001-0002.wav"):
        mel = _mel(corpus / "en" / clip)
        reference, _ = float_model.decode(float_model.encode(mel), prompt, special.eot)
        _, chosen = int8_model.decode(int8_model.encode(mel), prompt, special.eot, forced=reference)
        expected = reference + [special.eot]
        agree += sum(a == b for a, b in zip(chosen, expected))
        total += len(expected)
    assert agree / total >= 0.9, f"int8 agreed on {agree}/{total} tokens"


def test_int8_encoder_rounds_each_window_of_a_batch_on_its_own(tiny_en_package, corpus):
    """Per-frame scales: a window's cross K/V does not depend on what else is in the batch.

    With one scale per tensor the louder window set the rounding of both (they differed by
    up to ~0.8), so a final's text could depend on which other streams were being encoded."""
    encoder = Greedy(tiny_en_package, int8=True)
    quiet, loud = (_mel(corpus / "en" / clip)[..., :1000] for clip in ("arctic_aew_a0001.wav", "jfk_inaugural_1961.wav"))
    alone = encoder.encode(quiet)
    batched = encoder.encode(np.concatenate([quiet, loud]))
    for single, batch in zip(alone, batched):
        np.testing.assert_array_equal(single[:, 0], batch[:, 0])
    float_k = Greedy(tiny_en_package).encode(quiet)[0]
    assert np.abs(alone[0] - float_k).max() < 0.1 * np.abs(float_k).max()


def test_manifest_records_the_decoder_layout_and_older_layouts_are_refused(tmp_path):
    """The manifest names the one decoder layout; a package of an earlier layout (cross K/V not
    split into heads, stacked inputs, or from before the field existed) fails to load with one
    line naming the file and the fix."""
    written = write_package(load_weights("tiny.en"), tmp_path / "tiny.en")
    manifest_path = tmp_path / "tiny.en" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["decoder_inputs"] == "per_layer_cross_heads"
    assert ModelPackage.load(tmp_path / "tiny.en").manifest == written.manifest
    for layout in ("per_layer", "stacked", None):
        if layout is None:
            del manifest["decoder_inputs"]
        else:
            manifest["decoder_inputs"] = layout
        manifest_path.write_text(json.dumps(manifest))
        with pytest.raises(ModelPackageError) as error:
            ModelPackage.load(tmp_path / "tiny.en", verify=False)
        found = f"'{layout}'" if layout else "missing (stacked)"
        assert str(error.value) == (f"model package {tmp_path / 'tiny.en'}: manifest.json has decoder_inputs {found}, "
                                    "this edgescribe reads only 'per_layer_cross_heads' graphs; re-run edgescribe export")
