"""What a configuration problem is, and the error that lists every problem of one file."""

from __future__ import annotations

from dataclasses import dataclass

from edgescribe.engines.errors import ConfigError


@dataclass(frozen=True)
class Problem:
    line: int  # 1-based; 0 when the file could not be read at all
    path: str  # dotted key path, "" for the file as a whole
    message: str  # "got ...; expected ..." or a sentence

    def line_in(self, filename: str) -> str:
        where = f"{filename}:{self.line}:" if self.line else f"{filename}:"
        message = printable(self.message)
        return f"{where} {self.path}: {message}" if self.path else f"{where} {message}"


def printable(text: str) -> str:
    """``text`` with line breaks and control characters escaped, so each problem stays one line."""
    return text if text.isprintable() else repr(text)[1:-1]


class InvalidConfig(ConfigError):
    """Every problem found in one configuration file; ``str()`` is one line per problem (exit status 2)."""

    def __init__(self, filename: str, problems: list[Problem]):
        self.filename = filename
        self.problems = sorted(set(problems), key=lambda p: (p.line, p.path, p.message))
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [problem.line_in(self.filename) for problem in self.problems]
