#!/usr/bin/env python3
"""Greedy against beam search in factory noise, offline, for each model: WER and relative cost.

Every single-utterance English corpus file (the long recordings left out) is mixed with a
MIMII factory noise at each SNR (noise over the whole file) and transcribed offline
(``engines.transcribe``, language en, Whisper's temperature fallback) once greedily and once
with ``--beam`` beams, the two back to back per file so that both see the same machine load.
Decoding is deterministic (fallback sampling is seeded), so the WER figures repeat exactly;
the time is given as the ratio of beam to greedy decoding time in the same run, which is
rough on a shared machine.

Packages: the test suite's exports (tests/fixtures/models.py, int8 graphs as shipped),
exported first if missing. Not a test: about 20 minutes on 2 busy cores.
    .venv/bin/python scripts/benchmark_beam.py
    .venv/bin/python scripts/benchmark_beam.py --models tiny.en --snrs 10 --noise pump
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgescribe.engines.audio import load_audio  # noqa: E402
from edgescribe.engines.model import WhisperModel  # noqa: E402
from edgescribe.engines.onnx_runner import OnnxRunner  # noqa: E402
from edgescribe.engines.transcribe import TranscribeOptions, transcribe  # noqa: E402
from tests.fixtures.models import cached_package  # noqa: E402
from tests.fixtures.scoring import corpus_counts, read_transcripts  # noqa: E402
from tests.fixtures.streaming import mix_at_snr  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpus"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"], help="built-in weight sources")
    parser.add_argument("--snrs", nargs="+", type=float, default=[10.0, 5.0], help="SNRs in dB")
    parser.add_argument("--noise", default="pump", help="MIMII noise: fan, pump, slider, valve")
    parser.add_argument("--beam", type=int, default=5, help="beam size compared with greedy")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    truth = read_transcripts(CORPUS / "en" / "transcripts.tsv")
    files = sorted(p for p in (CORPUS / "en").glob("*.wav") if not p.stem.startswith("long_") and p.stem in truth)
    noise = load_audio(CORPUS / "noise" / f"factory_mimii_{args.noise}.wav")
    speech = {p.stem: load_audio(p) for p in files}
    audio_s = sum(len(s) for s in speech.values()) / 16000
    print(f"{len(files)} files, {audio_s:.0f} s of speech, {args.noise} noise, greedy against beam {args.beam}")
    print(f"| model (int8) | SNR | WER greedy | WER beam {args.beam} | greedy RTF | time beam / greedy |")
    print("|---|---|---|---|---|---|")
    for source in args.models:
        package = cached_package(source)
        model = WhisperModel.from_package(package, OnnxRunner(package, threads=args.threads))
        for snr in args.snrs:
            pairs = {1: [], args.beam: []}
            seconds = {1: 0.0, args.beam: 0.0}
            for name, samples in speech.items():
                mixed = mix_at_snr(samples, noise, snr)
                for beam in (1, args.beam):
                    started = time.perf_counter()
                    text = transcribe(model, mixed, TranscribeOptions(language="en", beam_size=beam)).text
                    seconds[beam] += time.perf_counter() - started
                    pairs[beam].append((truth[name], text))
            greedy = corpus_counts(pairs[1]).rate * 100
            beamed = corpus_counts(pairs[args.beam]).rate * 100
            print(f"| {source} | {snr:g} dB | {greedy:.1f} % | {beamed:.1f} % | {seconds[1] / audio_s:.2f} "
                  f"| {seconds[args.beam] / seconds[1]:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
