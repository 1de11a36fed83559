"""Phrase alerts through the whole daemon: ``edgescribe run`` in a subprocess, real speech
from the corpus, a real mosquitto and a real subscriber; alerts validated against
docs/schemas/alert.json."""

from __future__ import annotations

import signal
import time
import urllib.request
from pathlib import Path

from edgescribe.daemon.chinese_script import converter
from tests.fixtures.daemon import finals, start_daemon, wait_for_log, write_config
from tests.fixtures.models import base_package, tiny_en_package  # noqa: F401  (fixtures)
from tests.fixtures.mosquitto import Subscriber, free_port, mosquitto, validate_payload  # noqa: F401
from tests.fixtures.scoring import cer, read_transcripts

from tests.conftest import CORPUS
# 10.4 s without a pause: "he hoped there would be stew for dinner turnips and carrots and
# bruised potatoes and fat mutton pieces ...": partials of it carry "stew for dinner" stable
# seconds before the final.
STEW = CORPUS / "en" / "ls_1089-134686-0000.wav"
ALERTS = """alerts:
  rules:
    - name: stew
      phrases: [stew for dinner]
    - name: mutton
      phrases: [fat mutton]
    - name: never
      phrases: [stop the line]
"""


def alerts_of(messages) -> list[dict]:
    return [m.json() for m in messages if m.topic.endswith("/alert")]


def check_alerts(messages) -> dict[tuple[str, str], dict]:
    """Every alert valid, at most one per (alert, utterance, state), in seq order with the finals;
    returns them by (alert, state)."""
    stored = [m.json() for m in messages if m.topic.endswith(("/alert", "/final"))]
    seqs = [p["seq"] for p in stored]
    assert seqs == sorted(set(seqs)), "finals and alerts out of seq order or repeated"
    alerts = alerts_of(messages)
    for payload in alerts:
        validate_payload(payload, "alert")
    keys = [(p["alert"], p["utterance_id"], p["state"]) for p in alerts]
    assert len(keys) == len(set(keys)), f"an alert fired twice for one utterance: {keys}"
    final_seq = {p["utterance_id"]: p["seq"] for p in stored if "text" in p}
    for payload in alerts:
        assert payload["utterance_id"] in final_seq, payload
        # early goes out before its utterance's final, confirmed and retracted right after it
        before = payload["state"] == "early"
        assert (payload["seq"] < final_seq[payload["utterance_id"]]) == before, payload
    return {(p["alert"], p["state"]): p for p in alerts}


def stop_and_collect(daemon, subscriber) -> list:
    """Stop the daemon with SIGTERM, check it stopped cleanly, and return what the subscriber
    received up to the daemon's ``stopped``."""
    daemon.send_signal(signal.SIGTERM)
    _, stderr = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, stderr
    messages = subscriber.until_stopped()
    return messages


