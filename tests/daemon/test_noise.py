"""The live path on a loud floor, through the real daemon: a long sentence read in continuous
factory noise (a real MIMII pump recording at 10 dB SNR) must arrive whole, or cut only where
the talker really paused, with no words lost against the model's own reading of that audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgescribe.daemon.config.audio import SegmenterOptions, VadOptions
from edgescribe.daemon.ring_buffer import AudioBlock
from edgescribe.daemon.segmenter import Segmenter
from edgescribe.daemon.vad import create_vad
from edgescribe.engines.audio import SAMPLE_RATE, load_audio
from edgescribe.engines.transcribe import TranscribeOptions, transcribe
from tests.fixtures.daemon import start_daemon, valid_finals, write_config
from tests.fixtures.models import tiny_en_package  # noqa: F401  (fixture)
from tests.fixtures.mosquitto import Subscriber, mosquitto  # noqa: F401  (fixture)
from tests.fixtures.scoring import read_transcripts, wer
from tests.fixtures.streaming import mix_at_snr, write_wav
from tests.fixtures.whisper_models import tiny_en_model  # noqa: F401  (fixture)

SENTENCE = "ls_1998-15444-0002"  # 9 s, one pause a quiet room already cuts at, two false ones in pump noise


def pieces_in_a_quiet_room(samples: np.ndarray) -> int:
    """How many utterances the segmenter makes of the clean recording: its real pauses."""
    segmenter = Segmenter("mic", SegmenterOptions(), create_vad(VadOptions()))
    ended = 0
    for i in range(0, len(samples), 1600):
        ended += sum(u.ended for u in segmenter.push(AudioBlock("mic", samples[i : i + 1600], i / SAMPLE_RATE, 0.0)))
    return ended + sum(u.ended for u in segmenter.flush())


def test_a_long_sentence_in_factory_noise_arrives_whole(tmp_path: Path, corpus, mosquitto, tiny_en_package,
                                                        tiny_en_model):
    speech = load_audio(corpus / "en" / f"{SENTENCE}.wav")
    lead = np.zeros(2 * SAMPLE_RATE, np.float32)
    clean = np.concatenate([lead, speech, lead])
    noisy = mix_at_snr(clean, load_audio(corpus / "noise" / "factory_mimii_pump.wav"), 10.0)
    wav = write_wav(tmp_path / "floor.wav", noisy)

    subscriber = Subscriber(mosquitto.port, ["edgescribe/test-press/#"]).connect()
    config = write_config(tmp_path / "config.yaml", tiny_en_package.dir, mosquitto.port, tmp_path / "state", wav,
                          speed=2.0)
    daemon = start_daemon(config, "--once")
    try:
        _, stderr = daemon.communicate(timeout=180)
    finally:
        daemon.kill()
    assert daemon.returncode == 0 and "Traceback" not in stderr, stderr
    messages = subscriber.until_stopped()
    received = valid_finals(messages)

    reference = read_transcripts(corpus / "en" / "transcripts.tsv")[SENTENCE]
    streamed = " ".join(p["text"] for p in received)
    offline = transcribe(tiny_en_model, noisy, TranscribeOptions(language="en")).text
    assert 1 <= len(received) <= pieces_in_a_quiet_room(clean), [p["text"] for p in received]
    assert all(p["text"].strip() for p in received)
    assert wer(reference, streamed) <= wer(reference, offline) + 0.1, (streamed, offline)
