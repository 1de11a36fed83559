"""How a configuration setting is declared: a dataclass field plus its documentation.

Section dataclasses (one module per section, as in Frigate) declare every key with
:func:`setting`. That declaration is the single source of truth: the loader validates
and fills defaults from it, ``docs/configuration.md`` and the commented
``config/edgescribe.yaml`` are generated from it.

Supported field types: ``str``, ``int``, ``float``, ``bool``, ``pathlib.Path``,
``Optional[...]``, ``Literal[...]``, ``list[...]``, ``dict[str, ...]``, a nested section
dataclass and a list of them. Checks that span several keys go in an optional method
``problems(self) -> list[tuple[str, str]]`` on the section dataclass, returning
(key relative to the section, message) pairs; the loader reports them with line numbers.
A ``__post_init__`` that raises ``ValueError`` is reported at the section's line.

A key is never silently dropped when a setting moves: the root dataclass lists the old
dotted path in its class attribute ``moved_keys`` (``ClassVar[dict[str, str]]``, old path
-> the key to set instead; list items written ``streams[].name``), and a file that still
uses it gets one line naming the new key.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

REQUIRED = dataclasses.MISSING


def setting(
    default: Any = REQUIRED,
    help: str = "",
    *,
    default_factory: Optional[Callable[[], Any]] = None,
    min: Optional[float] = None,
    max: Optional[float] = None,
    choices: Optional[Sequence[Any]] = None,
    unit: Optional[str] = None,
    example: Any = None,
    pattern: Optional[str] = None,
    pattern_text: Optional[str] = None,
) -> Any:
    """Declare one key. ``help`` is one or two sentences a technician can act on.

    ``example`` is shown in the generated reference; it replaces the value in the generated
    config only where there is no default (a required key, an empty list of sections).
    ``pattern`` is a regular expression a text value must match in full; ``pattern_text``
    says in words what it allows, for error messages.
    """
    metadata = {
        "help": help,
        "min": min,
        "max": max,
        "choices": choices,
        "unit": unit,
        "example": example,
        "pattern": pattern,
        "pattern_text": pattern_text,
    }
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)
