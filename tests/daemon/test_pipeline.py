"""One stream's path: a normal stop drains what the capture buffered, so nothing is lost;
the segmenter is paced by the transcription section's partial settings."""

from __future__ import annotations

import threading

from edgescribe.daemon.capture import CaptureStream
from edgescribe.daemon.config.audio import CaptureOptions, SegmenterOptions, StreamConfig, VadOptions
from edgescribe.daemon.config.transcription import TranscriptionConfig
from edgescribe.daemon.pipeline import StreamPipeline
from edgescribe.daemon.ring_buffer import AudioBlock
from edgescribe.daemon.scheduler import InferenceScheduler
from edgescribe.daemon.segmenter import Utterance
from tests.fixtures.streaming import segmenter_for, spoken_stream, write_wav


class CountingSegmenter:
    """The real segmenter, noting how far into the stream the blocks it was given reach."""

    def __init__(self, segmenter):
        self.segmenter = segmenter
        self.audio_end = 0.0

    def push(self, block):
        self.audio_end = block.audio_end
        return self.segmenter.push(block)

    def flush(self):
        return self.segmenter.flush()


class Recorder:
    """Stands in for the transcriber: records what the segmenter hands over, slowly at first."""

    def __init__(self, hold: threading.Event):
        self.hold = hold
        self.utterances: list[Utterance] = []

    def push(self, utterance: Utterance) -> None:
        self.hold.wait(10)
        self.utterances.append(utterance)


def test_stopping_the_capture_drains_the_buffer_and_flushes_the_open_utterance(corpus, tmp_path):
    spoken = spoken_stream(corpus, ("jfk_inaugural_1961",), gap_s=0.0, lead_s=0.5)
    wav = write_wav(tmp_path / "mic.wav", spoken.samples)
    # Fast playback into a large buffer while the consumer is held: audio piles up unconsumed.
    capture = CaptureStream(StreamConfig(name="mic", file=str(wav), speed=20.0), CaptureOptions(buffer_s=60.0), lambda e: None)
    hold = threading.Event()
    recorder = Recorder(hold)
    segmenter = CountingSegmenter(segmenter_for("mic"))
    pipeline = StreamPipeline(capture, segmenter, recorder)
    pipeline.start()
    while capture.stats().audio_time < 5.0:
        threading.Event().wait(0.05)
    pipeline.stop_capture()  # as on SIGTERM, mid-speech
    captured_s = capture.stats().audio_time
    hold.set()
    assert pipeline.join(30)
    assert segmenter.audio_end == captured_s  # every captured block reached the segmenter
    assert recorder.utterances and recorder.utterances[-1].ended  # and the open utterance was closed


def _updates_of_the_built_segmenter(spoken, transcription: TranscriptionConfig) -> list[Utterance]:
    """Every update the segmenter of a daemon-built pipeline hands out for ``spoken``."""
    pipeline = StreamPipeline.build(
        StreamConfig(name="mic", file="unused.wav"), CaptureOptions(), VadOptions(), SegmenterOptions(),
        transcription, InferenceScheduler(), engines=None, emit=lambda event: None,
    )
    out, block = [], 1600
    for start in range(0, len(spoken.samples), block):
        out += pipeline.segmenter.push(AudioBlock("mic", spoken.samples[start : start + block], start / 16000, 0.0))
    return out + pipeline.segmenter.flush()


def test_partial_interval_sets_how_often_the_segmenter_hands_out_the_utterance(corpus):
    spoken = spoken_stream(corpus, ("jfk_inaugural_1961",), gap_s=0.0, lead_s=0.5)
    frame_s = 512 / 16000
    for interval in (1.0, 2.5):
        updates = _updates_of_the_built_segmenter(spoken, TranscriptionConfig(partial_interval_s=interval))
        periodic = 0
        for utterance_id in {u.utterance_id for u in updates}:
            last = 0.0  # utterance length at the last periodic update
            for u in (u for u in updates if u.utterance_id == utterance_id and not u.ended):
                step = len(u.samples) / 16000 - last
                if u.pause and step < interval - 1e-6:
                    continue  # a pause update off the schedule
                assert interval - 1e-6 <= step < interval + frame_s, (interval, step)
                last += step
                periodic += 1
        assert periodic >= 2, interval  # the steps above were checked, not skipped
    # partials off: nothing to decode between pauses, so only pause and end updates come
    updates = _updates_of_the_built_segmenter(spoken, TranscriptionConfig(partials=False))
    assert updates and all(u.pause or u.ended for u in updates)
