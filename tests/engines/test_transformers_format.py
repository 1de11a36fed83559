"""Hugging Face Whisper directories: name mapping, safetensors round trip of the real tiny.en
weights, and identical graph outputs whichever format the weights came from."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from faster_whisper.feature_extractor import FeatureExtractor

from edgescribe.engines import onnx_export
from edgescribe.engines.audio import load_audio
from edgescribe.engines.errors import ModelSourceError
from edgescribe.engines.sources import load_weights
from edgescribe.engines.transformers_format import hf_to_openai, read_safetensors
from edgescribe.engines.weights import expected_tensor_names
from tests.fixtures.hf_whisper import openai_to_hf, write_transformers


@pytest.fixture(scope="module")
def tiny_weights():
    return load_weights("tiny.en")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, tiny_weights):
    directory = tmp_path_factory.mktemp("hf") / "whisper-tiny.en"
    write_transformers(tiny_weights, directory)
    return directory


def test_name_mapping_round_trips(tiny_weights):
    assert openai_to_hf("decoder.blocks.3.cross_attn.key.weight") == "model.decoder.layers.3.encoder_attn.k_proj.weight"
    assert openai_to_hf("encoder.blocks.0.mlp.2.bias") == "model.encoder.layers.0.fc2.bias"
    assert openai_to_hf("decoder.token_embedding.weight") == "model.decoder.embed_tokens.weight"
    assert openai_to_hf("encoder.positional_embedding") == "model.encoder.embed_positions.weight"
    assert hf_to_openai("proj_out.weight") is None
    for name in expected_tensor_names(tiny_weights.dims):
        assert hf_to_openai(openai_to_hf(name)) == name


def test_written_directory_is_a_hf_whisper_dir(hf_dir):
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["model_type"] == "whisper" and config["d_model"] == 384 and config["vocab_size"] == 51864
    tensors = read_safetensors(hf_dir / "model.safetensors")
    assert tensors["model.encoder.layers.2.self_attn.q_proj.weight"].shape == (384, 384)
    assert tensors["model.decoder.layers.0.fc1.weight"].shape == (1536, 384)
    # safetensors: u64 header length, JSON header, data aligned to 8 bytes
    raw = (hf_dir / "model.safetensors").read_bytes()
    header_length = int.from_bytes(raw[:8], "little")
    assert header_length % 8 == 0 and json.loads(raw[8:8 + header_length])


def test_round_trip_keeps_every_tensor(hf_dir, tiny_weights):
    loaded = load_weights(str(hf_dir))
    assert loaded.source.format == "transformers"
    assert loaded.dims == tiny_weights.dims
    assert set(loaded.tensors) == set(tiny_weights.tensors)
    for name, array in tiny_weights.tensors.items():
        np.testing.assert_array_equal(loaded[name], array, err_msg=name)
    assert loaded.tokenizer_json == tiny_weights.tokenizer_json
    assert loaded.alignment_heads == tiny_weights.alignment_heads
    assert loaded.suppress_ids == tiny_weights.suppress_ids


def test_graphs_from_either_format_agree(hf_dir, tiny_weights, corpus):
    audio = load_audio(corpus / "en" / "arctic_aew_a0001.wav")
    mel = FeatureExtractor(feature_size=80)(audio, padding=480000)[None, :, :3000].astype(np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    outputs = []
    for weights in (tiny_weights, load_weights(str(hf_dir))):
        session = ort.InferenceSession(onnx_export.build_encoder(weights).SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {"mel": mel}))
    for ctranslate2_output, transformers_output in zip(*outputs):
        np.testing.assert_array_equal(ctranslate2_output, transformers_output)


def test_truncated_safetensors(tmp_path, hf_dir):
    (tmp_path / "config.json").write_bytes((hf_dir / "config.json").read_bytes())
    (tmp_path / "tokenizer.json").write_bytes((hf_dir / "tokenizer.json").read_bytes())
    (tmp_path / "model.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes()[:5_000_000])
    with pytest.raises(ModelSourceError, match=r"model.safetensors: truncated at tensor 'model\.\S+'; re-download"):
        load_weights(str(tmp_path))


def test_config_without_whisper_fields(tmp_path, hf_dir):
    (tmp_path / "model.safetensors").symlink_to(hf_dir / "model.safetensors")
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelSourceError, match=r"config.json: missing or bad Whisper field 'num_mel_bins'"):
        load_weights(str(tmp_path))
