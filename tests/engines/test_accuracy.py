"""Accuracy against faster-whisper with the same weights, on the real speech corpus.

Both systems run float32, greedy (beam_size=1), Whisper's temperature fallback, previous-text
conditioning on, no VAD, 30-s encoder windows (faster-whisper has no other); both are scored by
tests/fixtures/scoring.py (jiwer after Whisper's normalisers). Run with ``-s`` to see the
per-file tables quoted in docs/benchmarks.md.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgescribe.engines.audio import SAMPLE_RATE, load_audio
from edgescribe.engines.encoder_window import ENCODER_WINDOWS
from edgescribe.engines.transcribe import TranscribeOptions, transcribe
from tests.fixtures.faster_whisper_reference import load_reference, reference_transcribe
from tests.fixtures.models import base_package, tiny_en_package  # noqa: F401  (fixtures)
from tests.fixtures.scoring import NO_ERRORS, character_errors, read_transcripts, word_errors
from tests.fixtures.whisper_models import base_model, tiny_en_model  # noqa: F401  (fixtures)


def _compare(model, reference_model, directory, language, unit):
    """Transcribe every file with both systems; print the table; return summed counts."""
    references = read_transcripts(directory / "transcripts.tsv")
    count = word_errors if unit == "word" else character_errors
    ours_total = theirs_total = NO_ERRORS
    identical = 0
    given = None if language == "en" else language
    print(f"\n{'file':34} {unit[0].upper()}ER ours  faster-whisper  same text")
    for key, reference in sorted(references.items()):
        path = directory / f"{key}.wav"
        ours = transcribe(model, path, TranscribeOptions(language=given, encoder_window="full")).text
        theirs = reference_transcribe(reference_model, path, language=given).text
        ours_counts = count(reference, ours, language)
        theirs_counts = count(reference, theirs, language)
        same = count(theirs, ours, language).errors == 0
        identical += same
        ours_total += ours_counts
        theirs_total += theirs_counts
        print(f"{key:34} {ours_counts.rate:8.3f} {theirs_counts.rate:15.3f}  {'yes' if same else 'NO'}")
        if not same:
            print(f"    ours:           {ours}\n    faster-whisper: {theirs}")
    print(f"{'corpus':34} {ours_total.rate:8.4f} {theirs_total.rate:15.4f}  {identical}/{len(references)}")
    return ours_total, theirs_total, identical, len(references)


def test_english_tiny_en_matches_faster_whisper(tiny_en_model, corpus):
    reference = load_reference("tiny.en", compute_type="float32", threads=2)
    ours, theirs, identical, files = _compare(tiny_en_model, reference, corpus / "en", "en", "word")
    assert files == 35
    assert ours.rate <= theirs.rate + 0.003  # at most 0.3 WER points worse
    assert identical >= 0.9 * files
    assert ours.rate < 0.2  # and sane in absolute terms (tiny.en on read speech)


def test_mandarin_base_matches_faster_whisper(base_model, corpus):
    reference = load_reference("base", compute_type="float32", threads=2)
    ours, theirs, _identical, files = _compare(base_model, reference, corpus / "zh", "zh", "character")
    assert files == 5
    assert ours.rate <= theirs.rate + 0.01  # at most 1 CER point worse


def _quiet_inputs(corpus):
    rng = np.random.default_rng(7)
    inputs = {
        "digital silence 5 s": np.zeros(5 * SAMPLE_RATE, np.float32),
        "digital silence 40 s": np.zeros(40 * SAMPLE_RATE, np.float32),
        "white noise -60 dBFS 10 s": rng.standard_normal(10 * SAMPLE_RATE) * 10 ** (-60 / 20),
        "white noise -50 dBFS 60 s": rng.standard_normal(60 * SAMPLE_RATE) * 10 ** (-50 / 20),
        "white noise -40 dBFS 10 s": rng.standard_normal(10 * SAMPLE_RATE) * 10 ** (-40 / 20),
    }
    for path in sorted((corpus / "noise").glob("*.wav")):
        inputs[path.name] = load_audio(path)
    return {name: np.asarray(samples, np.float32) for name, samples in inputs.items()}


@pytest.mark.parametrize("window", ENCODER_WINDOWS)
def test_silence_and_noise_produce_no_text(tiny_en_model, corpus, window):
    inputs = _quiet_inputs(corpus)
    assert len(inputs) == 5 + 7
    texts = {}
    print(f"\n{'input':40} text")
    for name, samples in inputs.items():
        texts[name] = transcribe(tiny_en_model, samples, TranscribeOptions(encoder_window=window)).text
        print(f"{name:40} {texts[name]!r}")
    assert texts == {name: "" for name in inputs}
