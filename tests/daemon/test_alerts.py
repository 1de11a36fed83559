"""Phrase alerts without a daemon: the matcher, the early/confirmed/retracted rules per
utterance, the alert payload against docs/schemas/alert.json, discovery and config errors.
The daemon runs them on real speech in test_alerts_service.py."""

from __future__ import annotations

import json

import pytest

from edgescribe.daemon.alerts import AlertTracker, PhraseMatcher, PhraseWatch
from edgescribe.daemon.chinese_script import converter
from edgescribe.daemon.config import Config, InvalidConfig
from edgescribe.daemon.config.alerts import AlertRule
from edgescribe.daemon.config.loader import load_text
from edgescribe.daemon.config.mqtt import HomeAssistantConfig
from edgescribe.daemon.events import Confidence, TranscriptEvent, WordTiming
from edgescribe.daemon.homeassistant import discovery_messages
from edgescribe.daemon.publisher import Topics, alert_payload
from tests.fixtures.mosquitto import validate_payload


@pytest.mark.parametrize("text, matched", [
    ("Please, STOP the line now!", "STOP the line"),
    ("stop the lime", "stop the lime"),  # one character off: within 0.2 x 11 (spaces are not counted)
    ("we have to stop theline", "stop theline"),  # words run together
    ("stop line", None),  # a whole word missing is too far
    ("the airline stopped", None),
    ("nothing to see here", None),
])
def test_phrase_matching_allows_small_errors_only(text, matched):
    match = PhraseMatcher(["stop the line"], 0.2).find(text)
    assert (match.text if match else None) == matched


def test_zero_tolerance_needs_the_exact_words_and_words_are_not_substrings():
    matcher = PhraseMatcher(["man down"], 0.0)
    assert matcher.find("Man, down!").text == "Man, down"
    assert matcher.find("man dawn") is None
    assert matcher.find("a man downstairs") is None


def test_chinese_is_matched_character_by_character_without_spaces():
    matcher = PhraseMatcher(["停止生产线"], 0.2)
    assert matcher.find("请立刻停止生产线，谢谢").text == "停止生产线"
    assert matcher.find("请立刻停止生产綫").text == "停止生产綫"  # one character in another script
    assert PhraseMatcher(["停止生产线"], 0.0).find("停止生产") is None


def transcript(kind: str, sequence: int, stable: str, unstable: str = "", utterance: str = "press-1-1",
               stream: str = "press", words: tuple[WordTiming, ...] | None = None) -> TranscriptEvent:
    return TranscriptEvent(stream, utterance, sequence, kind, stable, unstable, 10.0, 14.0, 1.0e9, 1.0e9 + 4.0, "en",
                           Confidence(-0.2, 0.01, 1.2, 0.0), "tiny.en", "onnxruntime", 0.5, words)


def timed(*words: tuple[str, float, float]) -> tuple[WordTiming, ...]:
    return tuple(WordTiming(word, start, end, 0.9) for word, start, end in words)


RULES = [AlertRule(name="stop_line", phrases=["stop the line", "line stop"]),
         AlertRule(name="man_down", phrases=["man down"], streams=["yard"])]


def test_early_from_stable_text_once_then_confirmed_by_the_final():
    tracker = AlertTracker(RULES)
    assert tracker.observe(transcript("partial", 0, "please", " stop the line")) == []  # unstable text never alerts
    [early] = tracker.observe(transcript("partial", 1, "please stop the line", " now"))
    assert (early.alert, early.state, early.matched_text, early.transcript_sequence) == ("stop_line", "early",
                                                                                         "stop the line", 1)
    # the phrase spans characters 7-20 of 24: spread over the 4 s the text covers
    assert early.audio_start == pytest.approx(10.0 + 4.0 * 7 / 24) and early.audio_end == pytest.approx(10.0 + 4.0 * 20 / 24)
    assert tracker.observe(transcript("partial", 2, "please stop the line now")) == []  # never twice
    [confirmed] = tracker.observe(transcript("final", 3, "Please stop the line now."))
    assert (confirmed.state, confirmed.utterance_id, confirmed.transcript_sequence) == ("confirmed", "press-1-1", 3)
    assert tracker.counts()["stop_line"].__dict__ == {"early": 1, "confirmed": 1, "retracted": 0}


def test_early_alert_the_final_does_not_contain_is_retracted():
    tracker = AlertTracker(RULES)
    [early] = tracker.observe(transcript("partial", 1, "stop the line", " at three"))
    [retracted] = tracker.observe(transcript("final", 2, "Stop the lathe at three."))  # lathe: 3 edits > 0.2 x 11
    assert retracted.state == "retracted"
    assert (retracted.matched_text, retracted.audio_start) == (early.matched_text, early.audio_start)
    assert tracker.counts()["stop_line"].retracted == 1


