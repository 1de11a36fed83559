#!/usr/bin/env python3
"""Phrase alerts on the live path: recall, false alerts and latency (issue: phrase alerts).

The single-utterance English corpus files are laid end to end with 1.5 s of pause between
them and streamed at real-time pace through the pipeline the daemon runs (capture from a
WAV file, Silero VAD segmenter, streaming transcriber with partials, inference scheduler),
once clean and once mixed with factory noise at --snr dB. Every transcript event goes
through ``AlertTracker`` as the daemon's dispatcher thread hands it on, with the alert
phrases also given to the decoder as hotwords (``alerts.hotwords``, the default), and each
alert is stamped with the wall-clock time it was raised.

The phrases (PHRASES) each occur in one or two corpus references. Reported per condition:

* recall: utterances whose reference contains a phrase that got that alert early, and
  confirmed (a retracted early alert does not count);
* false alerts: alerts (early or confirmed) on utterances whose reference lacks the phrase;
* latency from the end of the phrase's audio to the alert, early and confirmed, p50/p95.
  The end of the phrase is taken from faster-whisper's word timestamps on the clean file
  (float32, same weights), as the corpus has no word alignment;

then the noise files alone for --noise-minutes, transcribed with partials (every update
decoded, faster than real time), where every alert is false.

Not a test: run it on a quiet machine (about 10 minutes of real-time audio plus the noise):
    .venv/bin/python scripts/benchmark_alerts.py --model var/test-cache/packages/tiny.en-int8-<key>
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgescribe.daemon.alerts import AlertTracker, PhraseMatcher  # noqa: E402
from edgescribe.daemon.config.alerts import AlertRule  # noqa: E402
from edgescribe.daemon.config.audio import CaptureOptions, SegmenterOptions, StreamConfig, VadOptions  # noqa: E402
from edgescribe.daemon.config.engine import EngineConfig  # noqa: E402
from edgescribe.daemon.config.transcription import TranscriptionConfig  # noqa: E402
from edgescribe.daemon.events import AlertEvent, TranscriptEvent  # noqa: E402
from edgescribe.daemon.pipeline import StreamPipeline, update_interval  # noqa: E402
from edgescribe.daemon.scheduler import EngineManager, InferenceScheduler  # noqa: E402
from edgescribe.daemon.segmenter import Segmenter  # noqa: E402
from edgescribe.daemon.streaming import StreamTranscriber  # noqa: E402
from edgescribe.daemon.vad import create_vad  # noqa: E402
from edgescribe.engines.audio import SAMPLE_RATE, load_audio  # noqa: E402
from edgescribe.engines.backend import load_model  # noqa: E402
from edgescribe.engines.encoder_window import ENCODER_WINDOWS  # noqa: E402
from tests.fixtures.faster_whisper_reference import load_reference  # noqa: E402
from tests.fixtures.streaming import SpokenStream, mix_at_snr, run_synchronously, spoken_stream, write_wav  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpus"
NOISES = ("pump", "fan", "slider", "valve")
# alert name -> phrase; each occurs in the references of the corpus utterances named in the comment
PHRASES = {
    "fellow": "fellow americans",  # jfk
    "stew": "stew for dinner",  # ls_1089-134686-0000
    "printed_book": "printed book",  # lj_LJ001-0004
    "metal_letters": "movable metal letters",  # lj_LJ001-0005
    "typography": "fine typography",  # lj_LJ001-0006
    "lamps": "yellow lamps",  # ls_1089-134686-0002
    "shop_boy": "shop boy",  # ls_1688-142285-0004
    "medical_man": "medical man",  # ls_1998-15444-0000
    "rigor_mortis": "rigor mortis",  # ls_1998-15444-0002
    "san_francisco": "san francisco",  # ls_367-130732-0002
    "native_country": "native country",  # ls_2412-153948-0000
    "glad": "glad to see you",  # arctic_axb_a0004
}


@dataclass(frozen=True)
class Raised:
    event: AlertEvent
    at: float  # wall clock when the tracker raised it


class Recorder:
    """Stands in for the daemon's dispatcher: every transcript event through the tracker, in order."""

    def __init__(self, tracker: AlertTracker):
        self.tracker = tracker
        self.raised: list[Raised] = []
        self.finals: list[TranscriptEvent] = []

    def __call__(self, event) -> None:
        if isinstance(event, TranscriptEvent):
            now = time.time()
            self.raised += [Raised(alert, now) for alert in self.tracker.observe(event)]
            if event.kind == "final":
                self.finals.append(event)


