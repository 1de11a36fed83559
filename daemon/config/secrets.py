"""The MQTT password: read from a file or a systemd credential, never from the YAML itself.

One reader for everyone: the MQTT link reads the password with it when it connects, and
loading a configuration for check-config or run reads it too, so a missing or empty
password file is reported at start-up with the key's line instead of at the first connect.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Optional

from edgescribe.daemon.config.host import unreadable_file
from edgescribe.engines.errors import ConfigError

MAX_SECRET_BYTES = 4096  # the password is the first line; nothing past this is read

# A systemd credential is a file name inside $CREDENTIALS_DIRECTORY: no "/", and no leading
# dot, so neither "..", "." nor a path can read a file outside the directory.
CREDENTIAL_PATTERN = r"[A-Za-z0-9_@-][A-Za-z0-9_.@-]{0,127}"
CREDENTIAL_TEXT = "a credential name of letters, digits, '_', '-', '@' and '.', not starting with '.' (no path)"


class MqttSecrets(typing.Protocol):
    password_file: str
    password_credential: str


def password_source(config: MqttSecrets, environ: Optional[typing.Mapping[str, str]] = None) -> Optional[tuple[str, Path]]:
    """(key, file) the password is read from; None when none is configured.

    Raises ``ConfigError`` for a credential when the service runs without credentials."""
    environ = os.environ if environ is None else environ
    if config.password_credential:
        directory = environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ConfigError(
                f"mqtt.password_credential: '{config.password_credential}' is set but $CREDENTIALS_DIRECTORY is not "
                "(run under systemd with LoadCredential=, or use mqtt.password_file)")
        return "mqtt.password_credential", Path(directory) / config.password_credential
    if config.password_file:
        return "mqtt.password_file", Path(config.password_file)
    return None


def read_first_line(path: Path) -> str:
    """The password on the first line of ``path``; ``ValueError`` saying why it cannot be had."""
    problem = unreadable_file(path)
    if problem:
        raise ValueError(problem)
    try:
        with open(path, "rb") as file:
            first = file.read(MAX_SECRET_BYTES).split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8")
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    if not first:
        raise ValueError(f"{path} is empty (the password must be on its first line)")
    return first


def read_password(config: MqttSecrets, environ: Optional[typing.Mapping[str, str]] = None) -> Optional[str]:
    """The password from ``password_credential`` (systemd) or ``password_file``; None if neither is set."""
    source = password_source(config, environ)
    if source is None:
        return None
    key, path = source
    try:
        return read_first_line(path)
    except ValueError as error:
        raise ConfigError(f"{key}: {error}") from None
