"""Turn a YAML file into section dataclasses, reporting every problem with its line.

The file is parsed with ``yaml.compose`` rather than ``yaml.safe_load`` because only the
node tree keeps a line number for every key and value, and because it lets us see
duplicate keys (``safe_load`` silently keeps the last one). Conversion walks the node
tree along the dataclass declarations (see ``schema.py``), so anything the schema does
not describe is never expanded: an alias bomb under an unknown key costs nothing.

All problems are collected before raising, so a technician fixes a file in one pass.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import pathlib
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from edgescribe.engines.errors import ConfigError

# A configuration is a few kilobytes; anything this large is the wrong file.
MAX_FILE_BYTES = 1 << 20
# Upper bound on nodes visited, so merge keys over aliases cannot expand exponentially.
MAX_NODES = 100_000
# How much of an offending value is quoted back in a message.
MAX_QUOTE = 40

_TAG = "tag:yaml.org,2002:"
_NULL, _BOOL, _INT, _FLOAT, _STR, _MERGE = (_TAG + t for t in ("null", "bool", "int", "float", "str", "merge"))
_SECRET_KEYS = ("password", "secret", "token", "passwd")


@dataclass(frozen=True)
class Problem:
    line: int  # 1-based; 0 when the file could not be read at all
    path: str  # dotted key path, "" for the file as a whole
    message: str  # "got ...; expected ..." or a sentence


class InvalidConfig(ConfigError):
    """Every problem found in one configuration file; ``str()`` is one line per problem."""

    def __init__(self, filename: str, problems: list[Problem]):
        self.filename = filename
        self.problems = sorted(problems, key=lambda p: (p.line, p.path))
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        out = []
        for p in self.problems:
            where = f"{self.filename}:{p.line}:" if p.line else f"{self.filename}:"
            out.append(f"{where} {p.path}: {p.message}" if p.path else f"{where} {p.message}")
        return out


class _Invalid:
    """Marks a value that failed conversion (its problem is already recorded)."""


INVALID = _Invalid()


# ---------------------------------------------------------------- reading and parsing


def read_text(path: Path) -> str:
    """The file's text; unreadable, oversized or non-UTF-8 files raise ``InvalidConfig``."""
    name = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InvalidConfig(name, [Problem(0, "", "no such file")]) from None
    except IsADirectoryError:
        raise InvalidConfig(name, [Problem(0, "", "is a directory, expected a YAML file")]) from None
    except OSError as error:
        raise InvalidConfig(name, [Problem(0, "", f"cannot read: {error.strerror or error}")]) from None
    if len(data) > MAX_FILE_BYTES:
        message = f"file is {len(data)} bytes; expected a configuration under {MAX_FILE_BYTES} bytes (wrong file?)"
        raise InvalidConfig(name, [Problem(0, "", message)])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        message = f"byte 0x{data[error.start]:02x} is not UTF-8; expected a UTF-8 text file"
        raise InvalidConfig(name, [Problem(line, "", message)]) from None


