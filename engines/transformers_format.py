"""Read a Hugging Face Whisper directory (``config.json`` + ``model.safetensors``) with numpy.

safetensors layout: u64 little-endian header length, a JSON header mapping each tensor name to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the data section),
then the raw little-endian data.
"""

from __future__ import annotations

import json
import logging
import re
import struct
from pathlib import Path

import numpy as np

from edgescribe.engines.errors import ModelSourceError
from edgescribe.engines.files import file_sha256
from edgescribe.engines.weights import ModelDims, WeightsSource, WhisperWeights, bfloat16_to_float32, read_tokenizer_json

log = logging.getLogger(__name__)

SAFETENSORS = "model.safetensors"
SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": "bfloat16",
                      "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8}

# openai-whisper name pieces <-> Hugging Face pieces, inside one encoder/decoder layer.
LAYER_PARTS = [
    ("attn.query", "self_attn.q_proj"), ("attn.key", "self_attn.k_proj"), ("attn.value", "self_attn.v_proj"),
    ("attn.out", "self_attn.out_proj"), ("attn_ln", "self_attn_layer_norm"),
    ("cross_attn.query", "encoder_attn.q_proj"), ("cross_attn.key", "encoder_attn.k_proj"),
    ("cross_attn.value", "encoder_attn.v_proj"), ("cross_attn.out", "encoder_attn.out_proj"),
    ("cross_attn_ln", "encoder_attn_layer_norm"),
    ("mlp.0", "fc1"), ("mlp.2", "fc2"), ("mlp_ln", "final_layer_norm"),
]
TOP_LEVEL = {
    "encoder.conv1": "model.encoder.conv1", "encoder.conv2": "model.encoder.conv2",
    "encoder.ln_post": "model.encoder.layer_norm", "decoder.ln": "model.decoder.layer_norm",
    "decoder.token_embedding": "model.decoder.embed_tokens",
}
POSITIONAL = {"encoder.positional_embedding": "model.encoder.embed_positions.weight",
               "decoder.positional_embedding": "model.decoder.embed_positions.weight"}
_HF_LAYER = re.compile(r"^model\.(encoder|decoder)\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def hf_to_openai(name: str) -> str | None:
    """The openai-whisper name of a HF tensor, or None for tensors Whisper does not need."""
    for openai_name, hf_name in POSITIONAL.items():
        if name == hf_name:
            return openai_name
    match = _HF_LAYER.match(name)
    if match:
        stack, index, part, kind = match.groups()
        openai_part = {hf: oa for oa, hf in LAYER_PARTS}.get(part)
        return f"{stack}.blocks.{index}.{openai_part}.{kind}" if openai_part else None
    module, _, kind = name.rpartition(".")
    for openai_module, hf_module in TOP_LEVEL.items():
        if module == hf_module:
            return f"{openai_module}.{kind}"
    return None  # e.g. proj_out.weight, tied to the token embedding


# -- safetensors -------------------------------------------------------------------------------


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ModelSourceError(f"{path}: cannot read ({error.strerror or error})") from None
    if len(data) < 8:
        raise ModelSourceError(f"{path}: truncated ({len(data)} bytes); not a safetensors file")
    (header_size,) = struct.unpack("<Q", data[:8])
    if 8 + header_size > len(data):
        raise ModelSourceError(f"{path}: truncated header (needs {header_size} bytes); re-download the model")
    try:
        header = json.loads(data[8:8 + header_size])
    except ValueError as error:
        raise ModelSourceError(f"{path}: header is not valid JSON ({error}); not a safetensors file?") from None
    body = memoryview(data)[8 + header_size:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise ModelSourceError(f"{path}: tensor '{name}' has unsupported dtype {info.get('dtype')!r}")
        begin, end = info["data_offsets"]
        if end > len(body):
            raise ModelSourceError(f"{path}: truncated at tensor '{name}'; re-download the model")
        raw = body[begin:end]
        array = bfloat16_to_float32(raw) if dtype == "bfloat16" else np.frombuffer(raw, dtype=dtype)
        tensors[name] = array.reshape(info["shape"])
    return tensors


# -- Whisper directories -----------------------------------------------------------------------


def read_transformers(directory: Path, name: str | None = None) -> WhisperWeights:
    directory = Path(directory)
    config = _read_json(directory / "config.json")
    raw = read_safetensors(directory / SAFETENSORS)
    tensors = {}
    for hf_name, array in raw.items():
        openai_name = hf_to_openai(hf_name)
        if openai_name and not openai_name.endswith("key.bias"):
            tensors[openai_name] = np.ascontiguousarray(array, dtype=np.float32)
    try:
        dims = ModelDims(
            n_mels=int(config["num_mel_bins"]), n_audio_ctx=int(config["max_source_positions"]),
            n_audio_state=int(config["d_model"]), n_audio_head=int(config["encoder_attention_heads"]),
            n_audio_layer=int(config["encoder_layers"]), n_vocab=int(config["vocab_size"]),
            n_text_ctx=int(config["max_target_positions"]), n_text_state=int(config["d_model"]),
            n_text_head=int(config["decoder_attention_heads"]), n_text_layer=int(config["decoder_layers"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ModelSourceError(f"{directory / 'config.json'}: missing or bad Whisper field {error}") from None
    generation = _read_json(directory / "generation_config.json", required=False)
    alignment_heads = generation.get("alignment_heads") or config.get("alignment_heads") or []
    lang_ids = sorted(int(v) for v in (generation.get("lang_to_id") or {}).values())
    return WhisperWeights(
        dims=dims,
        tensors=tensors,
        tokenizer_json=read_tokenizer_json(directory),
        source=WeightsSource(name=name or str(directory), path=str(directory), format="transformers",
                             sha256=file_sha256(directory / SAFETENSORS)),
        suppress_ids=[int(v) for v in generation.get("suppress_tokens") or config.get("suppress_tokens") or []],
        suppress_ids_begin=[int(v) for v in generation.get("begin_suppress_tokens")
                            or config.get("begin_suppress_tokens") or []],
        lang_ids=lang_ids,
        alignment_heads=[(int(a), int(b)) for a, b in alignment_heads],
    )


def _read_json(path: Path, required: bool = True) -> dict:
    if not path.exists() and not required:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelSourceError(f"{path}: missing (a Hugging Face Whisper dir needs config.json)") from None
    except (OSError, ValueError) as error:
        raise ModelSourceError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ModelSourceError(f"{path}: expected a JSON object")
    return data
