"""Turn a YAML file into the validated section models, reporting every problem with its line.

yaml_source.py reads the file into data that remembers its nodes; pydantic validates it
against the root model; this module maps each of pydantic's error locations back to the
node that wrote it and words the message for a technician (``got ...; expected ...``,
did-you-mean, keys that moved, keys written one level too high). All problems are
collected before raising, so a file is fixed in one pass.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from pydantic import BaseModel, ValidationError

from edgescribe.daemon.config.errors import InvalidConfig, Problem
from edgescribe.daemon.config.host import Host
from edgescribe.daemon.config.schema import Loading, Problems, Spec, describe, field_spec, is_section, item_spec, spec_of
from edgescribe.daemon.config.yaml_source import Document, Loc, given, loc_text, parse, read_text

_SECRET_KEYS = ("password", "secret", "token", "passwd")


def load_file(path: str | os.PathLike, root: type[BaseModel], host: Optional[Host] = None,
              warn: Optional[Callable[[str], None]] = None) -> Any:
    """Read, parse and validate ``path`` as ``root``; see :func:`load_text`."""
    path = Path(path)
    return load_text(read_text(path), root, str(path), host=host, warn=warn)


def load_text(text: str, root: type[BaseModel], filename: str = "<config>", host: Optional[Host] = None,
              warn: Optional[Callable[[str], None]] = None) -> Any:
    """``text`` validated as ``root``. With ``host``, the files it names are checked on this
    machine too, and warnings (one ``file:line: key: warning: ...`` line each) go to ``warn``.

    Raises ``InvalidConfig`` (a ``ConfigError``, exit status 2) listing every problem.
    """
    document = parse(text, filename)
    problems = list(document.problems)
    result = None
    try:
        result = root.model_validate(document.data, strict=True, context=Loading(host))
    except ValidationError as error:
        problems += _Mapper(document, root).problems(error)
    except RecursionError:
        problems.append(Problem(1, "", "nested too deeply to be a configuration (wrong file?)"))
    if problems or result is None:
        raise InvalidConfig(filename, problems)
    if host is not None and warn is not None:
        for section, loc in sections(result):
            for key, message in section.warnings(host):
                where = loc + _relative_loc(key)
                warn(Problem(document.line(where), loc_text(where), f"warning: {message}").line_in(filename))
    return result


def sections(model: BaseModel, loc: Loc = ()) -> Iterator[tuple[BaseModel, Loc]]:
    """Every section of a validated configuration with its place, the root first."""
    yield model, loc
    for name in type(model).model_fields:
        value = getattr(model, name)
        items = enumerate(value) if isinstance(value, list) else [(None, value)]
        for index, item in items:
            if isinstance(item, BaseModel):
                yield from sections(item, loc + ((name,) if index is None else (name, index)))


def _relative_loc(key: str) -> Loc:
    """``"streams[1].name"`` -> ``("streams", 1, "name")``."""
    return tuple(int(part) if part.isdigit() else part for part in re.findall(r"[^.\[\]]+", key))


class _Mapper:
    """pydantic's errors -> problems on the lines that wrote the values."""

    def __init__(self, document: Document, root: type[BaseModel]):
        self.doc = document
        self.root = root
        self.moved: dict[str, str] = getattr(root, "moved_keys", {})

    def problems(self, error: ValidationError) -> list[Problem]:
        found = []
        for detail in error.errors(include_url=False):
            loc = tuple(detail["loc"])
            if not self.doc.already_reported(loc):
                found += self.problem(detail["type"], loc, detail)
        return found

    def at(self, loc: Loc, message: str, key: bool = False) -> Problem:
        return Problem(self.doc.line(loc, key), loc_text(loc) or "(top level)", message)

    def spec(self, loc: Loc) -> Optional[Spec]:
        """What the value at ``loc`` was declared to be."""
        spec = spec_of(self.root)
        for part in loc:
            if is_section(spec.type):
                info = spec.type.model_fields.get(part)
                if info is None:
                    return None
                spec = field_spec(info)
            else:
                spec = item_spec(spec)
        return spec

    def expected(self, loc: Loc) -> str:
        spec = self.spec(loc)
        return describe(spec) if spec is not None else "a valid value"

    def got(self, loc: Loc) -> str:
        return given(self.doc.nodes.get(loc))

    def problem(self, kind: str, loc: Loc, detail: dict) -> list[Problem]:
        if kind == "extra_forbidden":
            return [self.unknown_key(loc)]
        if kind == "missing":
            return [Problem(self.doc.line(loc[:-1]), loc_text(loc), f"missing; expected {self.expected(loc)}")]
        cause = (detail.get("ctx") or {}).get("error")
        if isinstance(cause, Problems):
            return [self.rule(loc + _relative_loc(key), message) for key, message in cause.found]
        if kind in ("value_error", "assertion_error"):
            spec = self.spec(loc)
            text = str(cause) if cause is not None else detail["msg"]
            if spec is not None and is_section(spec.type):
                return [self.at(loc, text)]
            return [self.at(loc, f"got {self.got(loc)}; {text}")]
        message = f"got {self.got(loc)}; expected {self.expected(loc)}"
        if kind == "literal_error":
            message += self.suggestion(loc)
        return [self.at(loc, message)]

    def rule(self, loc: Loc, message: str) -> Problem:
        """A cross-key rule's problem; one worded ``expected ...`` quotes what was written."""
        if message.startswith("expected ") and loc in self.doc.nodes:
            message = f"got {self.got(loc)}; {message}"
        return self.at(loc, message)

    def suggestion(self, loc: Loc) -> str:
        spec = self.spec(loc)
        node = self.doc.nodes.get(loc)
        options = [str(c) for c in (spec.type.__args__ if spec is not None else ())]
        names = {option.lower(): option for option in options}
        close = difflib.get_close_matches(str(getattr(node, "value", "")).lower(), list(names), n=1)
        return f" (did you mean {names[close[0]]}?)" if close else ""

    def unknown_key(self, loc: Loc) -> Problem:
        key = str(loc[-1])
        owner = self.spec(loc[:-1])
        fields = owner.type.model_fields if owner is not None and is_section(owner.type) else {}
        replacement = self.moved.get(re.sub(r"\[\d+\]", "[]", loc_text(loc)))
        if replacement is not None:
            return self.at(loc, f"this key moved: set {replacement} instead", key=True)
        if key.lower() in _SECRET_KEYS:
            return self.at(loc, _secret_message(key, fields, loc_text(loc[:-1])), key=True)
        message = "unknown key"
        close = difflib.get_close_matches(key, list(fields), n=1)
        if close:
            message += f"; did you mean {close[0]}?"
        else:
            home = _section_owning(key, fields)
            message += f"; it belongs under {home}" if home else f"; expected one of {', '.join(fields)}"
        return self.at(loc, message, key=True)


def _section_owning(key: str, fields: dict) -> Optional[str]:
    """Where ``key`` belongs when it was written one level too high: the one nested section
    (or list of sections) that declares it."""
    owners = []
    for name, info in fields.items():
        spec = field_spec(info)
        is_list = not is_section(spec.type) and is_section(item_spec(spec).type)
        section = item_spec(spec).type if is_list else spec.type
        if is_section(section) and key in section.model_fields:
            owners.append(f"each item of {name}:" if is_list else f"{name}:")
    return owners[0] if len(owners) == 1 else None


def _secret_message(key: str, fields: dict, path: str) -> str:
    key = key.lower()
    file_key, credential_key = f"{key}_file", f"{key}_credential"
    example = f"/etc/edgescribe/{path.split('.')[-1] + '-' if path else ''}{key}"
    ways = [f"put it in a file only the service can read (root:edgescribe, mode 640) and set {file_key}: {example}"]
    if credential_key in fields:
        ways.append(f"load it as a systemd credential (LoadCredential=) and set {credential_key}: <name>")
    return f"an inline {key} is not accepted, because config files get copied around; " + ", or ".join(ways)
