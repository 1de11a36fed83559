"""How a configuration section is declared: a frozen pydantic model, one :func:`setting` per key.

The declaration is the single source of truth: pydantic validates types, ranges, patterns
and defaults from it; the loader turns pydantic's errors into ``file:line:`` messages;
``docs/configuration.md``, the commented ``config/edgescribe.yaml`` and the JSON Schema
``docs/schemas/config.json`` are generated from it (``reference.py``).

Types, ranges and patterns are checked on every construction. Rules that span several
keys go in ``problems(self)``, returning (key relative to the section, message) pairs,
and checks of this machine (the files named exist and are readable) in
``host_problems(self, host)``; both run when a configuration is loaded (the loader
validates with a :class:`Loading` context; check-config and run load the same way), not
when a section is built in code, where a test may well want a password file that does
not exist yet. ``warnings(self, host)`` returns what is worth saying without refusing
the file.

A key is never silently dropped when a setting moves: the root model lists the old dotted
path in its class attribute ``moved_keys`` (old path -> the key to set instead; list
items written ``streams[].name``), and a file that still uses it gets one line naming
the new key.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo

from edgescribe.daemon.config.host import Host
from edgescribe.daemon.config.yaml_source import NULL, REJECTED, TEXT_TAGS, Scalar

REQUIRED: Any = ...


def setting(
    default: Any = REQUIRED,
    help: str = "",
    *,
    default_factory: Optional[typing.Callable[[], Any]] = None,
    min: Optional[float] = None,
    max: Optional[float] = None,
    unit: Optional[str] = None,
    example: Any = None,
    pattern: Optional[str] = None,
    pattern_text: Optional[str] = None,
) -> Any:
    """Declare one key. ``help`` is one or two sentences a technician can act on.

    ``example`` is shown in the generated reference; it replaces the value in the generated
    config only where there is no default (a required key, an empty list of sections).
    ``pattern`` is a regular expression a text value must match in full; ``pattern_text``
    says in words what it allows, for error messages. Choices are ``Literal[...]`` types.
    """
    extra = {name: value for name, value in (("unit", unit), ("pattern_text", pattern_text)) if value is not None}
    initial = {"default_factory": default_factory} if default_factory is not None else {"default": default}
    return Field(
        **initial,
        description=help,
        ge=min,
        le=max,
        pattern=f"^(?:{pattern})$" if pattern else None,
        examples=[example] if example is not None else None,
        json_schema_extra=extra or None,
    )


class Problems(ValueError):
    """Cross-key problems of one section: (key relative to the section, message) pairs."""

    def __init__(self, found: list[tuple[str, str]]):
        super().__init__("; ".join(message for _, message in found))
        self.found = found


@dataclass(frozen=True)
class Loading:
    """The validation context of a configuration being loaded: ``host`` is set when the files
    it names are to be checked on this machine too."""

    host: Optional[Host] = None


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    def problems(self) -> Iterable[tuple[str, str]]:
        return ()

    def host_problems(self, host: Host) -> Iterable[tuple[str, str]]:
        return ()

    def warnings(self, host: Host) -> Iterable[tuple[str, str]]:
        return ()

    @field_validator("*", mode="before")
    @classmethod
    def _yaml_values(cls, value: Any, info: ValidationInfo) -> Any:
        # values read from YAML arrive with their source text; the declared type picks the reading
        return as_field_value(value, cls.model_fields[info.field_name].annotation)

    @model_validator(mode="after")
    def _cross_key_rules(self, info: ValidationInfo) -> "Section":
        if not isinstance(info.context, Loading):
            return self
        found = list(self.problems())
        if info.context.host is not None:
            found += list(self.host_problems(info.context.host))
        if found:
            raise Problems(found)
        return self


# ---------------------------------------------------------------- describing a declared value


@dataclass(frozen=True)
class Spec:
    """What a value at one place must be: its type with ``Annotated``/``Optional`` taken off,
    and the constraints declared for it (min, max, unit, pattern, pattern_text)."""

    type: Any
    optional: bool
    facts: dict


def spec_of(annotation: Any, metadata: Iterable[Any] = (), extra: Optional[dict] = None) -> Spec:
    facts: dict = {}
    optional = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation, *more = typing.get_args(annotation)
            metadata = [*metadata, *more]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            optional = optional or len(args) < len(typing.get_args(annotation))
            annotation = args[0]
        else:
            break
    _collect(facts, metadata, extra)
    return Spec(annotation, optional, facts)


def _collect(facts: dict, metadata: Iterable[Any], extra: Optional[dict]) -> None:
    for item in metadata:
        if isinstance(item, FieldInfo):
            _collect(facts, item.metadata, item.json_schema_extra if isinstance(item.json_schema_extra, dict) else None)
        for name, key in (("ge", "min"), ("le", "max"), ("pattern", "pattern")):
            if getattr(item, name, None) is not None:
                facts[key] = getattr(item, name)
    facts.update(extra or {})


def field_spec(info: FieldInfo) -> Spec:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else None
    return spec_of(info.annotation, info.metadata, extra)


def item_spec(spec: Spec) -> Spec:
    """The spec of one item of a list, or one value of a mapping."""
    args = typing.get_args(spec.type)
    return spec_of(args[-1] if args else Any)


def is_section(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def choices(tp: Any) -> Optional[tuple]:
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _range_text(facts: dict) -> str:
    lo, hi, unit = facts.get("min"), facts.get("max"), facts.get("unit")
    unit_text = f" {unit}" if unit else ""
    if lo is not None and hi is not None:
        return f" from {fmt(lo)} to {fmt(hi)}{unit_text}"
    if lo is not None:
        return f" >= {fmt(lo)}{unit_text}"
    if hi is not None:
        return f" <= {fmt(hi)}{unit_text}"
    return f" ({unit})" if unit else ""


def describe(spec: Spec) -> str:
    """What a value of this spec looks like, in words (used in errors and in the docs)."""
    text = _describe_required(spec)
    return f"{text}, or null" if spec.optional else text


def _describe_required(spec: Spec) -> str:
    tp, facts = spec.type, spec.facts
    options = choices(tp)
    if options is not None:
        return "one of " + ", ".join(fmt(c) for c in options)
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {_plural(item_spec(spec))}"
    if origin is dict:
        return f"a mapping of names to {_plural(item_spec(spec))}"
    if is_section(tp):
        return f"a mapping with keys {', '.join(tp.model_fields)}"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer" + _range_text(facts)
    if tp is float:
        return "a number" + _range_text(facts)
    if tp in (str, Path):
        if facts.get("pattern_text"):
            return f"text of {facts['pattern_text']}"
        if facts.get("pattern"):
            return f"text matching {facts['pattern'].removeprefix('^(?:').removesuffix(')$')}"
        return "a path" if tp is Path else "text"
    return getattr(tp, "__name__", str(tp))


def _plural(spec: Spec) -> str:
    if is_section(spec.type):
        return "mappings"
    text = _describe_required(spec)
    for article in ("an ", "a "):
        if text.startswith(article):
            return text[len(article):].replace("integer", "integers", 1).replace("number", "numbers", 1)
    return text


# ---------------------------------------------------------------- reading YAML values by declared type


def as_field_value(value: Any, annotation: Any) -> Any:
    """A value read from YAML, as the declared type reads it: text keys take what was typed
    (``no`` stays "no", ``007`` stays "007"), numbers and booleans their YAML reading, an
    empty path means "not set" (never the current directory). Values of the wrong kind
    become ``REJECTED``, which no type accepts. Values built in code pass through."""
    if not isinstance(value, (Scalar, list, dict)):
        return value
    spec = spec_of(annotation)
    origin = typing.get_origin(spec.type)
    if isinstance(value, list):
        return [as_field_value(v, item_annotation(spec.type)) for v in value] if origin is list else value
    if isinstance(value, dict):
        return {k: as_field_value(v, item_annotation(spec.type)) for k, v in value.items()} if origin is dict else value
    return _scalar(value, spec.type)


def item_annotation(tp: Any) -> Any:
    args = typing.get_args(tp)
    return args[-1] if args else Any


def _scalar(value: Scalar, tp: Any) -> Any:
    if value.tag == NULL:
        return None
    options = choices(tp)
    if tp is str or (options and all(isinstance(c, str) for c in options)):
        return value.text if value.tag in TEXT_TAGS else REJECTED
    if tp is Path:
        if value.tag not in TEXT_TAGS:
            return REJECTED
        return Path(value.text) if value.text else None
    typed = value.typed()
    if tp is float and type(typed) is int:
        return float(typed)
    expected = {type(c) for c in options} if options else {tp}
    return typed if type(typed) in expected else REJECTED
