#!/usr/bin/env python3
"""The live path on a loud floor: corpus speech in continuous factory noise, stage by stage.

The single-utterance English corpus files are laid end to end with 1.5 s of pause between
them (about 4 minutes, sentences of 1.5 to 16 s) and mixed with each MIMII factory noise at
each SNR, the noise running through the pauses as on a real floor. For each mix:

  1. streaming WER: the mix through the live path (segmenter with Silero VAD, streaming
     transcriber, inference scheduler), every update decoded before the next (a final's
     text depends on its audio alone, so this is what any unloaded real-time run gives);
  2. offline WER of the same noisy audio, utterance by utterance (``engines.transcribe``
     on each true span), the model's own accuracy in that noise;
  3. the stages: utterance boundaries found against the true ones (missed, split, merged,
     false), Silero's speech probability in the noise-only stretches, what each gate
     dropped, speculative finals reused or discarded, and utterances with more than 2 s of
     speech that got no final at all.

Then the final latency from the end of speech at real-time pace for one mix (--latency-snr,
first noise), through the same pipeline the daemon runs, partials on; and each noise alone
for --noise-only-minutes, which must give no text.

The noise clips are 10 s long, looped: with --noise-shifts N each noisy mix runs N times,
the loop started 1/N of a clip later each time, and the counts are pooled, so that a figure
rests on N samples of the floor rather than one.

Not a test: run it on a quiet machine. Full run (about 15 minutes on 2 cores, plus about
10 for each further noise shift):
    .venv/bin/python scripts/benchmark_noise.py --model var/pkg/tiny.en
Short run (one noise, 10 dB, no latency run):
    .venv/bin/python scripts/benchmark_noise.py --noises pump --snrs 10 --latency-snr none --noise-only-minutes 0
"""

from __future__ import annotations

import argparse
import functools
import operator
import sys
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgescribe.daemon.config.audio import CaptureOptions, SegmenterOptions, StreamConfig, VadOptions  # noqa: E402
from edgescribe.daemon.config.transcription import TranscriptionConfig  # noqa: E402
from edgescribe.daemon.pipeline import StreamPipeline  # noqa: E402
from edgescribe.daemon.scheduler import EngineManager, InferenceScheduler  # noqa: E402
from edgescribe.daemon.segmenter import Segmenter, Utterance  # noqa: E402
from edgescribe.daemon.streaming import StreamTranscriber  # noqa: E402
from edgescribe.daemon.vad import FRAME_SAMPLES, create_vad  # noqa: E402
from edgescribe.engines.audio import SAMPLE_RATE, load_audio  # noqa: E402
from edgescribe.engines.backend import load_model  # noqa: E402
from edgescribe.engines.encoder_window import DEFAULT_ENCODER_WINDOW, ENCODER_WINDOWS  # noqa: E402
from edgescribe.engines.transcribe import TranscribeOptions, transcribe  # noqa: E402
from tests.fixtures.scoring import ErrorCounts, corpus_counts, read_transcripts  # noqa: E402
from tests.fixtures.streaming import (  # noqa: E402
    Collected,
    SpokenStream,
    latency_from_speech_end,
    mix_at_snr,
    run_synchronously,
    spoken_stream,
    write_wav,
)

CORPUS = REPO.parent / "shared" / "corpus"
NOISES = ("pump", "fan", "slider", "valve")
OVERLAP_S = 0.2  # a found utterance counts for a true one when they share this much audio


class RecordingVad:
    """The configured detector, with every probability it gives kept for the report."""

    def __init__(self, inner):
        self.inner = inner
        self.probs: list[float] = []

    def speech_prob(self, frame: np.ndarray) -> float:
        prob = self.inner.speech_prob(frame)
        self.probs.append(prob)
        return prob

    def reset(self) -> None:
        self.inner.reset()


class RecordingTranscriber:
    """Hands every update on, and keeps the ended ones (the segmenter's utterances)."""

    def __init__(self, inner: StreamTranscriber):
        self.inner = inner
        self.stream = inner.stream
        self.ended: list[Utterance] = []

    def push(self, utterance: Utterance) -> None:
        if utterance.ended:
            self.ended.append(utterance)
        self.inner.push(utterance)


