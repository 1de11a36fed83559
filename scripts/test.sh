#!/usr/bin/env bash
# Run the whole test suite from a fresh clone: installs what the tests need, then pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh tests/engines -k package
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
exec .venv/bin/python -m pytest -q "$@"
