"""``edgescribe export``: Whisper weights -> model package (ONNX graphs, tokenizer, manifest)."""

from __future__ import annotations

import argparse
import logging
import time

from edgescribe.engines.package_writer import write_package
from edgescribe.engines.sources import load_weights

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True,
                        help="built-in model name (tiny.en, base), a CTranslate2 model dir or a Hugging Face Whisper dir")
    parser.add_argument("--out", required=True, help="package directory to create (replaced atomically if it exists)")
    parser.add_argument("--quantize", choices=["int8"], default=None,
                        help="also write int8 graphs (dynamic quantisation; ONNX Runtime prefers them)")


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {message}", flush=True)

    progress(f"reading weights from {args.source}")
    weights = load_weights(args.source)
    dims = weights.dims
    progress(f"{weights.source.format} weights: {dims.n_audio_layer}+{dims.n_text_layer} layers, "
             f"width {dims.n_text_state}, vocabulary {dims.n_vocab}")
    package = write_package(weights, args.out, quantize=args.quantize, progress=progress)
    total = sum(entry.size for entry in package.manifest.files.values())
    print(f"model package written to {package.dir}:")
    for name, entry in sorted(package.manifest.files.items()):
        print(f"  {name:<20} {entry.size / 1e6:9.1f} MB")
    print(f"  {'total':<20} {total / 1e6:9.1f} MB in {time.monotonic() - started:.1f} s")
    return 0
