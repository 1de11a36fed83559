"""Read a configuration file into plain data that remembers where every value was written.

The file is parsed with ``yaml.compose`` rather than ``yaml.safe_load`` because only the
node tree keeps a line number for every key and value, and because it lets us see
duplicate keys (``safe_load`` silently keeps the last one). Scalars stay :class:`Scalar`
(tag and source text) until the declared type of their key picks the reading
(``schema.as_field_value``), so a text key takes what was typed: ``language: no`` stays
``no``. Every node visit counts against a budget, so merge keys over aliases cannot
expand exponentially.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from edgescribe.daemon.config.errors import InvalidConfig, Problem, printable

# A configuration is a few kilobytes; anything this large is the wrong file.
MAX_FILE_BYTES = 1 << 20
# Upper bound on nodes visited, so merge keys over aliases cannot expand exponentially.
MAX_NODES = 100_000
# How much of an offending value is quoted back in a message.
MAX_QUOTE = 40

_TAG = "tag:yaml.org,2002:"
NULL, BOOL, INT, FLOAT, STR, MERGE = (_TAG + t for t in ("null", "bool", "int", "float", "str", "merge"))
_PLAIN_TAGS = (NULL, BOOL, INT, FLOAT, STR)
TEXT_TAGS = (STR, BOOL, INT, FLOAT, _TAG + "timestamp")  # what a text key takes as typed
_CONSTRUCTOR = SafeConstructor()


class Rejected:
    """Stands for a value no declared type accepts (its problem is reported from the node)."""

    def __repr__(self) -> str:
        return "<rejected>"


REJECTED = Rejected()


@dataclass(frozen=True, eq=False)
class Scalar:
    node: ScalarNode

    @property
    def text(self) -> str:
        return self.node.value

    @property
    def tag(self) -> str:
        return self.node.tag

    def typed(self) -> Any:
        """The YAML 1.1 reading (bool, int, float, str); ``REJECTED`` for other tags and non-finite numbers."""
        try:
            if self.tag == BOOL:
                return _CONSTRUCTOR.construct_yaml_bool(self.node)
            if self.tag == INT:
                return _CONSTRUCTOR.construct_yaml_int(self.node)
            if self.tag == FLOAT:
                value = _CONSTRUCTOR.construct_yaml_float(self.node)
                return value if math.isfinite(value) else REJECTED
        except ValueError:  # more digits than Python converts
            return REJECTED
        return self.text if self.tag == STR else REJECTED


Loc = tuple  # ("streams", 0, "name"): keys and list indices, as pydantic reports them


@dataclass
class Document:
    """The file as plain data plus, for every place in it, the node that wrote it."""

    data: Any
    nodes: dict[Loc, Node] = field(default_factory=dict)  # the value at each place
    key_nodes: dict[Loc, Node] = field(default_factory=dict)  # the key naming each place
    problems: list[Problem] = field(default_factory=list)
    reported: set[Loc] = field(default_factory=set)  # places whose problem is already recorded

    def line(self, loc: Loc, key: bool = False) -> int:
        """Line of the value at ``loc`` (of its key with ``key``), or of the nearest enclosing place."""
        for end in range(len(loc), -1, -1):
            nodes = self.key_nodes if key and end == len(loc) else self.nodes
            if loc[:end] in nodes:
                return nodes[loc[:end]].start_mark.line + 1
        return 1

    def already_reported(self, loc: Loc) -> bool:
        return any(loc[:end] in self.reported for end in range(len(loc) + 1))


# ---------------------------------------------------------------- reading and parsing


def read_text(path: Path) -> str:
    """The file's text; unreadable, oversized or non-UTF-8 files raise ``InvalidConfig``."""
    name = str(path)
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise InvalidConfig(name, [Problem(0, "", "no such file")]) from None
    except IsADirectoryError:
        raise InvalidConfig(name, [Problem(0, "", "is a directory, expected a YAML file")]) from None
    except OSError as error:
        raise InvalidConfig(name, [Problem(0, "", f"cannot read: {error.strerror or error}")]) from None
    if len(data) > MAX_FILE_BYTES:
        message = f"file is over {MAX_FILE_BYTES} bytes; expected a configuration of a few kilobytes (wrong file?)"
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
        line, message = syntax_message(error, text)
        raise InvalidConfig(filename, [Problem(line, "", f"YAML syntax error: {message}")]) from None
    except yaml.reader.ReaderError as error:
        line = text[: error.position].count("\n") + 1
        message = f"character {error.character!r} is not allowed in YAML; expected a text file"
        raise InvalidConfig(filename, [Problem(line, "", message)]) from None
    except yaml.YAMLError as error:
        raise InvalidConfig(filename, [Problem(1, "", f"invalid YAML: {' '.join(str(error).split())}")]) from None
    except RecursionError:
        message = "nested too deeply to be a configuration (wrong file?)"
        raise InvalidConfig(filename, [Problem(1, "", message)]) from None


