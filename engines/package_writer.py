"""Write a model package from Whisper weights: graphs, tokenizer, mel filters, manifest.

A package is written into a temporary sibling directory and renamed into place, so a reader
sees either the old complete package or the new complete one, never a mix. The manifest is
written last: a directory with a manifest is a complete package.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

from edgescribe.engines import alignment_export, onnx_export
from edgescribe.engines.audio import mel_filter_bank
from edgescribe.engines.errors import ModelPackageError, ModelSourceError
from edgescribe.engines.files import file_sha256
from edgescribe.engines.package import (
    ALIGNER,
    DECODER_INPUTS,
    FORMAT_VERSION,
    GRAPHS,
    MANIFEST,
    MEL_FILTERS,
    TOKENIZER,
    FileEntry,
    Manifest,
    ModelPackage,
    SpecialTokens,
)
from edgescribe.engines.weights import WhisperWeights

log = logging.getLogger(__name__)


def write_package(
    weights: WhisperWeights,
    out_dir: str | Path,
    quantize: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> ModelPackage:
    """Export ``weights`` into a complete package at ``out_dir`` (replacing any old one)."""
    if quantize not in (None, "int8"):
        raise ValueError(f"unsupported quantization {quantize!r} (supported: int8)")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / MANIFEST).exists())):
        # Replacing is only safe for a previous package: never wipe a directory the user mistyped.
        raise ModelPackageError(f"{out_dir}: exists and is not a model package (no {MANIFEST}); "
                                "choose a new or empty directory")
    say = progress or (lambda message: log.info("%s", message))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    temp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    try:
        precision = {}
        encoder, decoder = GRAPHS["float32"]
        graphs = [(encoder, "float32", lambda: onnx_export.build_encoder(weights)),
                  (decoder, "float32", lambda: onnx_export.build_decoder(weights))]
        if quantize == "int8":
            encoder, decoder = GRAPHS["int8"]
            graphs += [(encoder, "int8", lambda: onnx_export.build_encoder(weights)),
                       (decoder, "int8", lambda: onnx_export.build_decoder(weights, for_int8=True))]
        if weights.alignment_heads:
            # float32 in every package: it runs once per window, and int8 scores would blur the timing
            graphs.append((ALIGNER, "float32", lambda: alignment_export.build_aligner(weights, weights.alignment_heads)))
        for graph_name, graph_precision, build in graphs:
            started = time.monotonic()
            if graph_precision == "int8":
                onnx_export.quantize_int8(build(), temp / graph_name)
            else:
                onnx_export.save(build(), temp / graph_name)
            precision[graph_name] = graph_precision
            say(f"wrote {graph_name} ({_megabytes(temp / graph_name)}, {time.monotonic() - started:.1f} s)")
        (temp / TOKENIZER).write_bytes(weights.tokenizer_json)
        np.save(temp / MEL_FILTERS, mel_filter_bank(weights.dims.n_mels))
        manifest = build_manifest(weights, temp, precision)
        # Written last: a directory with a manifest is a complete package.
        (temp / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
        _replace_dir(temp, out_dir)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return ModelPackage(out_dir, manifest)


def _megabytes(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


def _replace_dir(new: Path, target: Path) -> None:
    """Swap ``new`` into ``target``; the old package is removed only once the new one is in place."""
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        os.replace(target, old)
    try:
        os.replace(new, target)
    except OSError:
        if old.exists():
            os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def build_manifest(weights: WhisperWeights, directory: Path, precision: dict[str, str]) -> Manifest:
    tokens = _added_tokens(weights.tokenizer_json)
    special = special_tokens(tokens)
    multilingual = weights.dims.n_vocab >= 51865
    language_tokens = {
        content[2:-2]: token_id
        for content, token_id in sorted(tokens.items(), key=lambda item: item[1])
        if special.sot < token_id < special.translate
    }
    if not multilingual:
        # English-only vocabularies still carry every language token; only <|en|> is meaningful.
        language_tokens = {"en": language_tokens["en"]} if "en" in language_tokens else {}
    suppress_blank = list(weights.suppress_ids_begin) or [_space_token(weights.tokenizer_json), special.eot]
    files = {
        path.name: FileEntry(sha256=file_sha256(path), size=path.stat().st_size)
        for path in sorted(directory.iterdir()) if path.name != MANIFEST
    }
    return Manifest(
        format_version=FORMAT_VERSION,
        dims=weights.dims,
        special_tokens=special,
        multilingual=multilingual,
        languages=list(language_tokens),
        language_tokens=language_tokens,
        suppress_tokens=sorted(set(weights.suppress_ids)),
        suppress_blank=suppress_blank,
        alignment_heads=[tuple(pair) for pair in weights.alignment_heads],
        source={"name": weights.source.name, "path": weights.source.path, "format": weights.source.format,
                "sha256": weights.source.sha256},
        precision=precision,
        files=files,
        created_by=f"edgescribe {_version()}",
        decoder_inputs=DECODER_INPUTS,
    )


def _added_tokens(tokenizer_json: bytes) -> dict[str, int]:
    data = json.loads(tokenizer_json)
    return {token["content"]: int(token["id"]) for token in data.get("added_tokens", [])}


def special_tokens(tokens: dict[str, int]) -> SpecialTokens:
    def find(*names: str) -> int:
        for name in names:
            if name in tokens:
                return tokens[name]
        raise ModelSourceError(f"tokenizer.json has no {names[0]} token; not a Whisper tokenizer?")

    no_timestamps = find("<|notimestamps|>")
    return SpecialTokens(
        sot=find("<|startoftranscript|>"),
        eot=find("<|endoftext|>"),
        sot_prev=find("<|startofprev|>"),
        sot_lm=find("<|startoflm|>"),
        no_speech=find("<|nospeech|>", "<|nocaptions|>"),
        no_timestamps=no_timestamps,
        timestamp_begin=tokens.get("<|0.00|>", no_timestamps + 1),
        transcribe=find("<|transcribe|>"),
        translate=find("<|translate|>"),
    )


def _space_token(tokenizer_json: bytes) -> int:
    vocab = json.loads(tokenizer_json)["model"]["vocab"]
    return int(vocab["Ġ"])  # byte-level BPE spells a lone space as "Ġ"


def _version() -> str:
    try:
        return metadata.version("edgescribe")
    except metadata.PackageNotFoundError:
        return "source tree"
