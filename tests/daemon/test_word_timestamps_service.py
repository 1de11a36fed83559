"""Word timings in finals through the whole daemon: ``edgescribe run`` over a WAV source of real
speech, a real mosquitto, and the offline ``edgescribe transcribe --word-timestamps`` of the same
recording as the reference (issue 13)."""

from __future__ import annotations

import difflib
import json
import re
import subprocess
import sys

from tests.fixtures.daemon import JFK, REPO, run_once, valid_finals, write_config
from tests.fixtures.models import tiny_en_package  # noqa: F401  (fixture)
from tests.fixtures.mosquitto import Subscriber, mosquitto, validate_payload  # noqa: F401

# The stream plays the WAV from its first sample, so audio time is recording time. Live finals
# decode each utterance in its own window, the offline reference 30-s windows of the whole
# recording, so the same word may align a little differently; issue 13's bound for p95.
CLOSE_S = 0.3


def _key(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())


def _daemon_finals(tmp_path, port, package, name: str, extra: str) -> tuple[list[dict], list[dict]]:
    """The finals of one daemon run over the recording, and its alerts."""
    subscriber = Subscriber(port, [f"edgescribe/{name}/#"]).connect()
    config = write_config(tmp_path / f"{name}.yaml", package, port, tmp_path / name, JFK, speed=4.0,
                          device_id=name, extra=extra)
    stderr = run_once(config)
    messages = subscriber.until_stopped()
    received = valid_finals(messages)
    assert received, f"no final arrived; daemon log:\n{stderr}"
    alerts = [m.json() for m in messages if m.topic.endswith("/alert")]
    for payload in alerts:
        validate_payload(payload, "alert")
    return received, alerts


def _offline_words(package) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "edgescribe.daemon.cli", "transcribe", str(JFK), "--model", str(package),
                          "--format", "json", "--word-timestamps", "--threads", "2"],
                         cwd=REPO, capture_output=True, text=True, timeout=120, check=True).stdout
    document = json.loads(out)
    segments = document["segments"] if isinstance(document, dict) else document[0]["segments"]
    return [word for segment in segments for word in segment["words"]]


def test_finals_carry_word_times_that_match_the_text_and_the_offline_alignment(tmp_path, mosquitto,
                                                                              tiny_en_package):
    package = tiny_en_package.dir
    plain, _ = _daemon_finals(tmp_path, mosquitto.port, package, "plain", "")
    # the alert's phrase is not made a hotword, so the prompt (and the text) stays the plain run's
    timed, alerts = _daemon_finals(tmp_path, mosquitto.port, package, "timed",
                                   "transcription:\n  word_timestamps: true\n"
                                   "alerts:\n  hotwords: false\n  rules:\n    - name: fellow\n"
                                   "      phrases: [fellow americans]\n")

    assert all("words" not in payload for payload in plain)  # off by default: payloads stay small
    # timing the words changes no final's text (nor how the audio was cut into utterances)
    assert [(p["text"], p["audio_start"]) for p in timed] == [(p["text"], p["audio_start"]) for p in plain]

    live = []
    for payload in timed:
        words = payload["words"]
        assert "".join(w["word"] for w in words) == "".join(payload["text"].split()), payload
        assert [w["start"] for w in words] == sorted(w["start"] for w in words), words
        assert all(payload["audio_start"] <= w["start"] <= w["end"] <= payload["audio_end"] for w in words), payload
        live.extend(words)

    # a confirmed alert is timed by the final's matched words, not estimated from the text
    confirmed = [alert for alert in alerts if alert["state"] == "confirmed"]
    assert confirmed, (alerts, timed)
    for alert in confirmed:
        words = next(p["words"] for p in timed if p["utterance_id"] == alert["utterance_id"])
        first = next(i for i, w in enumerate(words) if _key(w["word"]) == "fellow")
        assert (alert["audio_start"], alert["audio_end"]) == (words[first]["start"], words[first + 1]["end"]), alert
        assert alert["audio_time"] == "words", alert

    reference = _offline_words(package)
    matcher = difflib.SequenceMatcher(a=[_key(w["word"]) for w in live], b=[_key(w["word"]) for w in reference],
                                      autojunk=False)
    pairs = [(live[block.a + i], reference[block.b + i]) for block in matcher.get_matching_blocks()
             for i in range(block.size)]
    assert len(pairs) >= 0.8 * len(reference), (live, reference)
    differences = sorted(abs(a[edge] - b[edge]) for a, b in pairs for edge in ("start", "end"))
    p95 = differences[int(0.95 * (len(differences) - 1))]
    assert p95 <= CLOSE_S, list(zip(pairs, differences))
    assert sum(differences) / len(differences) <= CLOSE_S / 2
