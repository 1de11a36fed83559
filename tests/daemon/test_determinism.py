"""Finals independent of load: the final text of an utterance is a function of its audio alone.

The same corpus speech runs once as the only stream (every update decoded before the next
arrives, so every speculative final is accepted) and once as one of four streams pushed at
full speed into one shared scheduler (inference falls behind: speculations are refused,
partials skipped, finals batched with other streams' windows). Real Silero VAD, real
scheduler, real tiny.en weights in the int8 graphs a deployment runs (their activation
scales are computed over the whole batch, so batching finals made their words depend on
the neighbours).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from edgescribe.daemon.config.transcription import TranscriptionConfig
from edgescribe.daemon.ring_buffer import AudioBlock
from edgescribe.daemon.scheduler import InferenceScheduler
from edgescribe.daemon.streaming import StreamTranscriber
from edgescribe.engines.audio import SAMPLE_RATE
from edgescribe.engines.model import WhisperModel
from edgescribe.engines.onnx_runner import OnnxRunner
from tests.fixtures.models import tiny_en_package  # noqa: F401
from tests.fixtures.streaming import (
    Collected,
    engines_for,
    run_synchronously,
    segmenter_for,
    spoken_stream,
    write_wav,
)

@pytest.fixture(scope="module")
def tiny_en_int8(tiny_en_package):
    return WhisperModel.from_package(tiny_en_package, OnnxRunner(tiny_en_package, threads=2, prefer_int8=True))


# JFK pauses inside his sentence (speculations); the two LibriSpeech files changed words
# between batch 1 and batch 4 in the int8 graphs
SPEECH = ("jfk_inaugural_1961", "ls_1998-15444-0000", "ls_533-1066-0002")
STREAMS = 4
BLOCK = SAMPLE_RATE // 10


def _push_at_full_speed(samples, transcriber: StreamTranscriber) -> None:
    """Feed one stream's audio without waiting for inference: it falls behind, as under load."""
    segmenter = segmenter_for(transcriber.stream)
    for start in range(0, len(samples), BLOCK):
        block = AudioBlock(transcriber.stream, samples[start : start + BLOCK], start / SAMPLE_RATE,
                           1_700_000_000.0 + start / SAMPLE_RATE)
        for utterance in segmenter.push(block):
            transcriber.push(utterance)
    for utterance in segmenter.flush():
        transcriber.push(utterance)


def _finals(events: Collected, stream: str) -> list[tuple[float, float, str]]:
    return [(round(e.audio_start, 3), round(e.audio_end, 3), e.text) for e in events.finals(stream)]


def test_the_finals_of_one_stream_are_the_same_alone_and_as_one_of_four(corpus, tmp_path: Path, tiny_en_int8):
    spoken = spoken_stream(corpus, SPEECH)
    config = TranscriptionConfig()  # partials and speculative finals on, as deployed

    alone = Collected()
    scheduler = InferenceScheduler()
    scheduler.start()
    try:
        single = StreamTranscriber("mic0", config, scheduler, engines_for(tiny_en_int8), alone)
        run_synchronously(write_wav(tmp_path / "mic0.wav", spoken.samples), single, scheduler, segmenter_for("mic0"))
    finally:
        scheduler.stop()

    loaded = Collected()
    scheduler = InferenceScheduler()
    scheduler.start()
    try:
        engines = engines_for(tiny_en_int8)
        transcribers = [StreamTranscriber(f"mic{i}", config, scheduler, engines, loaded) for i in range(STREAMS)]
        threads = [threading.Thread(target=_push_at_full_speed, args=(spoken.samples, t)) for t in transcribers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert scheduler.wait_idle(300), "inference did not finish in time"
    finally:
        scheduler.stop()

    reference = _finals(alone, "mic0")
    assert reference and all(text for _, _, text in reference)
    # the load was real: speculations the lone stream started were refused under it
    started_alone = single.speculation_counts().started
    started_loaded = sum(t.speculation_counts().started for t in transcribers)
    print(f"speculations started: alone {started_alone}, under load {started_loaded} over {STREAMS} streams; "
          f"batch sizes under load {dict(scheduler.batch_sizes)}")
    assert started_loaded < STREAMS * started_alone
    for i in range(STREAMS):
        assert _finals(loaded, f"mic{i}") == reference, f"mic{i} under load differs from the lone stream"
