"""Read a CTranslate2 Whisper model directory (``model.bin`` + ``config.json`` + ``tokenizer.json``).

``model.bin`` layout, as written by ctranslate2/specs/model_spec.py (little endian)::

    u32 binary_version
    (version >= 2) string spec_name, u32 spec_revision
    u32 variable_count
    per variable: string name, u8 rank, u32 dims[rank],
        (version >= 4) u8 dtype_id, u32 byte_count      dtype ids: f32 i8 i16 i32 f16 bf16
        (version <  4) u8 item_size, u32 element_count  (f32 / i16 / i8 by item size)
        raw bytes
    (version >= 3) u32 alias_count, per alias: string alias, string target
    string = u16 length (including the NUL), bytes, NUL

CTranslate2 fuses projections (self-attention q/k/v into one ``linear_0`` [3d, d], cross-attention
k/v into ``linear_1`` [2d, d]); this reader splits them back into openai-whisper names.
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import numpy as np

from edgescribe.engines.errors import ModelSourceError
from edgescribe.engines.files import file_sha256
from edgescribe.engines.weights import ModelDims, WeightsSource, WhisperWeights, bfloat16_to_float32, read_tokenizer_json

log = logging.getLogger(__name__)

SUPPORTED_BINARY_VERSIONS = range(1, 7)
DTYPES_BY_ID = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
DTYPES_BY_ITEM_SIZE = {4: np.float32, 2: np.int16, 1: np.int8}


class _Truncated(Exception):
    pass


class _Reader:
    """Sequential little-endian reads over the file bytes; raises _Truncated past the end."""

    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.pos = 0

    def take(self, size: int) -> memoryview:
        if self.pos + size > len(self.data):
            raise _Truncated
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))

    def u8(self) -> int:
        return self.unpack("B")[0]

    def u32(self) -> int:
        return self.unpack("I")[0]

    def string(self) -> str:
        length = self.unpack("H")[0]
        raw = bytes(self.take(length))
        return raw.rstrip(b"\0").decode("utf-8", errors="replace")


def read_model_bin(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """The spec name and every variable of a ``model.bin``, aliases resolved to the same array."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ModelSourceError(f"{path}: cannot read ({error.strerror or error})") from None
    reader = _Reader(data)
    variables: dict[str, np.ndarray] = {}
    current = "header"
    try:
        version = reader.u32()
        if version not in SUPPORTED_BINARY_VERSIONS:
            raise ModelSourceError(f"{path}: unsupported CTranslate2 binary version {version} "
                                   f"(this reader knows 1-{SUPPORTED_BINARY_VERSIONS[-1]}); not a CTranslate2 model.bin?")
        spec_name = ""
        if version >= 2:
            spec_name = reader.string()
            reader.u32()  # spec revision: the Whisper layout has not changed across revisions 1-3
        count = reader.u32()
        for _ in range(count):
            current = reader.string() or current
            rank = reader.u8()
            shape = reader.unpack(f"{rank}I") if rank else ()
            if version >= 4:
                dtype = DTYPES_BY_ID.get(reader.u8())
                byte_count = reader.u32()
            else:
                item_size = reader.u8()
                dtype = DTYPES_BY_ITEM_SIZE.get(item_size)
                byte_count = reader.u32() * item_size
            if dtype is None:
                raise ModelSourceError(f"{path}: variable '{current}' has an unknown data type; corrupt model.bin?")
            raw = reader.take(byte_count)
            variables[current] = _to_array(raw, dtype, shape, path, current)
        if version >= 3:
            current = "alias table"
            for _ in range(reader.u32()):
                alias, target = reader.string(), reader.string()
                if target not in variables:
                    raise ModelSourceError(f"{path}: alias '{alias}' points to missing variable '{target}'")
                variables[alias] = variables[target]
    except _Truncated:
        raise ModelSourceError(f"{path}: truncated at variable '{current}' (file is {len(data)} bytes); "
                               "re-download or re-convert the model") from None
    return spec_name, variables


