"""Checks of this machine that check-config and run share: do the files a configuration names exist?

They run only when a configuration file is loaded (``Section.host_problems``), never when
a section is built in code, and they start nothing: they look at files, they do not open
devices or connect anywhere.
"""

from __future__ import annotations

import os
import stat
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


@dataclass
class Host:
    """This machine, as seen by a configuration loaded for check-config or run."""

    environ: typing.Mapping[str, str] = field(default_factory=lambda: dict(os.environ))

    @property
    def under_systemd(self) -> bool:
        return bool(self.environ.get("INVOCATION_ID"))


def unreadable_file(path: str | Path) -> Optional[str]:
    """Why ``path`` cannot be read as a file (None when it can)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        return f"cannot read {path}: {error.strerror or error}"
    except ValueError:  # a NUL in the name
        return f"cannot read {path}: a file name cannot contain a NUL character"
    if stat.S_ISDIR(mode):
        return f"{path} is a directory; expected a file"
    if not stat.S_ISREG(mode):  # a device or a pipe: reading it could block or never end
        return f"{path} is not a regular file"
    if not os.access(path, os.R_OK):
        return f"cannot read {path}: permission denied for this user"
    return None


def readable_by_everyone(path: str | Path) -> bool:
    try:
        return bool(os.stat(path).st_mode & stat.S_IROTH)
    except (OSError, ValueError):
        return False
