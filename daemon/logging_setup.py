"""Where log records go: the systemd journal with structured fields, or plain stderr.

Under systemd each record becomes a journal entry whose ``extra=`` keys are fields, so a
technician can filter: ``journalctl -u edgescribe STREAM=press-mic``. Anywhere else it is
one plain line on stderr.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable, Optional

log = logging.getLogger(__name__)

IDENTIFIER = "edgescribe"
# Attributes every LogRecord has; they are not fields a caller chose to attach.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_FORMAT = "%(levelname)s %(name)s: %(message)s"


def under_systemd(stream=None) -> bool:
    """True when stderr is connected to the journal (JOURNAL_STREAM) or systemd started us."""
    stream = stream or sys.stderr
    journal_stream = os.environ.get("JOURNAL_STREAM", "")
    if journal_stream:
        try:
            stat = os.fstat(stream.fileno())
            device, inode = (int(part) for part in journal_stream.split(":"))
            if (stat.st_dev, stat.st_ino) == (device, inode):
                return True
        except (OSError, ValueError, AttributeError):
            pass
    return bool(os.environ.get("INVOCATION_ID"))


def journal_handler(send: Optional[Callable] = None) -> logging.Handler:
    """A JournalHandler that sends the caller's ``extra=`` fields (upper-cased) and the standard
    PRIORITY/LOGGER/CODE_* fields, not every internal LogRecord attribute."""
    from systemd import journal

    send = send or journal.send

    def send_fields(text, /, **fields):  # positional: the record's own attributes include "message"
        kept = {key.upper(): value for key, value in fields.items() if key not in _RECORD_ATTRIBUTES}
        return send(text, **kept)

    handler = journal.JournalHandler(sender_function=send_fields, SYSLOG_IDENTIFIER=IDENTIFIER)
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


def setup_logging(level: str = "info", target: str = "auto", verbose: bool = False) -> logging.Handler:
    """Replace the root logger's handlers with one for ``target`` (auto, journald, stderr).

    ``level``/``target`` are ``LoggingConfig``'s values; ``verbose`` (``-v``) forces debug.
    """
    use_journal = target == "journald" or (target == "auto" and under_systemd())
    handler: Optional[logging.Handler] = None
    problem = ""
    if use_journal:
        try:
            handler = journal_handler()
        except ImportError:
            problem = "systemd-python is not installed (pip install edgescribe[systemd]); logging to stderr"
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else getattr(logging, level.upper()))
    if problem:
        log.warning(problem)
    return handler
