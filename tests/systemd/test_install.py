"""scripts/install.sh as far as it can run off a Jetson: clean refusals, a dry-run plan, and the
local broker it sets up (run with a real mosquitto and real MQTT clients)."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
from types import SimpleNamespace
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgescribe.daemon.config import load_config
from edgescribe.daemon.config.mqtt import HomeAssistantConfig
from edgescribe.daemon.config.secrets import read_password
from edgescribe.daemon.homeassistant import discovery_messages
from edgescribe.daemon.publisher import Topics
from tests.fixtures.mosquitto import Mosquitto, Subscriber, free_port, mosquitto  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "scripts" / "install.sh"


def install(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
    return subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=120, env=env)


def test_script_parses_and_passes_shellcheck():
    assert subprocess.run(["bash", "-n", str(INSTALL)], capture_output=True, timeout=30).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", str(INSTALL)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


@pytest.mark.skipif(Path("/etc/nv_tegra_release").exists(), reason="this is a Jetson")
def test_refuses_a_machine_that_is_not_a_jetson_in_one_line(tmp_path):
    result = install("--dry-run", "--root", str(tmp_path))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (
        f"install.sh: error: not a Jetson: {tmp_path}/etc/nv_tegra_release is missing "
        "(this installer is for Jetson Orin with JetPack 6)\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_refuses_an_older_jetpack(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nv_tegra_release").write_text("# R35 (release), REVISION: 4.1, GCID: 1, BOARD: t186ref\n")
    result = install("--dry-run", "--root", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "install.sh: error: JetPack 6 (L4T R36) is required; /etc/nv_tegra_release says: "
        "# R35 (release), REVISION: 4.1, GCID: 1, BOARD: t186ref"
    ]


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path):
    result = install("--dry-run", "--skip-platform-check", "--root", str(tmp_path), "--model", "base")
    assert result.returncode == 0, result.stderr
    plan = result.stdout
    assert f"python3 -m venv --system-site-packages {tmp_path}/opt/edgescribe/venv" in plan
    assert f"pip install --quiet --upgrade {REPO}[jetson,systemd,models-base]" in plan
    assert f"would write {tmp_path}/etc/edgescribe/config.yaml" in plan
    assert "edgescribe export --source base --out" in plan
    assert "edgescribe build-engines --config" in plan
    assert f"install -D -m 0644 {REPO}/systemd/edgescribe.service {tmp_path}/etc/systemd/system/edgescribe.service" in plan
    assert "skipped (--root): systemctl enable edgescribe-engines.service edgescribe.service" in plan
    # no broker answers below a fresh root: the local one is set up, with a login for the daemon
    assert f"would write {tmp_path}/etc/edgescribe/mqtt-password (a new random password)" in plan
    assert f"would write {tmp_path}/etc/mosquitto/conf.d/edgescribe.conf" in plan
    assert f"would run: mosquitto_passwd {tmp_path}/etc/mosquitto/edgescribe.passwd edgescribe" in plan
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_dry_run_keeps_an_existing_config(tmp_path):
    (tmp_path / "etc" / "edgescribe").mkdir(parents=True)
    (tmp_path / "etc" / "edgescribe" / "config.yaml").write_text("device_id: mine\n")
    (tmp_path / "etc" / "edgescribe" / "mqtt-password").write_text("secret\n")
    result = install("--dry-run", "--skip-platform-check", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert f"keeping your {tmp_path}/etc/edgescribe/config.yaml" in result.stdout
    assert "LoadCredential=mqtt-password:/etc/edgescribe/mqtt-password" in result.stdout
    assert (tmp_path / "etc" / "edgescribe" / "config.yaml").read_text() == "device_id: mine\n"


def test_uninstall_dry_run_keeps_config_and_spool(tmp_path):
    for d in ("opt/edgescribe/venv", "etc/edgescribe", "var/lib/edgescribe/outbox", "var/lib/edgescribe/model", "var/cache/edgescribe"):
        (tmp_path / d).mkdir(parents=True)
    result = install("--dry-run", "--uninstall", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    removed = [line.split()[-1] for line in result.stdout.splitlines() if line.startswith("would run: rm -rf")]
    assert removed == [f"{tmp_path}/opt/edgescribe", f"{tmp_path}/var/cache/edgescribe", f"{tmp_path}/var/lib/edgescribe/model"]


def test_unknown_option_is_one_line():
    result = install("--frobnicate")
    assert (result.returncode, result.stderr) == (1, "install.sh: error: unknown option --frobnicate (see --help)\n")


# --- The local broker install.sh sets up, checked with a real mosquitto and real clients. ---

# /etc/mosquitto/mosquitto.conf as Debian and Ubuntu's mosquitto package ship it.
STOCK_MOSQUITTO_CONF = """\
# Place your local configuration in /etc/mosquitto/conf.d/
pid_file /run/mosquitto/mosquitto.pid