@dataclass
class StageReport:
    noise: str
    snr_db: float | None
    streaming: ErrorCounts
    offline: ErrorCounts
    finals: int
    missed: int
    split: int
    merged: int
    false: int
    noise_probs: np.ndarray  # Silero's speech probability in the noise-only stretches
    lost_utterances: int  # true utterances with > 2 s of speech and no final over them
    drops: dict
    discarded_bursts: int
    length_cuts: int
    speculation: dict

    def __add__(self, other: StageReport) -> StageReport:
        """Two runs of one mix pooled: counts added, probabilities put together."""
        def add(a, b):
            if isinstance(a, dict):
                return {key: a[key] + b[key] for key in a}
            if isinstance(a, np.ndarray):
                return np.concatenate([a, b])
            return a + b if isinstance(a, (int, ErrorCounts)) else a  # the mix's name and SNR
        return StageReport(**{f.name: add(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)})


def boundaries(found: list[tuple[float, float]], spans: list[tuple[str, float, float]]) -> tuple[int, int, int, int]:
    """(missed, split, merged, false): true utterances no found one covers, true ones covered
    by several, found ones covering several true ones, found ones covering none."""
    def overlap(a, b, s, e):
        return min(b, e) - max(a, s)

    missed = sum(1 for _, s, e in spans if not any(overlap(a, b, s, e) > OVERLAP_S for a, b in found))
    split = sum(1 for _, s, e in spans if sum(overlap(a, b, s, e) > OVERLAP_S for a, b in found) > 1)
    merged = sum(1 for a, b in found if sum(overlap(a, b, s, e) > OVERLAP_S for _, s, e in spans) > 1)
    false = sum(1 for a, b in found if not any(overlap(a, b, s, e) > 0 for _, s, e in spans))
    return missed, split, merged, false


def noise_only_probs(probs: list[float], spans: list[tuple[str, float, float]], margin_s: float = 0.4) -> np.ndarray:
    frame_s = FRAME_SAMPLES / SAMPLE_RATE
    times = np.arange(len(probs)) * frame_s
    outside = np.ones(len(probs), bool)
    for _, start, end in spans:
        outside &= ~((times > start - margin_s) & (times < end + margin_s))
    return np.asarray(probs)[outside]


def run_stage_report(model, engines, spoken: SpokenStream, noise_name: str, noise: np.ndarray | None,
                     snr_db: float | None, args, workdir: Path) -> StageReport:
    """One mix, pooled over ``args.noise_shifts`` runs with the noise loop started that many
    evenly spaced points later (the clips are 10 s long, so one run hears each word over
    one stretch of noise; more runs, more samples of the same floor). Clean speech runs once."""
    shifts = args.noise_shifts if noise is not None else 1
    runs = [run_one_mix(model, engines, spoken, noise_name, np.roll(noise, -k * len(noise) // shifts)
                        if noise is not None else None, snr_db, args, workdir) for k in range(shifts)]
    return functools.reduce(operator.add, runs)


def run_one_mix(model, engines, spoken: SpokenStream, noise_name: str, noise: np.ndarray | None,
                snr_db: float | None, args, workdir: Path) -> StageReport:
    mixed = mix_at_snr(spoken.samples, noise, snr_db) if noise is not None else spoken.samples
    wav = write_wav(workdir / f"{noise_name}_{snr_db}.wav", mixed)
    events = Collected()
    scheduler = InferenceScheduler(max_batch=4, encoder_window=args.encoder_window)
    scheduler.start()
    vad_options = VadOptions()
    vad = RecordingVad(create_vad(vad_options))
    segmenter = Segmenter("mic", segmenter_options(args), vad, update_interval_s=None, thresholds=vad_options)
    transcriber = StreamTranscriber("mic", transcription_config(args, partials=False), scheduler, engines, emit=events)
    recorder = RecordingTranscriber(transcriber)
    try:
        run_synchronously(wav, recorder, scheduler, segmenter, timeout_s=600)
    finally:
        scheduler.stop()
    finals = events.finals("mic")
    hypotheses = spoken.hypotheses(finals)
    streaming, offline = [], []
    for key, start, end in spoken.spans:
        reference = spoken.references[key]
        streaming.append((reference, hypotheses.get(key, "")))
        piece = mixed[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)]
        options = TranscribeOptions(language="en", encoder_window=args.encoder_window)
        offline.append((reference, transcribe(model, piece, options).text))
    found = [(u.audio_start, u.audio_end) for u in recorder.ended]
    missed, split, merged, false = boundaries(found, spoken.spans)
    quiet = noise_only_probs(vad.probs, spoken.spans)
    with_final = {key for key in hypotheses if hypotheses[key].strip()}
    lost = sum(1 for key, start, end in spoken.spans if end - start > 2.0 and key not in with_final)
    return StageReport(
        noise=noise_name, snr_db=snr_db, streaming=corpus_counts(streaming), offline=corpus_counts(offline),
        finals=len(finals), missed=missed, split=split, merged=merged, false=false,
        noise_probs=quiet,
        lost_utterances=lost, drops=asdict(transcriber.drop_counts()), discarded_bursts=segmenter.discarded_bursts,
        length_cuts=segmenter.length_cuts, speculation=asdict(transcriber.speculation_counts()),
    )


