# shellcheck shell=bash
# Sourced by the runbook scripts beside it: settings from the environment, and small helpers.
# Everything listens on loopback; every wait is bounded by a timeout in seconds.
#
# What the scripts act on has no default: each script names the variables it needs as
# `: "${BEAMLINE_X:?...}"` lines before it sources this file, so one run without them stops before
# touching anything, naming the variable (a playbook that forgot one must not restart whatever
# listens on the demo's ports). The remediator passes them from the playbook's `env:` block, and
# `remediator check` reads those lines to warn about an exec step that does not pass one.
: "${BEAMLINE_STATE_DIR:?not set: the state directory (pid files, logs, NATS store); no default}"
# How to act (which binaries, how long to wait) has defaults.
BEAMLINE_DEMO_ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)"
BEAMLINE_NATS_SERVER="${BEAMLINE_NATS_SERVER:-nats-server}"
BEAMLINE_PYTHON="${BEAMLINE_PYTHON:-python3}"
BEAMLINE_START_TIMEOUT="${BEAMLINE_START_TIMEOUT:-15}"
BEAMLINE_STOP_TIMEOUT="${BEAMLINE_STOP_TIMEOUT:-10}"
BEAMLINE_HTTP_TIMEOUT="${BEAMLINE_HTTP_TIMEOUT:-2}"

LOOPBACK=127.0.0.1

die() {
    printf '%s: error: %s\n' "$(basename -- "$0")" "$*" >&2
    exit 1
}

require_uint() {  # NAME VALUE
    [[ "$2" =~ ^[0-9]+$ ]] || die "$1 must be a whole number, got '$2'"
}

for port in BEAMLINE_NATS_PORT BEAMLINE_NATS_MONITOR_PORT BEAMLINE_ROUTER_TCP_PORT BEAMLINE_ROUTER_HTTP_PORT; do
    # only the ports this script asked for are set; the URLs below of the others are never used
    [[ -z "${!port+set}" ]] || require_uint "$port" "${!port}"
done
require_uint BEAMLINE_START_TIMEOUT "$BEAMLINE_START_TIMEOUT"
require_uint BEAMLINE_STOP_TIMEOUT "$BEAMLINE_STOP_TIMEOUT"
require_uint BEAMLINE_HTTP_TIMEOUT "$BEAMLINE_HTTP_TIMEOUT"
command -v curl >/dev/null || die "curl is not installed (apt-get install curl)"

mkdir -p -- "$BEAMLINE_STATE_DIR"
BEAMLINE_STATE_DIR="$(cd -- "$BEAMLINE_STATE_DIR" && pwd)"  # absolute: the processes outlive our cwd
BEAMLINE_ROUTER_ADMIN_TOKEN_FILE="${BEAMLINE_ROUTER_ADMIN_TOKEN_FILE:-$BEAMLINE_STATE_DIR/router-admin.token}"

NATS_PID_FILE="$BEAMLINE_STATE_DIR/nats.pid"
NATS_LOG="$BEAMLINE_STATE_DIR/nats.log"
# nats-server keeps JetStream in <store_dir>/jetstream: the runbook's `data/jetstream`.
NATS_DATA_DIR="$BEAMLINE_STATE_DIR/data"
NATS_URL="nats://$LOOPBACK:${BEAMLINE_NATS_PORT-}"
NATS_MONITOR_URL="http://$LOOPBACK:${BEAMLINE_NATS_MONITOR_PORT-}"
ROUTER_PID_FILE="$BEAMLINE_STATE_DIR/router.pid"
ROUTER_LOG="$BEAMLINE_STATE_DIR/router.log"
ROUTER_URL="http://$LOOPBACK:${BEAMLINE_ROUTER_HTTP_PORT-}"

# GET/POST on loopback, never through a proxy from the environment, always with a time limit.
http() {
    curl --noproxy '*' --silent --show-error --max-time "$BEAMLINE_HTTP_TIMEOUT" "$@"
}

# The pid in PIDFILE if that process is alive and its command line contains PATTERN
# (a recycled pid belonging to something else must never be signalled).
live_pid() {  # PIDFILE PATTERN
    local pid
    [[ -f "$1" ]] || return 1
    pid="$(head -c 32 -- "$1" | tr -dc '0-9')"
    [[ -n "$pid" ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$2" || return 1
    printf '%s\n' "$pid"
}

# Run CMD... every 0.1 s until it succeeds or TIMEOUT seconds have passed.
wait_until() {  # TIMEOUT CMD...
    local timeout="$1" i
    shift
    for ((i = 0; i < timeout * 10; i++)); do
        if "$@"; then
            return 0
        fi
        sleep 0.1
    done
    "$@"
}

pid_gone() {  # PID
    local state
    kill -0 "$1" 2>/dev/null || return 0
    # A zombie has exited already; only its parent's wait() is missing.
    state="$(sed -n 's/.*) \(.\).*/\1/p' "/proc/$1/stat" 2>/dev/null)" || return 0
    [[ "$state" == Z ]]
}

# The pid PIDFILE records, alive or not ("" when there is none).
recorded_pid() {  # PIDFILE
    [[ -f "$1" ]] && head -c 32 -- "$1" | tr -dc '0-9'
    return 0
}

# Remove PIDFILE only while it still records PID: a script of an earlier, interrupted run must not
# delete the file of the process a later run started (after which nothing could stop that one).
remove_pidfile() {  # PIDFILE PID
    if [[ "$(recorded_pid "$1")" == "$2" ]]; then
        rm -f -- "$1"
    fi
}

# SIGTERM, then SIGKILL after BEAMLINE_STOP_TIMEOUT; removes PIDFILE once the process is gone.
stop_by_pidfile() {  # PIDFILE PATTERN NAME
    local pid
    if ! pid="$(live_pid "$1" "$2")"; then
        remove_pidfile "$1" "$(recorded_pid "$1")"
        echo "$3 is not running"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_until "$BEAMLINE_STOP_TIMEOUT" pid_gone "$pid"; then
        echo "$3 (pid $pid) ignored SIGTERM for ${BEAMLINE_STOP_TIMEOUT}s: sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
        wait_until 5 pid_gone "$pid" || die "$3 (pid $pid) survived SIGKILL"
    fi
    remove_pidfile "$1" "$pid"
    echo "Stopped $3 (pid $pid)"
}

log_tail() {  # FILE
    if [[ -f "$1" ]]; then
        echo "--- last lines of $1:" >&2
        tail -n 20 -- "$1" >&2
    fi
}

# Runs demo/*.py helpers from the repository, wherever the caller's cwd is.
demo_python() {
    PYTHONPATH="$BEAMLINE_DEMO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$BEAMLINE_PYTHON" "$@"
}
