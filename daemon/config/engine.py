"""Configuration section: engine (how the model packages in ``models`` run: backend and TensorRT engines)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from edgescribe.daemon.config.schema import Section, setting
from edgescribe.engines.encoder_window import DEFAULT_ENCODER_WINDOW, EncoderWindow

# One place for the defaults that `edgescribe build-engines` and the daemon share, so the
# engines the install-time unit builds are the ones the daemon looks for.
# Under the CacheDirectory= systemd creates: engines are rebuilt when stale, so they are cache.
DEFAULT_ENGINE_DIR = Path("/var/cache/edgescribe/engines")
DEFAULT_MAX_BATCH = 4
DEFAULT_MAX_PROMPT_TOKENS = 224
DEFAULT_WORKSPACE_MB = 1024


class EngineConfig(Section):
    backend: Literal["auto", "tensorrt", "onnxruntime"] = setting(
        "auto",
        "Inference backend. auto uses TensorRT when engines built for this device are in engine_dir, "
        "otherwise ONNX Runtime on the CPU.",
    )
    engine_dir: Path = setting(
        DEFAULT_ENGINE_DIR,
        "Where `edgescribe build-engines` writes TensorRT engines, their timing cache and sidecars: the "
        "one cache directory edgescribe uses. Safe to empty while the service is stopped (the engines "
        "are rebuilt); the default is under systemd's CacheDirectory=.",
    )
    precision: Literal["fp16", "fp32"] = setting(
        "fp16",
        "TensorRT engine precision. fp16 keeps LayerNorm and Softmax in fp32 and falls back to fp32 "
        "for a graph that fails validation.",
    )
    workspace_mb: int = setting(
        DEFAULT_WORKSPACE_MB,
        "GPU scratch memory TensorRT may use while building and running an engine.",
        min=64,
        max=16384,
        unit="MiB",
    )
    max_batch: int = setting(
        DEFAULT_MAX_BATCH,
        "Largest batch the engines accept: the number of audio streams transcribed together.",
        min=1,
        max=16,
    )
    max_prompt_tokens: int = setting(
        DEFAULT_MAX_PROMPT_TOKENS,
        "Longest token sequence fed to the decoder in one step (start tokens plus previous-text prompt).",
        min=4,
        max=448,
        unit="tokens",
    )
    encoder_window: EncoderWindow = setting(
        DEFAULT_ENCODER_WINDOW,
        "How much audio Whisper's encoder reads for a live utterance or partial. full: always a 30-s "
        "window, as Whisper was trained. adaptive: the shortest of 10, 15, 20 or 30 s that holds the "
        "utterance plus 2 s, which cuts the encoder's work for short utterances; a final decoded after "
        "the previous utterance's audio (its context) still reads 30 s (docs/benchmarks.md, 'Encoder "
        "windows'). Engines built before this setting existed take full windows only.",
    )
    threads: int = setting(
        0,
        "ONNX Runtime intra-op threads (CPU backend, and the reference when validating engines); 0: automatic.",
        min=0,
        max=64,
    )