persistence true
persistence_location /var/lib/mosquitto/

log_dest file /var/log/mosquitto/mosquitto.log

include_dir /etc/mosquitto/conf.d
"""
DEVICE = "line3-press"


def target_root(root: Path, port: int, mqtt_lines: str) -> Path:
    """A system below ``root`` as install.sh finds it after its earlier steps: a configuration,
    edgescribe in the venv (this checkout, through the test's interpreter) and mosquitto's package files."""
    model = root / "var/lib/edgescribe/model"
    model.mkdir(parents=True)
    (root / "etc/edgescribe").mkdir(parents=True)
    (root / "etc/edgescribe/config.yaml").write_text(
        f"device_id: {DEVICE}\nmodels:\n  serving: {model}\nmqtt:\n  port: {port}\n{mqtt_lines}")
    venv_bin = root / "opt/edgescribe/venv/bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (venv_bin / "python").chmod(0o755)
    (root / "etc/mosquitto/conf.d").mkdir(parents=True)
    (root / "etc/mosquitto/mosquitto.conf").write_text(STOCK_MOSQUITTO_CONF)
    return root


DAEMON_LOGIN = "  username: edgescribe\n  password_file: /etc/edgescribe/mqtt-password\n"


class InstalledBroker(Mosquitto):
    """The fixture's real mosquitto, run with what install.sh wrote below ``root``: a main file
    that, like the stock one, only includes conf.d (plus this test's log, no persistence, user
    root), and install.sh's conf.d snippet with its paths moved below ``root``."""

    def __init__(self, workdir: Path, root: Path, port: int):
        super().__init__(workdir)
        self.root, self.port = root, port

    def _write_config(self) -> Path:
        conf_d = self.workdir / "conf.d"
        conf_d.mkdir(exist_ok=True)
        for snippet in (self.root / "etc/mosquitto/conf.d").glob("*.conf"):
            (conf_d / snippet.name).write_text(snippet.read_text().replace("/etc/mosquitto/", f"{self.root}/etc/mosquitto/"))
        config = self.workdir / "mosquitto.conf"
        config.write_text(f"persistence false\nlog_dest file {self.log_file}\nlog_type all\n"
                          f"user root\ninclude_dir {conf_d}\n")
        return config


@dataclass
class Installed:
    root: Path
    broker: InstalledBroker
    daemon: tuple[str, str]  # the daemon's user name and password, read as the daemon reads them
    first_password: str  # the password file's text after the first run
    first_run: str  # install.sh's output on the first run


def require_root_and_mosquitto() -> None:
    if os.geteuid() != 0:
        pytest.skip("install.sh writes files owned by root:mosquitto; run the tests as root")
    for tool in ("mosquitto", "mosquitto_passwd"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (apt-get install mosquitto)")


def add_account(root: Path, user: str, password: str, acl_lines: str) -> None:
    """An account added the way docs/install.md tells an operator to."""
    subprocess.run(["mosquitto_passwd", str(root / "etc/mosquitto/edgescribe.passwd"), user],
                   input=f"{password}\n{password}\n", text=True, check=True, capture_output=True, timeout=30)
    with open(root / "etc/mosquitto/edgescribe.acl", "a") as acl:
        acl.write(f"\nuser {user}\n{acl_lines}")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """install.sh --broker-only on a stock mosquitto; then a read-only "dashboard" account and an
    "observer" that may read everything are added as docs/install.md says, install.sh runs again
    (an upgrade), and the broker starts with the result."""
    require_root_and_mosquitto()
    base = tmp_path_factory.mktemp("broker")
    port = free_port()
    root = target_root(base / "root", port, DAEMON_LOGIN)
    first = install("--broker-only", "--root", str(root))
    assert first.returncode == 0, first.stderr
    first_password = (root / "etc/edgescribe/mqtt-password").read_text()
    add_account(root, "dashboard", "dashboard-pw", "topic read edgescribe/#\n")
    add_account(root, "observer", "observer-pw", "topic read #\n")
    again = install("--broker-only", "--root", str(root))
    assert again.returncode == 0, again.stderr
    mqtt_config = load_config(root / "etc/edgescribe/config.yaml", check_host=False).mqtt
    # the daemon's own reader, pointed below root
    password = read_password(SimpleNamespace(password_file=f"{root}{mqtt_config.password_file}", password_credential=""))
    broker = InstalledBroker(base / "run", root, port)
    broker.start()
    yield Installed(root, broker, (mqtt_config.username, password), first_password, first.stdout)
    broker.stop()


def login(port: int, username: Optional[str] = None, password: Optional[str] = None):
    """(CONNACK reason, connected client or None) for a real paho MQTT 5 client, as the daemon connects."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if username is not None:
        client.username_pw_set(username, password)
    answered, result = threading.Event(), {}

    def on_connect(client, userdata, flags, reason_code, properties):
        result["reason"] = reason_code
        answered.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert answered.wait(10), "no CONNACK within 10 s"
    if result["reason"].is_failure:
        client.loop_stop()
        client.disconnect()
        return str(result["reason"]), None
    return str(result["reason"]), client


def close(client) -> None:
    client.disconnect()
    client.loop_stop()


def publish_all(client, messages: list[tuple[str, bytes]]) -> None:
    for topic, payload in messages:
        client.publish(topic, payload, qos=1).wait_for_publish(10)


def delivered(subscriber: Subscriber, sent: list[tuple[str, bytes]], sentinel: str) -> set[str]:
    """Which of ``sent`` reached ``subscriber``, judged once ``sentinel`` (published after them
    on the same connection, so delivered after them) has arrived."""
    got = subscriber.wait_for(lambda m: any(r.topic == sentinel for r in m), 10)
    assert any(r.topic == sentinel for r in got), f"the sentinel {sentinel} never arrived"
    return {r.topic for r in got} & {topic for topic, _ in sent}


def final_topic(device: str = DEVICE) -> str:
    return Topics("edgescribe", device).transcript("line1", "final")


# CONNACK reasons that refuse a client (mosquitto 2.0 answers a wrong password with the first).
REFUSED = ("Not authorized", "Bad user name or password")


def test_anonymous_clients_are_refused(installed):
    assert login(installed.broker.port)[0] in REFUSED


def test_a_wrong_password_is_refused(installed):
    user, password = installed.daemon
    assert login(installed.broker.port, user, password + "x")[0] in REFUSED
    assert login(installed.broker.port, "dashboard", password)[0] in REFUSED
    reason, client = login(installed.broker.port, user, password)
    assert reason == "Success"
    close(client)


def test_the_daemon_publishes_its_tree_and_discovery_and_readers_receive_them(installed):
    port = installed.broker.port
    dashboard = Subscriber(port, ["edgescribe/#"], username="dashboard", password="dashboard-pw").connect()
    observer = Subscriber(port, ["#"], username="observer", password="observer-pw").connect()
    reason, daemon = login(port, *installed.daemon)
    assert reason == "Success"
    topics = Topics("edgescribe", DEVICE)
    # what the daemon publishes: its own topics and Home Assistant discovery (discovery_messages)
    mine = [(final_topic(), b'{"text": "press two jammed"}'), (topics.availability, b"online"),
            (topics.health, b"{}"), (topics.event, b"{}")]
    discovery = discovery_messages(HomeAssistantConfig(), topics, "test")
    sentinel = f"{topics.base}/sentinel"
    publish_all(daemon, mine + discovery + [(sentinel, b"")])
    close(daemon)
    assert delivered(dashboard, mine, sentinel) == {t for t, _ in mine}
    assert delivered(observer, mine + discovery, sentinel) == {t for t, _ in mine + discovery}
    dashboard.disconnect()
    observer.disconnect()


def test_the_daemon_cannot_publish_outside_its_tree(installed):
    port = installed.broker.port
    observer = Subscriber(port, ["#"], username="observer", password="observer-pw").connect()
    reason, daemon = login(port, *installed.daemon)
    assert reason == "Success"
    outside = [(final_topic("line4-saw"), b'{"text": "spoofed"}'), ("edgescribe/line4-saw", b"x"),
               ("factory/alarm", b"x"), ("homeassistant/status", b"offline"),
               ("homeassistant/sensor/edgescribe_line4_saw_cpu/state", b"1")]
    sentinel = f"edgescribe/{DEVICE}/sentinel-outside"
    publish_all(daemon, outside + [(sentinel, b"")])
    close(daemon)
    assert delivered(observer, outside, sentinel) == set()
    observer.disconnect()


def test_the_read_only_subscriber_cannot_publish_a_fake_final(installed):
    port = installed.broker.port
    observer = Subscriber(port, ["#"], username="observer", password="observer-pw").connect()
    reason, dashboard = login(port, "dashboard", "dashboard-pw")
    assert reason == "Success"
    fake = [(final_topic(), b'{"text": "all clear"}'), (f"edgescribe/{DEVICE}/availability", b"offline")]
    publish_all(dashboard, fake)
    close(dashboard)
    reason, daemon = login(port, *installed.daemon)
    sentinel = f"edgescribe/{DEVICE}/sentinel-fake"
    publish_all(daemon, [(sentinel, b"")])  # the daemon's, after the dashboard's attempts
    close(daemon)
    assert delivered(observer, fake, sentinel) == set()
    observer.disconnect()


def test_the_broker_listens_on_loopback_only(installed):
    snippet = (installed.root / "etc/mosquitto/conf.d/edgescribe.conf").read_text()
    listeners = sorted(line.split()[2] for line in snippet.splitlines() if line.startswith("listener "))
    assert listeners in (["127.0.0.1"], ["127.0.0.1", "::1"])
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # picks the outgoing interface; sends nothing
            outside = probe.getsockname()[0]
    except OSError:
        pytest.skip("this machine has no route off loopback to try")
    if outside.startswith("127."):
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((outside, installed.broker.port), timeout=5).close()


def test_the_password_is_random_hashed_private_and_kept(installed, tmp_path):
    root = installed.root
    password_file = root / "etc/edgescribe/mqtt-password"
    password = password_file.read_text()
    assert password == installed.first_password  # a second run keeps it
    assert len(password.strip()) >= 32 and password.strip() == installed.daemon[1]
    assert stat.S_IMODE(password_file.stat().st_mode) in (0o600, 0o640)
    # never written to the output, the ACL or mosquitto's password file, which holds only a hash
    for text in (installed.first_run, (root / "etc/mosquitto/edgescribe.passwd").read_text(),
                 (root / "etc/mosquitto/edgescribe.acl").read_text()):
        assert installed.daemon[1] not in text
    assert (root / "etc/mosquitto/edgescribe.passwd").read_text().startswith("edgescribe:$7$")
    other = target_root(tmp_path / "root", free_port(), DAEMON_LOGIN)
    assert install("--broker-only", "--root", str(other)).returncode == 0
    assert (other / "etc/edgescribe/mqtt-password").read_text() != password  # not a fixed one


def test_a_second_run_keeps_the_operators_accounts(installed):
    acl = (installed.root / "etc/mosquitto/edgescribe.acl").read_text()
    assert acl.count("# >>> edgescribe") == 1 and acl.count("user edgescribe\n") == 1
    assert "user dashboard\ntopic read edgescribe/#\n" in acl and "user observer\ntopic read #\n" in acl
    users = [line.split(":")[0] for line in (installed.root / "etc/mosquitto/edgescribe.passwd").read_text().split()]
    assert users == ["edgescribe", "dashboard", "observer"]


@pytest.mark.parametrize("own_file", ["mosquitto.conf", "conf.d/edgescribe.conf", "conf.d/site.conf"])
def test_an_operators_broker_configuration_is_left_alone(tmp_path, own_file):
    require_root_and_mosquitto()
    root = target_root(tmp_path / "root", free_port(), DAEMON_LOGIN)
    own = "listener 1883 0.0.0.0\nallow_anonymous true\n"
    (root / "etc/mosquitto" / own_file).write_text(own)  # edgescribe.conf: one without install.sh's mark
    before = {p: p.read_text() for p in (root / "etc/mosquitto").rglob("*") if p.is_file()}
    result = install("--broker-only", "--root", str(root))
    assert result.returncode == 0, result.stderr
    assert "was configured by someone else: leaving it alone" in result.stdout
    assert {p: p.read_text() for p in (root / "etc/mosquitto").rglob("*") if p.is_file()} == before
    assert not (root / "etc/edgescribe/mqtt-password").exists()


def test_a_config_without_a_login_stops_before_the_broker_is_locked(tmp_path):
    require_root_and_mosquitto()
    root = target_root(tmp_path / "root", free_port(), "")
    result = install("--broker-only", "--root", str(root))
    assert result.returncode == 2
    assert result.stderr == (
        "install.sh: error: the local broker refuses anonymous clients: set mqtt.username (edgescribe) and "
        f"mqtt.password_file (/etc/edgescribe/mqtt-password) in {root}/etc/edgescribe/config.yaml, "
        "then run install.sh again\n")
    assert sorted(p.name for p in (root / "etc/mosquitto").rglob("*")) == ["conf.d", "mosquitto.conf"]


def test_uninstall_removes_the_broker_files_it_added(tmp_path):
    require_root_and_mosquitto()
    root = target_root(tmp_path / "root", free_port(), DAEMON_LOGIN)
    assert install("--broker-only", "--root", str(root)).returncode == 0
    result = install("--uninstall", "--root", str(root))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (root / "etc/mosquitto").rglob("*")) == ["conf.d", "mosquitto.conf"]
    assert (root / "etc/mosquitto/mosquitto.conf").read_text() == STOCK_MOSQUITTO_CONF
    assert (root / "etc/edgescribe/mqtt-password").exists()  # /etc/edgescribe is the operator's


def test_the_checks_catch_an_open_broker(mosquitto):
    """The probes above against the stock configuration: they do tell an open broker apart."""
    reason, anonymous = login(mosquitto.port)
    assert reason == "Success"
    observer = Subscriber(mosquitto.port, ["#"]).connect()
    fake = [(final_topic(), b'{"text": "all clear"}')]
    publish_all(anonymous, fake + [("sentinel", b"")])
    close(anonymous)
    assert delivered(observer, fake, "sentinel") == {final_topic()}
    observer.disconnect()
