"""``edgescribe fleet`` against real mosquitto brokers: the piped table and JSON, and one-line errors
for an unreachable broker, bad credentials and bad TLS files; then in a real terminal (tmux)
on a simulated fleet, as a technician sees it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.daemon.test_fleet_view import health
from tests.fixtures.mosquitto import (Mosquitto, free_port, make_ca_and_server_cert, make_password_file,  # noqa: F401
                                     mosquitto)

REPO = Path(__file__).resolve().parents[2]


def fleet(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgescribe.daemon.cli", "fleet", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def publish_retained(port: int, messages: dict[str, str]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", port)
    client.loop_start()
    for topic, payload in messages.items():
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def test_piped_it_prints_one_row_per_device_then_json(mosquitto):
    now = time.time()
    publish_retained(mosquitto.port, {
        "edgescribe/press-1/availability": "online", "edgescribe/press-1/health": json.dumps(health("press-1", now)),
        "edgescribe/press-2/availability": "offline",
        "edgescribe/press-2/health": json.dumps(health("press-2", now - 600)),
        "edgescribe/press-3/availability": "online",
        "edgescribe/press-3/transcript/line1/final": "{}",  # not a row
    })
    result = fleet("--broker", f"127.0.0.1:{mosquitto.port}", "--wait", "1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["DEVICE", "STATE", "FLAG", "STREAMS"]
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert set(rows) == {"press-1", "press-2", "press-3"}
    assert rows["press-2"].split()[1:3] == ["offline", "OFFLINE"] and rows["press-2"].rstrip().endswith("10m")
    assert rows["press-3"].split()[1:4] == ["online", "NO", "HEALTH"]
    assert rows["press-1"].split()[1:5] == ["online", "2/2", "tiny.en", "tensorrt"]
    assert lines[-1] == "3 devices, 1 ok, 2 flagged"

    result = fleet("--broker", f"127.0.0.1:{mosquitto.port}", "--json", "--wait", "1")
    by_device = {row["device"]: row for row in json.loads(result.stdout)}
    assert by_device["press-1"]["flag"] == "" and by_device["press-1"]["streams_up"] == 2
    assert by_device["press-2"]["flag"] == "OFFLINE"


def one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("edgescribe fleet: error: ")
    for fragment in fragments:
        assert fragment in line, line


def test_unreachable_broker_and_bad_arguments_are_one_line():
    one_line_error(fleet("--broker", f"127.0.0.1:{free_port()}"), "cannot connect to the broker", "connection refused")
    one_line_error(fleet("--broker", "127.0.0.1:http"), "--broker: 'http' is not a port number")
    one_line_error(fleet("--broker", "127.0.0.1", "--password-file", "/nonexistent/pw", "--username", "u"),
                   "--password-file: cannot read /nonexistent/pw")


def test_bad_credentials_are_one_line(tmp_path):
    password_file = make_password_file(tmp_path / "passwd", {"fleet-viewer": "right"})
    broker = Mosquitto(tmp_path / "broker", password_file=password_file)
    broker.start()
    try:
        (tmp_path / "wrong").write_text("wrong\n")
        one_line_error(fleet("--broker", f"127.0.0.1:{broker.port}", "--username", "fleet-viewer",
                             "--password-file", str(tmp_path / "wrong")),
                       f"the broker 127.0.0.1:{broker.port} refused the connection", "not authorised")
        (tmp_path / "right").write_text("right\n")
        result = fleet("--broker", f"127.0.0.1:{broker.port}", "--username", "fleet-viewer",
                       "--password-file", str(tmp_path / "right"), "--wait", "0.2")
        assert result.returncode == 0, result.stderr
    finally:
        broker.stop()


def test_bad_tls_files_and_an_untrusted_broker_are_one_line(tmp_path):
    tls = make_ca_and_server_cert(tmp_path / "tls")
    other_ca = make_ca_and_server_cert(tmp_path / "other", name="other").ca_file
    broker = Mosquitto(tmp_path / "broker", tls=tls)
    broker.start()
    try:
        address = f"localhost:{broker.port}"
        one_line_error(fleet("--broker", address, "--tls-ca-file", str(tmp_path / "missing.pem")),
                       "--tls-ca-file: cannot read", "missing.pem")
        (tmp_path / "garbage.pem").write_text("not a certificate\n")
        one_line_error(fleet("--broker", address, "--tls-ca-file", str(tmp_path / "garbage.pem")),
                       "--tls-*: cannot load the TLS files")
        one_line_error(fleet("--broker", address, "--tls-cert-file", str(tls.cert_file)),
                       "--tls-cert-file and --tls-key-file go together")
        one_line_error(fleet("--broker", address, "--tls-ca-file", str(other_ca)), "certificate verify failed")
        result = fleet("--broker", address, "--tls-ca-file", str(tls.ca_file), "--wait", "0.2")
        assert result.returncode == 0, result.stderr
    finally:
        broker.stop()


TMUX_SOCKET = f"edgescribe-test-{uuid.uuid4().hex[:8]}"  # a private tmux server: other sessions stay untouched


def tmux(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["tmux", "-L", TMUX_SOCKET, *args], capture_output=True, text=True, check=check, timeout=10)


def test_a_technician_watches_a_simulated_fleet_in_a_terminal(tmp_path, mosquitto):
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed (scripts/setup.sh --dev installs it)")
    # 8 devices with quick health; one loses power after 4 s and its broker notices after 1.5 x 2 s keepalive
    simulation = subprocess.Popen(
        [sys.executable, "scripts/simulate_fleet.py", "--broker", f"127.0.0.1:{mosquitto.port}", "--devices", "8",
         "--health-interval", "1", "--finals-per-min", "30", "--keepalive", "2", "--duration", "25",
         "--vanish", "1", "--vanish-after", "4"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    session = f"fleet-{uuid.uuid4().hex[:8]}"
    command = (f"cd {REPO} && {sys.executable} -m edgescribe.daemon.cli fleet --broker 127.0.0.1:{mosquitto.port} "
               "--stale-after 5")
    tmux("new-session", "-d", "-s", session, "-x", "150", "-y", "40", command)
    try:
        def screen() -> list[str]:
            return tmux("capture-pane", "-p", "-t", session).stdout.splitlines()

        def wait_for(predicate, timeout: float) -> list[str]:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                lines = screen()
                if predicate(lines):
                    return lines
                time.sleep(0.5)
            return screen()

        def rows(lines):
            return [line for line in lines if line.startswith("sim-")]

        lines = wait_for(lambda lines: len(rows(lines)) == 8 and all("2/2" in row for row in rows(lines)), 15)
        assert lines[0].startswith("edgescribe fleet  127.0.0.1:") and "(connected)" in lines[0], lines
        assert lines[2].split()[:3] == ["DEVICE", "STATE", "FLAG"], lines
        assert len(rows(lines)) == 8 and all("2/2" in row for row in rows(lines)), lines
        lines = wait_for(lambda lines: any("OFFLINE" in row for row in rows(lines)), 15)
        offline = [row for row in rows(lines) if "OFFLINE" in row]
        assert len(offline) == 1 and offline[0].split()[1] == "offline", lines
        assert rows(lines)[0] == offline[0], "the flagged device is not at the top"
        assert "8 devices, 7 ok, 1 flagged" in lines[0], lines
        tmux("send-keys", "-t", session, "q")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and tmux("has-session", "-t", session, check=False).returncode == 0:
            time.sleep(0.2)
        assert tmux("has-session", "-t", session, check=False).returncode != 0, "q did not quit"
    finally:
        tmux("kill-server", check=False)
        simulation.kill()
        simulation.wait()
