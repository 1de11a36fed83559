#!/usr/bin/env bash
# Set up edgescribe from a fresh clone on Debian/Ubuntu: system packages, then a virtual
# environment in .venv with the package installed in editable mode.
#   scripts/setup.sh            what the demo needs
#   scripts/setup.sh --dev      plus what the test suite needs
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[ "${1:-}" = "--dev" ] && dev=1

sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)

# alsa/systemd headers build pyalsaaudio and systemd-python; mosquitto is the local broker;
# systemd-analyze and openssl are used by the tests (unit checks, TLS broker).
apt_packages=(python3 python3-venv python3-dev gcc pkg-config libasound2-dev libsystemd-dev
              alsa-utils mosquitto mosquitto-clients openssl systemd shellcheck)
# promtool (package prometheus) checks the alerting rules; tmux runs the fleet view as on a terminal.
[ $dev -eq 1 ] && apt_packages+=(prometheus tmux)
missing=()
for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing system packages: ${missing[*]}"
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
extras="cpu,systemd,models,prometheus"
[ $dev -eq 1 ] && extras="$extras,models-base,dev"
echo "setup: installing edgescribe[$extras] into .venv"
.venv/bin/python -m pip install -q -e ".[$extras]" 2>&1 | grep -v "^WARNING: Location" || true

# The real TensorRT 10.3 Python bindings, for checking the seam's calls against the API
# (tests/engines/test_tensorrt_seam.py); not a working TensorRT and no GPU.
if [ $dev -eq 1 ]; then
    scripts/fetch_tensorrt_api.sh
fi
