"""One stream's path: a normal stop drains what the capture buffered, so nothing is lost."""

from __future__ import annotations

import threading

from daemon.capture import CaptureStream
from daemon.config.audio import CaptureOptions, StreamConfig
from daemon.pipeline import StreamPipeline
from daemon.segmenter import Utterance
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
