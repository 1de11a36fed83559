#!/usr/bin/env bash
# Install edgescribe as a systemd service on a Jetson Orin with JetPack 6 (L4T R36, TensorRT 10).
#
#   sudo scripts/install.sh                    install or upgrade (idempotent), then start
#   sudo scripts/install.sh --model base       serve the multilingual base model instead of tiny.en
#   sudo scripts/install.sh --model /data/whisper-small-ct2   a CTranslate2 or Hugging Face Whisper dir
#   scripts/install.sh --dry-run               print every step without changing anything
#   sudo scripts/install.sh --uninstall        remove everything but /etc/edgescribe and the spool
#
# What it does: checks the platform, TensorRT and the CUDA compiler; creates the edgescribe
# user (groups audio, video, render); creates /opt/edgescribe/venv with the system's TensorRT
# visible; installs edgescribe[jetson,systemd]; exports the model package and builds TensorRT
# engines for this device; installs /etc/edgescribe/config.yaml if there is none (never
# overwrites it); installs mosquitto when the configured broker is local and nothing answers;
# installs, enables and starts edgescribe-engines.service and edgescribe.service.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$(dirname "$SCRIPT_DIR")"

ROOT=""                 # --root: install below this directory (tests, image builds)
DRY_RUN=0
UNINSTALL=0
CHECK_PLATFORM=1
MODEL="tiny.en"
SERVICE_USER="edgescribe"
# pip builds pycuda with nvcc, which JetPack puts here but not on the default PATH.
export PATH="/usr/local/cuda/bin:$PATH"

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }

die() {
    echo "install.sh: error: $*" >&2
    exit 1
}

say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --uninstall) UNINSTALL=1 ;;
        --model) [ $# -ge 2 ] || die "--model needs a value (tiny.en, base or a directory)"; MODEL="$2"; shift ;;
        --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT="${2%/}"; shift ;;
        --skip-platform-check) CHECK_PLATFORM=0 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done

OPT="$ROOT/opt/edgescribe"
VENV="$OPT/venv"
EDGESCRIBE="$VENV/bin/edgescribe"
ETC="$ROOT/etc/edgescribe"
CONFIG="$ETC/config.yaml"
PASSWORD_FILE="$ETC/mqtt-password"
STATE="$ROOT/var/lib/edgescribe"
CACHE="$ROOT/var/cache/edgescribe"
UNIT_DIR="$ROOT/etc/systemd/system"
DROP_IN="$UNIT_DIR/edgescribe.service.d"
UNITS=(edgescribe-engines.service edgescribe.service)

# Every change goes through run: printed, and skipped under --dry-run.
run() {
    if [ $DRY_RUN -eq 1 ]; then
        echo "would run: $*"
    else
        echo "+ $*"
        "$@"
    fi
}

# Write stdin to a file (through run, so --dry-run shows it instead).
write_file() {
    local path="$1" mode="$2" content
    content="$(cat)"
    if [ $DRY_RUN -eq 1 ]; then
        local lines
        lines="$(printf '%s\n' "$content" | wc -l)"
        if [ "$lines" -le 8 ]; then
            echo "would write $path (mode $mode):"
            printf '%s\n' "$content" | sed 's/^/    /'
        else
            echo "would write $path (mode $mode, $lines lines)"
        fi
    else
        echo "+ write $path"
        install -d "$(dirname "$path")"
        printf '%s\n' "$content" > "$path"
        chmod "$mode" "$path"
    fi
}

systemctl_() {
    # Only the real system's systemd is driven; under --root there is none to talk to.
    if [ -n "$ROOT" ]; then
        echo "skipped (--root): systemctl $*"
    else
        run systemctl "$@"
    fi
}

check_platform() {
    [ -f "$ROOT/etc/nv_tegra_release" ] \
        || die "not a Jetson: $ROOT/etc/nv_tegra_release is missing (this installer is for Jetson Orin with JetPack 6)"
    local release arch
    release="$(head -n 1 "$ROOT/etc/nv_tegra_release")"
    case "$release" in
        *"R36"*) ;;
        *) die "JetPack 6 (L4T R36) is required; /etc/nv_tegra_release says: ${release:-nothing}" ;;
    esac
    arch="$(uname -m)"
    [ "$arch" = "aarch64" ] || die "expected an aarch64 Jetson, this machine is $arch"
    local trt
    trt="$(python3 -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null)" \
        || die "TensorRT's Python module is missing: sudo apt-get install nvidia-jetpack (or python3-libnvinfer)"
    case "$trt" in
        10.*) ;;
        *) die "TensorRT 10 is required (JetPack 6.1 or later), found $trt" ;;
    esac
    # pycuda is compiled against CUDA when pip installs it.
    [ -x /usr/local/cuda/bin/nvcc ] || command -v nvcc >/dev/null \
        || die "the CUDA compiler (nvcc) is missing, pycuda needs it: sudo apt-get install nvidia-jetpack (or cuda-nvcc-12-6)"
    say "platform: $release, TensorRT $trt"
}

