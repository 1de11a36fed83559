"""Accuracy of the live pipeline in factory noise: WER of finals per SNR, against the
offline transcription of the same audio, and no transcript from machine noise alone.

Speech is corpus recordings; noise is the corpus's real MIMII machine recordings (fan,
pump, slider, valve, one after another), scaled by RMS to each SNR. Everything goes
through the WAV source, Silero VAD segmenter, streaming transcriber and tiny.en.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgescribe.daemon.config.transcription import TranscriptionConfig
from edgescribe.daemon.scheduler import InferenceScheduler
from edgescribe.daemon.streaming import StreamTranscriber
from edgescribe.engines.audio import load_audio
from tests.fixtures.scoring import corpus_counts
from edgescribe.engines.transcribe import TranscribeOptions, transcribe
from tests.fixtures.models import tiny_en_package  # noqa: F401
from tests.fixtures.streaming import (  # noqa: F401
    Collected,
    check_transcript_invariants,
    engines_for,
    mix_at_snr,
    run_synchronously,
    segmenter_for,
    spoken_stream,
    write_wav,
)
from tests.fixtures.whisper_models import tiny_en_model  # noqa: F401

SNRS = (None, 20.0, 10.0, 5.0)  # None: clean
MACHINES = ("fan", "pump", "slider", "valve")


@pytest.fixture(scope="module")
def factory_noise(corpus) -> np.ndarray:
    return np.concatenate([load_audio(corpus / "noise" / f"factory_mimii_{machine}.wav") for machine in MACHINES])


def _stream_finals(model, wav: Path) -> Collected:
    events = Collected()
    scheduler = InferenceScheduler(max_batch=4)
    scheduler.start()
    try:
        # finals only: partials do not change the final text and would triple the run time
        transcriber = StreamTranscriber("mic", TranscriptionConfig(partials=False), scheduler, engines_for(model), events)
        run_synchronously(wav, transcriber, scheduler, segmenter_for("mic"))
    finally:
        scheduler.stop(timeout=60)
    return events


@pytest.mark.slow
def test_wer_per_snr_in_factory_noise(corpus, tmp_path, tiny_en_model, factory_noise):
    spoken = spoken_stream(corpus)
    rows = {}
    for snr in SNRS:
        label = "clean" if snr is None else f"{snr:g} dB"
        wav = write_wav(tmp_path / f"mic_{label.replace(' ', '')}.wav", mix_at_snr(spoken.samples, factory_noise, snr))
        events = _stream_finals(tiny_en_model, wav)
        check_transcript_invariants(events.transcripts())
        hypotheses = spoken.hypotheses(events.finals())
        streaming = corpus_counts((spoken.references[k], hypotheses.get(k, "")) for k in spoken.references)
        invented = [text for key, text in hypotheses.items() if key not in spoken.references]
        # the same audio transcribed offline (30-s windows, conditioned on earlier text)
        offline_text = transcribe(tiny_en_model, wav, TranscribeOptions(language="en")).text
        offline = corpus_counts([(" ".join(spoken.references.values()), offline_text)])
        rows[label] = (streaming, offline, invented)

    print("\nWER of finals per SNR (tiny.en, MIMII factory noise, %d words)" % rows["clean"][0].reference_length)
    print(f"{'condition':>9} | {'streaming':>9} | {'offline':>7} | text outside speech")
    for label, (streaming, offline, invented) in rows.items():
        print(f"{label:>9} | {streaming.rate:9.3f} | {offline.rate:7.3f} | {invented or '-'}")

    clean, ten = rows["clean"][0], rows["10 dB"][0]
    # tiny.en (the CI model) measured 10 % clean and 30 % at 10 dB here (offline: 9 % and 24 %);
    # at 10 dB every error was a word the model misheard ("stillness" -> "this illness"), none
    # a lost utterance. The bounds leave room for that model noise on 100 words but fail if the
    # pipeline loses speech: one dropped file is 10-30 points, and shows up as deletions.
    assert clean.rate < 0.15
    assert ten.rate < 0.40
    assert ten.deletions <= 0.1 * ten.reference_length, "speech lost at 10 dB (gated or not segmented)"
    # streaming decodes each utterance (1.5-10 s, the segmenter splits at pauses) without the
    # neighbouring text offline 30-s windows see; in noise tiny.en leans on that context:
    # measured 0-1 points worse clean and 6-11 points worse at 10 dB (1 point = 1 word here)
    assert clean.rate <= rows["clean"][1].rate + 0.05
    assert ten.rate <= rows["10 dB"][1].rate + 0.15
    assert not rows["clean"][2] and not rows["10 dB"][2], "text where there was only noise"


def test_factory_noise_alone_gives_no_transcript(tmp_path, tiny_en_model, factory_noise):
    # as loud as the noise in the 5 dB condition for typical read speech (-20 dBFS)
    loud = factory_noise * (10 ** (-25 / 20) / np.sqrt(np.mean(np.square(factory_noise))))
    wav = write_wav(tmp_path / "noise.wav", np.clip(loud, -1, 1).astype(np.float32))
    events = _stream_finals(tiny_en_model, wav)
    assert [e.text for e in events.finals() if e.text] == []
