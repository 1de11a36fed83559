#!/usr/bin/env bash
# Install edgescribe as a systemd service on a Jetson Orin with JetPack 6 (L4T R36, TensorRT 10).
#
#   sudo scripts/install.sh                    install or upgrade (idempotent), then start
#   sudo scripts/install.sh --model base       serve the multilingual base model instead of tiny.en
#   sudo scripts/install.sh --model /data/whisper-small-ct2   a CTranslate2 or Hugging Face Whisper dir
#   scripts/install.sh --dry-run               print every step without changing anything
#   sudo scripts/install.sh --uninstall        remove everything but /etc/edgescribe and the spool
#   sudo scripts/install.sh --broker-only      only set up the local broker again (after changing
#                                              device_id, topic_prefix or mqtt.port)
#
# What it does: checks the platform, TensorRT and the CUDA compiler; creates the edgescribe
# user (groups audio, video, render); creates /opt/edgescribe/venv with the system's TensorRT
# visible; installs edgescribe[jetson,systemd]; exports the model package and builds TensorRT
# engines for this device; installs /etc/edgescribe/config.yaml if there is none (never
# overwrites it); when the configured broker is local, installs mosquitto if needed and makes it
# refuse anonymous clients: a random password for the daemon and an ACL that lets it publish
# only under its own topics (a broker configured by someone else is left alone); installs,
# enables and starts edgescribe-engines.service and edgescribe.service.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$(dirname "$SCRIPT_DIR")"

ROOT=""                 # --root: install below this directory (tests, image builds)
DRY_RUN=0
UNINSTALL=0
BROKER_ONLY=0
CHECK_PLATFORM=1
MODEL="tiny.en"
SERVICE_USER="edgescribe"
# pip builds pycuda with nvcc, which JetPack puts here but not on the default PATH.
export PATH="/usr/local/cuda/bin:$PATH"

usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }

die() {
    echo "install.sh: error: $*" >&2
    exit 1
}

say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --uninstall) UNINSTALL=1 ;;
        --broker-only) BROKER_ONLY=1 ;;
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
PASSWORD_PATH="/etc/edgescribe/mqtt-password"   # as the installed system sees it
PASSWORD_FILE="$ROOT$PASSWORD_PATH"
STATE="$ROOT/var/lib/edgescribe"
CACHE="$ROOT/var/cache/edgescribe"
UNIT_DIR="$ROOT/etc/systemd/system"
DROP_IN="$UNIT_DIR/edgescribe.service.d"
UNITS=(edgescribe-engines.service edgescribe.service)
# The local broker's files that install.sh owns (paths as the installed system sees them).
BROKER_CONF_PATH="/etc/mosquitto/conf.d/edgescribe.conf"
BROKER_ACL_PATH="/etc/mosquitto/edgescribe.acl"
BROKER_PASSWD_PATH="/etc/mosquitto/edgescribe.passwd"
BROKER_CONF="$ROOT$BROKER_CONF_PATH"
BROKER_ACL="$ROOT$BROKER_ACL_PATH"
BROKER_PASSWD="$ROOT$BROKER_PASSWD_PATH"
BROKER_MARK="# Written by edgescribe's scripts/install.sh"   # first line of $BROKER_CONF
MOSQUITTO_CONF="$ROOT/etc/mosquitto/mosquitto.conf"
ACL_BEGIN="# >>> edgescribe"   # the ACL block install.sh rewrites; the operator's accounts follow it
ACL_END="# <<< edgescribe"
FRESH_CONFIG=0       # 1 once this run wrote (or, under --dry-run, would write) $CONFIG
DAEMON_PASSWORD=""   # the daemon's password file for the local broker, once set up

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
# edgescribe or the configuration is installed. A configuration that does not load stops the
# installer: a guessed value would set things up for the wrong broker or topics. The files
# it names are not looked at (install.sh makes some of them); check_config does that.
config_value() {
    local key="$1" fallback="$2"
    if [ -x "$VENV/bin/python" ] && [ -f "$CONFIG" ]; then
        "$VENV/bin/python" - "$CONFIG" "$key" <<'EOF' 2>/dev/null \
            || die "cannot read $key from $CONFIG; see what is wrong with: $EDGESCRIBE check-config $CONFIG"
import sys
from edgescribe.daemon.config import load_config
value = load_config(sys.argv[1], check_host=False)
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
        local id login=()
        id="$(device_id_from_hostname)"
        if [ "$(local_broker_plan "$(config_value mqtt.host localhost)" "$(config_value mqtt.port 1883)")" = ours ]; then
            # The local broker install.sh sets up refuses anonymous clients.
            login=(-e "s|^  username: .*|  username: $SERVICE_USER|"
                   -e "s|^  password_file: .*|  password_file: $PASSWORD_PATH|")
        fi
        sed -e "s/^device_id: .*/device_id: $id/" "${login[@]}" "$SRC/config/edgescribe.yaml" | write_file "$CONFIG" 0644
        FRESH_CONFIG=1
    fi
}

