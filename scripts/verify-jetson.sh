#!/usr/bin/env bash
# Verify the TensorRT path on a real Jetson Orin (JetPack 6.1/6.2, TensorRT 10.3). Run from a
# repository checkout whose virtualenv sees the system TensorRT (--system-site-packages):
#
#   scripts/verify-jetson.sh --model /var/lib/edgescribe/models/base --corpus ~/corpus/en
#
# Options: --model PKG (model package; required), --corpus DIR (a dir with transcripts.tsv and
# WAVs; required), --engine-dir DIR (default: a fresh temporary dir, so engines are really
# built), --precision fp16|fp32 (default fp16), --limit N (corpus files, default 20),
# --python PY (default .venv/bin/python), --max-wer-delta X (default 0).
#
# Steps, each must pass: device facts; build-engines (then again: must be a no-op); the GPU
# tests (tests/engines/test_tensorrt_gpu.py, which must not skip); `edgescribe transcribe`
# with --backend tensorrt and --backend onnxruntime on the reference recording (same text);
# the corpus through both backends: WER, real-time factor, ms per token and memory side by
# side. Exit status is non-zero on any failure or any transcript that differs.
set -euo pipefail

cd "$(dirname "$0")/.."
MODEL="" CORPUS="" ENGINE_DIR="" PRECISION="fp16" LIMIT=20 PY=".venv/bin/python" MAX_WER_DELTA=0

die() { echo "verify-jetson: error: $*" >&2; exit 1; }
step() { printf '\n== %s ==\n' "$*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --model) MODEL="${2:?--model needs a directory}"; shift ;;
        --corpus) CORPUS="${2:?--corpus needs a directory}"; shift ;;
        --engine-dir) ENGINE_DIR="${2:?--engine-dir needs a directory}"; shift ;;
        --precision) PRECISION="${2:?--precision needs fp16 or fp32}"; shift ;;
        --limit) LIMIT="${2:?--limit needs a number}"; shift ;;
        --python) PY="${2:?--python needs an interpreter}"; shift ;;
        --max-wer-delta) MAX_WER_DELTA="${2:?--max-wer-delta needs a number}"; shift ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
[ -n "$MODEL" ] || die "--model is required (a package written by edgescribe export)"
[ -f "$MODEL/manifest.json" ] || die "$MODEL is not a model package (no manifest.json)"
[ -f "$CORPUS/transcripts.tsv" ] || die "--corpus must be a directory with transcripts.tsv (got '$CORPUS')"
[ -x "$PY" ] || die "$PY not found (create the venv with scripts/setup.sh, or pass --python)"

WORK="$(mktemp -d -t edgescribe-verify.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
ENGINE_DIR="${ENGINE_DIR:-$WORK/engines}"
EDGESCRIBE=("$PY" -m edgescribe.daemon.cli)

step "device"
"$PY" - <<'EOF' || die "TensorRT is not usable here (see the line above)"
import sys
from edgescribe.engines.errors import EdgescribeError
from edgescribe.engines.tensorrt import seam
from edgescribe.engines.tensorrt.platform import device_facts, read_l4t_release
try:
    trt = seam.load()
except EdgescribeError as error:
    sys.exit(f"verify-jetson: {error}")
release = read_l4t_release()
print(f"{device_facts(trt).describe()}; {release.describe() if release else 'no L4T release found (not a Jetson?)'}")
EOF

step "build engines ($PRECISION) into $ENGINE_DIR"
start=$(date +%s)
"${EDGESCRIBE[@]}" build-engines --model "$MODEL" --out "$ENGINE_DIR" --precision "$PRECISION"
echo "build took $(( $(date +%s) - start )) s"
again="$("${EDGESCRIBE[@]}" build-engines --model "$MODEL" --out "$ENGINE_DIR" --precision "$PRECISION")"
echo "$again"
case "$again" in "up to date:"*) ;; *) die "second build-engines was not a no-op" ;; esac

step "GPU tests"
if ! "$PY" -m pytest tests/engines/test_tensorrt_gpu.py -q -rs -p no:cacheprovider | tee "$WORK/pytest.txt"; then
    die "GPU tests failed"
fi
if grep -q "skipped" "$WORK/pytest.txt"; then die "GPU tests were skipped: TensorRT or the GPU is not usable"; fi

step "edgescribe transcribe, both backends, reference recording"
for backend in tensorrt onnxruntime; do
    "${EDGESCRIBE[@]}" transcribe --model "$MODEL" --backend "$backend" --engine-dir "$ENGINE_DIR" --language en \
        engines/data/reference_lj001-0002.wav > "$WORK/$backend.txt"
    echo "$backend: $(cat "$WORK/$backend.txt")"
done
if ! cmp -s "$WORK/tensorrt.txt" "$WORK/onnxruntime.txt"; then
    # The CLI's ONNX Runtime prefers int8 graphs when the package has them; TensorRT is built
    # from the float32 ones, so only a float32-only package must agree word for word here.
    if grep -q '"int8"' "$MODEL/manifest.json"; then
        echo "note: texts differ, but onnxruntime ran the package's int8 graphs; the corpus step compares float32"
    else
        die "the backends transcribe the reference recording differently"
    fi
fi

step "corpus: $CORPUS (up to $LIMIT files)"
for backend in onnxruntime tensorrt; do
    "$PY" scripts/verify_jetson.py measure --model "$MODEL" --engine-dir "$ENGINE_DIR" --backend "$backend" \
        --corpus "$CORPUS" --limit "$LIMIT" --out "$WORK/$backend.json"
done
"$PY" scripts/verify_jetson.py compare "$WORK/onnxruntime.json" "$WORK/tensorrt.json" --max-wer-delta "$MAX_WER_DELTA"
