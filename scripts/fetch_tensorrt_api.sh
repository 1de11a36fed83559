#!/usr/bin/env bash
# Fetch the real TensorRT 10.3 Python bindings into var/tensorrt-api/ for the seam's API
# conformance tests (tests/engines/test_tensorrt_seam.py). Called by `scripts/setup.sh --dev`.
#
# Why: engines/tensorrt/seam.py is the only code that calls TensorRT, and nothing here has a
# GPU, so without this its calls would never execute before they reach a Jetson. The bindings
# (tensorrt.so from PyPI's tensorrt-cu12-bindings 10.3.0, the version JetPack 6.1/6.2 ship)
# load without NVIDIA's libraries if libnvinfer, libnvonnxparser and libnvinfer_plugin exist
# under their sonames: this script compiles stand-ins that define the nine entry points the
# bindings import and return nothing. That gives the real classes, enums and method signatures
# to check every seam call against. It does NOT give a working TensorRT: anything that reaches
# libnvinfer (trt.Builder(logger), trt.Runtime(logger)) gets a null object. No GPU, no numerics.
#
# Idempotent: a complete var/tensorrt-api/ (its READY file names the version) is left alone;
# otherwise it is rebuilt in a temporary directory and moved into place whole.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=10.3.0
DEST=var/tensorrt-api
PYTHON=${PYTHON:-.venv/bin/python}

fail() { echo "fetch_tensorrt_api: $*" >&2; exit 1; }

[ -x "$PYTHON" ] || fail "no Python at $PYTHON (run scripts/setup.sh --dev, or set PYTHON)"
if [ "$(uname -m)" != "x86_64" ]; then
    # PyPI has the 10.3.0 bindings for x86_64 only. On a Jetson the real TensorRT is installed
    # and tests/engines/test_tensorrt_gpu.py runs the seam for real instead.
    echo "fetch_tensorrt_api: skipped on $(uname -m) (PyPI has TensorRT $VERSION bindings for x86_64 only)"
    exit 0
fi
tag="$VERSION $("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
if [ -f "$DEST/READY" ] && [ "$(cat "$DEST/READY")" = "$tag" ]; then
    exit 0
fi
command -v gcc >/dev/null || fail "gcc is missing (scripts/setup.sh installs it)"

echo "fetch_tensorrt_api: fetching the TensorRT $VERSION Python bindings into $DEST"
mkdir -p var
work=$(mktemp -d var/tensorrt-api.tmp.XXXXXX)
trap 'rm -rf "$work"' EXIT

if ! "$PYTHON" -m pip download -q --no-deps --only-binary=:all: "tensorrt-cu12-bindings==$VERSION" \
        -d "$work/wheel" >"$work/pip.log" 2>&1; then
    fail "cannot download tensorrt-cu12-bindings==$VERSION for $PYTHON: $(grep -m1 ERROR "$work/pip.log" || tail -n1 "$work/pip.log")"
fi

# Only the package directory is needed; zipfile instead of unzip (one fewer system package).
"$PYTHON" - "$work" <<'EOF' || fail "cannot unpack the tensorrt-cu12-bindings wheel in $work/wheel"
import sys, zipfile
from pathlib import Path

work = Path(sys.argv[1])
(wheel,) = (work / "wheel").glob("*.whl")
with zipfile.ZipFile(wheel) as archive:
    members = [m for m in archive.namelist() if m.startswith("tensorrt_bindings/")]
    archive.extractall(work / "site", members)
EOF

# The stand-ins go beside tensorrt.so: its RPATH starts with $ORIGIN, so the dynamic loader
# finds them without LD_LIBRARY_PATH or preloading.
cat >"$work/stub.c" <<'EOF'
/* Entry points tensorrt.so imports; each returns null, so nothing here can run an engine. */
void *createInferBuilder_INTERNAL(void) { return 0; }
void *createInferRefitter_INTERNAL(void) { return 0; }
void *createInferRuntime_INTERNAL(void) { return 0; }
void *getBuilderPluginRegistry(void) { return 0; }
void *getPluginRegistry(void) { return 0; }
int initLibNvInferPlugins(void) { return 0; }
void *createNvOnnxParserRefitter_INTERNAL(void) { return 0; }
void *createNvOnnxParser_INTERNAL(void) { return 0; }
int getNvOnnxParserVersion(void) { return 10300; }
EOF
for lib in libnvinfer.so.10 libnvonnxparser.so.10 libnvinfer_plugin.so.10; do
    gcc -shared -fPIC -Wl,-soname,"$lib" -o "$work/site/tensorrt_bindings/$lib" "$work/stub.c" \
        || fail "gcc could not build the stand-in $lib"
done

# Prove it loads before declaring it ready (a wrong Python tag would only show up in the tests).
got=$(PYTHONPATH="$work/site" "$PYTHON" -c 'import tensorrt_bindings as t; print(t.__version__)' 2>&1 | tail -n1) \
    || fail "the downloaded bindings do not import: $got"
[ "$got" = "$VERSION" ] || fail "the downloaded bindings report version $got, expected $VERSION"

echo "$tag" >"$work/READY"
rm -rf "$work/wheel" "$work/pip.log" "$DEST"
mv "$work" "$DEST"
trap - EXIT
echo "fetch_tensorrt_api: TensorRT $VERSION bindings ready in $DEST"