# Once the model package and the broker password it names exist.
check_config() {
    if [ -n "$ROOT" ]; then
        # The files the configuration names are below $ROOT, not where it says.
        echo "skipped (--root): edgescribe check-config $CONFIG"
    elif [ $DRY_RUN -eq 0 ]; then
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

broker_answers() {
    # Under --root the target's broker is not running on this machine.
    [ -z "$ROOT" ] || return 1
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# mosquitto as its package ships it: conf.d included, and no listener or access settings
# anywhere else (an operator's broker configuration is never touched).
mosquitto_is_stock() {
    local other
    grep -Eq '^[[:space:]]*include_dir[[:space:]]+/etc/mosquitto/conf\.d/?[[:space:]]*$' "$MOSQUITTO_CONF" || return 1
    if grep -Eq '^[[:space:]]*(listener|port|bind_address|bind_interface|allow_anonymous|password_file|acl_file|psk_file|plugin|auth_plugin|per_listener_settings)([[:space:]]|$)' "$MOSQUITTO_CONF"; then
        return 1
    fi
    other="$(find "$(dirname "$BROKER_CONF")" -maxdepth 1 -name '*.conf' -print -quit 2>/dev/null)"
    [ -z "$other" ]
}

broker_conf_is_ours() {
    [ -f "$BROKER_CONF" ] && head -n 1 "$BROKER_CONF" | grep -qF "$BROKER_MARK"
}

# remote: mqtt.host is another machine. ours: a local mosquitto that install.sh set up before,
# or one still in its stock configuration (open to every local process), or none at all yet.
# operator: a local broker someone else configured, left alone.
local_broker_plan() {
    local host="$1" port="$2"
    if ! broker_is_local "$host"; then
        echo remote
    elif broker_conf_is_ours; then
        echo ours
    elif [ -f "$MOSQUITTO_CONF" ]; then
        if mosquitto_is_stock; then echo ours; else echo operator; fi
    elif broker_answers "$port"; then
        echo operator
    else
        echo ours
    fi
}

setup_broker() {
    local host port
    host="$(config_value mqtt.host localhost)"
    port="$(config_value mqtt.port 1883)"
    case "$(local_broker_plan "$host" "$port")" in
        remote)
            # The unit allows only localhost (IPAddressAllow=); let the broker's addresses through.
            local addresses
            addresses="$(getent ahosts "$host" | awk '{print $1}' | sort -u | tr '\n' ' ')"
            [ -n "$addresses" ] || die "cannot resolve the broker $host (mqtt.host in $CONFIG)"
            printf '# Written by install.sh for mqtt.host %s; re-run install.sh after changing it.\n[Service]\nIPAddressAllow=%s\n' \
                "$host" "$addresses" | write_file "$DROP_IN/broker.conf" 0644
            return
            ;;
        operator)
            say "the local broker on port $port was configured by someone else: leaving it alone"
            say "give edgescribe an account on it and set mqtt.username and mqtt.password_file (docs/install.md, Local broker)"
            ;;
        ours)
            configure_local_broker "$port"
            ;;
    esac
    [ ! -f "$DROP_IN/broker.conf" ] || run rm -f "$DROP_IN/broker.conf"
}

# A random password for the daemon, made once: re-running install.sh keeps it.
make_daemon_password() {
    local file="$1"
    if [ -f "$file" ]; then
        say "keeping the broker password in $file"
    elif [ $DRY_RUN -eq 1 ]; then
        echo "would write $file (a new random password)"
    else
        echo "+ write $file (a new random password)"
        install -d -m 0755 "$(dirname "$file")"
        (umask 077; head -c 24 /dev/urandom | base64 | tr '+/' '-_' > "$file")
    fi
}

