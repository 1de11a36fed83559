"""The model package: ONNX graphs + tokenizer + mel filters + a manifest that vouches for them.

A package is written into a temporary sibling directory and renamed into place, so a reader
sees either the old complete package or the new complete one, never a mix. ``manifest.json``
records the sha256 and size of every file; :meth:`ModelPackage.load` checks them, because a
half-copied or bit-flipped graph otherwise surfaces as a baffling ONNX Runtime or TensorRT error.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgescribe.engines.errors import ModelPackageError, ModelSourceError
from edgescribe.engines.weights import ModelDims, WhisperWeights, file_sha256

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
MEL_FILTERS = "mel_filters.npy"
GRAPHS = {  # precision -> (encoder file, decoder file)
    "float32": ("encoder.onnx", "decoder.onnx"),
    "int8": ("encoder.int8.onnx", "decoder.int8.onnx"),
}
SAMPLE_RATE = 16000
N_FFT = 400
REEXPORT_HINT = "re-run edgescribe export"
# How the decoder graph takes the cache and cross-attention K/V (see docs/architecture.md):
# "stacked": self_k [n_layer, batch, n_text_ctx, state] ...; "per_layer": self_k.0 [batch, n_text_ctx, state] ...
DECODER_INPUTS = ("stacked", "per_layer")


@dataclass(frozen=True)
class SpecialTokens:
    sot: int
    eot: int
    sot_prev: int
    sot_lm: int
    no_speech: int
    no_timestamps: int
    timestamp_begin: int
    transcribe: int
    translate: int


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    format_version: int
    dims: ModelDims
    special_tokens: SpecialTokens
    multilingual: bool
    languages: list[str]  # language codes in token order ("en", "zh", ...)
    language_tokens: dict[str, int]  # code -> token id of <|code|>
    suppress_tokens: list[int]  # never sampled (non-speech symbols, special tokens)
    suppress_blank: list[int]  # not allowed as the first sampled token (" " and eot)
    alignment_heads: list[tuple[int, int]]  # (decoder layer, head) pairs for word timing
    source: dict[str, str]  # name, path, format, sha256 of the weights file
    precision: dict[str, str]  # graph file -> "float32" | "int8"
    files: dict[str, FileEntry]
    created_by: str
    decoder_inputs: str = "stacked"  # one of DECODER_INPUTS; manifests written before it are stacked

    def to_json(self) -> str:
        data = asdict(self)
        data["alignment_heads"] = [list(pair) for pair in self.alignment_heads]
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        return cls(
            format_version=int(data["format_version"]),
            dims=ModelDims.from_dict(data["dims"]),
            special_tokens=SpecialTokens(**{k: int(v) for k, v in data["special_tokens"].items()}),
            multilingual=bool(data["multilingual"]),
            languages=[str(code) for code in data["languages"]],
            language_tokens={str(k): int(v) for k, v in data["language_tokens"].items()},
            suppress_tokens=[int(v) for v in data["suppress_tokens"]],
            suppress_blank=[int(v) for v in data["suppress_blank"]],
            alignment_heads=[(int(a), int(b)) for a, b in data["alignment_heads"]],
            source={str(k): str(v) for k, v in data["source"].items()},
            precision={str(k): str(v) for k, v in data["precision"].items()},
            files={str(k): FileEntry(sha256=str(v["sha256"]), size=int(v["size"])) for k, v in data["files"].items()},
            created_by=str(data["created_by"]),
            decoder_inputs=_decoder_inputs(data.get("decoder_inputs", "stacked")),
        )


def _decoder_inputs(value) -> str:
    if value not in DECODER_INPUTS:
        raise ValueError(f"decoder_inputs={value!r}, expected one of {', '.join(DECODER_INPUTS)}")
    return value


@dataclass
class ModelPackage:
    dir: Path
    manifest: Manifest

    @property
    def dims(self) -> ModelDims:
        return self.manifest.dims

    @property
    def layer_inputs(self) -> bool:
        """True when the decoder takes one cache/cross input per layer (``self_k.0`` ...)."""
        return self.manifest.decoder_inputs == "per_layer"

    @classmethod
    def load(cls, directory: str | Path, verify: bool = True) -> ModelPackage:
        """Open a package; with ``verify`` every file's size and sha256 are checked."""
        directory = Path(directory)
        where = f"model package {directory}"
        if not directory.is_dir():
            raise ModelPackageError(f"{where}: no such directory; run edgescribe export to create it")
        manifest_path = directory / MANIFEST
        try:
            data = json.loads(manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelPackageError(f"{where}: {MANIFEST} is missing (incomplete export?); {REEXPORT_HINT}") from None
        except (OSError, ValueError) as error:
            raise ModelPackageError(f"{where}: {MANIFEST} is not valid JSON ({error}); {REEXPORT_HINT}") from None
        if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
            found = data.get("format_version") if isinstance(data, dict) else None
            raise ModelPackageError(f"{where}: {MANIFEST} has format_version {found!r}, this edgescribe reads "
                                    f"{FORMAT_VERSION}; {REEXPORT_HINT}")
        try:
            manifest = Manifest.from_dict(data)
        except (KeyError, TypeError, ValueError) as error:
            raise ModelPackageError(f"{where}: {MANIFEST} is malformed (bad or missing field {error}); "
                                    f"{REEXPORT_HINT}") from None
        package = cls(directory, manifest)
        for name in (TOKENIZER, MEL_FILTERS, *GRAPHS["float32"]):
            if name not in manifest.files:
                raise ModelPackageError(f"{where}: {MANIFEST} does not list {name}; {REEXPORT_HINT}")
        for name, entry in manifest.files.items():
            package._check_file(name, entry, verify)
        return package

    def _check_file(self, name: str, entry: FileEntry, verify: bool) -> None:
        path = self.dir / name
        where = f"model package {self.dir}"
        if not path.is_file():
            raise ModelPackageError(f"{where}: {name} is missing; {REEXPORT_HINT}")
        size = path.stat().st_size
        if size != entry.size:
            raise ModelPackageError(f"{where}: {name} is corrupt (size {size} bytes, manifest says "
                                    f"{entry.size}); {REEXPORT_HINT}")
        if verify and file_sha256(path) != entry.sha256:
            raise ModelPackageError(f"{where}: {name} is corrupt (sha256 mismatch); {REEXPORT_HINT}")

    def file(self, name: str) -> Path:
        if name not in self.manifest.files:
            raise ModelPackageError(f"model package {self.dir}: has no {name}; {REEXPORT_HINT}")
        return self.dir / name

    def has_int8(self) -> bool:
        return all(name in self.manifest.files for name in GRAPHS["int8"])

    def graph_paths(self, prefer_int8: bool = False) -> tuple[Path, Path]:
        """(encoder, decoder) graph files: int8 when asked for and present, else float32."""
        precision = "int8" if prefer_int8 and self.has_int8() else "float32"
        encoder, decoder = GRAPHS[precision]
        return self.file(encoder), self.file(decoder)

    def mel_filters(self) -> np.ndarray:
        return np.load(self.file(MEL_FILTERS))


# -- writing -------------------------------------------------------------------------------


def write_package(
    weights: WhisperWeights,
    out_dir: str | Path,
    quantize: str | None = None,
    progress: Callable[[str], None] | None = None,
    layer_inputs: bool = True,
) -> ModelPackage:
    """Export ``weights`` into a complete package at ``out_dir`` (replacing any old one).

    ``layer_inputs`` (the default) exports the decoder with one cache/cross input per layer (manifest
    ``decoder_inputs: per_layer``) instead of stacked ones.
    """
    from edgescribe.engines import onnx_export

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
        graphs = [("encoder.onnx", "float32", lambda: onnx_export.build_encoder(weights)),
                  ("decoder.onnx", "float32", lambda: onnx_export.build_decoder(weights, layer_inputs=layer_inputs))]
        if quantize == "int8":
            graphs += [("encoder.int8.onnx", "int8", lambda: onnx_export.build_encoder(weights)),
                       ("decoder.int8.onnx", "int8", lambda: onnx_export.build_decoder(weights, for_int8=True,
                                                                                           layer_inputs=layer_inputs))]
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
        manifest = build_manifest(weights, temp, precision, "per_layer" if layer_inputs else "stacked")
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


def build_manifest(weights: WhisperWeights, directory: Path, precision: dict[str, str],
                   decoder_inputs: str = "stacked") -> Manifest:
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
        decoder_inputs=decoder_inputs,
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
    from importlib import metadata

    try:
        return metadata.version("edgescribe")
    except metadata.PackageNotFoundError:
        return "source tree"


# -- mel filters -------------------------------------------------------------------------------


def _hz_to_mel(frequencies: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (librosa's htk=False)."""
    frequencies = np.asarray(frequencies, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = frequencies / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    log_region = frequencies >= min_log_hz
    mels[log_region] = min_log_mel + np.log(frequencies[log_region] / min_log_hz) / logstep
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3
    frequencies = f_sp * mels
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    log_region = mels >= min_log_mel
    frequencies[log_region] = min_log_hz * np.exp(logstep * (mels[log_region] - min_log_mel))
    return frequencies


def mel_filter_bank(n_mels: int, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Slaney-normalised triangular filters, equal to librosa.filters.mel(sr, n_fft, n_mels)."""
    fft_freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    mel_points = _mel_to_hz(np.linspace(_hz_to_mel(np.array([0.0]))[0],
                                        _hz_to_mel(np.array([sample_rate / 2.0]))[0], n_mels + 2))
    widths = np.diff(mel_points)
    ramps = mel_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_points[2:n_mels + 2] - mel_points[:n_mels]))[:, None]
    return weights.astype(np.float32)
