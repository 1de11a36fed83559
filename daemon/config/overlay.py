"""Remote configuration changes: an overlay in the state directory, merged over the technician's file.

``config/set`` (daemon/requests.py) never edits the technician's YAML: that file stays
readable, commented and the source of truth on the device. Remote changes live in
``<service.state_dir>/config-overlay.yaml``, a small YAML mapping of only the keys that
were changed. ``edgescribe run`` and ``check-config`` both load the file and merge the
overlay over it (mappings merge key by key; a list, e.g. ``streams``, is replaced whole),
and the merged document is validated exactly as a file is. ``check-config`` lists the
overlay's keys with their origin. Deleting the overlay returns the device to its file.

The merge works on YAML node trees, not on loaded values, so every scalar keeps the tag
and text it was written with (``language: no`` stays ``no``; see yaml_source.py).

While a change is on probation (not yet seen healthy), ``config-change.json`` next to the
overlay records what it replaced, so the daemon can restore it, even after a restart.
Both files are written atomically (temporary file, fsync, rename, fsync of the directory):
a power cut leaves the old file or the new one, never half of either.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import yaml
from pydantic import BaseModel
from yaml.nodes import MappingNode, Node

from edgescribe.daemon.config.errors import InvalidConfig, Problem
from edgescribe.daemon.config.host import Host
from edgescribe.daemon.config.loader import load_file, load_text
from edgescribe.daemon.config.yaml_source import read_text

OVERLAY_NAME = "config-overlay.yaml"
PENDING_NAME = "config-change.json"
# The overlay lives in the state directory, so the state directory cannot come from the overlay.
FIXED_KEYS = ("service.state_dir",)
_HEADER = ("# Remote changes (config/set over MQTT), merged over {file}.\n"
           "# Written by edgescribe; `edgescribe check-config {file}` shows the result.\n"
           "# Delete this file (and restart) to return to {file} alone.\n")


def overlay_path(state_dir: str | os.PathLike) -> Path:
    return Path(state_dir) / OVERLAY_NAME


def read_overlay(path: Path) -> dict:
    """The overlay's mapping; {} when there is none."""
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(read_text(path))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise InvalidConfig(str(path), [Problem(mark.line + 1 if mark else 0, "",
                                                f"not valid YAML ({getattr(error, 'problem', None) or error}); "
                                                "fix it or delete the file")]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidConfig(str(path), [Problem(1, "", "expected a mapping of configuration keys")])
    return data


def merge(base: dict, change: dict) -> dict:
    """``change`` over ``base``: mappings merge key by key, anything else is replaced; a key
    set to None in ``change`` returns to the file's value."""
    merged = dict(base)
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        elif value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return {key: value for key, value in merged.items() if value != {}}


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configurations (lists compare whole)."""
    if isinstance(old, BaseModel) and type(old) is type(new):
        found = []
        for name in type(old).model_fields:
            found += changed_keys(getattr(old, name), getattr(new, name), f"{prefix}{name}.")
        return found
    return [] if old == new else [prefix.rstrip(".")]


def flat_keys(data: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """``{"vad": {"threshold": 0.6}}`` -> ``[("vad.threshold", 0.6)]`` (lists stay whole)."""
    found = []
    for key, value in data.items():
        if isinstance(value, dict):
            found += flat_keys(value, f"{prefix}{key}.")
        else:
            found.append((f"{prefix}{key}", value))
    return found


def fixed_key_problems(change: dict, where: str) -> list[Problem]:
    keys = {key for key, _ in flat_keys(change)}
    return [Problem(0, key, f"cannot be changed remotely ({where})") for key in FIXED_KEYS if key in keys]


def merged_text(file_text: str, overlay: dict) -> str:
    """The file's YAML with ``overlay`` merged in, as YAML text (node trees, so tags survive)."""
    base = yaml.compose(file_text) if file_text.strip() else None
    if not overlay:
        return file_text
    change = yaml.compose(yaml.safe_dump(overlay, sort_keys=False))
    if not isinstance(base, MappingNode):
        return yaml.serialize(change)
    return yaml.serialize(_merge_nodes(base, change))


def _merge_nodes(base: Node, change: Node) -> Node:
    if not (isinstance(base, MappingNode) and isinstance(change, MappingNode)):
        return change
    values = list(base.value)
    index = {getattr(key, "value", None): i for i, (key, _) in enumerate(values)}
    for key, value in change.value:
        if key.value in index:
            i = index[key.value]
            values[i] = (values[i][0], _merge_nodes(values[i][1], value))
        else:
            values.append((key, value))
    return MappingNode(base.tag, values, base.start_mark, base.end_mark, flow_style=False)


def validate_merged(file: str | os.PathLike, overlay: dict, root: type[BaseModel], *, name: str,
                    host: Optional[Host] = None, warn: Optional[Callable[[str], None]] = None) -> Any:
    """The file with ``overlay`` merged, validated as ``root``; problems are named ``name:``
    with their keys (the merged text has no lines a reader could open)."""
    problems = fixed_key_problems(overlay, name)
    try:
        result = load_text(merged_text(read_text(Path(file)), overlay), root, name, host=host, warn=warn)
    except InvalidConfig as error:
        problems += [Problem(0, p.path, p.message) for p in error.problems]
    if problems:
        raise InvalidConfig(name, problems)
    return result


def load_with_overlay(path: str | os.PathLike, root: type[BaseModel], host: Optional[Host] = None,
                      warn: Optional[Callable[[str], None]] = None) -> Any:
    """``path`` validated as ``root``, with the overlay of its state directory merged in if there is one."""
    try:
        alone = load_file(path, root)
    except InvalidConfig:
        return load_file(path, root, host=host, warn=warn)  # raises, with the checks of this machine too
    overlay_file = overlay_path(alone.service.state_dir)
    overlay = read_overlay(overlay_file)
    if not overlay:
        return load_file(path, root, host=host, warn=warn)
    return validate_merged(path, overlay, root, name=f"{path} + {overlay_file}", host=host, warn=warn)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that a power cut leaves the old file or the new one (mode 600)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_overlay(path: Path, overlay: dict, file: str | os.PathLike) -> None:
    """Write ``overlay`` (or remove the file when it is empty) atomically."""
    if not overlay:
        path.unlink(missing_ok=True)
        return
    write_atomic(path, _HEADER.format(file=file) + yaml.safe_dump(overlay, sort_keys=False))


@dataclass(frozen=True)
class PendingChange:
    """A config/set on probation: what it replaced, and until when it must prove healthy."""

    transaction: Any
    changed: list[str]
    previous: dict  # the overlay before the change ({} = none)
    applied_at: float  # wall-clock time of the change
    rollback_after_s: float

    @property
    def deadline(self) -> float:
        return self.applied_at + self.rollback_after_s

    def save(self, state_dir: str | os.PathLike) -> None:
        write_atomic(Path(state_dir) / PENDING_NAME, json.dumps(asdict(self)))

    @classmethod
    def load(cls, state_dir: str | os.PathLike) -> Optional["PendingChange"]:
        path = Path(state_dir) / PENDING_NAME
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None

    @staticmethod
    def clear(state_dir: str | os.PathLike) -> None:
        (Path(state_dir) / PENDING_NAME).unlink(missing_ok=True)
