"""``edgescribe transcribe``: transcribe WAV files with a model package, offline.

Formats: ``text`` (one line per file), ``json`` (one object per file, one per line, with
segments and confidence figures), ``srt`` (subtitles; several files are separated by a
``# file`` comment line), ``vtt`` (WebVTT; one header, a ``NOTE`` naming each file when there
are several). ``--word-timestamps`` adds ``words`` [{word, start, end, probability}] to each
JSON segment and makes the subtitle formats one cue per word.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from edgescribe.engines.audio import load_audio
from edgescribe.engines.backend import BACKENDS, load_model
from edgescribe.engines.encoder_window import DEFAULT_ENCODER_WINDOW, ENCODER_WINDOWS
from edgescribe.engines.errors import EdgescribeError
from edgescribe.engines.transcribe import TranscribeOptions, Transcription, transcribe

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="WAV files (any rate, channels, PCM or float)")
    parser.add_argument("--model", required=True, metavar="DIR", help="model package directory (from edgescribe export)")
    parser.add_argument("--language", metavar="xx", help="language code, e.g. en, zh (default: detect)")
    parser.add_argument("--task", choices=("transcribe", "translate"), default="transcribe",
                        help="translate: into English (multilingual models)")
    parser.add_argument("--format", choices=("text", "json", "srt", "vtt"), default="text", help="output format")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="inference backend (default: TensorRT when usable, else ONNX Runtime)")
    parser.add_argument("--engine-dir", metavar="DIR", help="TensorRT engine cache directory")
    parser.add_argument("--threads", type=int, default=0, metavar="N", help="CPU threads for ONNX Runtime (0: automatic)")
    parser.add_argument("--initial-prompt", metavar="TEXT", help="text that conditions the first window (names, jargon)")
    parser.add_argument("--no-condition", action="store_true", help="do not condition each window on the previous text")
    parser.add_argument("--without-timestamps", action="store_true", help="decode text only (one segment per window)")
    parser.add_argument("--beam-size", type=int, default=1, metavar="N",
                        help="beam search with N beams at temperature 0 (default 1: greedy); slower, often more accurate in noise")
    parser.add_argument("--encoder-window", choices=ENCODER_WINDOWS, default=DEFAULT_ENCODER_WINDOW,
                        help="a recording that fits one window: encode it in a window sized to it (adaptive) "
                             "or in the full 30 s")
    parser.add_argument("--word-timestamps", action="store_true",
                        help="time every word (JSON: words per segment; srt/vtt: one cue per word)")


def run(args: argparse.Namespace) -> int:
    if args.threads < 0:
        raise EdgescribeError(f"--threads must be 0 or more, got {args.threads}")
    if args.beam_size < 1:
        raise EdgescribeError(f"--beam-size must be 1 or more, got {args.beam_size}")
    # Read every file first: a bad file fails the command before the model loads or minutes of decoding.
    audio = {path: load_audio(path) for path in args.files}
    model = load_model(args.model, backend=args.backend, engine_dir=args.engine_dir, threads=args.threads)
    if args.word_timestamps:
        model.package.aligner_path()  # a package that cannot time words fails here, not after decoding
    if args.language is not None and model.is_multilingual and args.language not in model.tokenizer.languages:
        raise EdgescribeError(f"--language {args.language}: not a language of model {model.name} "
                              f"(known: {', '.join(model.tokenizer.languages)})")
    if args.task == "translate" and not model.is_multilingual:
        raise EdgescribeError(f"--task translate needs a multilingual model; {model.name} is English-only")
    options = TranscribeOptions(
        language=args.language,
        task=args.task,
        initial_prompt=args.initial_prompt,
        condition_on_previous_text=not args.no_condition,
        without_timestamps=args.without_timestamps,
        beam_size=args.beam_size,
        encoder_window=args.encoder_window,
        word_timestamps=args.word_timestamps,
    )
    for number, (path, samples) in enumerate(audio.items()):
        started = time.monotonic()
        result = transcribe(model, samples, options)
        elapsed = time.monotonic() - started
        log.info("%s: %.1f s of audio in %.1f s (RTF %.3f)", path, result.duration, elapsed,
                 elapsed / max(result.duration, 1e-9))
        if args.format == "text":
            print(result.text if len(audio) == 1 else f"{path}\t{result.text}")
        elif args.format == "vtt":
            if number == 0:
                print("WEBVTT\n")
            if len(audio) > 1:
                print(f"NOTE {path}\n")
            sys.stdout.write(_as_vtt(result, args.word_timestamps))
        elif args.format == "json":
            print(json.dumps(_as_json(path, result, model, elapsed, args.word_timestamps), ensure_ascii=False))
        else:
            if len(audio) > 1:
                print(f"{'' if number == 0 else chr(10)}# {path}")
            sys.stdout.write(_as_srt(result, args.word_timestamps))
        sys.stdout.flush()
    return 0


def _as_json(path: str, result: Transcription, model, elapsed: float, with_words: bool = False) -> dict:
    return {
        "file": path,
        "model": model.name,
        "backend": model.runner.name,
        "language": result.language,
        "language_probability": result.language_probability,
        "duration": round(result.duration, 3),
        "processing_seconds": round(elapsed, 3),
        "text": result.text,
        "segments": [
            {
                "start": segment.start,
                "end": segment.end,
                "text": segment.text.strip(),
                "avg_logprob": round(segment.avg_logprob, 4),
                "no_speech_prob": round(segment.no_speech_prob, 4),
                "compression_ratio": round(segment.compression_ratio, 3),
                "temperature": segment.temperature,
                **({"words": [{"word": w.word.strip(), "start": w.start, "end": w.end, "probability": w.probability}
                              for w in segment.words]} if with_words else {}),
            }
            for segment in result.segments
        ],
    }


def _srt_time(seconds: float) -> str:
    milliseconds = int(round(seconds * 1000))
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d},{millis:03d}"


def _cues(result: Transcription, by_word: bool) -> list[tuple[float, float, str]]:
    """(start, end, text) of each subtitle cue: segments, or every word of them."""
    if by_word:
        return [(w.start, w.end, w.word.strip()) for segment in result.segments for w in segment.words]
    return [(segment.start, segment.end, segment.text.strip()) for segment in result.segments]


def _as_srt(result: Transcription, by_word: bool = False) -> str:
    blocks = [f"{index}\n{_srt_time(start)} --> {_srt_time(end)}\n{text}\n"
              for index, (start, end, text) in enumerate(_cues(result, by_word), start=1)]
    return "\n".join(blocks)


def _as_vtt(result: Transcription, by_word: bool = False) -> str:
    """WebVTT cues (the header is the caller's: once per output); times use a dot, not SRT's comma."""
    return "".join(f"{_srt_time(start).replace(',', '.')} --> {_srt_time(end).replace(',', '.')}\n{text}\n\n"
                   for start, end, text in _cues(result, by_word))