# Text for sed's replacement side.
sed_escape() { printf '%s' "$1" | sed 's/[&|\\]/\\&/g'; }

# The ACL: install.sh's block from the template, then whatever the operator added after it.
render_acl() {
    local user="$1" tree="$2" prefix="$3" discovery="$4" template="$SRC/config/mosquitto/edgescribe.acl" body
    [ -f "$template" ] || die "$template is missing from this checkout"
    body="$(sed -e "s|@USER@|$(sed_escape "$user")|g" -e "s|@TREE@|$(sed_escape "$tree")|g" \
                -e "s|@PREFIX@|$(sed_escape "$prefix")|g" -e "s|@DISCOVERY@|$(sed_escape "$discovery")|g" \
                -e "s|@PASSWD@|$BROKER_PASSWD_PATH|g" "$template")"
    if [ -f "$BROKER_ACL" ]; then
        printf '%s\n' "$body" | awk -v end="$ACL_END" '{ print } index($0, end) == 1 { exit }'
        awk -v begin="$ACL_BEGIN" -v end="$ACL_END" \
            'index($0, begin) == 1 { skip = 1 } !skip { print } index($0, end) == 1 { skip = 0 }' "$BROKER_ACL"
    else
        printf '%s\n' "$body"
    fi
}

render_broker_conf() {
    local port="$1" template="$SRC/config/mosquitto/edgescribe.conf" ipv6='/^#ipv6 /d'
    [ -f "$template" ] || die "$template is missing from this checkout"
    # A listener on ::1 where the kernel has no IPv6 loopback would stop mosquitto from starting.
    if grep -q '^0\{31\}1 ' /proc/net/if_inet6 2>/dev/null; then ipv6='s/^#ipv6 //'; fi
    sed -e "$ipv6" -e "s|@PORT@|$port|g" -e "s|@ACL@|$BROKER_ACL_PATH|g" -e "s|@PASSWD@|$BROKER_PASSWD_PATH|g" "$template"
}

# mosquitto_passwd hashes it; the password goes through a pipe, never on a command line.
hash_broker_password() {
    local user="$1" source="$2" password
    if [ $DRY_RUN -eq 1 ]; then
        echo "would run: mosquitto_passwd $BROKER_PASSWD $user (password from $source)"
        return
    fi
    echo "+ mosquitto_passwd $BROKER_PASSWD $user (password from $source)"
    password="$(head -n 1 "$source")"
    [ -n "$password" ] || die "$source is empty (the password must be on its first line)"
    printf '%s\n%s\n' "$password" "$password" | mosquitto_passwd "$BROKER_PASSWD" "$user" >/dev/null
}

