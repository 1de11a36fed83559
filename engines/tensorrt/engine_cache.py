"""Where built engines live, what they were built for, and whether they can be trusted.

Layout of one model's engines (``ENGINE_DIR/<package name>/``)::

    encoder.engine  encoder.engine.json     serialised engine + sidecar (key, sha256, build time)
    decoder.engine  decoder.engine.json
    aligner.engine  aligner.engine.json     word timing; when the package has an aligner graph
    validated.json                          the "good" mark: written only after validation passed

An engine is trusted only when its sidecar's key equals the key expected now, the engine's
sha256 equals the one the sidecar recorded (so a truncated or half-written file is caught),
and ``validated.json`` vouches for exactly those engine hashes. Every file is written to a
temporary name in the same directory, fsynced, then renamed, so a crash leaves either the old
file or the new one, never a partial file under the real name. The good mark is removed
before any engine is replaced and rewritten only after validation.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from edgescribe.engines.errors import EdgescribeError
from edgescribe.engines.files import file_sha256
from edgescribe.engines.tensorrt.platform import DeviceFacts

log = logging.getLogger(__name__)

# Bump when the layout, the key or the engines' I/O contract changes: every old engine is rebuilt.
CACHE_FORMAT_VERSION = 1
# Every engine set has these; ALIGNER only when the package has an aligner graph (and sets built
# before the aligner had an engine lack it: the TensorRT runner then aligns on the host).
GRAPHS = ("encoder", "decoder")
ALIGNER = "aligner"
# Fields an engine is bound to regardless of how it was configured; the daemon checks only these
# (it accepts whatever precision and profile build-engines chose), build-engines checks all.
DEVICE_AND_MODEL_FIELDS = ("cache_format", "graph", "model_sha256", "tensorrt_version", "gpu_name", "compute_capability", "l4t")


class EngineBuildError(EdgescribeError):
    """A TensorRT engine could not be built, loaded or validated; the message names the file."""


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialised engine depends on. Any field changing means: rebuild."""

    graph: str
    model_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    l4t: str
    precision: str
    profile: tuple[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...]
    cache_format: int = CACHE_FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["profile"] = [[name, list(lo), list(opt), list(hi)] for name, lo, opt, hi in self.profile]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "EngineKey":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"unknown key fields {sorted(unknown)}")
        values = dict(data)
        values["profile"] = tuple(
            (str(name), tuple(lo), tuple(opt), tuple(hi)) for name, lo, opt, hi in data.get("profile", ())
        )
        return cls(**values)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    def mismatches(self, built: "EngineKey", only: Optional[Sequence[str]] = None) -> list[str]:
        """Human-readable differences, e.g. ``tensorrt_version: built for 10.3.0, now 10.4.0``."""
        ours, theirs = self.to_json(), built.to_json()
        names = only if only is not None else list(ours)
        return [f"{name}: built for {theirs[name]}, now {ours[name]}" for name in names if ours[name] != theirs[name]]


Profile = Mapping[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]  # input -> (min, opt, max)


def engine_keys(package_sha256: str, facts: DeviceFacts, precision: str = "",
                profiles: Optional[Mapping[str, Profile]] = None,
                graphs: Optional[Sequence[str]] = None) -> dict[str, EngineKey]:
    """One key per graph for the package with ``model_sha256(package_dir) == package_sha256`` on this device.

    build-engines passes the precision and the profiles it builds with (one per graph it
    builds); the daemon leaves them empty, as it compares only DEVICE_AND_MODEL_FIELDS, and
    names the ``graphs`` it asks about (default: GRAPHS).
    """
    if graphs is None:
        graphs = tuple(profiles) if profiles else GRAPHS
    return {
        graph: EngineKey(
            graph=graph,
            model_sha256=package_sha256,
            tensorrt_version=facts.tensorrt_version,
            gpu_name=facts.gpu_name,
            compute_capability=facts.compute_capability,
            l4t=facts.l4t,
            precision=precision,
            profile=tuple((name, *triple) for name, triple in sorted(profiles[graph].items())) if profiles else (),
        )
        for graph in graphs
    }


@dataclass(frozen=True)
class Sidecar:
    key: EngineKey
    engine_sha256: str
    engine_bytes: int
    built_at: str
    build_seconds: float
    precision_effective: str
    fp32_layers: int

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["key"] = self.key.to_json()
        data["key_digest"] = self.key.digest()
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Sidecar":
        values = {k: v for k, v in data.items() if k != "key_digest"}
        values["key"] = EngineKey.from_json(data["key"])
        return cls(**values)


