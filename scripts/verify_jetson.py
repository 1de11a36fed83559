#!/usr/bin/env python3
"""Measure one backend on real recordings, or compare two measurements (scripts/verify-jetson.sh).

    verify_jetson.py measure --model PKG --engine-dir DIR --backend tensorrt --corpus CORPUS/en --out trt.json
    verify_jetson.py compare ort.json trt.json

``measure`` runs in its own process per backend so peak memory belongs to that backend alone.
It transcribes the corpus files (transcripts.tsv lists them) and records per file the text,
the audio length and the wall time; overall the WER, the real-time factor, the per-token
decoder latency (single-token steps after a real prompt, the step a listener waits on) and
peak memory; and for the first ``--word-files`` files (in a second pass, so word timing does not
count in the timings) their word timings, and where the words were aligned (``gpu``: the
aligner engine; ``host``: ONNX Runtime over a host copy, for engines built before it;
``cpu``: ONNX Runtime). ``compare`` prints both side by side and exits 1 when any file's text
differs, a WER differs by more than ``--max-wer-delta``, or a word differs or moves by more than
``--max-word-shift`` seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgescribe.engines.audio import load_audio, pad_or_trim  # noqa: E402
from edgescribe.engines.backend import load_model  # noqa: E402
from edgescribe.engines.errors import EdgescribeError, ModelPackageError  # noqa: E402
from edgescribe.engines.onnx_runner import OnnxRunner  # noqa: E402
from edgescribe.engines.transcribe import TranscribeOptions, transcribe  # noqa: E402
from tests.fixtures.scoring import corpus_counts, read_transcripts  # noqa: E402

log = logging.getLogger("verify_jetson")


@dataclass
class FileResult:
    id: str
    seconds: float  # audio length
    wall: float  # transcription time
    text: str
    reference: str
    words: list | None = None  # [word, start, end] when its words were timed


@dataclass
class Measurement:
    backend: str
    model: str
    files: list[FileResult] = field(default_factory=list)
    wer: float = 0.0
    rtf: float = 0.0  # wall time / audio time over all files
    token_ms: float = 0.0  # mean single-token decoder step
    load_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    gpu_used_mb: float | None = None
    word_timing: str | None = None  # where words were aligned: gpu, host or cpu; None: not timed


def measure(args: argparse.Namespace) -> int:
    started = time.monotonic()
    model = load_model(args.model, backend=args.backend, engine_dir=args.engine_dir, threads=args.threads)
    if args.backend == "onnxruntime":
        # The reference is float32, like the graphs TensorRT builds from (the daemon's CPU path
        # would prefer int8 graphs when the package has them).
        started = time.monotonic()
        model.runner = OnnxRunner(model.package, threads=args.threads, prefer_int8=False)
    if model.runner.name != args.backend:
        print(f"verify_jetson: asked for {args.backend}, got {model.runner.name}", file=sys.stderr)
        return 1
    result = Measurement(args.backend, model.name, load_seconds=time.monotonic() - started)

    references = read_transcripts(args.corpus / "transcripts.tsv")
    ids = sorted(i for i in references if not i.startswith("long_"))[: args.limit]
    options = TranscribeOptions(language=args.language, temperatures=(0.0,), without_timestamps=False)
    for file_id in ids:
        begun = time.monotonic()
        transcription = transcribe(model, args.corpus / f"{file_id}.wav", options)
        result.files.append(FileResult(file_id, transcription.duration, time.monotonic() - begun,
                                       transcription.text, references[file_id]))
    audio = sum(f.seconds for f in result.files)
    result.rtf = sum(f.wall for f in result.files) / audio if audio else 0.0
    result.wer = corpus_counts((f.reference, f.text) for f in result.files).rate
    result.token_ms = token_latency_ms(model, args.corpus / f"{ids[0]}.wav", steps=args.token_steps)
    result.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.backend == "tensorrt":
        result.gpu_used_mb = model.runner.device_memory_used() / 2**20
    time_words(model, args, options, result)
    args.out.write_text(json.dumps(asdict(result), indent=2) + "\n")
    print(f"{args.backend}: WER {result.wer:.1%}, RTF {result.rtf:.3f}, {result.token_ms:.1f} ms/token, "
          f"peak RSS {result.peak_rss_mb:.0f} MB -> {args.out}")
    return 0


def time_words(model, args: argparse.Namespace, options: TranscribeOptions, result: Measurement) -> None:
    """Word timings of the first ``--word-files`` files, when the package can time words."""
    try:
        model.package.aligner_path()
    except ModelPackageError as error:
        print(f"verify_jetson: no word timing: {error}", file=sys.stderr)
        return
    runner = model.runner
    result.word_timing = "cpu" if runner.name == "onnxruntime" else ("gpu" if runner.aligns_on_gpu else "host")
    timed = dataclasses.replace(options, word_timestamps=True)
    for file in result.files[: args.word_files]:
        transcription = transcribe(model, args.corpus / f"{file.id}.wav", timed)
        file.words = [[w.word, w.start, w.end] for s in transcription.segments for w in s.words]


def word_problems(names: list[str], runs: list[dict], max_shift: float) -> list[str]:
    """Files whose words differ between the runs, or move by more than ``max_shift`` seconds."""
    words = [{f["id"]: f.get("words") for f in run["files"]} for run in runs]
    problems = []
    for file_id in sorted(set(words[0]) & set(words[1])):
        a, b = words[0][file_id], words[1][file_id]
        if a is None or b is None:
            continue
        if [w[0] for w in a] != [w[0] for w in b]:
            problems.append(f"{file_id}: words differ ({names[0]} {len(a)}, {names[1]} {len(b)})")
            continue
        shift = max((max(abs(x[1] - y[1]), abs(x[2] - y[2])) for x, y in zip(a, b)), default=0.0)
        if shift > max_shift:
            problems.append(f"{file_id}: word times move by {shift:.3f} s (allowed {max_shift:.3f} s)")
    return problems


def token_latency_ms(model, wav: Path, steps: int) -> float:
    """Mean wall time of one single-token decoder step (encode and prompt excluded)."""
    mel = pad_or_trim(model.log_mel(load_audio(wav)))[None]
    runner = model.runner
    special = model.package.manifest.special_tokens
    prompt = [special.sot, special.no_timestamps]
    cross = runner.encode(mel)
    cache = runner.new_cache(1)
    logits = runner.decode(np.array([prompt]), np.zeros(1, dtype=np.int64), cache, cross)
    # Forced tokens after EOT are fine for timing: the cost of a step does not depend on the token.
    started = time.perf_counter()
    for step in range(steps):
        token = int(np.argmax(logits[0]))
        logits = runner.decode(np.array([[token]]), np.array([len(prompt) + step]), cache, cross)
    return (time.perf_counter() - started) / steps * 1000


def compare(args: argparse.Namespace) -> int:
    runs = [json.loads(Path(path).read_text()) for path in args.measurements]
    names = [run["backend"] for run in runs]
    print(f"{'':24}" + "".join(f"{name:>16}" for name in names))
    for label, key, fmt in (("WER", "wer", "{:.2%}"), ("real-time factor", "rtf", "{:.3f}"),
                            ("ms per token", "token_ms", "{:.1f}"), ("model load s", "load_seconds", "{:.1f}"),
                            ("peak RSS MB", "peak_rss_mb", "{:.0f}"), ("GPU/shared used MB", "gpu_used_mb", "{:.0f}"),
                            ("words aligned on", "word_timing", "{}")):
        cells = [fmt.format(run[key]) if run.get(key) is not None else "-" for run in runs]
        print(f"{label:24}" + "".join(f"{cell:>16}" for cell in cells))

    problems = []
    texts = [{f["id"]: f["text"] for f in run["files"]} for run in runs]
    for file_id in sorted(set(texts[0]) | set(texts[1])):
        a, b = texts[0].get(file_id), texts[1].get(file_id)
        if a != b:
            problems.append(f"{file_id}: {names[0]} {a!r} != {names[1]} {b!r}")
    problems += word_problems(names, runs, args.max_word_shift)
    delta = abs(runs[0]["wer"] - runs[1]["wer"])
    if delta > args.max_wer_delta:
        problems.append(f"WER differs by {delta:.2%} (allowed {args.max_wer_delta:.2%})")
    for problem in problems:
        print(f"MISMATCH {problem}")
    print("verify_jetson: " + ("FAILED" if problems else f"OK: {len(texts[0])} files transcribed identically"))
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--model", type=Path, required=True)
    m.add_argument("--engine-dir", type=Path)
    m.add_argument("--backend", choices=("tensorrt", "onnxruntime"), required=True)
    m.add_argument("--corpus", type=Path, required=True, help="a corpus language dir with transcripts.tsv")
    m.add_argument("--language", default="en")
    m.add_argument("--limit", type=int, default=20, help="at most this many files (long_* excluded)")
    m.add_argument("--token-steps", type=int, default=64)
    m.add_argument("--word-files", type=int, default=5, help="time the words of this many files too (0: none)")
    m.add_argument("--threads", type=int, default=0)
    m.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("compare")
    c.add_argument("measurements", nargs=2)
    c.add_argument("--max-wer-delta", type=float, default=0.0)
    c.add_argument("--max-word-shift", type=float, default=0.02, help="seconds a word's start or end may move")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return measure(args) if args.command == "measure" else compare(args)
    except EdgescribeError as error:
        print(f"verify_jetson: error: {error}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