def _to_array(raw: memoryview, dtype, shape: tuple[int, ...], path: Path, name: str) -> np.ndarray:
    array = bfloat16_to_float32(raw) if dtype == "bfloat16" else np.frombuffer(raw, dtype=dtype)
    expected = int(np.prod(shape)) if shape else 1
    if array.size != expected:
        raise ModelSourceError(f"{path}: variable '{name}' holds {array.size} values but its shape "
                               f"{list(shape)} needs {expected}; corrupt model.bin?")
    return array.reshape(shape)


def _dequantized(variables: dict[str, np.ndarray], name: str) -> np.ndarray:
    """A weight as float32: int8/int16 weights are stored as round(w * scale) with a ``_scale``."""
    value = variables[name]
    if value.dtype in (np.int8, np.int16):
        scale = variables.get(f"{name}_scale")
        if scale is None:
            raise ModelSourceError(f"quantized variable '{name}' has no '{name}_scale'")
        scale = np.asarray(scale, dtype=np.float32)
        # int8 scales are per output row, int16 uses one global scale.
        scale = scale.reshape((-1,) + (1,) * (value.ndim - 1)) if scale.size > 1 else scale
        return (value.astype(np.float32) / scale).astype(np.float32)
    return np.ascontiguousarray(value, dtype=np.float32)


def _scalar(variables: dict[str, np.ndarray], name: str, path: Path) -> int:
    if name not in variables:
        raise ModelSourceError(f"{path}: variable '{name}' not found; not a CTranslate2 Whisper model?")
    return int(np.asarray(variables[name]).reshape(-1)[0])


def _layer_count(variables: dict[str, np.ndarray], prefix: str) -> int:
    count = 0
    while f"{prefix}/layer_{count}/ffn/linear_0/weight" in variables:
        count += 1
    return count