def test_alert_fires_early_from_a_partial_once_and_the_final_confirms_it(tmp_path, mosquitto, tiny_en_package):
    subscriber = Subscriber(mosquitto.port, ["edgescribe/test-press/#"]).connect()
    discovery = Subscriber(mosquitto.port, ["homeassistant/event/#"]).connect()
    metrics_port = free_port()
    config = write_config(tmp_path / "config.yaml", tiny_en_package.dir, mosquitto.port, tmp_path / "state", STEW,
                          speed=1.0, extra=ALERTS + f"homeassistant:\n  enabled: true\n"
                          f"prometheus:\n  enabled: true\n  address: 127.0.0.1\n  port: {metrics_port}\n")
    daemon = start_daemon(config)
    try:
        messages = subscriber.wait_for(lambda m: ("stew", "confirmed") in {(p["alert"], p["state"]) for p in alerts_of(m)},
                                       timeout=90)
        assert daemon.poll() is None, daemon.communicate()[1]
        time.sleep(1.5)  # a health interval: the counters reach the snapshot Prometheus renders
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        messages = stop_and_collect(daemon, subscriber)
    finally:
        daemon.kill()
    alerts = check_alerts(messages)
    early, confirmed = alerts[("stew", "early")], alerts[("stew", "confirmed")]
    assert early["matched_text"].lower() == "stew for dinner" and early["utterance_id"] == confirmed["utterance_id"]
    # early means from the stable text of a partial, seconds before the final of the 10-s sentence
    final = next(m.json() for m in messages if m.topic.endswith("/final"))
    assert early["transcript_sequence"] < final["sequence"] == confirmed["transcript_sequence"]
    assert early["emitted"] < final["emitted"]
    stable, carrying = "", []  # the sequences of the partials whose stable text has the phrase
    for partial in (m.json() for m in messages if m.topic.endswith("/partial")):
        stable = stable[: partial["stable_offset"]] + partial["stable_append"]
        if "stew for dinner" in stable.lower():
            carrying.append(partial["sequence"])
    assert carrying and early["transcript_sequence"] == carrying[0], (carrying, early)
    # the phrase is spoken about 1.6-2.6 s into the file: the estimate from its place in the text is close
    assert 0.8 < early["audio_start"] < 2.6 and 1.8 < early["audio_end"] < 3.6, early
    assert ("never", "early") not in alerts and ("never", "confirmed") not in alerts
    # counted in health and Prometheus, one event entity per alert in Home Assistant
    health = [m.json() for m in messages if m.topic.endswith("/health")][-1]
    validate_payload(health, "health")
    assert health["alerts"]["stew"]["early"] == 1 and health["alerts"]["stew"]["confirmed"] == 1
    assert health["alerts"]["never"] == {"early": 0, "confirmed": 0, "retracted": 0}
    assert 'edgescribe_alerts_total{alert="stew",state="early"} 1.0' in metrics
    assert 'edgescribe_alerts_total{alert="stew",state="confirmed"} 1.0' in metrics
    entities = discovery.wait_for(lambda m: len(m) >= 3, timeout=5)
    discovery.disconnect()
    assert {m.topic for m in entities} == {f"homeassistant/event/edgescribe_test_press_alert_{name}/config"
                                           for name in ("stew", "mutton", "never")}


