#!/usr/bin/env python3
"""Offline transcription benchmark: edgescribe (ONNX Runtime) vs faster-whisper (CTranslate2).

Both systems transcribe the same corpus files with the same weights, greedy decoding,
Whisper's temperature fallback and no VAD. Every pass of every system runs in a fresh
subprocess, so its peak resident memory (ru_maxrss) is its own, and the passes alternate
between the systems, so a change in machine load hits both alike. Reported per system: wall
time of transcription (fastest pass; model loading excluded, shown apart), real-time factor,
peak RSS, corpus WER; then the ratio edgescribe / faster-whisper, and where edgescribe's time
went: its runner's encoder windows, decoder steps and prompts, counted and timed.

    .venv/bin/python scripts/benchmark_offline.py --model-source tiny.en --repeat 3

edgescribe uses the package's int8 graphs when it has them (else float32); faster-whisper
runs compute_type int8 by default (--fw-compute-type to change), both with --threads 2.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgescribe.engines.encoder_window import DEFAULT_ENCODER_WINDOW, ENCODER_WINDOWS  # noqa: E402

DEFAULT_CORPUS = REPO.parent / "shared" / "corpus" / "en"


def _worker(args: argparse.Namespace) -> None:
    """Runs inside the subprocess: load one system, transcribe every file --repeat times."""
    from edgescribe.engines.audio import load_audio

    files = [Path(f) for f in args.files]
    audio = {f: load_audio(f) for f in files}
    started = time.perf_counter()
    if args.worker == "edgescribe":
        from edgescribe.engines.backend import load_model
        from edgescribe.engines.transcribe import TranscribeOptions, transcribe

        model = load_model(args.package, backend="onnxruntime", threads=args.threads)
        detail = f"{model.runner.precision} graphs, {args.encoder_window} encoder windows"
        calls = _count_runner_calls(model.runner)

        def run(samples):
            return transcribe(model, samples, TranscribeOptions(encoder_window=args.encoder_window)).text
    else:
        calls = {}
        from tests.fixtures.faster_whisper_reference import load_reference, reference_transcribe

        model = load_reference(args.model_source, compute_type=args.fw_compute_type, threads=args.threads)
        detail = f"compute_type {args.fw_compute_type}"

        def run(samples):
            return reference_transcribe(model, samples).text
    load_seconds = time.perf_counter() - started

    started = time.perf_counter()
    texts = {f.stem: run(audio[f]) for f in files}
    print(json.dumps({
        "system": args.worker,
        "detail": detail,
        "load_seconds": load_seconds,
        "wall_seconds": time.perf_counter() - started,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "texts": texts,
        "runner_calls": calls,
    }))


def _count_runner_calls(runner) -> dict[str, list]:
    """Wrap the runner's encode and decode with counters: {kind: [calls, seconds]}, kinds being
    encoder windows by length, decoder steps (one token a row) and prompts (several)."""
    calls: dict[str, list] = {}

    def counted(method, kind_of):
        def run(*args):
            started = time.perf_counter()
            result = method(*args)
            total = calls.setdefault(kind_of(args[0]), [0, 0.0])
            total[0] += 1
            total[1] += time.perf_counter() - started
            return result
        return run

    runner.encode = counted(runner.encode, lambda mel: f"encoder, {mel.shape[2] // 100}-s window")
    runner.decode = counted(runner.decode, lambda tokens: "decoder step" if tokens.shape[1] == 1 else "decoder prompt")
    return calls


def _run_system(system: str, args: argparse.Namespace, files: list[Path]) -> dict:
    command = [sys.executable, __file__, "--worker", system, "--model-source", args.model_source,
               "--package", str(args.package), "--threads", str(args.threads),
               "--fw-compute-type", args.fw_compute_type, "--encoder-window", args.encoder_window,
               "--files", *map(str, files)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        sys.exit(f"{system} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-source", default="tiny.en", help="built-in weights both systems use (tiny.en, base)")
    parser.add_argument("--package", type=Path, help="edgescribe model package (default: var/pkg/<model-source>)")
    parser.add_argument("--files", nargs="+", help=f"WAV files (default: every file of {DEFAULT_CORPUS})")
    parser.add_argument("--repeat", type=int, default=1, help="passes per system (alternating); the fastest counts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fw-compute-type", default="int8", help="faster-whisper compute_type")
    parser.add_argument("--language", default="en", help="language of the files, for scoring")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--encoder-window", choices=ENCODER_WINDOWS, default=DEFAULT_ENCODER_WINDOW,
                        help="edgescribe's window for recordings that fit one (engines/encoder_window.py)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed per system")
    parser.add_argument("--worker", choices=("edgescribe", "faster-whisper"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.package = args.package or REPO / "var" / "pkg" / args.model_source
    if args.worker:
        _worker(args)
        return 0

    from edgescribe.engines.audio import load_audio
    from tests.fixtures.scoring import corpus_counts, read_transcripts

    files = [Path(f) for f in args.files] if args.files else sorted(DEFAULT_CORPUS.glob("*.wav"))
    audio_seconds = sum(len(load_audio(f)) for f in files) / 16000
    references = {}
    for directory in {f.parent for f in files}:
        if (directory / "transcripts.tsv").is_file():
            references.update(read_transcripts(directory / "transcripts.tsv"))

    print(f"{len(files)} files, {audio_seconds:.1f} s of audio, {args.threads} threads, best of {args.repeat} passes")
    systems = ("edgescribe", "faster-whisper")
    passes = {system: [] for system in systems}
    for number in range(args.repeat):
        for system in systems:
            passes[system].append(_run_system(system, args, files))
            print(f"pass {number + 1} {system}: {passes[system][-1]['wall_seconds']:.2f} s", flush=True)
    results = {}
    for system in systems:
        result = min(passes[system], key=lambda r: r["wall_seconds"])
        result["passes"] = [r["wall_seconds"] for r in passes[system]]
        result["peak_rss_mb"] = max(r["peak_rss_mb"] for r in passes[system])
        scored = [(references[k], t) for k, t in result["texts"].items() if k in references]
        result["rtf"] = result["wall_seconds"] / audio_seconds
        result["wer"] = corpus_counts(scored, args.language).rate if scored else None
        results[system] = result

    print(f"\n{'system':16} {'detail':22} {'wall s':>8} {'RTF':>7} {'peak RSS MB':>12} {'WER':>7} {'load s':>7}")
    for system, r in results.items():
        wer = f"{r['wer']:.4f}" if r["wer"] is not None else "-"
        print(f"{system:16} {r['detail']:22} {r['wall_seconds']:8.2f} {r['rtf']:7.4f} {r['peak_rss_mb']:12.0f} {wer:>7} {r['load_seconds']:7.2f}")
    ours, theirs = results["edgescribe"], results["faster-whisper"]
    print("\nedgescribe's runner calls in its fastest pass:")
    for kind, (count, seconds) in sorted(ours["runner_calls"].items()):
        print(f"  {kind:24} {count:6} calls {seconds:7.2f} s {1000 * seconds / count:8.2f} ms each")
    ratio = ours["wall_seconds"] / theirs["wall_seconds"]
    print(f"\nwall-time ratio edgescribe / faster-whisper: {ratio:.3f} (target <= 0.5)")
    print(f"edgescribe peak RSS: {ours['peak_rss_mb']:.0f} MB (target <= 370)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"audio_seconds": audio_seconds, "files": [str(f) for f in files],
                                         "threads": args.threads, "ratio": ratio, "systems": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
