"""Journal with structured fields under systemd, plain stderr elsewhere."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgescribe.daemon.logging_setup import journal_handler, setup_logging, under_systemd

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_detects_systemd_from_invocation_id_or_journal_stream(monkeypatch, tmp_path):
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert not under_systemd()
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef")
    assert under_systemd()
    monkeypatch.delenv("INVOCATION_ID")
    with open(tmp_path / "stream", "w") as stream:
        stat = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino}")
        assert under_systemd(stream)
        monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino + 1}")  # stderr was redirected
        assert not under_systemd(stream)


def test_journal_entries_carry_the_callers_fields():
    pytest.importorskip("systemd.journal", reason="systemd-python (edgescribe[systemd]) is not installed")
    sent = []
    handler = journal_handler(send=lambda message, /, **fields: sent.append((message, fields)))
    logger = logging.getLogger("edgescribe.test")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("stream %s down: %s", "press-mic", "device unplugged", extra={"stream": "press-mic"})
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    ((message, fields),) = sent
    assert message == "stream press-mic down: device unplugged"
    assert fields["STREAM"] == "press-mic"
    assert fields["PRIORITY"] == "4" and fields["LOGGER"] == "edgescribe.test"
    assert fields["SYSLOG_IDENTIFIER"] == "edgescribe"
    assert all(key == key.upper() for key in fields)  # journald drops lower-case field names
    assert "MSG" not in fields and "ARGS" not in fields and "LEVELNAME" not in fields


def test_setup_picks_journal_under_systemd_and_stderr_otherwise(monkeypatch):
    pytest.importorskip("systemd.journal", reason="systemd-python (edgescribe[systemd]) is not installed")
    from systemd.journal import JournalHandler

    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef")
    handler = setup_logging("warning")
    assert isinstance(handler, JournalHandler) and logging.getLogger().handlers == [handler]
    assert logging.getLogger().level == logging.WARNING
    assert isinstance(setup_logging("info", target="stderr"), logging.StreamHandler)
    monkeypatch.delenv("INVOCATION_ID")
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    handler = setup_logging("info", verbose=True)
    assert type(handler) is logging.StreamHandler and logging.getLogger().level == logging.DEBUG


def test_plain_stderr_lines_outside_systemd():
    env = {k: v for k, v in os.environ.items() if k not in ("INVOCATION_ID", "JOURNAL_STREAM")}
    code = textwrap.dedent(
        """
        import logging
        from edgescribe.daemon.logging_setup import setup_logging
        setup_logging("info")
        logging.getLogger("edgescribe.daemon.capture").info("opened %s", "hw:1,0", extra={"stream": "mic"})
        logging.getLogger("edgescribe.daemon.capture").debug("not shown")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stderr == "INFO edgescribe.daemon.capture: opened hw:1,0\n"
