#!/usr/bin/env python3
"""Word timings: edgescribe (ONNX Runtime, float32) against faster-whisper word_timestamps=True.

Both transcribe the corpus with the same CTranslate2 weights (the built-in tiny.en unless
--model-source says otherwise), float32, greedy with Whisper's fallbacks and no VAD. Words of
the two transcripts are paired where the texts agree (difflib over lower-cased words without
punctuation); reported: mean and 95th percentile of |start difference| and |end difference|
over those pairs (the issue's target: mean <= 0.1 s, p95 <= 0.3 s), per file and overall.
Also the real-time factor of edgescribe with and without word timings (one pass each after a
warm-up, alternating file by file; on a shared machine, only a rough figure).

    .venv/bin/python scripts/benchmark_word_timings.py [--model-source tiny.en] [--threads 2] [FILE...]
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgescribe.engines.audio import load_audio  # noqa: E402
from edgescribe.engines.model import WhisperModel  # noqa: E402
from edgescribe.engines.onnx_runner import OnnxRunner  # noqa: E402
from edgescribe.engines.transcribe import TranscribeOptions, transcribe  # noqa: E402
from tests.fixtures.faster_whisper_reference import load_reference  # noqa: E402
from tests.fixtures.models import cached_package  # noqa: E402

DEFAULT_CORPUS = REPO.parent / "shared" / "corpus" / "en"


def normalise(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())


def matched_pairs(ours: list[tuple[str, float, float]], theirs: list[tuple[str, float, float]]):
    """(our word, their word) pairs where the two word sequences agree."""
    a, b = [normalise(w) for w, _, _ in ours], [normalise(w) for w, _, _ in theirs]
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            if a[block.a + k]:
                yield ours[block.a + k], theirs[block.b + k]


def edgescribe_words(model: WhisperModel, samples: np.ndarray) -> list[tuple[str, float, float]]:
    result = transcribe(model, samples, TranscribeOptions(word_timestamps=True))
    return [(w.word, w.start, w.end) for s in result.segments for w in s.words]


def reference_words(reference, samples: np.ndarray) -> list[tuple[str, float, float]]:
    segments, _ = reference.transcribe(samples, beam_size=1, best_of=5, vad_filter=False, word_timestamps=True)
    return [(w.word, float(w.start), float(w.end)) for s in segments for w in s.words]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help=f"WAV files (default: {DEFAULT_CORPUS}/*.wav)")
    parser.add_argument("--model-source", default="tiny.en", help="built-in CTranslate2 weight source")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    files = args.files or sorted(DEFAULT_CORPUS.glob("*.wav"))
    audio = {f: load_audio(f) for f in files}
    duration = sum(len(a) for a in audio.values()) / 16000

    package = cached_package(args.model_source, quantize=None)
    model = WhisperModel.from_package(package, OnnxRunner(package, threads=args.threads, prefer_int8=False, spin=False))
    reference = load_reference(args.model_source, compute_type="float32", threads=args.threads)

    starts, ends = [], []
    print(f"{'file':40s} {'pairs':>5s} {'start mean':>10s} {'end mean':>9s} {'start p95':>9s} {'end p95':>8s}")
    for f, samples in audio.items():
        ours = edgescribe_words(model, samples)
        pairs = list(matched_pairs(ours, reference_words(reference, samples)))
        s = np.array([abs(o[1] - t[1]) for o, t in pairs])
        e = np.array([abs(o[2] - t[2]) for o, t in pairs])
        starts.append(s)
        ends.append(e)
        if len(pairs):
            print(f"{f.name:40s} {len(pairs):5d} {s.mean():10.3f} {e.mean():9.3f} "
                  f"{np.percentile(s, 95):9.3f} {np.percentile(e, 95):8.3f}")
    s, e = np.concatenate(starts), np.concatenate(ends)
    print(f"\nall: {len(s)} matched words; |start| mean {s.mean():.3f} s, p95 {np.percentile(s, 95):.3f} s; "
          f"|end| mean {e.mean():.3f} s, p95 {np.percentile(e, 95):.3f} s")

    # Timed after the pass above has warmed both paths up, file by file alternating, so a change
    # in the machine's load hits both alike.
    seconds = {False: 0.0, True: 0.0}
    for samples in audio.values():
        for words in (False, True):
            began = time.perf_counter()
            transcribe(model, samples, TranscribeOptions(word_timestamps=words))
            seconds[words] += time.perf_counter() - began
    plain, timed = seconds[False], seconds[True]
    print(f"real-time factor over {duration:.0f} s of audio, {args.threads} threads, float32: "
          f"{plain / duration:.4f} without word timings, {timed / duration:.4f} with")
    return 0


if __name__ == "__main__":
    sys.exit(main())