def segmenter_options(args) -> SegmenterOptions:
    default = SegmenterOptions()
    return SegmenterOptions(noisy_min_silence_s=default.min_silence_s) if args.fixed_silence else default


def transcription_config(args, partials: bool) -> TranscriptionConfig:
    return TranscriptionConfig(partials=partials, speculative_final=not args.no_speculative_final)


def latency_run(engines, spoken: SpokenStream, mixed: np.ndarray, args, workdir: Path) -> list[float]:
    """Final latency from the end of speech at real-time pace, partials on, as the daemon runs.

    The end of speech is read off the clean speech, since in noise no level threshold finds it.
    """
    events = Collected()
    scheduler = InferenceScheduler(max_batch=4, encoder_window=args.encoder_window)
    scheduler.start()
    wav = write_wav(workdir / "latency.wav", mixed)
    pipeline = StreamPipeline.build(StreamConfig(name="mic", file=str(wav), speed=1.0), CaptureOptions(), VadOptions(),
                                    segmenter_options(args), transcription_config(args, partials=True), scheduler, engines, events)
    try:
        pipeline.start()
        pipeline.join(len(mixed) / SAMPLE_RATE + 120)
        scheduler.wait_idle(120)
    finally:
        pipeline.abort()
        scheduler.stop()
    return [latency_from_speech_end(final, spoken.samples) for final in events.finals("mic")]