def rules() -> list[AlertRule]:
    return [AlertRule(name=name, phrases=[phrase]) for name, phrase in PHRASES.items()]


def transcription(args) -> TranscriptionConfig:
    return TranscriptionConfig(hotwords=list(PHRASES.values()), partial_interval_s=args.partial_interval)


def scheduler_for(args) -> InferenceScheduler:
    return InferenceScheduler(max_batch=4, encoder_window=args.encoder_window)


def normalised(text: str) -> str:
    return " ".join(re.sub(r"[^\w']+", " ", text.lower()).split())


def phrase_ends(spoken: SpokenStream, threads: int) -> dict[tuple[str, str], float]:
    """(corpus id, alert) -> stream audio time the phrase ends, from faster-whisper's word timestamps."""
    reference = load_reference("tiny.en", threads=threads)
    ends = {}
    for key, start, _ in spoken.spans:
        segments, _ = reference.transcribe(load_audio(CORPUS / "en" / f"{key}.wav"), language="en", beam_size=1,
                                           word_timestamps=True, vad_filter=False)
        words = [word for segment in segments for word in segment.words]
        text, offsets = "", []
        for word in words:
            text += word.word
            offsets.append(len(text))
        for name, phrase in PHRASES.items():
            if phrase not in normalised(spoken.references[key]):
                continue
            match = PhraseMatcher([phrase], 0.2).find(text)
            if match is not None:
                last = next(i for i, offset in enumerate(offsets) if offset >= match.end)
                ends[(key, name)] = start + words[last].end
    return ends


def run_live(engines, wav: Path, seconds: float, args) -> Recorder:
    recorder = Recorder(AlertTracker(rules()))
    scheduler = scheduler_for(args)
    scheduler.start()
    pipeline = StreamPipeline.build(StreamConfig(name="mic", file=str(wav), speed=1.0), CaptureOptions(), VadOptions(),
                                    SegmenterOptions(), transcription(args), scheduler, engines, recorder,
                                    alert_phrases=list(PHRASES.values()))
    try:
        pipeline.start()
        pipeline.join(seconds + 120)
        scheduler.wait_idle(120)
    finally:
        pipeline.abort()
        scheduler.stop()
    return recorder


def span_of(spoken: SpokenStream, alert: AlertEvent) -> str | None:
    return spoken.reference_of(alert.audio_start, alert.audio_end)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def report(label: str, spoken: SpokenStream, recorder: Recorder, ends: dict[tuple[str, str], float]) -> None:
    expected = {(key, name) for key, _, _ in spoken.spans for name, phrase in PHRASES.items()
                if phrase in normalised(spoken.references[key])}
    retracted = {(span_of(spoken, r.event), r.event.alert) for r in recorder.raised if r.event.state == "retracted"}
    fired = {"early": {}, "confirmed": {}}
    false = []
    for raised in recorder.raised:
        alert = raised.event
        key = span_of(spoken, alert)
        if alert.state == "retracted":
            continue
        if (key, alert.alert) not in expected:
            false.append(f"{alert.state} {alert.alert} {alert.matched_text!r} in {key}")
            continue
        fired[alert.state].setdefault((key, alert.alert), raised)
    print(f"\n== {label}: {len(expected)} phrase occurrences in {len(spoken.spans)} utterances")
    for state in ("early", "confirmed"):
        hits = {k: r for k, r in fired[state].items() if state == "confirmed" or k not in retracted}
        latencies = []
        for (key, name), raised in hits.items():
            if (key, name) in ends:
                wall_end = raised.event.wall_start + (ends[(key, name)] - raised.event.audio_start)
                latencies.append(raised.at - wall_end)
        print(f"  {state:9s}: recall {len(hits)}/{len(expected)} = {len(hits) / max(1, len(expected)):.0%}, "
              f"latency from phrase end p50 {percentile(latencies, 50):.2f} s, p95 {percentile(latencies, 95):.2f} s "
              f"(n={len(latencies)})")
    print(f"  retracted: {len(retracted)}; missed: {sorted(expected - set(fired['confirmed']))}")
    print(f"  false alerts: {len(false)}" + "".join(f"\n    {line}" for line in false))