# A value from the installed configuration (with every default filled in), or $2 before
# edgescribe is installed.
config_value() {
    local key="$1" fallback="$2"
    if [ -x "$VENV/bin/python" ] && [ -f "$CONFIG" ]; then
        "$VENV/bin/python" - "$CONFIG" "$key" <<'EOF' 2>/dev/null || echo "$fallback"
import sys
from edgescribe.daemon.config import load_config
value = load_config(sys.argv[1])
for part in sys.argv[2].split("."):
    value = getattr(value, part)
print(value)
EOF
    else
        echo "$fallback"
    fi
}

device_id_from_hostname() {
    local name
    name="$(hostname -s 2>/dev/null || echo edgescribe)"
    name="$(printf '%s' "$name" | tr -c 'A-Za-z0-9_-' '-' | sed 's/^[-_]*//' | cut -c1-64)"
    echo "${name:-edgescribe}"
}

install_system_packages() {
    local wanted=(python3-venv python3-dev gcc pkg-config libasound2-dev libsystemd-dev alsa-utils)
    local missing=()
    for p in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        run apt-get update -qq
        run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
}

create_user() {
    local groups=()
    for g in audio video render; do
        getent group "$g" >/dev/null && groups+=("$g")
    done
    local list
    list="$(IFS=,; echo "${groups[*]}")"
    if id "$SERVICE_USER" >/dev/null 2>&1; then
        [ -z "$list" ] || run usermod -a -G "$list" "$SERVICE_USER"
    else
        run useradd --system --user-group --no-create-home --home-dir /var/lib/edgescribe \
            --shell /usr/sbin/nologin ${list:+--groups "$list"} "$SERVICE_USER"
    fi
}

install_package() {
    [ -x "$VENV/bin/python" ] || run python3 -m venv --system-site-packages "$VENV"
    run "$VENV/bin/python" -m pip install --quiet --upgrade pip
    local extras="jetson,systemd"
    case "$MODEL" in
        tiny.en) extras="$extras,models" ;;
        base) extras="$extras,models-base" ;;
    esac
    run "$VENV/bin/python" -m pip install --quiet --upgrade "${SRC}[${extras}]"
    run install -d -m 0755 "$OPT/share/doc"
    run install -m 0644 "$SRC"/docs/*.md "$OPT/share/doc/"
}

install_config() {
    run install -d -m 0755 "$ETC"
    if [ -f "$CONFIG" ]; then
        say "keeping your $CONFIG"
    else
        local id
        id="$(device_id_from_hostname)"
        sed "s/^device_id: .*/device_id: $id/" "$SRC/config/edgescribe.yaml" | write_file "$CONFIG" 0644
    fi
    if [ $DRY_RUN -eq 0 ]; then
        "$EDGESCRIBE" check-config "$CONFIG" || { echo "install.sh: error: fix $CONFIG, then run install.sh again" >&2; exit 2; }
    fi
}

build_model() {
    local package
    package="$(config_value models.serving "$STATE/model")"
    run install -d -o "$SERVICE_USER" -g "$SERVICE_USER" -m 0750 "$STATE" "$STATE/models" "$CACHE" "$CACHE/engines"
    if [ -f "$package/manifest.json" ]; then
        say "model package present: $package (delete it to export again)"
    else
        local source="$MODEL"
        if [ -d "$MODEL" ]; then
            # The service user may not be able to read the caller's directory: copy the weights.
            source="$STATE/models/source"
            run rm -rf "$source"
            run cp -r "$MODEL" "$source"
            run chown -R "$SERVICE_USER:$SERVICE_USER" "$source"
        fi
        run runuser -u "$SERVICE_USER" -- "$EDGESCRIBE" export --source "$source" --out "$package"
    fi
    # Engines are specific to this GPU and TensorRT version; build-engines builds them for
    # models.serving and models.upgrade, skips current ones and reads precision, batch and shapes
    # from the config, exactly as edgescribe-engines.service does.
    # A failed build is not fatal: the daemon then serves on ONNX Runtime and says why.
    run runuser -u "$SERVICE_USER" -- "$EDGESCRIBE" build-engines --config "$CONFIG" \
        || say "warning: TensorRT engines were not built (see above); the daemon will run on ONNX Runtime"
}

