"""The model package: ONNX graphs + tokenizer + mel filters + a manifest that vouches for them.

``manifest.json`` records the sha256 and size of every file; :meth:`ModelPackage.load` checks
them, because a half-copied or bit-flipped graph otherwise surfaces as a baffling ONNX Runtime
or TensorRT error. ``package_writer.py`` writes packages.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgescribe.engines.errors import ModelPackageError
from edgescribe.engines.files import file_sha256
from edgescribe.engines.weights import ModelDims

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
MEL_FILTERS = "mel_filters.npy"
GRAPHS = {  # precision -> (encoder file, decoder file)
    "float32": ("encoder.onnx", "decoder.onnx"),
    "int8": ("encoder.int8.onnx", "decoder.int8.onnx"),
}
# Cross-attention scores of the alignment heads, for word timing (engines/alignment_export.py).
# Optional: packages exported before it, or from weights without alignment heads, lack it.
ALIGNER = "aligner.onnx"
REEXPORT_HINT = "re-run edgescribe export"
# How the decoder takes the cache and cross-attention K/V: one input per layer (self_k.0 ...),
# cross K/V split into heads (engines/runtime.py, docs/architecture.md). The only layout this
# edgescribe reads or writes; packages of the earlier "per_layer" layout are re-exported.
DECODER_INPUTS = "per_layer_cross_heads"


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
    decoder_inputs: str  # DECODER_INPUTS; ModelPackage.load refuses any other layout

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
            decoder_inputs=str(data.get("decoder_inputs", "")),
        )


@dataclass
class ModelPackage:
    dir: Path
    manifest: Manifest

    @property
    def dims(self) -> ModelDims:
        return self.manifest.dims

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
        if manifest.decoder_inputs != DECODER_INPUTS:
            # Early exports fed the decoder stacked K/V tensors (and had no decoder_inputs field).
            found = repr(manifest.decoder_inputs) if manifest.decoder_inputs else "missing (stacked)"
            raise ModelPackageError(f"{where}: {MANIFEST} has decoder_inputs {found}, this edgescribe reads only "
                                    f"{DECODER_INPUTS!r} graphs; {REEXPORT_HINT}")
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

    def aligner_path(self) -> Path:
        """The aligner graph; a clear error when this package cannot time words."""
        if ALIGNER not in self.manifest.files:
            why = ("its weights name no alignment heads" if not self.manifest.alignment_heads
                   else f"it predates word timing; {REEXPORT_HINT}")
            raise ModelPackageError(f"model package {self.dir}: has no word timing ({ALIGNER}): {why}")
        return self.file(ALIGNER)

    def mel_filters(self) -> np.ndarray:
        return np.load(self.file(MEL_FILTERS))