def noise_alone(engines, noise: np.ndarray, minutes: float, workdir: Path, name: str, args) -> list[AlertEvent]:
    wav = write_wav(workdir / f"alone_{name}.wav", np.resize(noise, int(minutes * 60 * SAMPLE_RATE)).astype(np.float32))
    recorder = Recorder(AlertTracker(rules()))
    scheduler = scheduler_for(args)
    scheduler.start()
    vad = VadOptions()
    segmenter = Segmenter("mic", SegmenterOptions(), create_vad(vad),
                          update_interval_s=update_interval(transcription(args), list(PHRASES.values())), thresholds=vad)
    transcriber = StreamTranscriber("mic", transcription(args), scheduler, engines, emit=recorder,
                                    alert_phrases=list(PHRASES.values()))
    try:
        run_synchronously(wav, transcriber, scheduler, segmenter, timeout_s=1800)
    finally:
        scheduler.stop()
    return [r.event for r in recorder.raised]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="model package directory (tiny.en)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--snr", type=float, default=10.0, help="SNR of the noisy run (dB); the first of --noises")
    parser.add_argument("--noises", nargs="+", default=list(NOISES), choices=NOISES)
    parser.add_argument("--noise-minutes", type=float, default=10.0, help="noise alone, in total over --noises")
    parser.add_argument("--skip-clean", action="store_true")
    parser.add_argument("--partial-interval", type=float, default=TranscriptionConfig().partial_interval_s,
                        help="transcription.partial_interval_s (s of audio between partials)")
    parser.add_argument("--encoder-window", choices=ENCODER_WINDOWS, default=EngineConfig().encoder_window,
                        help="engine.encoder_window")
    args = parser.parse_args(argv)

    model = load_model(args.model, backend="onnxruntime", threads=args.threads)
    engines = EngineManager(lambda path: model, args.model)
    engines.start()
    ids = [line.split("\t")[0] for line in (CORPUS / "en" / "transcripts.tsv").read_text().splitlines()
           if line and not line.startswith("long_")]
    spoken = spoken_stream(CORPUS, ids=ids)
    seconds = len(spoken.samples) / SAMPLE_RATE
    ends = phrase_ends(spoken, args.threads)
    print(f"{len(ids)} utterances, {seconds:.0f} s; {len(PHRASES)} alerts; phrase ends found for {len(ends)}")
    noises = {name: load_audio(CORPUS / "noise" / f"factory_mimii_{name}.wav") for name in args.noises}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if not args.skip_clean:
            report("clean", spoken, run_live(engines, write_wav(workdir / "clean.wav", spoken.samples), seconds, args), ends)
        first = args.noises[0]
        mixed = mix_at_snr(spoken.samples, noises[first], args.snr)
        report(f"{first} noise at {args.snr:g} dB", spoken, run_live(engines, write_wav(workdir / "noisy.wav", mixed),
                                                                     seconds, args), ends)
        false = []
        for name, noise in noises.items():
            false += noise_alone(engines, noise, args.noise_minutes / len(noises), workdir, name, args)
        print(f"\n== noise alone ({args.noise_minutes:g} min over {', '.join(noises)}): {len(false)} alerts"
              + "".join(f"\n    {a.state} {a.alert} {a.matched_text!r}" for a in false))
    return 0


if __name__ == "__main__":
    sys.exit(main())
