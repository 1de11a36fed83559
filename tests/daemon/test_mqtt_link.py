"""MQTT link: credentials, TLS + password against a real mosquitto, clear errors, retrying, will/birth."""

from __future__ import annotations

import time

import pytest

from edgescribe.daemon.config.mqtt import HealthConfig, MqttConfig
from edgescribe.daemon.health import HealthReporter, HealthSources
from edgescribe.daemon.mqtt_link import MqttLink, read_password
from edgescribe.daemon.publisher import Publisher
from edgescribe.engines.errors import ConfigError
from tests.daemon.test_publisher import transcript
from tests.fixtures.mosquitto import (Mosquitto, Subscriber, free_port, make_ca_and_server_cert, make_password_file,
                                      mosquitto, retained, validate_payload)  # noqa: F401 (fixture)


def test_password_comes_from_a_file_or_a_systemd_credential(tmp_path):
    (tmp_path / "pw").write_text("s3cret\n")
    assert read_password(MqttConfig(password_file=str(tmp_path / "pw")), environ={}) == "s3cret"
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "mqtt-password").write_text("from-systemd")
    config = MqttConfig(password_credential="mqtt-password")
    assert read_password(config, environ={"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}) == "from-systemd"
    assert read_password(MqttConfig(), environ={}) is None


@pytest.mark.parametrize("config, environ, message", [
    (MqttConfig(password_file="/nonexistent/pw"), {}, r"mqtt.password_file: cannot read /nonexistent/pw"),
    (MqttConfig(password_credential="pw"), {}, r"CREDENTIALS_DIRECTORY is not"),
])
def test_unreadable_password_is_one_clear_config_error(config, environ, message):
    with pytest.raises(ConfigError, match=message):
        read_password(config, environ)


def test_missing_ca_file_is_a_config_error():
    with pytest.raises(ConfigError, match="mqtt.tls_"):
        MqttLink(MqttConfig(tls=True, tls_ca_file="/nonexistent/ca.pem"), "x/availability", "c")


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_birth_online_then_stopped_on_clean_stop(mosquitto, tmp_path, protocol):
    config = MqttConfig(host="127.0.0.1", port=mosquitto.port, protocol=protocol)
    publisher = Publisher.from_config(config, "dev1", tmp_path)
    publisher.start()
    assert publisher.link.wait_connected(10)
    assert retained(mosquitto.port, "edgescribe/dev1/availability") == b"online"
    publisher.stop()
    assert retained(mosquitto.port, "edgescribe/dev1/availability") == b"stopped"
    assert publisher.link.stats().state == "stopped"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    return make_ca_and_server_cert(directory, "trusted"), make_ca_and_server_cert(directory, "other")


@pytest.fixture
def tls_broker(tmp_path, tls_files):
    trusted, _ = tls_files
    password_file = make_password_file(tmp_path / "passwd", {"press7": "correct horse"})
    broker = Mosquitto(tmp_path / "broker", tls=trusted, password_file=password_file)
    broker.start()
    yield broker
    broker.stop()


def tls_publisher(broker, state_dir, ca_file, password: str, protocol: str = "5") -> Publisher:
    (state_dir / "pw").parent.mkdir(parents=True, exist_ok=True)
    (state_dir / "pw").write_text(password + "\n")
    config = MqttConfig(host="localhost", port=broker.port, tls=True, tls_ca_file=str(ca_file), username="press7",
                        password_file=str(state_dir / "pw"), reconnect_min_s=0.1, reconnect_max_s=0.3, protocol=protocol)
    return Publisher.from_config(config, "press-7", state_dir)


def test_tls_with_password_delivers(tls_broker, tls_files, tmp_path):
    trusted, _ = tls_files
    subscriber = Subscriber(tls_broker.port, ["edgescribe/#"], tls_ca=str(trusted.ca_file), username="press7",
                            password="correct horse").connect()
    publisher = tls_publisher(tls_broker, tmp_path / "state", trusted.ca_file, "correct horse")
    publisher.start()
    try:
        assert publisher.link.wait_connected(10), publisher.link.stats().last_error
        publisher.publish(transcript("final"))
        messages = subscriber.wait_for(lambda m: any(r.topic.endswith("/final") for r in m), 10)
    finally:
        publisher.stop()
        subscriber.disconnect()
    finals = [m.json() for m in messages if m.topic.endswith("/final")]
    assert [f["text"] for f in finals] == ["start the conveyor"]


def wait_for_attempts(publisher: Publisher, attempts: int, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while publisher.link.stats().failed_attempts < attempts and time.monotonic() < deadline:
        time.sleep(0.05)
    return publisher.link.stats()


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
@pytest.mark.parametrize("case", ["wrong password", "untrusted certificate"])
def test_refusals_are_clear_retried_and_keep_the_outbox(tls_broker, tls_files, tmp_path, caplog, case, protocol):
    trusted, other = tls_files
    ca_file = trusted.ca_file if case == "wrong password" else other.ca_file
    password = "wrong" if case == "wrong password" else "correct horse"
    state_dir = tmp_path / "state"
    publisher = tls_publisher(tls_broker, state_dir, ca_file, password, protocol)
    health = HealthReporter(HealthConfig(), "press-7", state_dir, lambda snapshot: None,
                            HealthSources(outbox=publisher.outbox.stats, mqtt=publisher.link.stats,
                                          messages=publisher.stats))
    publisher.start()
    try:
        publisher.publish(transcript("final"))
        stats = wait_for_attempts(publisher, 3)
        snapshot = health.snapshot()
    finally:
        publisher.stop()
    expected = "not authorised" if case == "wrong password" else "certificate verify failed"
    assert stats.failed_attempts >= 3 and stats.state != "connected"  # it kept retrying
    assert expected in stats.last_error
    assert expected in snapshot["mqtt"]["last_error"]
    validate_payload(snapshot, "health")
    logged = [r.getMessage() for r in caplog.records if r.name == "edgescribe.daemon.mqtt_link" and r.levelname == "ERROR"]
    assert len(logged) == 1 and expected in logged[0]  # one clear line, not one per attempt
    # Nothing was lost: with the right settings the stored final goes out.
    subscriber = Subscriber(tls_broker.port, ["edgescribe/#"], tls_ca=str(trusted.ca_file), username="press7",
                            password="correct horse").connect()
    fixed = tls_publisher(tls_broker, state_dir, trusted.ca_file, "correct horse")
    fixed.start()
    try:
        messages = subscriber.wait_for(lambda m: any(r.topic.endswith("/final") for r in m), 10)
    finally:
        fixed.stop()
        subscriber.disconnect()
    assert [m.json()["seq"] for m in messages if m.topic.endswith("/final")] == [1]


def test_unreachable_broker_backs_off(tmp_path):
    config = MqttConfig(host="127.0.0.1", port=free_port(), reconnect_min_s=0.1, reconnect_max_s=0.4)
    link = MqttLink(config, "x/availability", "c")
    link.start()
    time.sleep(2.0)
    link.stop()
    attempts = link.stats().failed_attempts
    # Doubling 0.1 -> 0.4 s caps the attempts in 2 s at about 2 s / 0.4 s + the ramp; no tight loop.
    assert 3 <= attempts <= 9, attempts
    assert "connection refused" in link.stats().last_error


@pytest.mark.parametrize("overrides, key", [
    (dict(reconnect_min_s=5.0, reconnect_max_s=1.0), "reconnect_max_s"),
    (dict(username="u", password_file="/a", password_credential="b"), "password_credential"),
    (dict(password_file="/a"), "username"),
    (dict(tls=True, tls_cert_file="/c.pem"), "tls_key_file"),
    (dict(tls_ca_file="/ca.pem"), "tls"),
    (dict(topic_prefix="a/#"), "topic_prefix"),
])
def test_inconsistent_mqtt_settings_are_named(overrides, key):
    assert [problem[0] for problem in MqttConfig(**overrides).problems()] == [key]
    assert MqttConfig().problems() == []