_CLOSERS = {"flow mapping": ("{", "}"), "flow sequence": ("[", "]")}


def syntax_message(error: yaml.MarkedYAMLError, text: str) -> tuple[int, str]:
    """(line, message) for a YAML syntax error, in the terms of someone editing the file and
    on the line where the mistake is: an unclosed quote or bracket is reported where it opens,
    not at the end of the file where the parser noticed."""
    problem, context = error.problem or "", error.context or ""
    at_problem = error.problem_mark.line + 1 if error.problem_mark else 1
    at_context = error.context_mark.line + 1 if error.context_mark else at_problem
    if "\t" in problem or (error.problem_mark and text[error.problem_mark.index:error.problem_mark.index + 1] == "\t"):
        return at_problem, "a tab in the indentation; YAML does not allow tabs for indentation, use spaces"
    if "quoted scalar" in context:
        quote = text[error.context_mark.index] if error.context_mark else "quote"
        return at_context, f"the {quote} opened on this line is never closed; close it at the end of the value"
    for kind, (opening, closing) in _CLOSERS.items():
        if kind in context:
            return at_context, f"the '{opening}' opened on this line is never closed; close it with '{closing}'"
    if "expected <block end>" in problem:
        if "'-'" in problem:
            return at_problem, "a list item ('- ') where a key was expected; indent list items under their key"
        return at_problem, ("this line's indentation matches no key above it; keys of one section must start "
                            "in the same column")
    if problem == "mapping values are not allowed here":
        return at_problem, ("unexpected ':' on this line; put quotes around a value containing ': ', check that "
                            "the line is not indented deeper than the key above it, and that the line above has its ':'")
    if problem == "could not find expected ':'":
        return at_context, "a key without ':' on this line; expected key: value"
    if problem.startswith("found undefined alias"):
        return at_problem, f"{problem.removeprefix('found ')}; an alias *name needs an anchor &name before it"
    column = f" (column {error.problem_mark.column + 1})" if error.problem_mark else ""
    return at_problem, f"{problem or context}{column}"


# ---------------------------------------------------------------- node tree -> data


