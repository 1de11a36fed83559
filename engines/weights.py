"""Whisper weights in one in-memory form, whatever format they were shipped in.

Every reader (CTranslate2, Hugging Face) produces a :class:`WhisperWeights` keyed by the
openai-whisper ``state_dict`` names, so the ONNX exporter has exactly one input format.
The readers import this module; ``sources.load_weights`` picks the reader for a source.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from edgescribe.engines.errors import ModelSourceError


@dataclass(frozen=True)
class ModelDims:
    """Whisper's hyper-parameters, named as in openai-whisper."""

    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int

    @classmethod
    def from_dict(cls, values: dict) -> ModelDims:
        return cls(**{f.name: int(values[f.name]) for f in fields(cls)})


@dataclass(frozen=True)
class WeightsSource:
    """Where a set of weights came from; recorded in the model package manifest."""

    name: str  # built-in name or the directory given by the user
    path: str  # the directory actually read
    format: str  # "ctranslate2" or "transformers"
    sha256: str  # of the main weights file (model.bin / model.safetensors)


@dataclass
class WhisperWeights:
    """Float32 tensors under openai-whisper names plus what decoding needs besides them.

    ``key`` projections carry no bias (openai-whisper has none; a constant key bias would
    shift every score of a query equally, which softmax ignores).
    """

    dims: ModelDims
    tensors: dict[str, np.ndarray]
    tokenizer_json: bytes
    source: WeightsSource
    suppress_ids: list[int] = field(default_factory=list)
    suppress_ids_begin: list[int] = field(default_factory=list)
    lang_ids: list[int] = field(default_factory=list)
    alignment_heads: list[tuple[int, int]] = field(default_factory=list)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.tensors[name]


def expected_tensor_names(dims: ModelDims) -> list[str]:
    """Every tensor a complete set of Whisper weights has (openai-whisper names)."""
    names = [
        "encoder.conv1.weight", "encoder.conv1.bias", "encoder.conv2.weight", "encoder.conv2.bias",
        "encoder.positional_embedding", "encoder.ln_post.weight", "encoder.ln_post.bias",
        "decoder.token_embedding.weight", "decoder.positional_embedding",
        "decoder.ln.weight", "decoder.ln.bias",
    ]

    def attention(prefix: str) -> list[str]:
        return [
            f"{prefix}.query.weight", f"{prefix}.query.bias", f"{prefix}.key.weight",
            f"{prefix}.value.weight", f"{prefix}.value.bias", f"{prefix}.out.weight", f"{prefix}.out.bias",
        ]

    def block(prefix: str, cross: bool) -> list[str]:
        parts = attention(f"{prefix}.attn") + [f"{prefix}.attn_ln.weight", f"{prefix}.attn_ln.bias"]
        if cross:
            parts += attention(f"{prefix}.cross_attn")
            parts += [f"{prefix}.cross_attn_ln.weight", f"{prefix}.cross_attn_ln.bias"]
        parts += [f"{prefix}.mlp.0.weight", f"{prefix}.mlp.0.bias", f"{prefix}.mlp.2.weight", f"{prefix}.mlp.2.bias"]
        return parts + [f"{prefix}.mlp_ln.weight", f"{prefix}.mlp_ln.bias"]

    for i in range(dims.n_audio_layer):
        names += block(f"encoder.blocks.{i}", cross=False)
    for i in range(dims.n_text_layer):
        names += block(f"decoder.blocks.{i}", cross=True)
    return names


def check_complete(weights: WhisperWeights, where: str) -> None:
    """Fail with one line if a tensor is missing, so a broken source never reaches export."""
    missing = [name for name in expected_tensor_names(weights.dims) if name not in weights.tensors]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelSourceError(f"{where}: missing weight '{missing[0]}'{more}")


def bfloat16_to_float32(raw) -> np.ndarray:
    """Little-endian bfloat16 bytes as float32: bfloat16 is the top half of a float32."""
    return (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def read_tokenizer_json(directory: Path) -> bytes:
    path = directory / "tokenizer.json"
    try:
        return path.read_bytes()
    except OSError as error:
        raise ModelSourceError(f"{path}: cannot read tokenizer ({error.strerror or error})") from None