def test_alerts_raised_while_the_broker_is_down_arrive_after_it_returns(tmp_path, mosquitto, tiny_en_package):
    # A persistent session: the broker keeps QoS 1 messages for this subscriber across its restart.
    subscriber = Subscriber(mosquitto.port, ["edgescribe/test-press/alert", "edgescribe/test-press/transcript/+/final"],
                            client_id="alert-consumer").connect()
    config = write_config(tmp_path / "config.yaml", tiny_en_package.dir, mosquitto.port, tmp_path / "state", STEW,
                          speed=1.0, extra=ALERTS)
    daemon = start_daemon(config)
    lines: list[str] = []
    try:
        wait_for_log(daemon, lines, "ready:", timeout=60)
        mosquitto.stop()
        down_at = time.time()
        wait_for_log(daemon, lines, "alert stew confirmed", timeout=60)  # the whole sentence heard meanwhile
        mosquitto.start()
        up_at = time.time()
        messages = subscriber.wait_for(lambda m: ("stew", "confirmed") in {(p["alert"], p["state"]) for p in alerts_of(m)},
                                       timeout=30)
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=60)
    finally:
        daemon.kill()
    subscriber.disconnect()
    assert daemon.returncode == 0, "".join(lines) + stderr
    alerts = check_alerts(messages)
    assert {("stew", "early"), ("stew", "confirmed"), ("mutton", "confirmed")} <= set(alerts), sorted(alerts)
    for payload in alerts.values():
        emitted = time.mktime(time.strptime(payload["emitted"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        assert down_at - 1 <= emitted <= up_at + 1, f"{payload} was not raised during the outage"


def test_chinese_in_the_plant_script_in_finals_and_alerts(tmp_path, mosquitto, base_package):
    audio = CORPUS / "zh" / "funasr_asr_example.wav"
    reference = read_transcripts(CORPUS / "zh" / "transcripts.tsv")["funasr_asr_example"]  # 欢迎大家来体验达摩院推出的语音识别模型
    subscriber = Subscriber(mosquitto.port, ["edgescribe/test-press/#"]).connect()
    config = write_config(tmp_path / "config.yaml", base_package.dir, mosquitto.port, tmp_path / "state", audio,
                          speed=2.0, extra="transcription:\n  language: zh\n  chinese_script: traditional\n"
                          "alerts:\n  rules:\n    - name: welcome\n      phrases: [大家来体验]\n")
    daemon = start_daemon(config, "--once")
    try:
        _, stderr = daemon.communicate(timeout=120)
    finally:
        daemon.kill()
    assert daemon.returncode == 0, stderr
    messages = subscriber.until_stopped()
    text = "".join(m.json()["text"] for m in messages if m.topic.endswith("/final"))
    # every Han character is in the traditional script (converting again changes nothing) ...
    assert text and converter("traditional")(text) == text and "歡迎" in text, text
    partials = [m.json()["stable_append"] + m.json()["unstable_text"] for m in messages if m.topic.endswith("/partial")]
    assert all(converter("traditional")(partial) == partial for partial in partials), partials
    # ... and it is the right text: scored against the simplified reference after converting back.
    # base itself misreads near-homophones here: its float32 graphs give this live final 5 of 19
    # characters wrong (打模院 for 达摩院, 云石别 for 语音识别), and the int8 graphs the same text.
    assert cer(reference, converter("simplified")(text)) <= 0.3, text
    alerts = check_alerts(messages)
    # the phrase is written in simplified characters and matched in the plant's script
    assert alerts[("welcome", "confirmed")]["matched_text"] == "大家來體驗", alerts


# 13.3 s, two sentences: "if called to a case supposed or suspected to be one of poisoning the
# medical man ...". tiny.en's partials of the first hear "If college or case, suppose" from
# 2.3 s of its audio on, so those words turn stable in the second of them (3.3 s); its final
# hears "If culture is supposed as a spectacle ...": "college" goes out early and is retracted.
POISONING = CORPUS / "en" / "ls_1998-15444-0000.wav"
# tolerance 0: exact words. Hotwords off: given to Whisper as a hotword, "college" makes the
# final write it too, and the alert is confirmed.
COLLEGE = """alerts:
  hotwords: false
  rules:
    - name: college
      phrases: [college]
      tolerance: 0
"""


def test_an_early_alert_the_final_does_not_bear_out_is_retracted(tmp_path, mosquitto, tiny_en_package):
    subscriber = Subscriber(mosquitto.port, ["edgescribe/test-press/#"]).connect()
    config = write_config(tmp_path / "config.yaml", tiny_en_package.dir, mosquitto.port, tmp_path / "state", POISONING,
                          speed=1.0, extra=COLLEGE)
    daemon = start_daemon(config)
    try:
        subscriber.wait_for(lambda m: ("college", "retracted") in {(p["alert"], p["state"]) for p in alerts_of(m)},
                            timeout=90)
        # the health snapshot after the retraction
        subscriber.wait_for(lambda m: any(x.json()["alerts"]["college"]["retracted"] for x in m
                                          if x.topic.endswith("/health")), timeout=10)
        assert daemon.poll() is None, daemon.communicate()[1]
        messages = stop_and_collect(daemon, subscriber)
    finally:
        daemon.kill()
    alerts = check_alerts(messages)
    assert set(alerts) == {("college", "early"), ("college", "retracted")}, sorted(alerts)
    early, retracted = alerts[("college", "early")], alerts[("college", "retracted")]
    utterance = early["utterance_id"]
    assert retracted["utterance_id"] == utterance and early["matched_text"].lower() == "college"
    # a retraction repeats its early alert's words and times
    for key in ("phrase", "matched_text", "distance", "start", "end", "audio_start", "audio_end"):
        assert retracted[key] == early[key], (key, early, retracted)
    # early from the first partial whose stable text has the word; retracted by the final, which lacks it
    stable, carrying = "", []
    for partial in (m.json() for m in messages if m.topic.endswith("/partial")):
        if partial["utterance_id"] == utterance:
            stable = stable[: partial["stable_offset"]] + partial["stable_append"]
            if "college" in stable.lower():
                carrying.append(partial["sequence"])
    assert carrying and early["transcript_sequence"] == carrying[0], (carrying, early)
    final = next(p for p in finals(messages) if p["utterance_id"] == utterance)
    assert "college" not in final["text"].lower() and retracted["transcript_sequence"] == final["sequence"], final
    health = [m.json() for m in messages if m.topic.endswith("/health")][-1]
    validate_payload(health, "health")
    assert health["alerts"]["college"] == {"early": 1, "confirmed": 0, "retracted": 1}, health["alerts"]