configure_local_broker() {
    local port="$1" user password_file credential prefix device discovery fallback_user="" fallback_file=""
    if [ $FRESH_CONFIG -eq 1 ]; then
        # Under --dry-run the new config is not there to read: these are what it would say.
        fallback_user="$SERVICE_USER"
        fallback_file="$PASSWORD_PATH"
    fi
    user="$(config_value mqtt.username "$fallback_user")"
    password_file="$(config_value mqtt.password_file "$fallback_file")"
    credential="$(config_value mqtt.password_credential "")"
    if [ -z "$user" ] || { [ -z "$password_file" ] && [ -z "$credential" ]; }; then
        local fix="the local broker refuses anonymous clients: set mqtt.username ($SERVICE_USER) and mqtt.password_file ($PASSWORD_PATH) in $CONFIG, then run install.sh again"
        if [ $DRY_RUN -eq 0 ]; then
            echo "install.sh: error: $fix" >&2
            exit 2
        fi
        say "would stop here: $fix"
        user="${user:-$SERVICE_USER}"
    fi
    # password_credential: systemd hands the daemon $PASSWORD_PATH (the drop-in install_units writes).
    DAEMON_PASSWORD="$PASSWORD_FILE"
    [ -z "$password_file" ] || DAEMON_PASSWORD="$ROOT$password_file"
    prefix="$(config_value mqtt.topic_prefix edgescribe | sed 's|^/*||; s|/*$||')"
    device="$(config_value device_id "$(device_id_from_hostname)")"
    discovery="$(config_value homeassistant.discovery_prefix homeassistant)"

    # Every file is in place before apt-get installs mosquitto, so it never starts open.
    make_daemon_password "$DAEMON_PASSWORD"
    render_acl "$user" "$prefix/$device" "$prefix" "$discovery" | write_file "$BROKER_ACL" 0640
    [ -f "$BROKER_PASSWD" ] || run install -D -m 0640 /dev/null "$BROKER_PASSWD"
    render_broker_conf "$port" | write_file "$BROKER_CONF" 0644
    if [ -n "$ROOT" ]; then
        echo "skipped (--root): apt-get install mosquitto"
    elif ! dpkg-query -W -f='${Status}' mosquitto 2>/dev/null | grep -q "install ok installed"; then
        say "installing mosquitto as the local broker"
        run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto
    fi
    [ $DRY_RUN -eq 1 ] || command -v mosquitto_passwd >/dev/null \
        || die "mosquitto_passwd is missing, it hashes the broker password: apt-get install mosquitto"
    hash_broker_password "$user" "$DAEMON_PASSWORD"
    # mosquitto reads these again as its own user when reloaded.
    if [ $DRY_RUN -eq 1 ] || getent group mosquitto >/dev/null; then
        run chown root:mosquitto "$BROKER_ACL" "$BROKER_PASSWD"
        run chmod 0640 "$BROKER_ACL" "$BROKER_PASSWD"
    fi
    say "local broker: anonymous clients are refused; $user may publish only under $prefix/$device/ (other clients' accounts: docs/install.md, Local broker)"
    systemctl_ enable mosquitto.service
    # A restart, not a reload: mosquitto opens listeners only when it starts.
    systemctl_ restart mosquitto.service
}

# The daemon reads its password as the service user (password_file:), or systemd reads it for
# the daemon (password_credential:); nobody else may.
protect_password_files() {
    local files=("$PASSWORD_FILE") file
    [ -z "$DAEMON_PASSWORD" ] || [ "$DAEMON_PASSWORD" = "$PASSWORD_FILE" ] || files+=("$DAEMON_PASSWORD")
    for file in "${files[@]}"; do
        password_will_exist "$file" || continue
        if [ $DRY_RUN -eq 1 ] || getent group "$SERVICE_USER" >/dev/null; then
            run chown "root:$SERVICE_USER" "$file"
            run chmod 0640 "$file"
        else
            run chmod 0600 "$file"
            say "warning: there is no group $SERVICE_USER yet, so $file stays readable by root only"
        fi
    done
}

# Whether a password file is there after this run (under --dry-run: would be).
password_will_exist() {
    [ -f "$1" ] || { [ $DRY_RUN -eq 1 ] && [ "$1" = "$DAEMON_PASSWORD" ]; }
}

install_units() {
    for unit in "${UNITS[@]}"; do
        [ -f "$SRC/systemd/$unit" ] || die "$SRC/systemd/$unit is missing from this checkout"
        run install -D -m 0644 "$SRC/systemd/$unit" "$UNIT_DIR/$unit"
    done
    if password_will_exist "$PASSWORD_FILE"; then
        # Only when the file exists: a LoadCredential= source that is missing stops the unit.
        printf '# Written by install.sh because %s exists.\n[Service]\nLoadCredential=mqtt-password:%s\n' \
            "$PASSWORD_PATH" "$PASSWORD_PATH" | write_file "$DROP_IN/credentials.conf" 0644
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
    if broker_conf_is_ours; then
        for file in "$BROKER_CONF" "$BROKER_ACL" "$BROKER_PASSWD"; do
            [ ! -f "$file" ] || run rm -f "$file"
        done
        systemctl_ try-restart mosquitto.service
        say "mosquitto is back to its stock configuration; remove it with: apt-get remove mosquitto"
    fi
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
    if [ $BROKER_ONLY -eq 1 ]; then
        [ -f "$CONFIG" ] || die "--broker-only needs $CONFIG (run a full install first)"
        setup_broker
        protect_password_files
        check_config
        # The daemon reads its password when it starts.
        systemctl_ try-restart edgescribe.service
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
    protect_password_files
    check_config
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