def convert_variables(variables: dict[str, np.ndarray], path: Path) -> tuple[ModelDims, dict[str, np.ndarray]]:
    """CTranslate2 ``WhisperSpec`` variables -> (dims, openai-whisper float32 tensors)."""

    def get(name: str) -> np.ndarray:
        if name not in variables:
            raise ModelSourceError(f"{path}: variable '{name}' not found; not a CTranslate2 Whisper model?")
        return _dequantized(variables, name)

    out: dict[str, np.ndarray] = {}

    def norm(src: str, dst: str) -> None:
        out[f"{dst}.weight"] = get(f"{src}/gamma")
        out[f"{dst}.bias"] = get(f"{src}/beta")

    def linear(src: str, dst: str) -> None:
        out[f"{dst}.weight"] = get(f"{src}/weight")
        out[f"{dst}.bias"] = get(f"{src}/bias")

    def split(src: str, dsts: list[str]) -> None:
        weights = np.split(get(f"{src}/weight"), len(dsts), axis=0)
        biases = np.split(get(f"{src}/bias"), len(dsts), axis=0)
        for dst, weight, bias in zip(dsts, weights, biases):
            out[f"{dst}.weight"] = np.ascontiguousarray(weight)
            if not dst.endswith(".key"):  # keys have no bias in Whisper (see WhisperWeights)
                out[f"{dst}.bias"] = np.ascontiguousarray(bias)

    def block(src: str, dst: str, cross: bool) -> None:
        norm(f"{src}/self_attention/layer_norm", f"{dst}.attn_ln")
        split(f"{src}/self_attention/linear_0", [f"{dst}.attn.query", f"{dst}.attn.key", f"{dst}.attn.value"])
        linear(f"{src}/self_attention/linear_1", f"{dst}.attn.out")
        if cross:
            norm(f"{src}/attention/layer_norm", f"{dst}.cross_attn_ln")
            linear(f"{src}/attention/linear_0", f"{dst}.cross_attn.query")
            split(f"{src}/attention/linear_1", [f"{dst}.cross_attn.key", f"{dst}.cross_attn.value"])
            linear(f"{src}/attention/linear_2", f"{dst}.cross_attn.out")
        norm(f"{src}/ffn/layer_norm", f"{dst}.mlp_ln")
        linear(f"{src}/ffn/linear_0", f"{dst}.mlp.0")
        linear(f"{src}/ffn/linear_1", f"{dst}.mlp.2")

    linear("encoder/conv1", "encoder.conv1")
    linear("encoder/conv2", "encoder.conv2")
    out["encoder.positional_embedding"] = get("encoder/position_encodings/encodings")
    n_audio_layer = _layer_count(variables, "encoder")
    n_text_layer = _layer_count(variables, "decoder")
    for i in range(n_audio_layer):
        block(f"encoder/layer_{i}", f"encoder.blocks.{i}", cross=False)
    norm("encoder/layer_norm", "encoder.ln_post")
    out["decoder.token_embedding.weight"] = get("decoder/embeddings/weight")
    out["decoder.positional_embedding"] = get("decoder/position_encodings/encodings")
    for i in range(n_text_layer):
        block(f"decoder/layer_{i}", f"decoder.blocks.{i}", cross=True)
    norm("decoder/layer_norm", "decoder.ln")

    projection = variables.get("decoder/projection/weight")
    if projection is not None and projection is not variables["decoder/embeddings/weight"]:
        # The exporter ties the logits projection to the token embedding, as Whisper does.
        if not np.array_equal(_dequantized(variables, "decoder/projection/weight"), out["decoder.token_embedding.weight"]):
            raise ModelSourceError(f"{path}: output projection differs from the token embedding; "
                                   "only Whisper's tied projection is supported")

    conv1 = out["encoder.conv1.weight"]
    embedding = out["decoder.token_embedding.weight"]
    dims = ModelDims(
        n_mels=conv1.shape[1],
        n_audio_ctx=out["encoder.positional_embedding"].shape[0],
        n_audio_state=conv1.shape[0],
        n_audio_head=_scalar(variables, "encoder/num_heads", path),
        n_audio_layer=n_audio_layer,
        n_vocab=embedding.shape[0],
        n_text_ctx=out["decoder.positional_embedding"].shape[0],
        n_text_state=embedding.shape[1],
        n_text_head=_scalar(variables, "decoder/num_heads", path),
        n_text_layer=n_text_layer,
    )
    return dims, out


def read_ctranslate2(directory: Path, name: str | None = None) -> WhisperWeights:
    directory = Path(directory)
    model_bin = directory / "model.bin"
    spec_name, variables = read_model_bin(model_bin)
    if spec_name and spec_name != "WhisperSpec":
        raise ModelSourceError(f"{model_bin}: is a CTranslate2 '{spec_name}' model, not Whisper (WhisperSpec)")
    dims, tensors = convert_variables(variables, model_bin)
    config = _read_config(directory / "config.json")
    alignment_heads = [tuple(int(v) for v in pair) for pair in config.get("alignment_heads") or []]
    if not alignment_heads:
        # CTranslate2's converter default: every head of the second half of the decoder layers.
        alignment_heads = [(layer, head) for layer in range(dims.n_text_layer // 2, dims.n_text_layer)
                           for head in range(dims.n_text_head)]
    return WhisperWeights(
        dims=dims,
        tensors=tensors,
        tokenizer_json=read_tokenizer_json(directory),
        source=WeightsSource(name=name or str(directory), path=str(directory), format="ctranslate2",
                             sha256=file_sha256(model_bin)),
        suppress_ids=[int(v) for v in config.get("suppress_ids") or []],
        suppress_ids_begin=[int(v) for v in config.get("suppress_ids_begin") or []],
        lang_ids=[int(v) for v in config.get("lang_ids") or []],
        alignment_heads=alignment_heads,
    )


def _read_config(path: Path) -> dict:
    if not path.exists():
        log.warning("%s not found; using default suppress tokens and alignment heads", path)
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelSourceError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ModelSourceError(f"{path}: expected a JSON object")
    return config