def compose(text: str, filename: str) -> Optional[Node]:
    """The YAML node tree of ``text`` (None for an empty document), syntax errors as ``InvalidConfig``."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else 1
        what = error.problem or error.context or "invalid YAML"
        hint = ""
        if "\t" in what or (mark and _char_at(text, mark.index) == "\t"):
            hint = " (YAML does not allow tabs for indentation; use spaces)"
        where = f" at column {mark.column + 1}" if mark else ""
        raise InvalidConfig(filename, [Problem(line, "", f"YAML syntax error{where}: {what}{hint}")]) from None
    except yaml.reader.ReaderError as error:
        line = text[: error.position].count("\n") + 1
        message = f"character {error.character!r} is not allowed in YAML; expected a text file"
        raise InvalidConfig(filename, [Problem(line, "", message)]) from None
    except yaml.YAMLError as error:
        raise InvalidConfig(filename, [Problem(1, "", f"invalid YAML: {_one_line(str(error))}")]) from None
    except RecursionError:
        message = "nested too deeply to be a configuration (wrong file?)"
        raise InvalidConfig(filename, [Problem(1, "", message)]) from None


def _char_at(text: str, index: int) -> str:
    return text[index] if 0 <= index < len(text) else ""


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------- describing types


def unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _choices(tp: Any, meta: dict) -> Optional[tuple]:
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    if meta.get("choices") is not None:
        return tuple(meta["choices"])
    return None


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _range_text(meta: dict) -> str:
    lo, hi, unit = meta.get("min"), meta.get("max"), meta.get("unit")
    unit_text = f" {unit}" if unit else ""
    if lo is not None and hi is not None:
        return f" from {_fmt(lo)} to {_fmt(hi)}{unit_text}"
    if lo is not None:
        return f" >= {_fmt(lo)}{unit_text}"
    if hi is not None:
        return f" <= {_fmt(hi)}{unit_text}"
    return f" ({unit})" if unit else ""


def describe(tp: Any, meta: Optional[dict] = None) -> str:
    """What a value of this declared type looks like, in words (used in errors and docs)."""
    meta = meta or {}
    inner, optional = unwrap_optional(tp)
    text = _describe_required(inner, meta)
    return f"{text}, or null" if optional else text


def _describe_required(tp: Any, meta: dict) -> str:
    choices = _choices(tp, meta)
    if choices is not None:
        return "one of " + ", ".join(_fmt(c) for c in choices)
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return f"a list of {_plural(item, meta)}"
    if origin is dict:
        _, value = typing.get_args(tp) or (str, Any)
        return f"a mapping of names to {_plural(value, meta)}"
    if dataclasses.is_dataclass(tp):
        return f"a mapping with keys {', '.join(f.name for f in dataclasses.fields(tp))}"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer" + _range_text(meta)
    if tp is float:
        return "a number" + _range_text(meta)
    if tp in (str, Path, pathlib.PurePath):
        if meta.get("pattern_text"):
            return f"text of {meta['pattern_text']}"
        if meta.get("pattern"):
            return f"text matching {meta['pattern']}"
        return "a path" if tp is not str else "text"
    return getattr(tp, "__name__", str(tp))


def _plural(tp: Any, meta: dict) -> str:
    if dataclasses.is_dataclass(tp):
        return "mappings"
    text = _describe_required(unwrap_optional(tp)[0], meta)
    for article in ("an ", "a "):
        if text.startswith(article):
            return text[len(article) :].replace("integer", "integers", 1).replace("number", "numbers", 1)
    return text


@functools.lru_cache(maxsize=None)
def field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a dataclass (they are strings under ``from __future__ import annotations``)."""
    return typing.get_type_hints(cls)


def field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


# ---------------------------------------------------------------- conversion


