#!/usr/bin/env python3
"""Encoder windows sized to the audio against full 30-s windows: accuracy and the gates.

Transcribes every single-window recording of a corpus directory (the long-form files keep
30-s windows in either mode, so they are left out) once per ``engine.encoder_window`` mode
and reports, per mode: corpus WER (CER for zh), windows decoded again at a hotter
temperature, short windows decoded again in the full window, and the wall time (a rough
figure; the speed comparison with faster-whisper is scripts/benchmark_offline.py).

    .venv/bin/python scripts/benchmark_encoder_window.py --model var/pkg/tiny.en
    .venv/bin/python scripts/benchmark_encoder_window.py --model var/pkg/base --language zh
    .venv/bin/python scripts/benchmark_encoder_window.py --model var/pkg/base --language zh --float32

The streaming counterpart: scripts/benchmark_noise.py --encoder-window adaptive|full.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgescribe.engines.audio import N_FRAMES, SAMPLE_RATE, load_audio  # noqa: E402
from edgescribe.engines.encoder_window import ENCODER_WINDOWS  # noqa: E402
from edgescribe.engines.model import WhisperModel  # noqa: E402
from edgescribe.engines.onnx_runner import OnnxRunner  # noqa: E402
from edgescribe.engines.package import ModelPackage  # noqa: E402
from edgescribe.engines.transcribe import TranscribeOptions, transcribe  # noqa: E402
from tests.fixtures.scoring import corpus_counts, read_transcripts  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpus"
SINGLE_WINDOW_S = N_FRAMES / 100


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "var" / "pkg" / "tiny.en", help="model package directory")
    parser.add_argument("--language", default="en", help="corpus language (a directory of ../shared/corpus)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--float32", action="store_true",
                        help="the package's float32 graphs even when it has int8 ones, to tell the "
                             "window's effect from int8 rounding")
    args = parser.parse_args(argv)

    package = ModelPackage.load(args.model)
    model = WhisperModel.from_package(package, OnnxRunner(package, threads=args.threads, prefer_int8=not args.float32))
    corpus = CORPUS / args.language
    references = read_transcripts(corpus / "transcripts.tsv")
    audio = {path.stem: load_audio(path) for path in sorted(corpus.glob("*.wav")) if path.stem in references}
    audio = {name: samples for name, samples in audio.items() if len(samples) / SAMPLE_RATE < SINGLE_WINDOW_S}
    language = args.language if model.is_multilingual else "en"
    unit = "char" if args.language == "zh" else "word"
    print(f"model {model.name} ({model.runner.precision}), {len(audio)} single-window files of {corpus}\n")
    print(f"| encoder window | {'CER' if unit == 'char' else 'WER'} | errors | hotter-temperature fallbacks "
          "| full-window retries | wall s |")
    print("|---|---|---|---|---|---|")
    for mode in ENCODER_WINDOWS:
        options = TranscribeOptions(language=language, encoder_window=mode)
        started = time.perf_counter()
        results = {name: transcribe(model, samples, options) for name, samples in audio.items()}
        wall = time.perf_counter() - started
        counts = corpus_counts(((references[name], r.text) for name, r in results.items()), args.language, unit)
        print(f"| {mode} | {100 * counts.rate:.2f} % | {counts.errors} | {sum(r.fallbacks for r in results.values())} "
              f"| {sum(r.full_window_retries for r in results.values())} | {wall:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
