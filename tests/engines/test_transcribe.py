"""Offline pipeline and the ``edgescribe transcribe`` command (engines/transcribe.py, transcribe_command.py)."""

from __future__ import annotations

import argparse
import json
import struct

import numpy as np
import pytest

from edgescribe.engines import transcribe_command
from edgescribe.engines.audio import load_audio
from edgescribe.engines.errors import AudioInputError, EdgescribeError, ModelPackageError
from tests.fixtures.scoring import read_transcripts, wer
from edgescribe.engines.transcribe import Segment, TranscribeOptions, transcribe
from tests.fixtures.models import base_package, tiny_en_package  # noqa: F401  (fixtures)
from tests.fixtures.whisper_models import base_model, tiny_en_model  # noqa: F401  (fixtures)

LONG = "long_ls_3080-5032_0000-0009"


@pytest.fixture(scope="module")
def long_result(tiny_en_model, corpus):
    return transcribe(tiny_en_model, corpus / "en" / f"{LONG}.wav")


def test_long_recording_is_transcribed_window_by_window(long_result, corpus):
    reference = read_transcripts(corpus / "en" / "transcripts.tsv")[LONG]
    assert long_result.duration == pytest.approx(106.28, abs=0.01)
    assert long_result.windows >= 4  # 106 s needs at least four 30-s windows
    assert wer(reference, long_result.text) < 0.15
    segments = long_result.segments
    assert all(isinstance(s, Segment) and s.text.strip() for s in segments)
    # timestamps: each segment has a length, they never go back, and they stay inside the recording
    assert all(s.end > s.start for s in segments)
    assert all(a.start <= b.start and a.end <= b.end + 1e-6 for a, b in zip(segments, segments[1:]))
    assert segments[0].start < 1.0 and segments[-1].end <= long_result.duration + 0.01
    assert segments[-1].end > long_result.duration - 5  # speech runs to the end
    # no window boundary lost or repeated text: 10 LibriSpeech segments, words in order
    assert abs(len(long_result.text.split()) - len(reference.split())) <= 0.1 * len(reference.split())


def test_timestamps_follow_the_speech(tiny_en_model, corpus):
    """Speech after a silent first window is timed from the start of the recording."""
    speech = load_audio(corpus / "en" / "jfk_inaugural_1961.wav")
    padded = np.concatenate([np.zeros(30 * 16000, np.float32), speech, np.zeros(5 * 16000, np.float32)])
    result = transcribe(tiny_en_model, padded)
    assert "ask not what your country can do for you" in result.text.lower()
    assert 30.0 <= result.segments[0].start <= 31.0
    assert 39.0 <= result.segments[-1].end <= 41.5


def test_samples_and_path_give_the_same_result(tiny_en_model, corpus):
    path = corpus / "en" / "arctic_axb_a0006.wav"
    assert transcribe(tiny_en_model, path).text == transcribe(tiny_en_model, load_audio(path)).text


def test_without_timestamps_and_initial_prompt(tiny_en_model, corpus):
    path = corpus / "en" / "arctic_aew_a0001.wav"
    plain = transcribe(tiny_en_model, path, TranscribeOptions(without_timestamps=True))
    assert len(plain.segments) == 1 and plain.segments[0].start == 0.0
    assert plain.segments[0].end == pytest.approx(plain.duration, abs=0.02)
    prompted = transcribe(tiny_en_model, path, TranscribeOptions(initial_prompt="Philip Steele wrote The Danger Trail."))
    assert "danger trail" in prompted.text.lower()


def test_silence_gives_no_segments(tiny_en_model):
    assert transcribe(tiny_en_model, np.zeros(16000 * 40, np.float32)).segments == []


def test_language_is_detected_or_given(base_model, corpus):
    path = corpus / "zh" / "paddlespeech_zh.wav"
    detected = transcribe(base_model, path)
    assert detected.language == "zh" and detected.language_probability > 0.5
    given = transcribe(base_model, path, TranscribeOptions(language="zh"))
    assert given.language == "zh" and given.language_probability is None and given.text == detected.text


# -- the command ---------------------------------------------------------------------------


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    transcribe_command.add_arguments(parser)
    return transcribe_command.run(parser.parse_args(argv))


def test_command_json(tiny_en_package, corpus, capsys):
    files = [str(corpus / "en" / "jfk_inaugural_1961.wav"), str(corpus / "en" / "arctic_axb_a0004.wav")]
    assert _run(["--model", str(tiny_en_package.dir), "--threads", "2", "--format", "json", *files]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["file"] == files[0] and first["model"] == "tiny.en" and first["backend"] == "onnxruntime"
    assert first["language"] == "en" and first["duration"] == pytest.approx(11.0, abs=0.01)
    assert "ask not what your country" in first["text"]
    segment = first["segments"][0]
    assert set(segment) == {"start", "end", "text", "avg_logprob", "no_speech_prob", "compression_ratio", "temperature"}
    assert 0 <= segment["start"] < segment["end"] <= first["duration"]


def test_command_srt_and_text(tiny_en_package, corpus, capsys):
    path = str(corpus / "en" / "jfk_inaugural_1961.wav")
    assert _run(["--model", str(tiny_en_package.dir), "--threads", "2", "--format", "srt", path]) == 0
    srt = capsys.readouterr().out
    assert srt.startswith("1\n00:00:00,000 --> 00:00:") and "ask not" in srt
    assert _run(["--model", str(tiny_en_package.dir), "--threads", "2", path]) == 0
    assert capsys.readouterr().out.strip().startswith("And so")


def test_command_errors(tiny_en_package, tmp_path, corpus):
    good = str(corpus / "en" / "arctic_axb_a0004.wav")
    with pytest.raises(AudioInputError, match="no such audio file"):
        _run(["--model", str(tiny_en_package.dir), good, str(tmp_path / "missing.wav")])
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF" + struct.pack("<I", 4) + b"WAVE")
    with pytest.raises(AudioInputError, match="broken.wav"):
        _run(["--model", str(tiny_en_package.dir), str(broken)])
    with pytest.raises(ModelPackageError, match="manifest.json is missing"):
        _run(["--model", str(tmp_path), good])
    with pytest.raises(EdgescribeError, match="English-only"):
        _run(["--model", str(tiny_en_package.dir), "--task", "translate", good])


def test_edgescribe_transcribe_end_to_end(tiny_en_package, corpus, tmp_path):
    """The installed entry point: text on stdout; a bad file is one line on stderr and exit 1."""
    import subprocess
    import sys

    from tests.conftest import REPO

    command = [sys.executable, "-m", "edgescribe.daemon.cli", "transcribe", "--model", str(tiny_en_package.dir), "--threads", "2"]
    done = subprocess.run([*command, str(corpus / "en" / "jfk_inaugural_1961.wav")],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0 and "ask not what your country can do for you" in done.stdout.lower()
    failed = subprocess.run([*command, str(tmp_path / "nope.wav")], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert failed.returncode == 1 and failed.stdout == ""
    assert failed.stderr.strip().splitlines()[-1] == f"edgescribe transcribe: error: {tmp_path / 'nope.wav'}: no such audio file"
    assert "Traceback" not in failed.stderr
