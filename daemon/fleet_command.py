"""``edgescribe fleet``: every device on a (plant) broker at a glance.

Subscribes to ``<prefix>/+/availability``, ``<prefix>/+/health`` and the bridges'
``<prefix>/bridge/+`` state, and shows one row per device (daemon/fleet_view.py). On a
terminal the table refreshes in place until q or Ctrl-C; piped, it waits for the retained
messages, prints the table (or JSON with --json) once and exits, like ``systemctl list-units``.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import ssl
import sys
import termios
import threading
import time
import tty
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgescribe.daemon.config.host import unreadable_file
from edgescribe.daemon.config.secrets import read_first_line
from edgescribe.daemon.fleet_view import FleetModel, rows_json, summary_line, table_lines
from edgescribe.daemon.mqtt_link import describe_connect_failure
from edgescribe.engines.errors import EdgescribeError

CONNECT_TIMEOUT_S = 10.0

# ANSI: alternate screen, cursor home, clear to end of line / of screen, reverse video
_ENTER, _LEAVE = "\x1b[?1049h\x1b[?25l", "\x1b[?25h\x1b[?1049l"
_HOME, _EOL, _EOS = "\x1b[H", "\x1b[K", "\x1b[J"
_REVERSE, _PLAIN = "\x1b[7m", "\x1b[0m"


class FleetError(EdgescribeError):
    """The fleet view cannot reach or read the broker."""


@dataclass(frozen=True)
class Broker:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", required=True, metavar="HOST[:PORT]",
                        help="the (plant) broker the devices publish to; port 1883, or 8883 with TLS")
    parser.add_argument("--prefix", default="edgescribe", help="the devices' mqtt.topic_prefix (default %(default)s)")
    parser.add_argument("--tls", action="store_true", help="connect with TLS (implied by any --tls-* file)")
    parser.add_argument("--tls-ca-file", metavar="PEM",
                        help="CA the broker certificate must chain to (default: system CAs)")
    parser.add_argument("--tls-cert-file", metavar="PEM", help="client certificate, for brokers that require one")
    parser.add_argument("--tls-key-file", metavar="PEM", help="private key of --tls-cert-file")
    parser.add_argument("--username", help="broker user name")
    parser.add_argument("--password-file", metavar="FILE", help="file whose first line is the broker password")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON once and exit")
    parser.add_argument("--wait", type=float, default=2.0, metavar="S",
                        help="when piped: how long to collect retained messages before printing (default %(default)s)")
    parser.add_argument("--stale-after", type=float, default=90.0, metavar="S",
                        help="flag a device with no health for this long (default %(default)s: three 30-s intervals)")
    parser.add_argument("--refresh", type=float, default=1.0, metavar="S", help="terminal refresh interval")


def parse_broker(text: str, tls: bool) -> Broker:
    host, _, port = text.rpartition(":") if ":" in text and not text.endswith("]") else (text, "", "")
    host = host.strip("[]")
    if not host:
        raise FleetError(f"--broker: '{text}' has no host name (expected HOST or HOST:PORT)")
    if not port:
        return Broker(host, 8883 if tls else 1883)
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise FleetError(f"--broker: '{port}' is not a port number (1-65535)")
    return Broker(host, int(port))


class FleetClient:
    """A paho client feeding a FleetModel; reconnects by itself once the first connect worked."""

    def __init__(self, args: argparse.Namespace, model: FleetModel):
        self.model = model
        self.lock = threading.Lock()
        self.tls = bool(args.tls or args.tls_ca_file or args.tls_cert_file or args.tls_key_file)
        self.broker = parse_broker(args.broker, self.tls)
        self._connack = threading.Event()
        self._refusal: Optional[str] = None
        self.connected = False
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311, clean_session=True)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        if args.username:
            self._client.username_pw_set(args.username, self._password(args.password_file))
        elif args.password_file:
            raise FleetError("--password-file: needs --username")
        if self.tls:
            self._set_tls(args)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    @staticmethod
    def _password(path: Optional[str]) -> Optional[str]:
        if not path:
            return None
        try:
            return read_first_line(Path(path))
        except ValueError as error:
            raise FleetError(f"--password-file: {error}") from None

    def _set_tls(self, args: argparse.Namespace) -> None:
        if bool(args.tls_cert_file) != bool(args.tls_key_file):
            raise FleetError("--tls-cert-file and --tls-key-file go together")
        for option, path in (("--tls-ca-file", args.tls_ca_file), ("--tls-cert-file", args.tls_cert_file),
                             ("--tls-key-file", args.tls_key_file)):
            problem = path and unreadable_file(Path(path))
            if problem:
                raise FleetError(f"{option}: {problem}")
        try:
            self._client.tls_set(ca_certs=args.tls_ca_file or None, certfile=args.tls_cert_file or None,
                                 keyfile=args.tls_key_file or None)
        except (ssl.SSLError, OSError, ValueError) as error:
            raise FleetError(f"--tls-*: cannot load the TLS files: {describe_connect_failure(error)}") from None

    def connect(self) -> None:
        """Connect and subscribe, or raise FleetError with the reason in one line."""
        try:
            self._client.connect(self.broker.host, self.broker.port, keepalive=30)
        except (OSError, ssl.SSLError, ValueError) as error:
            raise FleetError(f"cannot connect to the broker {self.broker}: {describe_connect_failure(error)}") from None
        self._client.loop_start()
        if not self._connack.wait(CONNECT_TIMEOUT_S):
            self.close()
            raise FleetError(f"the broker {self.broker} did not answer within {CONNECT_TIMEOUT_S:.0f} s")
        if self._refusal:
            self.close()
            raise FleetError(f"the broker {self.broker} refused the connection: {self._refusal}")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refusal = str(reason_code).lower().replace("not authorized", "not authorised")
            client.disconnect()  # a refused login does not get better by retrying
        else:
            self.connected = True
            client.subscribe([(topic, 1) for topic in self.model.topics])
        self._connack.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected = False

    def _on_message(self, client, userdata, message) -> None:
        with self.lock:
            self.model.update(message.topic, message.payload, bool(message.retain), time.time())


def _print_once(client: FleetClient, args: argparse.Namespace) -> None:
    time.sleep(max(0.0, args.wait))
    with client.lock:
        rows = client.model.rows(time.time())
    text = rows_json(rows) if args.json else "\n".join(table_lines(rows) + [summary_line(rows)])
    try:
        print(text, flush=True)
    except BrokenPipeError:  # piped into head: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _frame(client: FleetClient) -> str:
    width, height = shutil.get_terminal_size()
    with client.lock:
        rows = client.model.rows(time.time())
    link = "connected" if client.connected else "RECONNECTING"
    header = (f"edgescribe fleet  {client.broker} ({link})  {summary_line(rows)}  "
              f"{time.strftime('%H:%M:%S', time.gmtime())} UTC  q quits")
    lines = table_lines(rows)
    shown = lines[: max(1, height - 3)]
    out = [header[:width], ""]
    for index, line in enumerate(shown):
        line = line[:width]
        out.append(f"{_REVERSE}{line}{_PLAIN}" if index and rows[index - 1].flag else line)
    if len(lines) > len(shown):
        out.append(f"... {len(lines) - len(shown)} more rows (flagged rows come first)"[:width])
    return _HOME + "".join(f"{line}{_EOL}\n" for line in out).rstrip("\n") + _EOS


def _watch(client: FleetClient, refresh: float) -> None:
    stdin = sys.stdin.fileno() if sys.stdin.isatty() else None
    saved = termios.tcgetattr(stdin) if stdin is not None else None
    sys.stdout.write(_ENTER)
    try:
        if stdin is not None:
            tty.setcbreak(stdin)
        while True:
            sys.stdout.write(_frame(client))
            sys.stdout.flush()
            if stdin is None:
                time.sleep(refresh)
            elif select.select([stdin], [], [], refresh)[0] and os.read(stdin, 1) in (b"q", b"Q"):
                return
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        sys.stdout.write(_LEAVE)
        sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    client = FleetClient(args, FleetModel(prefix=args.prefix, stale_after_s=args.stale_after))
    client.connect()
    try:
        if args.json or not sys.stdout.isatty():
            _print_once(client, args)
        else:
            _watch(client, args.refresh)
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
    return 0
