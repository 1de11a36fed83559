"""How a configuration setting is declared: a dataclass field plus its documentation.

Section dataclasses (one module per section, as in Frigate) declare every key with
:func:`setting`. That declaration is the single source of truth: the loader validates
and fills defaults from it, ``docs/configuration.md`` and the commented
``config/edgescribe.yaml`` are generated from it.
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
) -> Any:
    """Declare one key. ``help`` is one or two sentences a technician can act on."""
    metadata = {"help": help, "min": min, "max": max, "choices": choices, "unit": unit, "example": example}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)