@dataclass(frozen=True)
class CacheStatus:
    """Whether the cached engines can be used as they are, and if not, why (one line)."""

    ok: bool
    reason: str


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is never seen half written."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # The rename itself must reach the disk before we write files that refer to the new content.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class EngineCache:
    """One model package's engines in ``engine_dir/<name>``, plus the shared timing cache."""

    def __init__(self, engine_dir: Path, name: str):
        self.root = Path(engine_dir)
        self.dir = self.root / name

    def engine_path(self, graph: str) -> Path:
        return self.dir / f"{graph}.engine"

    def sidecar_path(self, graph: str) -> Path:
        return self.dir / f"{graph}.engine.json"

    @property
    def good_path(self) -> Path:
        return self.dir / "validated.json"

    @property
    def timing_cache_path(self) -> Path:
        # Shared by every model: tactic timings depend on layer shapes and the GPU, not the weights.
        return self.root / "timing.cache"

    # -- reading -------------------------------------------------------------------------

    def read_sidecar(self, graph: str) -> Sidecar:
        path = self.sidecar_path(graph)
        try:
            return Sidecar.from_json(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is unreadable ({error})") from None

    def status(self, expected: Mapping[str, EngineKey], only: Optional[Sequence[str]] = None) -> CacheStatus:
        """Are the engines for ``expected`` (graph -> key) present, intact, current and validated?

        ``only`` restricts the key comparison to those fields (see DEVICE_AND_MODEL_FIELDS).
        """
        hashes = {}
        for graph, key in expected.items():
            engine = self.engine_path(graph)
            if not engine.exists():
                return CacheStatus(False, f"no {graph} engine at {engine}")
            try:
                sidecar = self.read_sidecar(graph)
            except FileNotFoundError:
                return CacheStatus(False, f"{engine} has no sidecar {self.sidecar_path(graph).name} (interrupted build?)")
            except ValueError as error:
                return CacheStatus(False, str(error))
            differences = key.mismatches(sidecar.key, only)
            if differences:
                return CacheStatus(False, f"{engine} is stale: " + "; ".join(differences))
            size = engine.stat().st_size
            if size != sidecar.engine_bytes or file_sha256(engine) != sidecar.engine_sha256:
                return CacheStatus(
                    False, f"{engine} does not match its sidecar ({size} bytes, sidecar says {sidecar.engine_bytes}): truncated or altered"
                )
            hashes[graph] = sidecar.engine_sha256
        try:
            mark = json.loads(self.good_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return CacheStatus(False, f"engines in {self.dir} were never validated")
        except (OSError, ValueError) as error:
            return CacheStatus(False, f"{self.good_path} is unreadable ({error})")
        vouched = mark.get("engines", {}) if isinstance(mark, dict) else {}
        if any(vouched.get(graph) != sha for graph, sha in hashes.items()):
            return CacheStatus(False, f"{self.good_path} vouches for other engines than those in {self.dir}")
        return CacheStatus(True, f"engines in {self.dir} are up to date and validated")

    def load_plan(self, graph: str) -> bytes:
        path = self.engine_path(graph)
        try:
            return path.read_bytes()
        except OSError as error:
            raise EngineBuildError(f"cannot read TensorRT engine {path}: {error.strerror}") from None

    def precision_of(self, graph: str) -> str:
        return self.read_sidecar(graph).precision_effective

    def read_timing_cache(self) -> Optional[bytes]:
        try:
            return self.timing_cache_path.read_bytes()
        except FileNotFoundError:
            return None

    # -- writing -------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the directory and drop temporaries a crashed build left behind."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for leftover in list(self.dir.glob(".*.tmp-*")) + list(self.root.glob(".*.tmp-*")):
            log.info("removing %s left by an interrupted build", leftover)
            leftover.unlink(missing_ok=True)

    def invalidate(self) -> None:
        """Withdraw the good mark before touching any engine (a crash must not leave it vouching)."""
        if self.good_path.exists():
            self.good_path.unlink()
            _fsync_dir(self.dir)

    def write_engine(
        self, key: EngineKey, plan: bytes, build_seconds: float, precision_effective: str, fp32_layers: int
    ) -> Sidecar:
        """Engine first, sidecar second: a sidecar never describes a file that is not there yet."""
        self.invalidate()
        atomic_write(self.engine_path(key.graph), plan)
        sidecar = Sidecar(
            key=key,
            engine_sha256=hashlib.sha256(plan).hexdigest(),
            engine_bytes=len(plan),
            built_at=_now(),
            build_seconds=round(build_seconds, 1),
            precision_effective=precision_effective,
            fp32_layers=fp32_layers,
        )
        atomic_write(self.sidecar_path(key.graph), json.dumps(sidecar.to_json(), indent=2).encode() + b"\n")
        return sidecar

    def write_timing_cache(self, data: bytes) -> None:
        atomic_write(self.timing_cache_path, data)

    def mark_good(self, graphs: Sequence[str], report: Sequence[str]) -> None:
        mark = {
            "engines": {graph: self.read_sidecar(graph).engine_sha256 for graph in graphs},
            "validated_at": _now(),
            "report": list(report),
        }
        atomic_write(self.good_path, json.dumps(mark, indent=2).encode() + b"\n")


def model_sha256(package_dir: Path) -> str:
    """The package's identity: its manifest lists the sha256 of every file, so hashing the
    manifest covers graphs, tokenizer and mel filters without re-reading hundreds of MB."""
    return file_sha256(Path(package_dir) / "manifest.json")