def test_final_alone_confirms_and_other_utterances_and_streams_are_separate():
    tracker = AlertTracker(RULES)
    [first] = tracker.observe(transcript("final", 0, "line stop", utterance="press-1-1"))
    [second] = tracker.observe(transcript("final", 0, "stop the line", utterance="press-1-2"))
    assert (first.state, second.state) == ("confirmed", "confirmed")
    assert tracker.observe(transcript("final", 0, "man down", utterance="press-1-3")) == []  # man_down: yard only
    [yard] = tracker.observe(transcript("final", 0, "man down", utterance="yard-1-1", stream="yard"))
    assert yard.alert == "man_down"


def test_a_final_with_timed_words_times_the_alert_by_the_matched_words():
    # times far from the even spread of characters, so an estimate cannot pass for them
    words = timed(("Please,", 10.0, 10.4), ("stop", 12.5, 12.8), ("the", 12.8, 12.9), ("line", 12.9, 13.3),
                  ("now.", 13.9, 14.0))
    tracker = AlertTracker(RULES)
    [early] = tracker.observe(transcript("partial", 1, "please stop the line", " now"))
    [confirmed] = tracker.observe(transcript("final", 2, "Please, stop the line now.", words=words))
    assert (confirmed.audio_start, confirmed.audio_end) == (12.5, 13.3)
    assert (confirmed.wall_start, confirmed.wall_end) == (pytest.approx(1.0e9 + 2.5), pytest.approx(1.0e9 + 3.3))
    assert early.audio_start == pytest.approx(10.0 + 4.0 * 7 / 24)  # partials have no word times: estimated
    # Chinese words without spaces; a match inside a word takes the whole word's time
    chinese = AlertTracker([AlertRule(name="recognition", phrases=["语音识别"], tolerance=0.0)])
    [alert] = chinese.observe(transcript("final", 0, "推出的语音识别模型", words=timed(
        ("推出的", 10.0, 10.6), ("语音", 11.0, 11.5), ("识别模型", 11.6, 12.9))))
    assert (alert.audio_start, alert.audio_end) == (11.0, 12.9)
    # words that do not spell the text (never published so) are not trusted: estimated
    untimed = transcript("final", 0, "stop the line", words=timed(("stop", 12.0, 12.5)))
    [estimated] = AlertTracker(RULES).observe(untimed)
    assert (estimated.audio_start, estimated.audio_end) == (10.0, 14.0)


def test_phrases_are_matched_in_the_plant_script():
    tracker = AlertTracker([AlertRule(name="recognition", phrases=["语音识别"], tolerance=0.0)], converter("traditional"))
    [alert] = tracker.observe(transcript("final", 0, "推出的語音識別模型"))
    assert alert.matched_text == "語音識別"


def test_alert_payload_matches_its_schema():
    [alert] = AlertTracker(RULES).observe(transcript("final", 0, "stop the line"))
    payload = json.loads(json.dumps(alert_payload(alert, "press-7", 42, 1.0e9 + 5.0)))
    validate_payload(payload, "alert")
    assert payload["start"] == "2001-09-09T01:46:40.000Z" and payload["seq"] == 42


def test_each_alert_is_a_home_assistant_event_entity():
    messages = dict(discovery_messages(HomeAssistantConfig(enabled=True), Topics("edgescribe", "press-7"), "1.0",
                                       ["stop_line"]))
    config = json.loads(messages["homeassistant/event/edgescribe_press_7_alert_stop_line/config"])
    assert config["state_topic"] == "edgescribe/press-7/alert"
    assert config["event_types"] == ["early", "confirmed", "retracted"]
    assert "value_json.alert == 'stop_line'" in config["value_template"]


@pytest.mark.parametrize("rules, expected", [
    ("  - name: a\n    phrases: [x]\n  - name: a\n    phrases: [y]\n", "'a' is already the name of another alert"),
    ("  - name: a\n    phrases: [x]\n    streams: [nosuch]\n", "'nosuch' is not a configured stream"),
    ("  - name: a\n    phrases: []\n", "needs at least one phrase"),
    ("  - name: Stop Line\n    phrases: [x]\n", "lowercase letters"),
])
def test_bad_alert_config_is_one_clear_line(rules, expected):
    with pytest.raises(InvalidConfig) as error:
        load_text(f"device_id: x\nstreams:\n  - name: press\n    device: hw:0\nalerts:\n  rules:\n{rules}", Config,
                  "c.yaml")
    assert expected in str(error.value), str(error.value)


def test_a_phrase_is_watched_from_its_first_unsettled_word_until_it_is_stable_whole():
    watch = PhraseWatch(["stop the line", "停止生产"])
    assert watch.pending(["please"], ["Stop,", "the"])  # normalised: case and punctuation
    assert watch.pending(["please", "stop", "the"], [])  # begun in the stable words, not yet whole
    assert not watch.pending(["please", "stop", "the", "line"], ["now"])  # whole: the early alert can fire
    assert not watch.pending(["stop", "the", "press", "now"], [])  # too far back to still be that phrase
    assert not watch.pending([], ["start", "the", "line"])
    assert watch.pending(["well", "stop"], []) and watch.pending(["stop"], [])  # fewer stable words than the phrase
    assert watch.pending(["马上"], ["停"]) and not watch.pending(["马上停止生产"], [])  # Chinese by characters
