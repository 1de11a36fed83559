"""One stream's path through the daemon: capture thread -> ring buffer -> segmenter -> transcriber.

The daemon runs one per configured stream; benchmarks and tests run the same object, so
what they measure is the path the daemon takes.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional, Sequence

from edgescribe.daemon.capture import CaptureStream
from edgescribe.daemon.config.audio import CaptureOptions, SegmenterOptions, StreamConfig, VadOptions
from edgescribe.daemon.config.transcription import TranscriptionConfig
from edgescribe.daemon.events import Event
from edgescribe.daemon.scheduler import EngineManager, InferenceScheduler
from edgescribe.daemon.segmenter import Segmenter
from edgescribe.daemon.streaming import WATCH_INTERVAL_S, StreamTranscriber
from edgescribe.daemon.vad import create_vad


def consume(capture: CaptureStream, segmenter: Segmenter, transcriber: StreamTranscriber, stop: threading.Event,
            poll_s: float = 0.1) -> None:
    """The consumer side of one stream: ring buffer -> segmenter -> transcriber.

    Runs on its own thread until the capture has ended and is drained, or ``stop`` is set;
    then flushes the open utterance so its final is not lost. ``transcriber.push`` blocks
    when inference is far behind, and then audio piles up in the capture ring buffer,
    which drops and reports it (GapEvent) when full.
    """
    while not stop.is_set():
        block = capture.get(timeout=poll_s)
        if block is None:
            if capture.finished:
                break
            continue
        for utterance in segmenter.push(block):
            transcriber.push(utterance)
    for utterance in segmenter.flush():
        transcriber.push(utterance)


def update_interval(transcription: TranscriptionConfig, alert_phrases: Sequence[str] = ()) -> Optional[float]:
    """Seconds of audio between the segmenter's updates of an utterance so far: only as often
    as a partial may be wanted, and at the watch pace when the stream has alert phrases."""
    if not transcription.partials:
        return None
    if alert_phrases:
        return min(transcription.partial_interval_s, WATCH_INTERVAL_S)
    return transcription.partial_interval_s


class StreamPipeline:
    def __init__(self, capture: CaptureStream, segmenter: Segmenter, transcriber: StreamTranscriber):
        self.capture = capture
        self.segmenter = segmenter
        self.transcriber = transcriber
        # Only an abort sets this: a normal stop closes the capture, and the consumer then
        # drains what is still buffered and flushes the open utterance, so nothing is lost.
        self._abort = threading.Event()
        self._consumer = threading.Thread(
            target=consume, args=(capture, segmenter, transcriber, self._abort), name=f"pipeline-{capture.name}", daemon=True
        )

    @classmethod
    def build(
        cls,
        stream: StreamConfig,
        capture: CaptureOptions,
        vad: VadOptions,
        segmenter: SegmenterOptions,
        transcription: TranscriptionConfig,
        scheduler: InferenceScheduler,
        engines: EngineManager,
        emit: Callable[[Event], None],
        alert_phrases: Sequence[str] = (),
    ) -> "StreamPipeline":
        """``alert_phrases``: the stream's alert phrases (partials come faster while one may be
        starting, daemon/streaming.py WATCH_INTERVAL_S)."""
        return cls(
            CaptureStream(stream, capture, on_event=emit),
            Segmenter(stream.name, segmenter, create_vad(vad),
                      update_interval_s=update_interval(transcription, alert_phrases), thresholds=vad),
            StreamTranscriber(stream.name, transcription, scheduler, engines, emit=emit, alert_phrases=alert_phrases),
        )

    @property
    def name(self) -> str:
        return self.capture.name

    @property
    def running(self) -> bool:
        """False once the source has ended (or was stopped) and every block went through."""
        return self._consumer.is_alive()

    def start(self) -> None:
        self.capture.start()
        self._consumer.start()

    def stop_capture(self) -> None:
        self.capture.stop()

    def join(self, timeout: float) -> bool:
        self._consumer.join(timeout)
        return not self._consumer.is_alive()

    def abort(self) -> None:
        self._abort.set()
        self.capture.stop()