class _Converter:
    """Walks the node tree along the declared types, recording problems instead of stopping.

    ``moved`` maps keys that are no longer read (dotted paths, list items as ``streams[]``)
    to the key that replaced them, so an old file is told where the setting went.
    """

    def __init__(self, moved: Optional[dict[str, str]] = None):
        self.problems: list[Problem] = []
        self.visited = 0
        self.constructor = SafeConstructor()
        self.moved = moved or {}

    def problem(self, node: Optional[Node], path: str, message: str) -> _Invalid:
        line = node.start_mark.line + 1 if node is not None else 1
        self.problems.append(Problem(line, path, message))
        return INVALID

    def expected(self, node: Node, path: str, tp: Any, meta: dict) -> _Invalid:
        return self.problem(node, path, f"got {_given(node)}; expected {describe(tp, meta)}")

    def budget_spent(self, node: Node, path: str) -> bool:
        self.visited += 1
        if self.visited == MAX_NODES + 1:
            self.problem(node, path, f"the file expands to more than {MAX_NODES} values (aliases?); expected a configuration")
        return self.visited > MAX_NODES

    def value(self, node: Node, tp: Any, meta: dict, path: str) -> Any:
        if self.budget_spent(node, path):
            return INVALID
        inner, optional = unwrap_optional(tp)
        # An empty path would become Path("."), the current directory: read it as "not set".
        empty_path = inner is Path and isinstance(node, ScalarNode) and node.value == "" and node.tag == _STR
        if _is_null(node) or empty_path:
            return None if optional else self.expected(node, path, tp, meta)
        origin = typing.get_origin(inner)
        if dataclasses.is_dataclass(inner):
            return self.section(node, inner, path)
        if origin is list:
            return self.sequence(node, tp, typing.get_args(inner)[0], meta, path)
        if origin is dict:
            return self.mapping(node, tp, typing.get_args(inner)[1], meta, path)
        return self.scalar(node, tp, inner, meta, path)

    def sequence(self, node: Node, tp: Any, item_tp: Any, meta: dict, path: str) -> Any:
        if not isinstance(node, SequenceNode):
            return self.expected(node, path, tp, meta)
        items = [self.value(child, item_tp, meta, f"{path}[{i}]") for i, child in enumerate(node.value)]
        return INVALID if any(item is INVALID for item in items) else items

    def mapping(self, node: Node, tp: Any, value_tp: Any, meta: dict, path: str) -> Any:
        if not isinstance(node, MappingNode):
            return self.expected(node, path, tp, meta)
        result = {}
        for key, key_node, value_node in self.items(node, path):
            result[key] = self.value(value_node, value_tp, meta, f"{path}.{key}")
        return INVALID if any(v is INVALID for v in result.values()) else result

    def scalar(self, node: Node, tp: Any, inner: Any, meta: dict, path: str) -> Any:
        if not isinstance(node, ScalarNode) or node.tag not in (_NULL, _BOOL, _INT, _FLOAT, _STR):
            return self.expected(node, path, tp, meta)
        choices = _choices(inner, meta)
        base = type(choices[0]) if choices and typing.get_origin(inner) is Literal else inner
        try:
            value = self.construct(node, base)
        except ValueError:
            value = INVALID
        if value is INVALID:
            return self.expected(node, path, tp, meta)
        if choices is not None and value not in choices:
            return self.with_suggestion(node, path, tp, meta, value, choices)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if (meta.get("min") is not None and value < meta["min"]) or (
                meta.get("max") is not None and value > meta["max"]
            ):
                return self.expected(node, path, tp, meta)
        if isinstance(value, str) and meta.get("pattern") and not re.fullmatch(meta["pattern"], value):
            return self.expected(node, path, tp, meta)
        return Path(value) if base is Path else value

    def construct(self, node: ScalarNode, base: Any) -> Any:
        """The scalar as ``base``; text fields take what was typed (``no`` stays "no", ``007`` stays "007")."""
        if base in (str, Path):
            return node.value
        if base is bool:
            return self.constructor.construct_yaml_bool(node) if node.tag == _BOOL else INVALID
        if base is int:
            return self.constructor.construct_yaml_int(node) if node.tag == _INT else INVALID
        if base is float:
            if node.tag == _INT:
                return float(self.constructor.construct_yaml_int(node))
            if node.tag == _FLOAT:
                value = self.constructor.construct_yaml_float(node)
                return value if math.isfinite(value) else INVALID
        return INVALID

    def with_suggestion(self, node: Node, path: str, tp: Any, meta: dict, value: Any, choices: tuple) -> _Invalid:
        message = f"got {_given(node)}; expected {describe(tp, meta)}"
        names = {str(c).lower(): str(c) for c in choices}
        close = difflib.get_close_matches(str(value).lower(), list(names), n=1)
        if close:
            message += f" (did you mean {names[close[0]]}?)"
        return self.problem(node, path, message)

    def items(self, node: MappingNode, path: str) -> list[tuple[str, Node, Node]]:
        """(key, key node, value node) with duplicates reported and ``<<`` merge keys applied."""
        explicit: dict[str, tuple[str, Node, Node]] = {}
        merged: list[tuple[str, Node, Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merged.extend(self.merged_items(value_node, path, active={id(node)}))
                continue
            if not isinstance(key_node, ScalarNode) or key_node.tag == _NULL:
                self.problem(key_node, path or "(top level)", "a key must be a plain name")
                continue
            key = key_node.value
            if key in explicit:
                first = explicit[key][1].start_mark.line + 1
                self.problem(key_node, _join(path, key), f"duplicate key (first given on line {first}); keep one")
                continue
            explicit[key] = (key, key_node, value_node)
        result = list(explicit.values())
        seen = set(explicit)
        for key, key_node, value_node in merged:
            if key not in seen:
                seen.add(key)
                result.append((key, key_node, value_node))
        return result

    def merged_items(self, node: Node, path: str, active: set[int]) -> list[tuple[str, Node, Node]]:
        """The pairs a ``<<`` brings in: from a mapping, or from each mapping of a list, in order.

        A mapping's own keys come before those of its nested merges, so they win; ``active``
        holds the mappings being expanded, so a mapping that merges itself ends the recursion.
        """
        if id(node) in active or self.budget_spent(node, path):
            return []
        if isinstance(node, SequenceNode):
            return [pair for child in node.value for pair in self.merged_items(child, path, active)]
        if not isinstance(node, MappingNode):
            self.problem(node, path, f"got {_given(node)} after <<; expected an alias of a mapping")
            return []
        own = [(k.value, k, v) for k, v in node.value if k.tag != _MERGE and isinstance(k, ScalarNode)]
        nested = [pair for k, v in node.value if k.tag == _MERGE for pair in self.merged_items(v, path, active | {id(node)})]
        return own + nested

    def section(self, node: Node, cls: type, path: str) -> Any:
        if not isinstance(node, MappingNode):
            return self.expected(node, path or "(top level)", cls, {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = field_types(cls)
        given = {}
        for key, key_node, value_node in self.items(node, path):
            if key in fields:
                given[key] = (key_node, value_node)
            else:
                self.unknown_key(key_node, key, hints, path)
        values = {}
        for name, field in fields.items():
            if name in given:
                values[name] = self.value(given[name][1], hints[name], dict(field.metadata), _join(path, name))
            elif field_default(field) is dataclasses.MISSING:
                expected = describe(hints[name], dict(field.metadata))
                values[name] = self.problem(node, _join(path, name), f"missing; expected {expected}")
        if any(v is INVALID for v in values.values()):
            return INVALID
        try:
            instance = cls(**values)
        except (ValueError, TypeError) as error:
            return self.problem(node, path or "(top level)", _one_line(str(error)))
        check = getattr(instance, "problems", None)
        if callable(check):
            for key, message in check():
                self.problem(_node_at(node, key), _join(path, key), message)
        return instance

    def unknown_key(self, key_node: Node, key: str, fields: dict[str, Any], path: str) -> None:
        replacement = self.moved.get(re.sub(r"\[\d+\]", "[]", _join(path, key)))
        if replacement is not None:
            self.problem(key_node, _join(path, key), f"this key moved: set {replacement} instead")
            return
        if key.lower() in _SECRET_KEYS:
            self.problem(key_node, _join(path, key), _secret_message(key, fields, path))
            return
        message = "unknown key"
        close = difflib.get_close_matches(key, list(fields), n=1)
        if close:
            message += f"; did you mean {close[0]}?"
        else:
            owner = _section_owning(key, fields)
            message += f"; it belongs under {owner}" if owner else f"; expected one of {', '.join(fields)}"
        self.problem(key_node, _join(path, key), message)


def _node_at(node: Node, relative: str) -> Node:
    """The node of ``relative`` ("streams[1].name") below ``node``, or the deepest one that exists,
    so a cross-key problem is reported on the line of the key it names."""
    for part in re.findall(r"[^.\[\]]+", relative):
        if isinstance(node, MappingNode):
            found = [value for key, value in node.value if isinstance(key, ScalarNode) and key.value == part]
        elif isinstance(node, SequenceNode) and part.isdigit() and int(part) < len(node.value):
            found = [node.value[int(part)]]
        else:
            found = []
        if not found:
            break
        node = found[-1]
    return node


def _section_owning(key: str, fields: dict[str, Any]) -> Optional[str]:
    """Where ``key`` belongs when it was written one level too high: the one nested section
    (or list of sections) that declares it."""
    owners = []
    for name, tp in fields.items():
        inner = unwrap_optional(tp)[0]
        is_list = typing.get_origin(inner) is list
        if is_list:
            inner = typing.get_args(inner)[0]
        if dataclasses.is_dataclass(inner) and key in {f.name for f in dataclasses.fields(inner)}:
            owners.append(f"each item of {name}:" if is_list else f"{name}:")
    return owners[0] if len(owners) == 1 else None


def _secret_message(key: str, fields: dict[str, Any], path: str) -> str:
    key = key.lower()
    file_key, credential_key = f"{key}_file", f"{key}_credential"
    example = f"/etc/edgescribe/{path.split('.')[-1] + '-' if path else ''}{key}"
    ways = [f"put it in a file only the service can read (root:edgescribe, mode 640) and set {file_key}: {example}"]
    if credential_key in fields:
        ways.append(f"load it as a systemd credential (LoadCredential=) and set {credential_key}: <name>")
    return f"an inline {key} is not accepted, because config files get copied around; " + ", or ".join(ways)


def _join(path: str, key: str) -> str:
    key = _printable(key)
    return f"{path}.{key}" if path else key


def _printable(text: str) -> str:
    """``text`` with line breaks and control characters escaped, so each problem stays one line."""
    return text if text.isprintable() else repr(text)[1:-1]


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL


def _given(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "an empty value" if node.value in ("", "~") else node.value
    text = node.value if len(node.value) <= MAX_QUOTE else node.value[:MAX_QUOTE] + "..."
    if node.tag == _STR:
        return repr(text)
    text = _printable(text)
    if node.tag not in (_BOOL, _INT, _FLOAT):  # !!binary, !custom: say so, they are never accepted
        return f"{node.tag.replace(_TAG, '!!')} {text}"
    return text


# ---------------------------------------------------------------- entry points


def load_file(path: str | os.PathLike, root: type) -> Any:
    """Read, parse and convert ``path`` into an instance of the dataclass ``root``.

    Raises ``InvalidConfig`` (a ``ConfigError``, exit status 2) listing every problem.
    """
    path = Path(path)
    text = read_text(path)
    return load_text(text, root, str(path))


def load_text(text: str, root: type, filename: str = "<config>") -> Any:
    node = compose(text, filename)
    if node is None:  # empty file or only comments: every default, required keys reported missing
        node = MappingNode(_TAG + "map", [], start_mark=yaml.Mark(filename, 0, 0, 0, None, None))
    converter = _Converter(getattr(root, "moved_keys", None))
    try:
        result = converter.section(node, root, "")
    except RecursionError:
        converter.problem(node, "", "nested too deeply to be a configuration (wrong file?)")
        result = INVALID
    if converter.problems or result is INVALID:
        raise InvalidConfig(filename, converter.problems)
    return result


def read_secret(file: Optional[str], credential: Optional[str], what: str) -> Optional[str]:
    """A secret from a file or a systemd credential (``$CREDENTIALS_DIRECTORY/<name>``), newline stripped.

    Returns None when neither is configured. Secrets are never read from the YAML itself.
    """
    if credential:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ConfigError(
                f"{what}: credential {credential!r} configured but the service has no credentials "
                f"(add LoadCredential={credential}:/etc/edgescribe/{credential} to the unit)"
            )
        file = os.path.join(directory, credential)
    if not file:
        return None
    try:
        return Path(file).read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ConfigError(f"{what}: cannot read secret file {file}: {reason}") from None