broker_is_local() {
    case "$1" in localhost|127.*|::1|"") return 0 ;; *) return 1 ;; esac
}

setup_broker() {
    local host port
    host="$(config_value mqtt.host localhost)"
    port="$(config_value mqtt.port 1883)"
    if broker_is_local "$host"; then
        if timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
            say "a broker answers on localhost:$port"
        else
            say "nothing answers on localhost:$port: installing mosquitto"
            run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto
            systemctl_ enable --now mosquitto.service
        fi
        [ ! -f "$DROP_IN/broker.conf" ] || run rm -f "$DROP_IN/broker.conf"
    else
        # The unit allows only localhost (IPAddressAllow=); let the broker's addresses through.
        local addresses
        addresses="$(getent ahosts "$host" | awk '{print $1}' | sort -u | tr '\n' ' ')"
        [ -n "$addresses" ] || die "cannot resolve the broker $host (mqtt.host in $CONFIG)"
        printf '# Written by install.sh for mqtt.host %s; re-run install.sh after changing it.\n[Service]\nIPAddressAllow=%s\n' \
            "$host" "$addresses" | write_file "$DROP_IN/broker.conf" 0644
    fi
}

install_units() {
    for unit in "${UNITS[@]}"; do
        [ -f "$SRC/systemd/$unit" ] || die "$SRC/systemd/$unit is missing from this checkout"
        run install -D -m 0644 "$SRC/systemd/$unit" "$UNIT_DIR/$unit"
    done
    if [ -f "$PASSWORD_FILE" ]; then
        # Readable by the service for password_file:, and by systemd for password_credential:.
        run chown "root:$SERVICE_USER" "$PASSWORD_FILE"
        run chmod 0640 "$PASSWORD_FILE"
        # Only when the file exists: a LoadCredential= source that is missing stops the unit.
        printf '# Written by install.sh because %s exists.\n[Service]\nLoadCredential=mqtt-password:%s\n' \
            "/etc/edgescribe/mqtt-password" "/etc/edgescribe/mqtt-password" | write_file "$DROP_IN/credentials.conf" 0644
    fi
    systemctl_ daemon-reload
    systemctl_ enable "${UNITS[@]}"
    systemctl_ restart edgescribe.service
}

uninstall() {
    for unit in edgescribe.service edgescribe-engines.service; do
        systemctl_ disable --now "$unit"
        [ ! -f "$UNIT_DIR/$unit" ] || run rm -f "$UNIT_DIR/$unit"
    done
    [ ! -d "$DROP_IN" ] || run rm -rf "$DROP_IN"
    systemctl_ daemon-reload
    [ ! -d "$OPT" ] || run rm -rf "$OPT"
    [ ! -d "$CACHE" ] || run rm -rf "$CACHE"
    # Models and engines can be made again; the outbox spool and the config are the user's.
    for dir in "$STATE/model" "$STATE/models"; do
        [ ! -d "$dir" ] || run rm -rf "$dir"
    done
    say "removed; kept $ETC (your configuration) and $STATE (undelivered transcripts)"
    say "the $SERVICE_USER user is kept as the owner of $STATE; remove it with: userdel $SERVICE_USER"
}

main() {
    [ $DRY_RUN -eq 1 ] || [ "$(id -u)" -eq 0 ] || die "run as root (sudo), or with --dry-run to see the steps"
    if [ $UNINSTALL -eq 1 ]; then
        uninstall
        return
    fi
    if [ $CHECK_PLATFORM -eq 1 ]; then
        check_platform
    else
        say "platform checks skipped (--skip-platform-check)"
    fi
    install_system_packages
    create_user
    install_package
    install_config
    build_model
    setup_broker
    install_units
    if [ $DRY_RUN -eq 0 ] && [ -z "$ROOT" ]; then
        if systemctl is-active --quiet edgescribe.service; then
            say "edgescribe is running: journalctl -u edgescribe -f"
        else
            systemctl --no-pager status edgescribe.service || true
            die "edgescribe did not start; see journalctl -u edgescribe -u edgescribe-engines (engines failing to load with 'Operation not permitted': docs/install.md, MemoryDenyWriteExecute)"
        fi
    fi
}

main