class _Builder:
    def __init__(self, document: Document):
        self.doc = document
        self.visited = 0

    def problem(self, loc: Loc, node: Node, message: str) -> Rejected:
        self.doc.problems.append(Problem(node.start_mark.line + 1, loc_text(loc) or "(top level)", message))
        self.doc.reported.add(loc)
        return REJECTED

    def value(self, node: Node, loc: Loc, active: frozenset) -> Any:
        self.visited += 1
        if self.visited > MAX_NODES:
            if self.visited == MAX_NODES + 1:
                return self.problem(loc, node, f"the file expands to more than {MAX_NODES} values (aliases?); "
                                               "expected a configuration")
            self.doc.reported.add(loc)
            return REJECTED
        self.doc.nodes.setdefault(loc, node)
        if id(node) in active:
            return self.problem(loc, node, "an alias refers to the mapping or list it is part of")
        if isinstance(node, ScalarNode):
            return Scalar(node)
        active = active | {id(node)}
        if isinstance(node, SequenceNode):
            return [self.value(child, loc + (i,), active) for i, child in enumerate(node.value)]
        result = {}
        for key, key_node, value_node in self.items(node, loc, active):
            self.doc.key_nodes.setdefault(loc + (key,), key_node)
            result[key] = self.value(value_node, loc + (key,), active)
        return result

    def items(self, node: MappingNode, loc: Loc, active: frozenset) -> list[tuple[str, Node, Node]]:
        """(key, key node, value node) with duplicates reported and ``<<`` merge keys applied:
        the mapping's own keys win, then each merged mapping in the order listed."""
        explicit: dict[str, tuple[str, Node, Node]] = {}
        merged: list[tuple[str, Node, Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == MERGE:
                merged += self.merged_items(value_node, loc, active)
                continue
            if not isinstance(key_node, ScalarNode) or key_node.tag == NULL:
                self.problem(loc, key_node, "a key must be a plain name")
                continue
            key = key_node.value
            if key in explicit:
                first = explicit[key][1].start_mark.line + 1
                self.problem(loc + (key,), key_node, f"duplicate key (first given on line {first}); keep one")
                continue
            explicit[key] = (key, key_node, value_node)
        result = list(explicit.values())
        for key, key_node, value_node in merged:
            if key not in explicit:
                explicit[key] = (key, key_node, value_node)
                result.append((key, key_node, value_node))
        return result

    def merged_items(self, node: Node, loc: Loc, active: frozenset) -> list[tuple[str, Node, Node]]:
        self.visited += 1
        if id(node) in active or self.visited > MAX_NODES:
            return []
        if isinstance(node, SequenceNode):
            return [pair for child in node.value for pair in self.merged_items(child, loc, active)]
        if not isinstance(node, MappingNode):
            self.problem(loc, node, f"got {given(node)} after <<; expected an alias of a mapping")
            return []
        own = [(k.value, k, v) for k, v in node.value if k.tag != MERGE and isinstance(k, ScalarNode)]
        nested = [pair for k, v in node.value if k.tag == MERGE
                  for pair in self.merged_items(v, loc, active | {id(node)})]
        return own + nested


def parse(text: str, filename: str) -> Document:
    """``text`` as a :class:`Document`; syntax errors raise ``InvalidConfig``, while problems of
    the structure (duplicate keys, expansion budget) are recorded in the document."""
    node = compose(text, filename)
    if node is None:  # empty file or only comments: every default, required keys reported missing
        node = MappingNode(_TAG + "map", [], start_mark=yaml.Mark(filename, 0, 0, 0, None, None))
    document = Document(data=None)
    try:
        document.data = _Builder(document).value(node, (), frozenset())
    except RecursionError:
        raise InvalidConfig(filename, [Problem(1, "", "nested too deeply to be a configuration (wrong file?)")]) from None
    return document


# ---------------------------------------------------------------- quoting what was written


def loc_text(loc: Loc) -> str:
    """``("streams", 0, "name")`` -> ``streams[0].name``, control characters escaped."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + printable(str(part))
    return out


def given(node: Optional[Node]) -> str:
    """The value as written, for 'got ...'."""
    if node is None:
        return "nothing"
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == NULL:
        return "an empty value" if node.value in ("", "~") else node.value
    text = node.value if len(node.value) <= MAX_QUOTE else node.value[:MAX_QUOTE] + "..."
    if node.tag == STR:
        return repr(text)
    text = printable(text)
    if node.tag not in _PLAIN_TAGS:  # !!binary, !custom: say so, they are never accepted
        return f"{node.tag.replace(_TAG, '!!')} {text}"
    return text