def noise_alone(engines, noise: np.ndarray, minutes: float, args, workdir: Path, name: str) -> list[str]:
    """Texts of every final the live path gives on ``minutes`` of the noise alone."""
    samples = np.resize(noise, int(minutes * 60 * SAMPLE_RATE)).astype(np.float32)
    wav = write_wav(workdir / f"alone_{name}.wav", samples)
    events = Collected()
    scheduler = InferenceScheduler(max_batch=4, encoder_window=args.encoder_window)
    scheduler.start()
    vad_options = VadOptions()
    segmenter = Segmenter("mic", segmenter_options(args), create_vad(vad_options), update_interval_s=None,
                          thresholds=vad_options)
    transcriber = StreamTranscriber("mic", transcription_config(args, partials=False), scheduler, engines, emit=events)
    try:
        run_synchronously(wav, transcriber, scheduler, segmenter, timeout_s=600)
    finally:
        scheduler.stop()
    return [final.text for final in events.finals("mic") if final.text.strip()]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "var" / "pkg" / "tiny.en", help="model package directory")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--noises", default=",".join(NOISES), help="MIMII noises to mix in")
    parser.add_argument("--snrs", default="20,10,5", help="SNRs in dB ('clean' for none)")
    parser.add_argument("--latency-snr", default="10", help="SNR of the real-time latency run, or 'none'")
    parser.add_argument("--noise-shifts", type=int, default=1,
                        help="runs per noisy mix, each with the noise loop started later; counts pooled")
    parser.add_argument("--noise-only-minutes", type=float, default=10.0, help="each noise alone for this long")
    parser.add_argument("--fixed-silence", action="store_true",
                        help="end utterances after min_silence_s whatever the floor (the rule before floor-aware silence)")
    parser.add_argument("--encoder-window", choices=ENCODER_WINDOWS, default=DEFAULT_ENCODER_WINDOW,
                        help="encoder window for live utterances and offline single windows (engines/encoder_window.py)")
    parser.add_argument("--no-speculative-final", action="store_true",
                        help="transcription.speculative_final off: finals wait out the whole silence")
    args = parser.parse_args(argv)

    model = load_model(args.model, backend="onnxruntime", threads=args.threads)
    engines = EngineManager(lambda path: model, args.model)
    engines.start()
    references = read_transcripts(CORPUS / "en" / "transcripts.tsv")
    spoken = spoken_stream(CORPUS, sorted(key for key in references if not key.startswith("long_")))
    noises = {name: load_audio(CORPUS / "noise" / f"factory_mimii_{name}.wav") for name in args.noises.split(",")}
    snrs = [None if s == "clean" else float(s) for s in args.snrs.split(",")]
    print(f"model {model.name} on {model.runner.name}, {args.threads} threads; stream of {len(spoken.spans)} "
          f"utterances, {len(spoken.samples) / SAMPLE_RATE:.0f} s; silence rule "
          f"{'fixed' if args.fixed_silence else 'floor-aware'}; {args.noise_shifts} run(s) per noisy mix\n")
    print("| noise | SNR | WER streaming | WER offline | diff | finals | missed / split / merged / false | "
          "Silero p in noise: mean, p95, >= threshold | >2-s utterances lost | dropped: no-speech, loop, "
          "min-speech; repeated words; empty | length cuts | speculation reused / discarded |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        mixes = [("clean", None, None)] if None in snrs else []
        mixes += [(name, noise, snr) for name, noise in noises.items() for snr in snrs if snr is not None]
        for name, noise, snr in mixes:
            r = run_stage_report(model, engines, spoken, name, noise, snr, args, workdir)
            d = r.drops
            print(f"| {name} | {'-' if snr is None else f'{snr:g} dB'} "
                  f"| {100 * r.streaming.rate:.1f} % | {100 * r.offline.rate:.1f} % "
                  f"| {100 * (r.streaming.rate - r.offline.rate):+.1f} | {r.finals} "
                  f"| {r.missed} / {r.split} / {r.merged} / {r.false} "
                  f"| {r.noise_probs.mean():.3f}, {np.percentile(r.noise_probs, 95):.3f}, "
                  f"{100 * np.mean(r.noise_probs >= VadOptions().threshold):.1f} % "
                  f"| {r.lost_utterances} | {d['no_speech']}, {d['compression_ratio']}, {r.discarded_bursts}; "
                  f"{d['repeated_words']}; {d['empty_finals']} | {r.length_cuts} "
                  f"| {r.speculation['reused']} / {r.speculation['discarded']} |", flush=True)
        if args.latency_snr != "none":
            name, noise = next(iter(noises.items()))
            snr = float(args.latency_snr)
            latencies = latency_run(engines, spoken, mix_at_snr(spoken.samples, noise, snr), args, workdir)
            print(f"\nReal-time pace, {name} at {snr:g} dB, partials on: {len(latencies)} finals, latency from the end "
                  f"of speech p50 {percentile(latencies, 0.5):.2f} s, p95 {percentile(latencies, 0.95):.2f} s")
        for name, noise in noises.items() if args.noise_only_minutes > 0 else ():
            texts = noise_alone(engines, noise, args.noise_only_minutes, args, workdir, name)
            print(f"{name} alone, {args.noise_only_minutes:g} min: {len(texts)} finals with text {texts[:3]}")
    engines.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
